// The scheduler's state machine, stepped turn by turn with a manual clock and the
// in-memory store: no sockets, no sleeps.
#include "scheduler/engine.h"

#include <catch2/catch.hpp>
#include <deque>

#include "schemas/codec.h"
#include "schemas/units.h"
#include "store/keys.h"
#include "store/store.h"
#include "tests/unit/engine_harness.h"

using namespace fm;
using namespace fm::sched;

using namespace fm::sched::testing;

TEST_CASE("a task moves pending -> queued -> running -> succeeded, each step an event in sequence", "[unit]") {
  Harness h;
  h.Register({"w1", {}});
  Turn t = h.Submit({NewTask()});
  const auto* r = OnlyResult(t);
  CHECK(r->status() == wire::SubmitStatus::Accepted);
  uint64_t id = r->task();
  CHECK(t.Events("task.submitted").size() == 1);
  CHECK(t.Events("task.queued").size() == 1);
  CHECK(t.Dispatched(Harness::Address("w1")) == std::vector<uint64_t>{id});
  CHECK(h.engine().active_task(id)->state == wire::TaskState::Queued);

  t = h.Started(id, 1, "w1");
  CHECK(t.Events("task.started").size() == 1);
  CHECK(h.engine().active_task(id)->state == wire::TaskState::Running);

  t = h.Finished(id, 1, "w1", wire::Outcome::Succeeded);
  CHECK(t.To(Harness::Address("w1"), wire::Body::TaskFinishedAck).size() == 1);
  auto done = t.Events("task.succeeded");
  REQUIRE(done.size() == 1);
  CHECK(done[0]->task()->str() == TaskName(id));
  CHECK(h.engine().active_task(id) == nullptr);
  CHECK(h.engine().worker("w1")->slots_used == 0);

  // Sequence numbers strictly increase across turns.
  CHECK(h.engine().next_seq() > done[0]->seq());
}

TEST_CASE("a task no live worker could run fails at once with a per-predicate reason, and nothing is dispatched",
          "[unit]") {
  Harness h;
  h.Register({"small", {"docker"}, 2, 4 * GiB});
  h.Register({"plain", {}, 8, 64 * GiB});
  Turn t = h.Submit({NewTask({"docker"}, {0, 8 * GiB})});
  const auto* r = OnlyResult(t);
  CHECK(r->status() == wire::SubmitStatus::Rejected);
  CHECK(r->reason()->str() == "no_eligible_worker");
  CHECK(r->message()->str() == "0/2 workers eligible: 1 lacks capability docker, 1 has 4 GiB memory < 8 GiB");
  auto failed = t.Events("task.failed");
  REQUIRE(failed.size() == 1);
  CHECK(failed[0]->reason()->str() == "no_eligible_worker");
  REQUIRE(failed[0]->breakdown()->size() == 2);
  CHECK(failed[0]->eligible() == 0);
  CHECK(failed[0]->fleet() == 2);
  CHECK(t.To(Harness::Address("small"), wire::Body::Dispatch).empty());
  CHECK(t.To(Harness::Address("plain"), wire::Body::Dispatch).empty());
  CHECK(h.engine().active_count() == 0);
}

TEST_CASE("a worker that announces no capabilities gets no docker task but does get plain ones", "[unit]") {
  Harness h;
  h.Register({"old", {}});
  h.Register({"docker", {"docker"}, 4, 8 * GiB, 1});
  TaskSpec image_task = NewTask();
  image_task.image = "busybox";  // implies capability docker
  for (int i = 0; i < 3; ++i) {
    Turn t = h.Submit({image_task});
    CHECK(t.Dispatched(Harness::Address("old")).empty());
  }
  Turn plain = h.Submit({NewTask()});
  CHECK(OnlyResult(plain)->status() == wire::SubmitStatus::Accepted);
  // spread: "docker" holds one docker task already running... the plain task may go to either; what
  // matters is that "old" only ever sees plain tasks.
  for (uint64_t id : plain.Dispatched(Harness::Address("old"))) {
    CHECK(h.engine().active_task(id)->spec.required_capabilities.empty());
  }
}

TEST_CASE("spread sends load across eligible workers, a full fleet makes tasks wait until a slot frees", "[unit]") {
  Harness h;
  h.Register({"a", {}, 4, 8 * GiB, 1});
  h.Register({"b", {}, 4, 8 * GiB, 1});
  Turn t = h.Submit({NewTask(), NewTask(), NewTask()});
  auto on_a = t.Dispatched(Harness::Address("a"));
  auto on_b = t.Dispatched(Harness::Address("b"));
  REQUIRE(on_a.size() == 1);
  REQUIRE(on_b.size() == 1);
  CHECK(h.engine().pending_count() == 1);
  // The third waits; when a's task ends it goes to a.
  t = h.Finished(on_a[0], 1, "a", wire::Outcome::Succeeded);
  auto next = t.Dispatched(Harness::Address("a"));
  REQUIRE(next.size() == 1);
  CHECK(h.engine().pending_count() == 0);
}

TEST_CASE("a lost worker's tasks go back to pending with attempt + 1 and run elsewhere", "[unit]") {
  EngineOptions options;
  options.liveness_window_ms = 1000;
  Harness h(options);
  h.Register({"a", {}, 4, 8 * GiB, 1});
  Turn t = h.Submit({NewTask()});
  uint64_t id = OnlyResult(t)->task();
  h.Started(id, 1, "a");
  h.Register({"b", {}, 4, 8 * GiB, 1});
  h.Tick(600);
  h.Heartbeat("b", {});
  t = h.Tick(600);  // a unheard for 1200 ms
  CHECK(t.Events("worker.lost").size() == 1);
  auto retry = t.Events("task.retrying");
  REQUIRE(retry.size() == 1);
  CHECK(retry[0]->attempt() == 2);
  auto dispatched = t.To(Harness::Address("b"), wire::Body::Dispatch);
  REQUIRE(dispatched.size() == 1);
  CHECK(dispatched[0]->body_as_Dispatch()->assignments()->Get(0)->attempt() == 2);
  // A late result from the lost worker's attempt changes nothing.
  t = h.Finished(id, 1, "a", wire::Outcome::Succeeded);
  CHECK(t.Events("task.succeeded").empty());
  CHECK(h.engine().active_task(id)->attempt == 2);
}

TEST_CASE(
    "with no reconnect grace, waiting tasks fail with no_eligible_worker when the last worker that could run "
    "them leaves",
    "[unit]") {
  EngineOptions options;
  options.liveness_window_ms = 1000;
  options.reconnect_grace_ms = 0;
  Harness h(options);
  h.Register({"gpu", {"gpu"}, 4, 8 * GiB, 1});
  h.Register({"cpu", {}, 4, 8 * GiB, 1});
  Turn t = h.Submit({NewTask({"gpu"}), NewTask({"gpu"})});  // one runs, one waits
  CHECK(h.engine().pending_count() == 1);
  h.Tick(600);
  h.Heartbeat("cpu", {});
  t = h.Tick(600);
  auto failed = t.Events("task.failed");
  // The waiting one, and the running one sent back to pending when its worker was lost.
  REQUIRE(failed.size() == 2);
  for (const auto* f : failed) CHECK(f->reason()->str() == "no_eligible_worker");
  CHECK(h.engine().active_count() == 0);
}

