// The backlog out of memory (scheduler/engine.h, "The backlog"): tasks waiting for their
// first placement live at q/ in the store and, past cached_waiting_tasks, only as their
// place in line in memory; they are read back to be placed, cancelled, shown or listed,
// and read a batch per turn after a restart.
#include <catch2/catch.hpp>
#include <deque>

#include "scheduler/engine.h"
#include "scheduler/records.h"
#include "schemas/codec.h"
#include "store/keys.h"
#include "tests/unit/engine_harness.h"

using namespace fm;
using namespace fm::sched;
using namespace fm::sched::testing;

namespace {

size_t Count(const store::Store& s, std::string_view prefix) {
  size_t n = 0;
  REQUIRE(s.Scan(prefix, store::keys::PrefixEnd(prefix), [&](std::string_view, std::string_view) {
             ++n;
             return true;
           }).ok());
  return n;
}

TaskSpec WithPriority(int32_t priority, std::string key = "") {
  TaskSpec s = NewTask();
  s.priority = priority;
  s.key = std::move(key);
  return s;
}

// Frees w's one slot `n` times (the task on it succeeds) and returns the ids placed, in turn.
std::vector<uint64_t> Drain(Harness& h, int n) {
  std::vector<uint64_t> placed;
  for (int i = 0; i < n; ++i) {
    uint64_t running = 0;  // the task on w
    for (uint64_t id = 1; id < 1000 && running == 0; ++id) {
      const Task* t = h.engine().active_task(id);
      if (t && t->worker == "w") running = id;
    }
    REQUIRE(running != 0);
    Turn turn = h.Finished(running, 1, "w", wire::Outcome::Succeeded);
    auto sent = turn.Dispatched(Harness::Address("w"));
    REQUIRE(sent.size() == 1);
    placed.push_back(sent[0]);
  }
  return placed;
}

// 200 tasks behind one busy slot: priorities 0..3 by id modulo 4.
std::vector<TaskSpec> Backlog() {
  std::vector<TaskSpec> specs;
  for (int i = 0; i < 200; ++i) specs.push_back(WithPriority(i % 4, "k" + std::to_string(i)));
  return specs;
}

// The order the line must place them in: priority first, then submission (ids 2..201).
std::vector<uint64_t> LineOrder(size_t n) {
  std::vector<uint64_t> ids;
  for (int p = 3; p >= 0; --p) {
    for (uint64_t id = 2; id <= 201; ++id) {
      if ((id - 2) % 4 == static_cast<uint64_t>(p)) ids.push_back(id);
    }
  }
  ids.resize(n);
  return ids;
}

}  // namespace

TEST_CASE("a backlog past the cache waits at q/ out of memory and is placed in line order, read back", "[unit]") {
  EngineOptions options;
  options.cached_waiting_tasks = 10;
  Harness h(options);
  h.Register({"w", {}, 4, 8 * GiB, 1});
  REQUIRE(OnlyResult(h.Submit({NewTask()}))->task() == 1);  // takes the one slot
  h.Submit(Backlog());
  CHECK(h.engine().pending_count() == 200);
  CHECK(h.engine().active_count() == 201);
  // The running task and at most ten of the waiting ones are whole in memory.
  CHECK(h.engine().tasks_in_memory() <= 11);
  // The first ten whole in memory, written at a/ like every task in memory; the rest at q/.
  CHECK(Count(h.store(), store::keys::kWaitingPrefix) == 190);
  CHECK(Count(h.store(), store::keys::kActivePrefix) == 11);

  std::vector<uint64_t> placed = Drain(h, 120);
  CHECK(placed == LineOrder(120));
  // A placed task's record moved from q/ to a/; the ended ones to t/. Of the 80 still
  // waiting, those of the first ten not placed yet are at a/.
  CHECK(Count(h.store(), store::keys::kWaitingPrefix) + Count(h.store(), store::keys::kActivePrefix) == 81);
  CHECK(Count(h.store(), store::keys::kWaitingPrefix) >= 70);
  CHECK(Count(h.store(), store::keys::kTaskPrefix) == 120);
  CHECK(h.engine().active_count() == 81);
  CHECK(h.engine().tasks_in_memory() <= 11);
  EngineCensus census = h.engine().Census();
  CHECK(census.pending == 80);
  CHECK(census.queued == 1);
}

TEST_CASE("after a restart the backlog is read a batch per turn and keeps its order", "[unit]") {
  EngineOptions options;
  options.cached_waiting_tasks = 10;
  options.waiting_load_batch = 30;
  Harness h(options);
  h.Register({"w", {}, 4, 8 * GiB, 1});
  h.Submit({NewTask()});
  h.Submit(Backlog());
  h.Restart(options);  // the ten at a/ at once; one turn ran: the first batch of q/ is read
  CHECK(h.engine().pending_count() == 40);
  CHECK_FALSE(h.engine().waiting_loaded());
  int turns = 1;
  while (!h.engine().waiting_loaded() && turns < 100) {
    h.Commit();
    ++turns;
  }
  CHECK(turns == 7);  // 190 in batches of 30
  CHECK(h.engine().pending_count() == 200);
  CHECK(h.engine().active_count() == 201);
  CHECK(h.engine().tasks_in_memory() == 11);
  h.Register({"w", {}, 4, 8 * GiB, 1}, {{1, 1}});  // w comes back holding t1
  CHECK(Drain(h, 200) == LineOrder(200));
  CHECK(Count(h.store(), store::keys::kWaitingPrefix) == 0);
}

