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

TEST_CASE("senders are served one message each in turn, FIFO within each, so a flood holds up no one", "[unit]") {
  FairIntake intake;
  for (int i = 0; i < 100; ++i) REQUIRE(intake.Add("flood", "f" + std::to_string(i)));
  REQUIRE(intake.Add("operator", "ping"));
  REQUIRE(intake.Add("worker", "result1"));
  REQUIRE(intake.Add("worker", "result2"));
  auto taken = intake.Take(4);
  CHECK(Senders(taken) == std::vector<std::string>{"flood", "operator", "worker", "flood"});
  CHECK(taken[0].payload == "f0");
  CHECK(taken[1].payload == "ping");
  CHECK(taken[3].payload == "f1");
  taken = intake.Take(3);
  CHECK(Senders(taken) == std::vector<std::string>{"worker", "flood", "flood"});
  CHECK(taken[0].payload == "result2");
  CHECK(taken[2].payload == "f3");
  CHECK(intake.queued() == 96);
  CHECK(intake.senders() == 1);
  // A sender that comes later is served within one pass.
  REQUIRE(intake.Add("late", "x"));
  CHECK(Senders(intake.Take(2)) == std::vector<std::string>{"flood", "late"});
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
  CHECK(intake.Take(10).size() == 3);
  CHECK(intake.Add("a", "again"));
}

TEST_CASE("all senders together are bounded in bytes, and a sender under its share still gets in", "[unit]") {
  IntakeOptions options;
  options.per_sender_bytes = 50;
  options.total_bytes = 60;
  FairIntake intake(options);
  for (int i = 0; i < 4; ++i) REQUIRE(intake.Add("a", "0123456789"));  // 40 bytes
  REQUIRE(intake.Add("b", "0123456789"));
  REQUIRE(intake.Add("b", "0123456789"));  // 60 in all
  CHECK(intake.bytes() == 60);
  CHECK_FALSE(intake.Add("c", std::string(31, 'x')));  // past the total and a third's share (20)
  CHECK(intake.Add("c", "0123456789"));                // under its share: taken, past the total
  CHECK_FALSE(intake.Add("a", "x"));                   // under its own bound, over its share (20)
  CHECK(intake.senders() == 3);
  CHECK(intake.Take(3).size() == 3);
  CHECK(intake.bytes() == 40);
  CHECK(intake.Add("a", "0123456789"));  // under the total again
}