TEST_CASE("a worker on another node announcing a live worker's id is refused and the live one keeps its work",
          "[unit]") {
  Harness h;
  h.Register({"w", {}, 4, 8 * GiB, 1, {}, 111});
  Turn t = h.Submit({NewTask()});
  uint64_t id = OnlyResult(t)->task();
  t = h.Register({"w", {}, 4, 8 * GiB, 1, {}, 222, {}, "another-node"});
  auto refused = t.To(Harness::Address("w", 222), wire::Body::WorkerRejected);
  REQUIRE(refused.size() == 1);
  CHECK(refused[0]->body_as_WorkerRejected()->message()->str().find("already in use") != std::string::npos);
  CHECK(t.Events("worker.rejected").size() == 1);
  CHECK(h.engine().worker("w")->instance == 111);
  CHECK(h.engine().active_task(id)->worker == "w");
  CHECK(h.engine().active_task(id)->attempt == 1);
}

TEST_CASE("capabilities withdrawn on a heartbeat stop new work of that kind", "[unit]") {
  Harness h;
  h.Register({"w", {"docker"}});
  h.Heartbeat("w", {});
  Turn t = h.Submit({NewTask({"docker"})});
  CHECK(OnlyResult(t)->status() == wire::SubmitStatus::Rejected);
  CHECK(OnlyResult(t)->message()->str() == "0/1 workers eligible: 1 lacks capability docker");
}

TEST_CASE("a restarted scheduler recovers tasks and judges eligibility against the fleet it last knew", "[unit]") {
  EngineOptions options;
  options.liveness_window_ms = 1000;
  Harness h(options);
  h.Register({"gpu", {"gpu"}, 4, 8 * GiB, 1});
  Turn t = h.Submit({NewTask({"gpu"}), NewTask({"gpu"})});
  REQUIRE(h.engine().pending_count() == 1);
  uint64_t seq_before = h.engine().next_seq();

  h.Restart(options);
  CHECK(h.engine().active_count() == 2);
  CHECK(h.engine().pending_count() == 1);
  CHECK(h.engine().next_seq() > seq_before);
  REQUIRE(h.engine().worker("gpu") != nullptr);
  CHECK_FALSE(h.engine().worker("gpu")->confirmed);
  // A new gpu task is accepted against the remembered fleet, not failed.
  t = h.Submit({NewTask({"gpu"})});
  CHECK(OnlyResult(t)->status() == wire::SubmitStatus::Accepted);
  // The worker comes back holding its task: nothing re-runs.
  t = h.Register({"gpu", {"gpu"}, 4, 8 * GiB, 1}, {{1, 1}});
  CHECK(t.Events("task.retrying").empty());
  CHECK(h.engine().worker("gpu")->confirmed);
}

TEST_CASE("a restarted scheduler re-places tasks of workers that never came back", "[unit]") {
  EngineOptions options;
  options.liveness_window_ms = 1000;
  Harness h(options);
  h.Register({"gone", {}, 4, 8 * GiB, 1});
  Turn t = h.Submit({NewTask()});
  uint64_t id = OnlyResult(t)->task();
  h.Restart(options);
  h.Register({"other", {}, 4, 8 * GiB, 1});
  h.Tick(600);
  h.Heartbeat("other", {});
  t = h.Tick(600);
  CHECK(t.Events("worker.lost").size() == 1);
  CHECK(t.Dispatched(Harness::Address("other")) == std::vector<uint64_t>{id});
}

TEST_CASE("completion is idempotent: a repeated result is acknowledged and changes nothing", "[unit]") {
  Harness h;
  h.Register({"w", {}});
  uint64_t id = OnlyResult(h.Submit({NewTask()}))->task();
  h.Finished(id, 1, "w", wire::Outcome::Succeeded);
  Turn again = h.Finished(id, 1, "w", wire::Outcome::Failed, 1);
  CHECK(again.To(Harness::Address("w"), wire::Body::TaskFinishedAck).size() == 1);
  CHECK(again.Events("task.failed").empty());
}

TEST_CASE("a retryable failure runs again until max_attempts, then fails", "[unit]") {
  Harness h;
  h.Register({"w", {}});
  TaskSpec spec = NewTask();
  spec.max_attempts = 2;
  uint64_t id = OnlyResult(h.Submit({spec}))->task();
  Turn t = h.Finished(id, 1, "w", wire::Outcome::Retryable);
  CHECK(t.Events("task.retrying").size() == 1);
  CHECK(t.Dispatched(Harness::Address("w")).empty());  // after its backoff, not at once
  // The only worker failed it: no other could run it, so it goes back there.
  CHECK(h.Tick(1500).Dispatched(Harness::Address("w")) == std::vector<uint64_t>{id});
  t = h.Finished(id, 2, "w", wire::Outcome::Retryable);
  auto failed = t.Events("task.failed");
  REQUIRE(failed.size() == 1);
  CHECK(failed[0]->reason()->str() == "executor_error");
}

TEST_CASE(
    "an attempt a worker hands back unstarted (its capability quarantined meanwhile) goes elsewhere at once and "
    "spends no attempt, even with max_attempts 1, and that is kept across a restart",
    "[unit]") {
  Harness h;
  h.Register({"broken", {}});
  TaskSpec spec = NewTask();
  spec.max_attempts = 1;
  uint64_t id = OnlyResult(h.Submit({spec}))->task();
  h.Register({"good", {}});
  Turn t = h.Finished(id, 1, "broken", wire::Outcome::Retryable, 0, wire::Reason::NotStarted);
  CHECK(t.Events("task.failed").empty());
  auto retrying = t.Events("task.retrying");
  REQUIRE(retrying.size() == 1);
  CHECK(retrying[0]->reason()->str() == "not_started");
  CHECK_THAT(retrying[0]->message()->str(), Catch::Contains("no attempt spent, avoiding broken"));
  CHECK(t.Dispatched(Harness::Address("good")) == std::vector<uint64_t>{id});  // at once, elsewhere
  // Its one real attempt then fails: that one counts.
  h.Restart();
  t = h.Finished(id, 2, "good", wire::Outcome::Retryable);
  auto failed = t.Events("task.failed");
  REQUIRE(failed.size() == 1);
  CHECK_THAT(failed[0]->message()->str(), Catch::Contains("attempts exhausted (1/1)"));
}

TEST_CASE("a watching submitter is told when its task ends", "[unit]") {
  Harness h;
  h.Register({"w", {}});
  uint64_t id = OnlyResult(h.Submit({NewTask()}, true))->task();
  Turn t = h.Finished(id, 1, "w", wire::Outcome::Failed, 3);
  auto ended = t.To("client", wire::Body::TaskEnded);
  REQUIRE(ended.size() == 1);
  CHECK(ended[0]->body_as_TaskEnded()->result()->status() == wire::SubmitStatus::Failed);
  CHECK(ended[0]->body_as_TaskEnded()->result()->worker()->str() == "w");
}

