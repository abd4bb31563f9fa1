// The task state machine (scheduler/task_machine.h) through the real engine: a task is
// brought to each state, then each event's real trigger (a worker's message, fm-ctl, a
// heartbeat, the clock, a restart) is applied to it. A legal pair lands where the table
// says; every other pair leaves the task as it was.
#include "scheduler/task_machine.h"

#include <catch2/catch.hpp>

#include "engine_harness.h"
#include "scheduler/records.h"
#include "schemas/vocabulary.h"
#include "store/keys.h"

namespace fm::sched::testing {
namespace {

using S = wire::TaskState;

constexpr S kStates[] = {S::Pending, S::Queued, S::Running, S::Succeeded, S::Failed, S::Cancelled};

// A task of this shape waits in a queue of one slot behind a blocker when pending.
TaskSpec Target() {
  TaskSpec s = NewTask({"x"});
  s.command.clear();
  s.session = SessionSpec{{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB key"}, 0, 0};
  return s;
}

S StateOf(Harness& h, uint64_t id) {
  if (const Task* t = h.engine().active_task(id)) return t->state;
  // Waiting for its first placement, and not in memory (after a restart).
  auto waiting = records::ReadWaitingTask(h.store(), id);
  REQUIRE(waiting.ok());
  if (*waiting) return (*waiting)->state;
  auto ended = records::ReadEndedTask(h.store(), id);
  REQUIRE(ended.ok());
  REQUIRE(ended->has_value());
  return (*ended)->state;
}

uint32_t AttemptOf(Harness& h, uint64_t id) {
  const Task* t = h.engine().active_task(id);
  return t ? t->attempt : 1;
}

Turn Control(Harness& h, wire::ControlOp op, const std::string& target) {
  flatbuffers::FlatBufferBuilder fbb;
  std::string bytes = codec::Seal(fbb, wire::CreateControlRequestDirect(fbb, op, target.c_str(), 1));
  h.engine().OnDirected("client", *wire::GetEnvelope(bytes.data()), h.now);
  return h.Commit();
}

// Worker w1 (capabilities x and session, one slot) and the target task in state `s`;
// its id. Pending: waiting for room behind a blocker (t1) on w1, or, `in_backoff`, in
// its retry backoff with w1 full.
uint64_t Bring(Harness& h, S s, bool in_backoff) {
  h.Register({"w1", {"x", "session"}, 4, 8 * GiB, 1});
  if (s == S::Pending && !in_backoff) {
    REQUIRE(OnlyResult(h.Submit({NewTask({"x"})}))->task() == 1);  // the blocker takes the slot
    REQUIRE(OnlyResult(h.Submit({Target()}))->task() == 2);
    REQUIRE(StateOf(h, 2) == S::Pending);
    return 2;
  }
  REQUIRE(OnlyResult(h.Submit({Target()}))->task() == 1);
  REQUIRE(StateOf(h, 1) == S::Queued);
  if (s == S::Pending) {  // in backoff: a retryable failure, then the slot taken
    h.Finished(1, 1, "w1", wire::Outcome::Retryable);
    REQUIRE(OnlyResult(h.Submit({NewTask({"x"})}))->task() == 2);
    REQUIRE(StateOf(h, 1) == S::Pending);
    REQUIRE(h.engine().pending_count() == 0);  // not placeable while in backoff
    return 1;
  }
  if (s == S::Queued) return 1;
  h.Started(1, 1, "w1");
  if (s == S::Succeeded) h.Finished(1, 1, "w1", wire::Outcome::Succeeded);
  if (s == S::Failed) h.Finished(1, 1, "w1", wire::Outcome::Failed, 1);
  if (s == S::Cancelled) Control(h, wire::ControlOp::Cancel, "t1");
  REQUIRE(StateOf(h, 1) == s);
  return 1;
}

// The event's real trigger, applied to task `id`.
Turn Trigger(Harness& h, TaskEvent e, uint64_t id) {
  const uint32_t attempt = AttemptOf(h, id);
  switch (e) {
    case TaskEvent::kPlace:
      // Room appears: the blocker ends, or a second worker joins.
      if (id == 2) return h.Finished(1, 1, "w1", wire::Outcome::Succeeded);
      return h.Register({"w2", {"x", "session"}, 4, 8 * GiB, 1});
    case TaskEvent::kStart:
      return h.Started(id, attempt, "w1");
    case TaskEvent::kReady:
      return h.Ready(id, attempt, "w1", Endpoint{"w1.example", 2222, "fm"});
    case TaskEvent::kSucceed:
      return h.Finished(id, attempt, "w1", wire::Outcome::Succeeded);
    case TaskEvent::kFail:
      return h.Finished(id, attempt, "w1", wire::Outcome::Failed, 1);
    case TaskEvent::kCancel:
      return Control(h, wire::ControlOp::Cancel, TaskName(id));
    case TaskEvent::kRetry:
      return h.Finished(id, attempt, "w1", wire::Outcome::Retryable);
    case TaskEvent::kHandBack:
      return h.Finished(id, attempt, "w1", wire::Outcome::Retryable, 0, wire::Reason::NotStarted);
    case TaskEvent::kUnrunnable:
      return h.Heartbeat("w1", {"session"});  // w1 no longer announces x: nobody could run it
    case TaskEvent::kBackoffOver: {
      Turn t = h.Tick(2000);  // past any first backoff (1 s, jittered to at most 1.25 s)
      h.Heartbeat("w1", {"x", "session"});
      return t;
    }
    case TaskEvent::kOrphaned: {
      // The scheduler restarts, and w1's record is gone (an older store, a lost write).
      store::WriteBatch gone;
      gone.Delete(store::keys::Worker("w1"));
      REQUIRE(h.store().Write(gone, true).ok());
      h.Restart();
      return Turn{};
    }
  }
  return Turn{};
}

}  // namespace

TEST_CASE("the task state machine's table has each transition once, and refuses every pair it lacks", "[unit]") {
  int legal = 0;
  for (S s : kStates) {
    for (int e = 0; e < kTaskEventCount; ++e) {
      auto next = NextState(s, static_cast<TaskEvent>(e));
      int rows = 0;
      for (const auto& t : kTransitions) rows += t.from == s && t.event == static_cast<TaskEvent>(e);
      CHECK(rows <= 1);
      legal += next.has_value();
      // Nothing leaves a terminal state.
      if (s == S::Succeeded || s == S::Failed || s == S::Cancelled) CHECK_FALSE(next);
    }
  }
  CHECK(legal == static_cast<int>(std::size(kTransitions)));
}

TEST_CASE(
    "every pair of task state and event through the real engine: legal ones land where the table says, the "
    "others leave the task as it was",
    "[unit]") {
  int walked = 0, refused = 0;
  for (S s : kStates) {
    for (int i = 0; i < kTaskEventCount; ++i) {
      const TaskEvent e = static_cast<TaskEvent>(i);
      const bool in_backoff = s == S::Pending && e == TaskEvent::kBackoffOver;
      INFO("from " << StateName(s) << (in_backoff ? " (in backoff)" : "") << " on " << TaskEventName(e));
      Harness h;
      const uint64_t id = Bring(h, s, in_backoff);
      const uint32_t attempt = AttemptOf(h, id);
      Turn t = Trigger(h, e, id);
      std::optional<S> expected = NextState(s, e);
      // A hand-back from an attempt that said it started is a retryable failure: the
      // engine takes it as retry (the attempt counts).
      if (!expected && e == TaskEvent::kHandBack) expected = NextState(s, TaskEvent::kRetry);
      const S after = StateOf(h, id);
      if (!expected) {
        CHECK(after == s);
        CHECK(AttemptOf(h, id) == attempt);
        CHECK(t.Events("task.ready").empty());
        ++refused;
        continue;
      }
      ++walked;
      if (e == TaskEvent::kHandBack && s == S::Queued) {
        // Back to pending with no attempt spent, and placed again at once in the same turn
        // (w1 is the only worker that could run it).
        CHECK(t.Events("task.retrying").size() == 1);
        CHECK(t.Events("task.queued").size() == 1);
        CHECK(after == S::Queued);
      } else {
        CHECK(after == *expected);
      }
      // The self-loops, by their effect.
      if (e == TaskEvent::kReady) CHECK(t.Events("task.ready").size() == 1);
      if (e == TaskEvent::kBackoffOver) CHECK(h.engine().pending_count() == 1);
      if (e == TaskEvent::kRetry || e == TaskEvent::kHandBack) CHECK(AttemptOf(h, id) == attempt + 1);
      if (e == TaskEvent::kOrphaned) CHECK(AttemptOf(h, id) == attempt);
      if (e == TaskEvent::kPlace) CHECK(t.Events("task.queued").size() == 1);
    }
  }
  CHECK(walked == static_cast<int>(std::size(kTransitions)) + 1);  // + the hand-back taken as retry
  CHECK(refused == 6 * kTaskEventCount - walked);
}

}  // namespace fm::sched::testing
