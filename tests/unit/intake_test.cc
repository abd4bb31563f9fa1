// The scheduler's fair intake (scheduler/intake.h): senders in turn, FIFO within one,
// bounded per sender.
#include "scheduler/intake.h"

#include <catch2/catch.hpp>

using fm::sched::FairIntake;
using fm::sched::IntakeOptions;

namespace {
std::vector<std::string> Senders(const std::vector<FairIntake::Message>& turn) {
  std::vector<std::string> out;
  for (const auto& m : turn) out.push_back(m.from);
  return out;
}
}  // namespace

TEST_CASE("a flooding sender gets its share of a turn and the others are served in the same turn", "[unit]") {
  IntakeOptions options;
  options.per_sender_turn = 3;
  options.turn = 8;
  FairIntake intake(options);
  for (int i = 0; i < 100; ++i) REQUIRE(intake.Add("flood", "f" + std::to_string(i)));
  REQUIRE(intake.Add("operator", "ping"));
  REQUIRE(intake.Add("worker", "result"));
  auto turn = intake.TakeTurn();
  CHECK(Senders(turn) == std::vector<std::string>{"flood", "flood", "flood", "operator", "worker"});
  CHECK(turn[0].payload == "f0");
  CHECK(turn[2].payload == "f2");
  // The flooder's rest comes in later turns, in order.
  turn = intake.TakeTurn();
  CHECK(Senders(turn) == std::vector<std::string>{"flood", "flood", "flood"});
  CHECK(turn[0].payload == "f3");
  CHECK(intake.queued() == 94);
  CHECK(intake.senders() == 1);
}

TEST_CASE("a turn holds at most its budget, and a sender that waited goes before one served already", "[unit]") {
  IntakeOptions options;
  options.per_sender_turn = 4;
  options.turn = 6;
  FairIntake intake(options);
  for (const char* from : {"a", "b", "c"}) {
    for (int i = 0; i < 4; ++i) REQUIRE(intake.Add(from, std::string(from) + std::to_string(i)));
  }
  auto turn = intake.TakeTurn();
  CHECK(Senders(turn) == std::vector<std::string>{"a", "a", "a", "a", "b", "b"});
  turn = intake.TakeTurn();
  CHECK(Senders(turn) == std::vector<std::string>{"c", "c", "c", "c", "b", "b"});
  CHECK(turn[4].payload == "b2");
  CHECK(intake.empty());
}

TEST_CASE("a sender's queue is bounded in messages and in bytes, and takes more once served", "[unit]") {
  IntakeOptions options;
  options.per_sender_messages = 2;
  options.per_sender_bytes = 10;
  FairIntake intake(options);
  CHECK(intake.Add("a", "1234"));
  CHECK(intake.Add("a", "5678"));
  CHECK_FALSE(intake.Add("a", "x"));    // two messages
  CHECK(intake.Add("b", "123456789"));  // another sender is not held up
  CHECK_FALSE(intake.Add("b", "12"));   // 11 bytes
  CHECK(intake.TakeTurn().size() == 3);
  CHECK(intake.Add("a", "again"));
}