TEST_CASE("the same key is the same task, also after a restart", "[unit]") {
  Harness h;
  h.Register({"w", {}});
  TaskSpec spec = NewTask();
  spec.key = "k1";
  uint64_t id = OnlyResult(h.Submit({spec}))->task();
  const auto* again = OnlyResult(h.Submit({spec}));
  CHECK(again->task() == id);
  CHECK(again->status() == wire::SubmitStatus::Accepted);
  h.Finished(id, 1, "w", wire::Outcome::Succeeded);
  h.Restart();
  const auto* after = OnlyResult(h.Submit({spec}));
  CHECK(after->task() == id);
  CHECK(after->status() == wire::SubmitStatus::Succeeded);
}

TEST_CASE("a key reused with a different body is a key_conflict naming the first task, which is unchanged", "[unit]") {
  Harness h;
  h.Register({"w", {}});
  TaskSpec first = NewTask();
  first.key = "k";
  uint64_t id = OnlyResult(h.Submit({first}))->task();
  TaskSpec other = first;
  other.command = {"echo", "something else"};
  Turn t = h.Submit({other});
  const auto* r = OnlyResult(t);
  CHECK(r->status() == wire::SubmitStatus::Rejected);
  CHECK(r->reason()->str() == "key_conflict");
  CHECK(r->task() == id);
  CHECK_THAT(r->message()->str(), Catch::Contains("task t" + std::to_string(id)));
  CHECK(t.Dispatched(Harness::Address("w")).empty());
  CHECK(h.engine().active_count() == 1);
  h.Restart();  // also when the first is read back from the store
  h.Register({"w", {}});
  CHECK(OnlyResult(h.Submit({other}))->reason()->str() == "key_conflict");
  CHECK(OnlyResult(h.Submit({first}))->status() == wire::SubmitStatus::Accepted);
}

TEST_CASE("a key answers its task's status as it is: failed for an accepted task that failed, rejected only if refused",
          "[unit]") {
  EngineOptions options;
  options.reconnect_grace_ms = 0;
  Harness h(options);
  h.Register({"g", {"gpu"}});
  TaskSpec accepted = NewTask({"gpu"});
  accepted.key = "ran";
  uint64_t id = OnlyResult(h.Submit({accepted}))->task();
  h.Tick(EngineOptions().liveness_window_ms + 1);  // its only worker is lost: it fails no_eligible_worker
  REQUIRE(h.engine().active_task(id) == nullptr);
  const auto* again = OnlyResult(h.Submit({accepted}));
  CHECK(again->task() == id);
  CHECK(again->status() == wire::SubmitStatus::Failed);
  CHECK(again->reason()->str() == "no_eligible_worker");

  TaskSpec refused = NewTask({"gpu"});
  refused.key = "refused";
  CHECK(OnlyResult(h.Submit({refused}))->status() == wire::SubmitStatus::Rejected);
  h.Restart();
  CHECK(OnlyResult(h.Submit({refused}))->status() == wire::SubmitStatus::Rejected);
  CHECK(OnlyResult(h.Submit({accepted}))->status() == wire::SubmitStatus::Failed);
}

TEST_CASE("a backlog that only a full class can run costs one look per turn, not one per waiting task", "[unit]") {
  Harness h;
  h.Register({"busy", {}, 4, 8 * GiB, 1, {{"pool", "a"}}});
  h.Register({"idle", {}, 4, 8 * GiB, 8, {{"pool", "b"}}});
  std::vector<TaskSpec> backlog(5000, NewTask({}, {}, {{"pool", "a"}}));
  h.Submit(backlog);
  REQUIRE(h.engine().pending_count() == 4999);  // one runs on "busy", the rest wait
  uint64_t before = h.engine().placement_offers();
  for (int i = 0; i < 8; ++i) {                             // "idle" has 8 slots
    Turn t = h.Submit({NewTask({}, {}, {{"pool", "b"}})});  // placement runs every turn
    CHECK(t.Dispatched(Harness::Address("idle")).size() == 1);
  }
  // Each turn: the one task placed, and one look at the waiting demand.
  CHECK(h.engine().placement_offers() - before <= 16);
  // When "busy" finishes its task, the next in line goes there, in order.
  Turn t = h.Finished(1, 1, "busy", wire::Outcome::Succeeded);
  CHECK(t.Dispatched(Harness::Address("busy")) == std::vector<uint64_t>{2});
}

TEST_CASE("binpack fills the most loaded worker that fits, ties to the smaller id", "[unit]") {
  EngineOptions options;
  options.policy = PlacementPolicy::kBinpack;
  Harness h(options);
  h.Register({"b", {}});
  h.Register({"a", {}});
  Turn t1 = h.Submit({NewTask()});
  CHECK(t1.Dispatched(Harness::Address("a")).size() == 1);  // equal load: the smaller id
  Turn t2 = h.Submit({NewTask()});
  CHECK(t2.Dispatched(Harness::Address("a")).size() == 1);  // the fuller one that still fits
  Turn t3 = h.Submit({NewTask()});
  CHECK(t3.Dispatched(Harness::Address("b")).size() == 1);  // "a" is full (2 slots)
}

TEST_CASE("a drained worker gets no new work and undrain restores it", "[unit]") {
  Harness h;
  h.Register({"w", {}});
  flatbuffers::FlatBufferBuilder fbb;
  std::string drain = codec::Seal(fbb, wire::CreateControlRequestDirect(fbb, wire::ControlOp::Drain, "w", 1));
  h.engine().OnDirected("ctl", *wire::GetEnvelope(drain.data()), h.now);
  Turn t = h.Commit();
  CHECK(t.Events("worker.draining").size() == 1);
  t = h.Submit({NewTask()});
  CHECK(OnlyResult(t)->reason()->str() == "no_eligible_worker");
}

TEST_CASE("the scheduler answers a message type it does not take with an error", "[unit]") {
  Harness h;
  flatbuffers::FlatBufferBuilder fbb;
  std::string bytes = codec::Seal(fbb, wire::CreateDispatch(fbb));
  h.engine().OnDirected("odd", *wire::GetEnvelope(bytes.data()), h.now);
  Turn t = h.Commit();
  auto errors = t.To("odd", wire::Body::Error);
  REQUIRE(errors.size() == 1);
  CHECK(errors[0]->body_as_Error()->code()->str() == "unsupported");
}

TEST_CASE("events are kept within the retention count and age, replay from before them names the oldest", "[unit]") {
  EngineOptions options;
  options.event_retention_count = 10;
  options.event_retention_age_ms = 60'000;
  Harness h(options);
  h.Register({"w", {}});
  for (int i = 0; i < 10; ++i) h.Submit({NewTask()});  // ~2 events each
  h.Tick(100);
  std::deque<Turn> kept;  // the batches point into their turn's messages
  auto replay = [&](uint64_t since) { return h.Replay(since, &kept); };
  const auto* old = replay(1);
  REQUIRE(old->error() != nullptr);
  CHECK_THAT(old->error()->str(), Catch::Contains("older than retention: the oldest available is"));
  uint64_t oldest = old->oldest();
  const auto* batch = replay(oldest);
  CHECK(batch->error() == nullptr);
  CHECK(batch->events()->size() == 10);
  CHECK(batch->events()->Get(0)->seq() == oldest);
  // Age: an hour later, everything before now is gone but the newest events.
  h.Tick(3'600'000);
  h.Submit({NewTask()});
  h.Tick(1500);
  const auto* aged = replay(oldest);
  REQUIRE(aged->error() != nullptr);
  CHECK(aged->oldest() > oldest + 5);
}