TEST_CASE("a waiting task out of memory can be cancelled, shown, listed and resubmitted by key", "[unit]") {
  EngineOptions options;
  options.cached_waiting_tasks = 4;
  options.waiting_load_batch = 50;
  options.task_page = 10;  // pages full of tasks read from q/ alone
  Harness h(options);
  h.Register({"w", {}, 4, 8 * GiB, 1});
  h.Submit({NewTask()});
  h.Submit(Backlog());
  REQUIRE(h.engine().active_task(150) == nullptr);  // out of memory
  std::deque<Turn> kept;
  auto control = [&](wire::ControlOp op, const char* target, uint64_t after = 0) {
    flatbuffers::FlatBufferBuilder fbb;
    std::string bytes =
        codec::Seal(fbb, wire::CreateControlRequestDirect(fbb, op, target, 1, after, 0, nullptr, nullptr));
    h.engine().OnDirected("ctl", *wire::GetEnvelope(bytes.data()), h.now);
    const Turn& t = kept.emplace_back(h.Commit());
    return t.To("ctl", wire::Body::ControlReply).at(0)->body_as_ControlReply();
  };
  const auto* shown = control(wire::ControlOp::Task, "t150");
  REQUIRE(shown->ok());
  CHECK(shown->tasks()->Get(0)->state()->str() == "pending");
  CHECK(shown->tasks()->Get(0)->waiting()->str() == "1 eligible, all full");
  CHECK(h.engine().active_task(150) == nullptr);  // shown, not held

  // Listed in id order with the ones in memory, over pages.
  std::vector<std::string> listed;
  uint64_t after = 0;
  for (int pages = 0; pages < 40; ++pages) {
    const auto* page = control(wire::ControlOp::Tasks, nullptr, after);
    for (const auto* t : *page->tasks()) listed.push_back(t->task()->str());
    after = page->next();
    if (after == 0) break;
  }
  REQUIRE(listed.size() == 201);
  CHECK(listed[149] == "t150");

  // The same key answers the waiting task; a different body under it is a conflict.
  TaskSpec again = WithPriority(148 % 4, "k148");  // t150 is line 148 of the backlog
  const auto* same = OnlyResult(h.Submit({again}));
  CHECK(same->task() == 150);
  CHECK(same->status() == wire::SubmitStatus::Accepted);
  again.priority = 9;
  CHECK(OnlyResult(h.Submit({again}))->reason()->str() == "key_conflict");

  const auto* cancelled = control(wire::ControlOp::Cancel, "t150");
  CHECK(cancelled->ok());
  auto ended = records::ReadEndedTask(h.store(), 150);
  REQUIRE(ended.ok());
  REQUIRE(ended->has_value());
  CHECK((*ended)->state == wire::TaskState::Cancelled);
  auto waiting = records::ReadWaitingTask(h.store(), 150);
  REQUIRE(waiting.ok());
  CHECK_FALSE(waiting->has_value());
  CHECK(h.engine().active_count() == 200);
  CHECK(h.engine().tasks_in_memory() <= 5);
  CHECK_FALSE(control(wire::ControlOp::Cancel, "t150")->ok());

  // Cancelled before a restart read it: the load passes it by; the rest go in order.
  CHECK(control(wire::ControlOp::Cancel, "t151")->ok());
  h.Restart(options);
  CHECK(control(wire::ControlOp::Cancel, "t190")->ok());  // not read yet (the first 50 are)
  while (!h.engine().waiting_loaded()) h.Commit();
  CHECK(h.engine().pending_count() == 197);
  CHECK(h.engine().active_count() == 198);
  h.Register({"w", {}, 4, 8 * GiB, 1}, {{1, 1}});
  std::vector<uint64_t> expected;
  for (uint64_t id : LineOrder(200)) {
    if (id != 150 && id != 151 && id != 190) expected.push_back(id);
  }
  CHECK(Drain(h, 197) == expected);
}

TEST_CASE("one key twice in one turn is one task: the turn's keys are found before any batch holds them", "[unit]") {
  Harness h;
  h.Register({"w", {}, 4, 8 * GiB, 1});
  TaskSpec keyed = WithPriority(0, "twice");
  Turn t = h.Submit({keyed, keyed});
  auto replies = t.To("client", wire::Body::SubmitReply);
  REQUIRE(replies.size() == 1);
  const auto* results = replies[0]->body_as_SubmitReply()->results();
  REQUIRE(results->size() == 2);
  CHECK(results->Get(0)->task() == 1);
  CHECK(results->Get(1)->task() == 1);
  CHECK(h.engine().active_count() == 1);
  CHECK(OnlyResult(h.Submit({keyed}))->task() == 1);  // and in a later turn, from the store
}