TEST_CASE(
    "sequenced output is stored once: a range sent again is cut to what is new, one past a gap waits, the stored end "
    "is said to the worker and survives a restart, and a later attempt starts afresh",
    "[unit]") {
  Harness h;
  h.Register({"w", {}});
  TaskSpec spec = NewTask();
  spec.max_attempts = 2;
  spec.retry_exit_codes = {1};
  spec.retry_backoff_ms = 1;
  Turn placed = h.Submit({spec});
  auto dispatched = placed.To(Harness::Address("w"), wire::Body::Dispatch);
  REQUIRE(dispatched.size() == 1);
  CHECK(dispatched[0]->body_as_Dispatch()->sequenced_output());  // the worker sequences this one's output
  h.Started(1, 1, "w");
  using Stored = std::pair<std::string, std::optional<uint64_t>>;
  // Sends a TaskLog of attempt `attempt` at `offset`: the output stored in the turn, and
  // the end said to the worker for that stream (nullopt: none).
  auto log = [&](uint32_t attempt, const char* stream, uint64_t offset, const std::string& data) {
    flatbuffers::FlatBufferBuilder fbb;
    auto ref = wire::CreateTaskRef(fbb, 1, attempt);
    std::string bytes =
        codec::Seal(fbb, wire::CreateTaskLog(fbb, ref, fbb.CreateString(stream), fbb.CreateString(data), offset));
    h.engine().OnDirected(Harness::Address("w"), *wire::GetEnvelope(bytes.data()), h.now);
    Turn t = h.Commit();
    Stored out;
    for (const auto* e : t.Events("task.log")) out.first += e->data()->str();
    for (const auto* env : t.To(Harness::Address("w"), wire::Body::TaskFinishedAck)) {
      const auto* ack = env->body_as_TaskFinishedAck();
      REQUIRE(ack->output() != nullptr);  // present whenever output was taken
      for (const auto* m : *ack->output()) {
        if (m->stream()->str() == stream && m->ref()->attempt() == attempt) out.second = m->end();
      }
    }
    return out;
  };
  CHECK(log(1, "stdout", 0, "hello ") == Stored{"hello ", 6});
  CHECK(log(1, "stdout", 0, "hello ") == Stored{"", 6});          // all of it again
  CHECK(log(1, "stdout", 3, "lo world") == Stored{"world", 11});  // part of it again
  CHECK(log(1, "stdout", 20, "later") == Stored{"", 11});         // past a gap: waits
  {  // ... and the worker is told to send again from the end
    flatbuffers::FlatBufferBuilder fbb;
    std::string bytes = codec::Seal(fbb, wire::CreateTaskLog(fbb, wire::CreateTaskRef(fbb, 1, 1),
                                                             fbb.CreateString("stdout"), fbb.CreateString("x"), 30));
    h.engine().OnDirected(Harness::Address("w"), *wire::GetEnvelope(bytes.data()), h.now);
    Turn t = h.Commit();
    auto acks = t.To(Harness::Address("w"), wire::Body::TaskFinishedAck);
    REQUIRE(acks.size() == 1);
    REQUIRE(acks[0]->body_as_TaskFinishedAck()->output()->size() == 1);
    CHECK(acks[0]->body_as_TaskFinishedAck()->output()->Get(0)->behind());
    CHECK(acks[0]->body_as_TaskFinishedAck()->output()->Get(0)->end() == 11);
  }
  CHECK(log(1, "stderr", 0, "E") == Stored{"E", 1});  // streams apart
  // The stored ends are in the task's record: a restarted scheduler cuts the same way.
  h.Restart();
  h.Register({"w", {}}, {{1, 1}});
  CHECK(log(1, "stdout", 6, "world!") == Stored{"!", 12});
  // Attempt 1 fails and is retried: its late output is let go (the largest end), and
  // attempt 2's output starts at 0.
  h.Finished(1, 1, "w", wire::Outcome::Failed, 1);
  CHECK(log(1, "stdout", 12, "late") == Stored{"", UINT64_MAX});
  h.Tick(10);
  h.Started(1, 2, "w");
  CHECK(log(2, "stdout", 0, "two") == Stored{"two", 3});
}

TEST_CASE(
    "task output is retained apart: a task printing far past the log retention drops its oldest output, never "
    "another event, and replay merges the two in seq order",
    "[unit]") {
  EngineOptions options;
  options.event_retention_count = 1000;
  options.log_retention_bytes = 1 << 20;
  options.replay_batch = 10000;
  Harness h(options);
  h.Register({"w", {}});
  h.Submit({NewTask()});
  h.Started(1, 1, "w");
  const std::string piece(64 << 10, 'x');
  for (int i = 0; i < 64; ++i) {  // 4 MiB of output, one piece a turn
    flatbuffers::FlatBufferBuilder fbb;
    auto ref = wire::CreateTaskRef(fbb, 1, 1);
    std::string bytes =
        codec::Seal(fbb, wire::CreateTaskLog(fbb, ref, fbb.CreateString("stdout"), fbb.CreateString(piece)));
    h.engine().OnDirected(Harness::Address("w"), *wire::GetEnvelope(bytes.data()), h.now);
    h.Commit();
  }
  h.Finished(1, 1, "w", wire::Outcome::Succeeded);
  {  // Output is acknowledged to its worker, bytes taken, for its flow control.
    flatbuffers::FlatBufferBuilder fbb;
    auto ref = wire::CreateTaskRef(fbb, 1, 1);
    std::string bytes =
        codec::Seal(fbb, wire::CreateTaskLog(fbb, ref, fbb.CreateString("stdout"), fbb.CreateString("late line")));
    h.engine().OnDirected(Harness::Address("w"), *wire::GetEnvelope(bytes.data()), h.now);
    Turn t = h.Commit();
    auto acks = t.To(Harness::Address("w"), wire::Body::TaskFinishedAck);
    REQUIRE(acks.size() == 1);
    CHECK(acks[0]->body_as_TaskFinishedAck()->output_bytes() == 9);  // even for an ended attempt
  }
  h.Tick(200);
  std::deque<Turn> kept;
  std::vector<std::string> types;
  std::vector<uint64_t> seqs;
  size_t log_bytes = 0;
  for (uint64_t since = 1;;) {
    const auto* batch = h.Replay(since, &kept);
    REQUIRE(batch->error() == nullptr);
    for (const auto* e : *batch->events()) {
      types.push_back(e->type()->str());
      seqs.push_back(e->seq());
      if (types.back() == "task.log") log_bytes += e->data()->size();
      since = e->seq() + 1;
    }
    if (batch->done()) break;
  }
  // Every event but output from the first one on, in order; the output cut to its retention.
  CHECK(seqs.front() == 1);
  CHECK(std::is_sorted(seqs.begin(), seqs.end()));
  for (const char* type :
       {"scheduler.started", "worker.registered", "task.submitted", "task.started", "task.succeeded"}) {
    CHECK(std::count(types.begin(), types.end(), type) == 1);
  }
  CHECK(log_bytes > (512u << 10));
  CHECK(log_bytes <= (1u << 20));
  CHECK(types.back() == "task.succeeded");
  // After a restart what is stored is read back from the index, not from the blocks.
  const uint64_t events = h.engine().stored_events(), bytes = h.engine().stored_log_bytes();
  CHECK(events == types.size() - std::count(types.begin(), types.end(), "task.log"));
  CHECK(bytes <= (1u << 20) + 4096);
  h.Restart(options);
  CHECK(h.engine().stored_log_bytes() == bytes);
  CHECK(h.engine().stored_events() == events + 1);  // and its own scheduler.started
}

TEST_CASE(
    "replay reads events stored one per record (stores from before event blocks) and blocks alike, from any "
    "sequence, in batches",
    "[unit]") {
  EngineOptions options;
  options.replay_batch = 4;
  Harness h(options);  // scheduler.started: seq 1, stored as a block
  // Events as a store written before blocks holds them: e/<seq> -> Envelope(Event).
  store::WriteBatch old;
  for (uint64_t seq = 2; seq <= 4; ++seq) {
    flatbuffers::FlatBufferBuilder fbb;
    auto e = wire::CreateEvent(fbb, seq, fbb.CreateString("task.submitted"), fbb.CreateString("then"),
                               fbb.CreateString("t" + std::to_string(seq)));
    old.Put(store::keys::Event(seq), codec::Seal(fbb, e));
  }
  old.Put(std::string(store::keys::kMetaNextSeq), store::keys::EncodeU64(5));
  // ... and without the block index (E/), which came later.
  old.DeleteRange(store::keys::kEventIndexPrefix, store::keys::PrefixEnd(store::keys::kEventIndexPrefix));
  REQUIRE(h.store().Write(old, true).ok());
  h.Restart(options);  // scheduler.started: seq 5
  h.Register({"w", {}});
  h.Submit({NewTask(), NewTask(), NewTask()});  // submitted x3 + queued x3 in one block

  uint64_t correlation = 0;
  std::deque<Turn> kept;  // the batches point into their turn's messages
  auto replay = [&](uint64_t since) {
    const auto* batch = h.Replay(since, &kept, ++correlation);
    REQUIRE(batch->error() == nullptr);
    return batch;
  };
  // Follow the stream the way fm-tap does, from the middle of the old records on.
  std::vector<uint64_t> seqs;
  std::vector<std::string> types;
  uint64_t since = 3;
  for (int rounds = 0; rounds < 10; ++rounds) {
    const auto* batch = replay(since);
    for (const auto* e : *batch->events()) {
      seqs.push_back(e->seq());
      types.push_back(e->type()->str());
      since = e->seq() + 1;
    }
    if (batch->done()) break;
  }
  std::vector<uint64_t> expected;
  for (uint64_t seq = 3; seq < h.engine().next_seq(); ++seq) expected.push_back(seq);
  CHECK(seqs == expected);
  REQUIRE(types.size() >= 4);
  CHECK(types[0] == "task.submitted");  // an old record
  CHECK(types[2] == "scheduler.started");
  CHECK(types[3] == "worker.registered");
  // The old records were indexed at the restart, and the index counts every event since
  // (also the first turn's, written with the rebuilt index): another restart reads it.
  const uint64_t stored = h.engine().next_seq() - 1;  // seq 1..next-1
  CHECK(h.engine().stored_events() == stored);
  h.Restart(options);
  CHECK(h.engine().stored_events() == stored + 1);  // and the new scheduler.started

  // A replay from inside the last block starts at that event, not at the block's first.
  uint64_t last = h.engine().next_seq() - 1;
  const auto* tail = replay(last);
  REQUIRE(tail->events()->size() == 1);
  CHECK(tail->events()->Get(0)->seq() == last);
  CHECK(tail->done());
}

TEST_CASE("every event's time names the same instant as its time_ms, within a second and across seconds", "[unit]") {
  Harness h;
  h.Register({"w", {}});
  std::vector<std::pair<std::string, uint64_t>> seen;
  for (uint64_t step : {0, 7, 993, 1, 1000, 59'999}) {
    h.now += step;
    Turn t = h.Submit({NewTask()});
    for (const auto* e : t.Events("task.submitted")) seen.push_back({e->time()->str(), e->time_ms()});
  }
  REQUIRE(seen.size() == 6);
  for (const auto& [time, ms] : seen) CHECK(time == FormatTimeMs(ms));
}

TEST_CASE("fm-ctl tasks comes in pages bounded in count and bytes, filtered by state and worker", "[unit]") {
  Harness h;
  h.Register({"w", {}, 4, 8 * GiB, 1});
  std::vector<TaskSpec> many(2500, NewTask());
  h.Submit(many);  // one queued on "w", the rest pending
  std::deque<Turn> kept;
  auto page = [&](uint64_t after, uint32_t limit, const char* state, const char* worker) {
    flatbuffers::FlatBufferBuilder fbb;
    std::string bytes = codec::Seal(
        fbb, wire::CreateControlRequestDirect(fbb, wire::ControlOp::Tasks, nullptr, 1, after, limit, state, worker));
    h.engine().OnDirected("ctl", *wire::GetEnvelope(bytes.data()), h.now);
    const Turn& t = kept.emplace_back(h.Commit());
    auto replies = t.To("ctl", wire::Body::ControlReply);
    REQUIRE(replies.size() == 1);
    REQUIRE(t.directed.front().payload.size() < (2u << 20));
    return replies[0]->body_as_ControlReply();
  };
  std::vector<std::string> ids;
  uint64_t after = 0;
  int pages = 0;
  do {
    const auto* r = page(after, 0, nullptr, nullptr);
    for (const auto* t : *r->tasks()) ids.push_back(t->task()->str());
    after = r->next();
    ++pages;
  } while (after != 0 && pages < 10);
  CHECK(pages == 3);
  REQUIRE(ids.size() == 2500);
  CHECK(ids.front() == "t1");
  CHECK(ids.back() == "t2500");
  CHECK(page(0, 10, "pending", nullptr)->tasks()->size() == 10);
  const auto* on_w = page(0, 0, nullptr, "w");
  REQUIRE(on_w->tasks()->size() == 1);
  CHECK(on_w->tasks()->Get(0)->task()->str() == "t1");
  CHECK(on_w->next() == 0);
}

TEST_CASE("fm-ctl task shows a task's spec, why it waits, and its events", "[unit]") {
  Harness h;
  h.Register({"w", {}, 4, 8 * GiB, 1});
  h.Submit({NewTask(), NewTask()});
  std::deque<Turn> kept;
  auto detail = [&](const char* name) {
    flatbuffers::FlatBufferBuilder fbb;
    std::string bytes = codec::Seal(fbb, wire::CreateControlRequestDirect(fbb, wire::ControlOp::Task, name, 1));
    h.engine().OnDirected("ctl", *wire::GetEnvelope(bytes.data()), h.now);
    const Turn& t = kept.emplace_back(h.Commit());
    return t.To("ctl", wire::Body::ControlReply).at(0)->body_as_ControlReply();
  };
  const auto* waiting = detail("t2");
  REQUIRE(waiting->ok());
  CHECK(waiting->tasks()->Get(0)->waiting()->str() == "1 eligible, all full");
  CHECK(waiting->tasks()->Get(0)->spec()->command()->Get(0)->str() == "true");
  h.Finished(1, 1, "w", wire::Outcome::Succeeded);
  const auto* ended = detail("t1");
  REQUIRE(ended->events() != nullptr);
  std::vector<std::string> types;
  for (const auto* e : *ended->events()) types.push_back(e->type()->str());
  CHECK(types == std::vector<std::string>{"task.submitted", "task.queued", "task.succeeded"});
  CHECK_FALSE(detail("t99")->ok());
}

TEST_CASE("a scheduler paused past the liveness window loses no worker: everyone gets a fresh window", "[unit]") {
  EngineOptions options;
  options.liveness_window_ms = 2000;
  Harness h(options);
  h.Register({"a", {}});
  h.Register({"b", {}});
  uint64_t id = OnlyResult(h.Submit({NewTask()}))->task();
  // Paused for 3.5 s: the heartbeats sent meanwhile are not even read yet.
  Turn t = h.TickOnce(3500);
  CHECK(t.Events("worker.lost").empty());
  CHECK(h.engine().self_silences() == 1);
  REQUIRE(h.engine().active_task(id) != nullptr);
  CHECK(h.engine().active_task(id)->attempt == 1);
  // A worker that really is silent is still lost after a window, while the other talks.
  for (int i = 0; i < 5; ++i) {
    h.Heartbeat("b", {});
    t = h.Tick(500);
  }
  CHECK(h.engine().worker("a") == nullptr);
  CHECK(h.engine().worker("b") != nullptr);
}

TEST_CASE("when most of the fleet goes silent while nothing reaches the scheduler, losses wait until it hears again",
          "[unit]") {
  EngineOptions options;
  options.liveness_window_ms = 1000;
  Harness h(options);
  for (const char* id : {"a", "b", "c"}) h.Register({id, {}});
  // The broker link is down: no heartbeat from anyone, the scheduler's loop runs on.
  Turn t = h.Tick(3000);
  CHECK(t.Events("worker.lost").empty());
  CHECK(h.engine().self_silences() == 1);
  // Heard again: a fresh window for everyone, then the truly silent are lost.
  h.Heartbeat("a", {});
  t = h.Tick(300);
  CHECK(t.Events("worker.lost").empty());
  for (int i = 0; i < 6; ++i) {
    h.Heartbeat("a", {});
    t = h.Tick(300);
  }
  CHECK(h.engine().worker("a") != nullptr);
  CHECK(h.engine().worker("b") == nullptr);
  CHECK(h.engine().worker("c") == nullptr);
}

TEST_CASE("a worker restarted on its node takes over its id at once, its old instance's tasks are placed again",
          "[unit]") {
  Harness h;
  h.Register({"w", {}, 4, 8 * GiB, 1, {}, 111});
  uint64_t id = OnlyResult(h.Submit({NewTask()}))->task();
  h.Started(id, 1, "w");
  Turn t = h.Register({"w", {}, 4, 8 * GiB, 1, {}, 222});  // same node, new instance
  CHECK(t.To(Harness::Address("w", 222), wire::Body::WorkerRejected).empty());
  CHECK(t.To(Harness::Address("w", 111), wire::Body::WorkerRejected).size() == 1);  // should it still run
  CHECK(h.engine().worker("w")->instance == 222);
  REQUIRE(t.Events("task.retrying").size() == 1);
  CHECK(t.Dispatched(Harness::Address("w", 222)) == std::vector<uint64_t>{id});
  CHECK(h.engine().active_task(id)->attempt == 2);
  // The replaced instance speaking again does not take the id back.
  t = h.Register({"w", {}, 4, 8 * GiB, 1, {}, 111});
  CHECK(t.To(Harness::Address("w", 111), wire::Body::WorkerRejected).size() == 1);
  CHECK(h.engine().worker("w")->instance == 222);
}

TEST_CASE(
    "tasks only a lost worker could run wait through the reconnect grace, then fail, impossible ones fail at once",
    "[unit]") {
  EngineOptions options;
  options.liveness_window_ms = 1000;
  options.reconnect_grace_ms = 5000;
  Harness h(options);
  h.Register({"gpu", {"gpu"}, 4, 8 * GiB, 1});
  h.Register({"cpu", {}, 4, 8 * GiB, 1});
  uint64_t running = OnlyResult(h.Submit({NewTask({"gpu"})}))->task();
  Turn t;
  for (int i = 0; i < 5; ++i) {  // "gpu" goes silent; "cpu" heartbeats
    h.Heartbeat("cpu", {});
    t = h.Tick(300);
    if (!t.Events("worker.lost").empty()) break;
  }
  REQUIRE(h.engine().worker("gpu") == nullptr);
  CHECK(t.Events("task.failed").empty());
  auto waiting = t.Events("task.waiting");
  REQUIRE(waiting.size() == 1);
  CHECK_THAT(waiting[0]->message()->str(), Catch::StartsWith("waiting: 1 eligible worker lost 0 s ago"));
  // During the grace a task for the lost worker is accepted; one nobody could run is not.
  const auto* accepted = OnlyResult(h.Submit({NewTask({"gpu"})}));
  CHECK(accepted->status() == wire::SubmitStatus::Accepted);
  CHECK(OnlyResult(h.Submit({NewTask({"tpu"})}))->reason()->str() == "no_eligible_worker");
  // The grace ends: both fail as before.
  std::vector<const wire::Event*> failed;
  std::deque<Turn> kept;
  for (int i = 0; i < 20 && failed.size() < 2; ++i) {
    h.Heartbeat("cpu", {});
    const Turn& turn = kept.emplace_back(h.Tick(300));
    for (const auto* e : turn.Events("task.failed")) failed.push_back(e);
  }
  REQUIRE(failed.size() == 2);
  for (const auto* e : failed) CHECK(e->reason()->str() == "no_eligible_worker");
  CHECK(h.engine().active_task(running) == nullptr);
}

TEST_CASE("a lost worker back within the reconnect grace runs the tasks that waited for it", "[unit]") {
  EngineOptions options;
  options.liveness_window_ms = 1000;
  options.reconnect_grace_ms = 30000;
  Harness h(options);
  h.Register({"gpu", {"gpu"}, 4, 8 * GiB, 1});
  h.Register({"cpu", {}, 4, 8 * GiB, 1});
  uint64_t id = OnlyResult(h.Submit({NewTask({"gpu"})}))->task();
  for (int i = 0; i < 10; ++i) {
    h.Heartbeat("cpu", {});
    h.Tick(300);
  }
  REQUIRE(h.engine().worker("gpu") == nullptr);
  REQUIRE(h.engine().active_task(id) != nullptr);
  Turn t = h.Register({"gpu", {"gpu"}, 4, 8 * GiB, 1, {}, 2});
  CHECK(t.Dispatched(Harness::Address("gpu", 2)) == std::vector<uint64_t>{id});
}

TEST_CASE(
    "ended tasks and their submission keys are deleted past the task retention count and age, oldest first, and the "
    "count survives a restart",
    "[unit]") {
  EngineOptions options;
  options.task_retention_count = 5;
  options.task_retention_age_ms = 60'000;
  Harness h(options);
  h.Register({"w", {}, 16, 8 * GiB, 16});
  for (int i = 1; i <= 10; ++i) {
    TaskSpec spec = NewTask();
    spec.key = "k" + std::to_string(i);
    h.Submit({spec});
  }
  for (uint64_t id = 1; id <= 10; ++id) {
    h.Started(id, 1, "w");
    h.Finished(id, 1, "w", wire::Outcome::Succeeded);
  }
  CHECK(h.engine().stored_ended_tasks() == 10);
  h.Tick(100);
  CHECK(h.engine().stored_ended_tasks() == 5);
  CHECK(h.engine().tasks_trimmed() == 5);
  auto present = [&](uint64_t id) { return h.store().Get(store::keys::Task(id))->has_value(); };
  auto keyed = [&](const std::string& key) { return h.store().Get(store::keys::ClientKey(key))->has_value(); };
  for (uint64_t id = 1; id <= 5; ++id) CHECK_FALSE(present(id));
  for (uint64_t id = 6; id <= 10; ++id) CHECK(present(id));
  CHECK_FALSE(keyed("k1"));
  CHECK(keyed("k6"));
  // A deleted key is free again: a new task. A kept one still answers with its task.
  TaskSpec again = NewTask();
  again.key = "k1";
  CHECK(OnlyResult(h.Submit({again}))->task() == 11);
  again.key = "k6";
  CHECK(OnlyResult(h.Submit({again}))->task() == 6);

  h.Restart(options);
  CHECK(h.engine().stored_ended_tasks() == 5);
  // Age: a minute later the tasks that ended before are gone; task 11, which ended in
  // that minute (its worker never came back after the restart), stays with its key.
  h.Tick(61'000);
  CHECK(h.engine().stored_ended_tasks() == 1);
  for (uint64_t id = 6; id <= 10; ++id) CHECK_FALSE(present(id));
  CHECK(present(11));
  CHECK(keyed("k1"));
}

TEST_CASE("a task that ends after the retention passed its id is still deleted first, not a newer one in its place",
          "[unit]") {
  EngineOptions options;
  options.task_retention_count = 5;
  Harness h(options);
  h.Register({"w", {}, 16, 8 * GiB, 16});
  for (int i = 1; i <= 10; ++i) h.Submit({NewTask()});
  for (uint64_t id = 1; id <= 10; ++id) h.Started(id, 1, "w");
  for (uint64_t id = 2; id <= 10; ++id) h.Finished(id, 1, "w", wire::Outcome::Succeeded);
  h.Tick(100);
  auto present = [&](uint64_t id) { return h.store().Get(store::keys::Task(id))->has_value(); };
  CHECK(h.engine().stored_ended_tasks() == 5);
  CHECK_FALSE(present(5));
  CHECK(present(6));
  // Task 1 ran long: it ends below where the retention got to, and is the oldest.
  h.Finished(1, 1, "w", wire::Outcome::Succeeded);
  h.Tick(100);
  CHECK(h.engine().stored_ended_tasks() == 5);
  CHECK_FALSE(present(1));
  for (uint64_t id = 6; id <= 10; ++id) CHECK(present(id));
}

TEST_CASE("the retry delay doubles per attempt from retry_backoff, jittered within a quarter, and is capped",
          "[unit]") {
  TaskSpec spec = NewTask();
  for (uint64_t task = 1; task <= 50; ++task) {
    CHECK(RetryDelayMs(spec, task, 1) >= 750);
    CHECK(RetryDelayMs(spec, task, 1) <= 1250);
    CHECK(RetryDelayMs(spec, task, 3) >= 3000);
    CHECK(RetryDelayMs(spec, task, 3) <= 5000);
    CHECK(RetryDelayMs(spec, task, 40) <= kMaxRetryDelayMs * 5 / 4);
  }
  spec.retry_backoff_ms = 100;
  CHECK(RetryDelayMs(spec, 7, 2) >= 150);
  CHECK(RetryDelayMs(spec, 7, 2) <= 250);
  // Jitter spreads a burst: fifty tasks failing together do not all come back at once.
  std::set<uint64_t> delays;
  for (uint64_t task = 1; task <= 50; ++task) delays.insert(RetryDelayMs(spec, task, 1));
  CHECK(delays.size() > 25);
}

TEST_CASE(
    "a listed exit status retries after its backoff on a worker that has not failed the task, waiting for one to free "
    "up, an unlisted one fails the task",
    "[unit]") {
  Harness h;
  h.Register({"a", {}, 4, 8 * GiB, 1});
  h.Register({"b", {}, 4, 8 * GiB, 1});
  TaskSpec spec = NewTask();
  spec.retry_exit_codes = {3};
  spec.retry_backoff_ms = 1000;
  Turn first = h.Submit({spec});
  std::string failed_on = first.Dispatched(Harness::Address("a")).empty() ? "b" : "a";
  std::string other = failed_on == "a" ? "b" : "a";
  // The other worker is busy with a task of its own.
  TaskSpec busy = NewTask();
  Turn second = h.Submit({busy});
  CHECK(second.Dispatched(Harness::Address(other)) == std::vector<uint64_t>{2});
  h.Started(1, 1, failed_on);
  Turn failed = h.Finished(1, 1, failed_on, wire::Outcome::Failed, 3);
  auto retrying = failed.Events("task.retrying");
  REQUIRE(retrying.size() == 1);
  CHECK_THAT(retrying[0]->message()->str(), Catch::Contains("(in retry_exit_codes)") && Catch::Contains("retry in") &&
                                                Catch::Contains("avoiding " + failed_on));
  CHECK(failed.Dispatched(Harness::Address(failed_on)).empty());
  // Past the backoff it waits for the busy worker, though the one that failed it is free.
  Turn later = h.Tick(1500);
  CHECK(later.Dispatched(Harness::Address(failed_on)).empty());
  CHECK(later.Dispatched(Harness::Address(other)).empty());
  h.Started(2, 1, other);
  Turn freed = h.Finished(2, 1, other, wire::Outcome::Succeeded);
  CHECK(freed.Dispatched(Harness::Address(other)) == std::vector<uint64_t>{1});
  // A status not listed fails it at once.
  h.Started(1, 2, other);
  Turn end = h.Finished(1, 2, other, wire::Outcome::Failed, 4);
  CHECK(end.Events("task.failed").size() == 1);
  CHECK(end.Events("task.retrying").empty());
}

TEST_CASE("a retry goes back to a worker that failed it when no other could ever run it", "[unit]") {
  Harness h;
  h.Register({"only", {}, 4, 8 * GiB, 1});
  TaskSpec spec = NewTask();
  spec.retry_exit_codes = {3};
  spec.retry_backoff_ms = 100;
  h.Submit({spec});
  h.Started(1, 1, "only");
  h.Finished(1, 1, "only", wire::Outcome::Failed, 3);
  Turn again = h.Tick(300);
  CHECK(again.Dispatched(Harness::Address("only")) == std::vector<uint64_t>{1});
}

TEST_CASE("a quarantined capability is withdrawn with its reason, counted as such, and comes back on recovery",
          "[unit]") {
  Harness h;
  h.Register({"broken", {"docker"}});
  h.Register({"plain", {}});
  Turn t = h.Heartbeat("broken", {}, 1, {{"docker", "docker start failed 3x in a row: OCI runtime error"}});
  auto q = t.Events("worker.quarantined");
  REQUIRE(q.size() == 1);
  CHECK(q[0]->worker()->str() == "broken");
  CHECK(q[0]->message()->str() == "capability docker withdrawn: docker start failed 3x in a row: OCI runtime error");
  CHECK(t.Events("worker.updated").empty());  // the quarantine says it all
  CHECK(h.engine().worker("broken")->quarantined.count("docker") == 1);
  // A docker task now: the breakdown says why the broken worker cannot take it.
  const auto* r = OnlyResult(h.Submit({NewTask({"docker"})}));
  CHECK(r->status() == wire::SubmitStatus::Rejected);
  CHECK(r->message()->str() ==
        "0/2 workers eligible: 1 lacks capability docker, 1 quarantined: docker start failed 3x in a row: OCI runtime "
        "error");
  // The same heartbeat again changes nothing.
  t = h.Heartbeat("broken", {}, 1, {{"docker", "docker start failed 3x in a row: OCI runtime error"}});
  CHECK(t.Events("worker.quarantined").empty());
  // Recovered: announced again, and a docker task runs there.
  t = h.Heartbeat("broken", {"docker"});
  auto back = t.Events("worker.recovered");
  REQUIRE(back.size() == 1);
  CHECK_THAT(back[0]->message()->str(), Catch::Contains("capability docker announced again"));
  r = OnlyResult(h.Submit({NewTask({"docker"})}));
  CHECK(r->status() == wire::SubmitStatus::Accepted);
}

TEST_CASE("the GPUs a worker gave an attempt are in task.started and stored with the task", "[unit]") {
  Harness h;
  WorkerSpec w{"g", {}};
  w.gpus = {{"Tesla T4", 16 * GiB, "GPU-1"}, {"Tesla T4", 16 * GiB, "GPU-2"}};
  h.Register(w);
  Resources two;
  two.gpus = 2;
  uint64_t id = OnlyResult(h.Submit({NewTask({}, two)}))->task();
  Turn t = h.StartedWith(id, 1, "g", {"GPU-1", "GPU-2", "GPU-3"});  // never more than it asked for
  auto started = t.Events("task.started");
  REQUIRE(started.size() == 1);
  REQUIRE(started[0]->gpus());
  CHECK(codec::Strings(started[0]->gpus()) == std::vector<std::string>{"GPU-1", "GPU-2"});
  CHECK(h.engine().active_task(id)->gpus == std::vector<std::string>{"GPU-1", "GPU-2"});
  h.Restart();
  CHECK(h.engine().active_task(id)->gpus == std::vector<std::string>{"GPU-1", "GPU-2"});
}

TEST_CASE("a session needs capability session, says where it answers, and is never re-run when its worker is lost",
          "[unit]") {
  EngineOptions options;
  options.liveness_window_ms = 1000;
  options.reconnect_grace_ms = 0;
  Harness h(options);
  h.Register({"plain", {"docker"}});
  TaskSpec session = NewTask();
  session.command.clear();
  session.session = SessionSpec{{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB key"}, 0, 0};
  const auto* r = OnlyResult(h.Submit({session}));
  CHECK(r->status() == wire::SubmitStatus::Rejected);
  CHECK(r->message()->str() == "0/1 workers eligible: 1 lacks capability session");

  h.Register({"s", {"docker", "session"}});
  h.Register({"s2", {"docker", "session"}});
  Turn t = h.Submit({session}, /*watch=*/true);
  uint64_t id = OnlyResult(t)->task();
  std::string on = t.Dispatched(Harness::Address("s")).empty() ? "s2" : "s";
  std::string other = on == "s" ? "s2" : "s";
  h.Started(id, 1, on);
  t = h.Ready(id, 1, on, {"gpu-07.example", 40022, "fm"});
  auto ready = t.Events("task.ready");
  REQUIRE(ready.size() == 1);
  REQUIRE(ready[0]->endpoint());
  CHECK(ready[0]->endpoint()->port() == 40022);
  CHECK(ready[0]->message()->str() == "ssh -p 40022 fm@gpu-07.example");
  CHECK(t.To("client", wire::Body::TaskReady).size() == 1);  // the watching submitter is told
  CHECK(h.engine().active_task(id)->endpoint.host == "gpu-07.example");
  // Said again (a re-registration): nothing new.
  CHECK(h.Ready(id, 1, on, {"gpu-07.example", 40022, "fm"}).Events("task.ready").empty());
  // From another worker: refused.
  CHECK(h.Ready(id, 1, other, {"evil.example", 22, "fm"}).Events("task.ready").empty());
  CHECK(h.engine().active_task(id)->endpoint.host == "gpu-07.example");

  // Its worker is lost: the session fails, and is not placed on the other capable worker.
  for (int i = 0; i < 12; ++i) {
    h.Heartbeat(other, {"docker", "session"});
    t = h.Tick(100);
    if (!t.Events("task.failed").empty()) break;
  }
  auto failed = t.Events("task.failed");
  REQUIRE(failed.size() == 1);
  CHECK(failed[0]->reason()->str() == "worker_lost");
  CHECK_THAT(failed[0]->message()->str(), Catch::Contains("a session is never re-run elsewhere"));
  CHECK(t.To(Harness::Address(other), wire::Body::Dispatch).empty());
}

TEST_CASE("a store that cannot read a trimmed task's key is a read error, never taken for a key that is not there",
          "[unit]") {
  EngineOptions options;
  options.task_retention_count = 1;
  Harness h(options);
  h.Register({"w", {}, 16, 8 * GiB, 16});
  for (int i = 1; i <= 3; ++i) {
    TaskSpec spec = NewTask();
    spec.key = "k" + std::to_string(i);
    h.Submit({spec});
  }
  for (uint64_t id = 1; id <= 3; ++id) {
    h.Started(id, 1, "w");
    h.Finished(id, 1, "w", wire::Outcome::Succeeded);
  }
  REQUIRE(h.engine().TakeReadError().ok());
  h.faults().FailGetsOf(std::string(store::keys::kClientKeyPrefix), "disk read error");
  h.Tick(100);
  Status read = h.engine().TakeReadError();
  CHECK_FALSE(read.ok());
  CHECK_THAT(read.message(), Catch::Contains("disk read error"));
}
