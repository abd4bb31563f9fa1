// The worker's decisions without sockets or processes: dispatches, cancels, results
// and acknowledgements as bytes in, the outbox out, attempts through an executor whose
// runs end when the test says so.
#include <catch2/catch.hpp>
#include <map>
#include <set>

#include "schemas/codec.h"
#include "worker/core.h"

using namespace fm;
using namespace fm::worker;

namespace {

// Holds every started attempt until the test ends it; records what was asked.
class HeldExecutor final : public Executor {
 public:
  std::vector<Ref> started, cancelled;
  std::vector<bool> paused;  // each PauseOutput call
  void Start(const Ref& ref, const TaskSpec&) override { started.push_back(ref); }
  void Cancel(const Ref& ref) override { cancelled.push_back(ref); }
  void PauseOutput(bool p) override { paused.push_back(p); }
};

struct Fixture {
  HeldExecutor executor;
  WorkerCore core;
  uint64_t now = 1'000'000;

  explicit Fixture(uint32_t slots = 1, WorkerCoreOptions options = {}) : core(Identity(slots), options) {
    core.SetExecutor(&executor);
  }

  static WorkerIdentity Identity(uint32_t slots) {
    WorkerIdentity id;
    id.id = "pw1";
    id.address = "w/pw1/1";
    id.slots = slots;
    return id;
  }

  void Dispatch(uint64_t task, uint32_t attempt, std::vector<std::string> command = {"sleep", "6"},
                const std::string& from = "fm-scheduler") {
    flatbuffers::FlatBufferBuilder fbb;
    TaskSpec spec;
    spec.command = std::move(command);
    std::vector<flatbuffers::Offset<wire::Assignment>> a{
        wire::CreateAssignment(fbb, task, attempt, codec::ToWire(fbb, spec))};
    std::string bytes = codec::Seal(fbb, wire::CreateDispatch(fbb, fbb.CreateVector(a)));
    core.OnDirected(from, bytes.data(), bytes.size(), now);
  }
  void Ack(uint64_t task, uint32_t attempt) {
    flatbuffers::FlatBufferBuilder fbb;
    std::vector<flatbuffers::Offset<wire::TaskRef>> refs{wire::CreateTaskRef(fbb, task, attempt)};
    std::string bytes = codec::Seal(fbb, wire::CreateTaskFinishedAck(fbb, 0, fbb.CreateVector(refs)));
    core.OnDirected("fm-scheduler", bytes.data(), bytes.size(), now);
  }

  // The turn's report: (started, finished with outcome).
  struct Report {
    std::vector<Ref> started;
    std::vector<std::pair<Ref, wire::Outcome>> finished;
    std::vector<std::string> messages;
  };
  Report EndTurn() {
    Report r;
    WorkerOutbox out = core.EndTurn();
    for (const auto& payload : out.to_scheduler) {
      const auto* env = wire::GetEnvelope(payload.data());
      if (env->body_type() != wire::Body::WorkerReport) continue;
      const auto* rep = env->body_as_WorkerReport();
      for (const auto* s : *rep->started()) r.started.push_back({s->task(), s->attempt()});
      for (const auto* f : *rep->finished()) {
        r.finished.push_back({{f->ref()->task(), f->ref()->attempt()}, f->outcome()});
        r.messages.push_back(codec::Str(f->message()));
      }
    }
    return r;
  }
};

}  // namespace

TEST_CASE(
    "a newer attempt of a task whose old attempt is still exiting takes its slot, and the old end touches only itself",
    "[unit]") {
  Fixture f(/*slots=*/1);
  f.Dispatch(7, 1);
  REQUIRE(f.EndTurn().started == std::vector<Ref>{{7, 1}});
  // Cut off past its liveness window, the worker comes back: the scheduler re-placed
  // the task here as attempt 2 while attempt 1 still runs.
  f.Dispatch(7, 2);
  Fixture::Report r = f.EndTurn();
  CHECK(r.started == std::vector<Ref>{{7, 2}});  // not "no free slot"
  CHECK(r.finished.empty());
  CHECK(f.executor.cancelled == std::vector<Ref>{{7, 1}});
  CHECK(f.core.slots_in_use() == 1);
  // Attempt 1 ends (killed): attempt 2 still runs and holds the slot.
  f.core.OnRunEnded({7, 1}, {wire::Outcome::Cancelled, 0, "cancelled"});
  CHECK(f.core.running({7, 2}));
  CHECK(f.core.slots_in_use() == 1);
  r = f.EndTurn();
  REQUIRE(r.finished.size() == 1);
  CHECK(r.finished[0].first == Ref{7, 1});
  f.Ack(7, 1);
  // A late delivery of attempt 1 does not start it again.
  f.Dispatch(7, 1);
  CHECK(f.executor.started.size() == 2);
  f.core.OnRunEnded({7, 2}, {});
  r = f.EndTurn();
  REQUIRE(r.finished.size() == 1);
  CHECK(r.finished[0] == std::make_pair(Ref{7, 2}, wire::Outcome::Succeeded));
  CHECK(f.core.slots_in_use() == 0);
}

TEST_CASE("a result is re-sent until acknowledged, and deliveries after the acknowledgement are dropped", "[unit]") {
  Fixture f;
  f.Dispatch(1, 1, {"true"});
  f.core.OnRunEnded({1, 1}, {});
  CHECK(f.EndTurn().finished.size() == 1);
  f.core.Tick(f.now + 500);
  CHECK(f.EndTurn().finished.empty());  // not yet due
  f.core.Tick(f.now + 1000);
  CHECK(f.EndTurn().finished.size() == 1);  // due again
  f.Dispatch(1, 1, {"true"});               // a duplicate delivery of a finished attempt: say so again
  CHECK(f.EndTurn().finished.size() == 1);
  f.Ack(1, 1);
  CHECK(f.core.unacknowledged() == 0);
  f.core.Tick(f.now + 5000);
  f.Dispatch(1, 1, {"true"});  // late duplicate: dropped, never run twice
  Fixture::Report r = f.EndTurn();
  CHECK(r.finished.empty());
  CHECK(r.started.empty());
  CHECK(f.executor.started.size() == 1);
}

TEST_CASE("a duplicate delivery of a running attempt is reported started again and not run twice", "[unit]") {
  Fixture f;
  f.Dispatch(3, 1);
  f.EndTurn();
  f.Dispatch(3, 1);
  CHECK(f.EndTurn().started == std::vector<Ref>{{3, 1}});
  CHECK(f.executor.started.size() == 1);
}

TEST_CASE("a dispatch the scheduler would refuse fails alone with invalid_task and never reaches an executor",
          "[unit]") {
  Fixture f(2);
  f.Dispatch(4, 1, {});  // {"command": []} once crashed the worker on a libuv assertion
  f.Dispatch(5, 1, {"true"});
  Fixture::Report r = f.EndTurn();
  REQUIRE(r.finished.size() == 1);
  CHECK(r.finished[0] == std::make_pair(Ref{4, 1}, wire::Outcome::Failed));
  CHECK_THAT(r.messages[0], Catch::StartsWith("invalid_task: command"));
  CHECK(f.executor.started == std::vector<Ref>{{5, 1}});
}

TEST_CASE("a worker acts only on commands from the scheduler", "[unit]") {
  Fixture f;
  f.Dispatch(9, 1, {"sh", "-c", "id; env"}, "c/attacker/1");
  CHECK(f.executor.started.empty());
  CHECK(f.core.dropped_not_from_scheduler() == 1);
  CHECK(f.EndTurn().started.empty());
}

TEST_CASE("a full worker answers retryable 'no free slot' and a cancelled attempt frees its slot at once", "[unit]") {
  Fixture f(1);
  f.Dispatch(1, 1);
  f.Dispatch(2, 1);
  Fixture::Report r = f.EndTurn();
  REQUIRE(r.finished.size() == 1);
  CHECK(r.finished[0] == std::make_pair(Ref{2, 1}, wire::Outcome::Retryable));
  flatbuffers::FlatBufferBuilder fbb;
  std::string cancel = codec::Seal(fbb, wire::CreateCancelTask(fbb, wire::CreateTaskRef(fbb, 1, 1)));
  f.core.OnDirected("fm-scheduler", cancel.data(), cancel.size(), f.now);
  CHECK(f.executor.cancelled == std::vector<Ref>{{1, 1}});
  CHECK(f.core.slots_in_use() == 0);
  f.Dispatch(2, 2);
  CHECK(f.EndTurn().started == std::vector<Ref>{{2, 2}});
}

TEST_CASE("a scheduler on a new store (epoch) makes the worker forget the old store's tasks, so reused ids run",
          "[unit]") {
  // Regression: a scheduler restarted on an empty data directory gave ids from t1 again
  // and workers dropped them as duplicates of tasks they had seen: stuck queued forever.
  Fixture f(2);
  auto dispatch = [&](uint64_t task, uint64_t epoch) {
    flatbuffers::FlatBufferBuilder fbb;
    TaskSpec spec;
    spec.command = {"true"};
    std::vector<flatbuffers::Offset<wire::Assignment>> a{
        wire::CreateAssignment(fbb, task, 1, codec::ToWire(fbb, spec))};
    std::string bytes = codec::Seal(fbb, wire::CreateDispatch(fbb, fbb.CreateVector(a), epoch));
    f.core.OnDirected("fm-scheduler", bytes.data(), bytes.size(), f.now);
  };
  dispatch(1, 111);
  f.core.OnRunEnded({1, 1}, {});
  f.Ack(1, 1);
  dispatch(2, 111);  // still running when the store is replaced
  f.EndTurn();
  dispatch(1, 222);  // the new store's t1: not a duplicate
  CHECK(f.executor.started == std::vector<Ref>{{1, 1}, {2, 1}, {1, 1}});
  CHECK(f.executor.cancelled == std::vector<Ref>{{2, 1}});
  CHECK(f.core.epoch() == 222);
  // The old store's t2 ends: its result means nothing to the new store and is not sent.
  f.core.OnRunEnded({2, 1}, {});
  Fixture::Report r = f.EndTurn();
  CHECK(r.finished.empty());
  CHECK(r.started == std::vector<Ref>{{1, 1}});
}

TEST_CASE("output that cuts a multibyte character between two reads is sent with the character whole", "[unit]") {
  Fixture f;
  f.Dispatch(1, 1, {"printf", "x"});
  f.EndTurn();
  std::vector<std::pair<std::string, std::string>> logs;
  auto turn = [&] {  // each read in a turn of its own: output of one turn is sent together
    for (const auto& payload : f.core.EndTurn().to_scheduler) {
      const auto* env = wire::GetEnvelope(payload.data());
      if (env->body_type() != wire::Body::TaskLog) continue;
      const auto* log = env->body_as_TaskLog();
      logs.push_back({log->stream()->str(), log->data()->str()});
    }
  };
  f.core.OnRunOutput({1, 1}, "stdout", "price: \xe2\x82");  // the euro sign, cut
  turn();
  f.core.OnRunOutput({1, 1}, "stdout", "\xac!\n");
  turn();
  f.core.OnRunOutput({1, 1}, "stderr", "oops \xc3");  // cut, and the run ends
  turn();
  f.core.OnRunEnded({1, 1}, {});
  turn();
  using Log = std::pair<std::string, std::string>;
  CHECK(logs == std::vector<Log>{
                    {"stdout", "price: "}, {"stdout", "\xe2\x82\xac!\n"}, {"stderr", "oops "}, {"stderr", "\xc3"}});
}

TEST_CASE("a chatty attempt's output is capped per attempt with one note, and its result says what was dropped",
          "[unit]") {
  WorkerCoreOptions options;
  options.max_output = 10;
  Fixture f(1, options);
  f.Dispatch(1, 1, {"yes"});
  f.EndTurn();
  f.core.OnRunOutput({1, 1}, "stdout", "0123456");
  f.core.OnRunOutput({1, 1}, "stdout", "789abcdef");  // 6 bytes over
  f.core.OnRunOutput({1, 1}, "stderr", "more");       // 4 more
  f.core.OnRunEnded({1, 1}, {});
  WorkerOutbox out = f.core.EndTurn();
  std::string kept, notes, message;
  for (const auto& payload : out.to_scheduler) {
    const auto* env = wire::GetEnvelope(payload.data());
    if (env->body_type() == wire::Body::TaskLog) {
      const auto* log = env->body_as_TaskLog();
      (log->stream()->str() == "fm" ? notes : kept) += log->data()->str();
    } else if (env->body_type() == wire::Body::WorkerReport) {
      message = env->body_as_WorkerReport()->finished()->Get(0)->message()->str();
    }
  }
  CHECK(kept == "0123456789");
  CHECK_THAT(notes, Catch::StartsWith("output truncated: this attempt wrote more than 10 B"));
  CHECK(message == "output truncated: 10 bytes over 10 B dropped");
}

TEST_CASE(
    "output is flow-controlled: past the window the executor stops reading until the scheduler acknowledges half, "
    "and lost acknowledgements reopen it after the stall time",
    "[unit]") {
  WorkerCoreOptions options;
  options.output_window = 100;
  options.output_stall_ms = 3000;
  Fixture f(1, options);
  f.Dispatch(1, 1, {"yes"});
  f.EndTurn();
  auto ack_output = [&](uint64_t bytes) {
    flatbuffers::FlatBufferBuilder fbb;
    std::string b = codec::Seal(fbb, wire::CreateTaskFinishedAck(fbb, 0, 0, bytes));
    f.core.OnDirected("fm-scheduler", b.data(), b.size(), f.now);
  };
  f.core.OnRunOutput({1, 1}, "stdout", std::string(60, 'a'));
  f.core.OnRunOutput({1, 1}, "stdout", std::string(40, 'b'));
  CHECK(f.executor.paused.empty());  // 100: at the window, not past it
  f.core.OnRunOutput({1, 1}, "stdout", "c");
  CHECK(f.executor.paused == std::vector<bool>{true});
  CHECK(f.core.output_unacknowledged() == 101);
  ack_output(40);  // 61 left: still over half
  CHECK(f.executor.paused == std::vector<bool>{true});
  ack_output(20);  // 41: open again
  CHECK(f.executor.paused == std::vector<bool>{true, false});
  // Acknowledgements that never come (a broker restart lost them): open after the stall.
  f.core.OnRunOutput({1, 1}, "stdout", std::string(100, 'd'));
  CHECK(f.executor.paused.back() == true);
  f.now += 2000;
  f.core.Tick(f.now);
  CHECK(f.executor.paused.back() == true);
  f.now += 1500;
  f.core.Tick(f.now);
  CHECK(f.executor.paused.back() == false);
  CHECK(f.core.output_unacknowledged() == 0);
  // Output acknowledged by someone else than the scheduler does not count.
  f.core.OnRunOutput({1, 1}, "stdout", std::string(150, 'e'));
  flatbuffers::FlatBufferBuilder fbb;
  std::string forged = codec::Seal(fbb, wire::CreateTaskFinishedAck(fbb, 0, 0, 150));
  f.core.OnDirected("client/x", forged.data(), forged.size(), f.now);
  CHECK(f.core.output_unacknowledged() == 150);
}

TEST_CASE("output the broker could not queue for the scheduler is said to be missing, once per attempt", "[unit]") {
  Fixture f(2);
  f.Dispatch(1, 1, {"yes"});
  f.Dispatch(2, 1, {"yes"});
  f.EndTurn();
  auto unreachable = [&](const std::string& about, const std::string& from) {
    std::string bytes = codec::EncodeError(wire::ErrorCode::Unreachable, "queue full", about);
    f.core.OnDirected(from, bytes.data(), bytes.size(), f.now);
  };
  unreachable("fm-scheduler", "fm-broker");
  unreachable("fm-scheduler", "fm-broker");  // said once
  unreachable("client/x", "fm-broker");      // not about the scheduler
  unreachable("fm-scheduler", "client/x");   // not from the broker
  std::map<uint64_t, int> notes;
  for (const auto& payload : f.core.EndTurn().to_scheduler) {
    const auto* env = wire::GetEnvelope(payload.data());
    if (env->body_type() != wire::Body::TaskLog) continue;
    const auto* log = env->body_as_TaskLog();
    CHECK(log->stream()->str() == "fm");
    CHECK_THAT(log->data()->str(), Catch::Contains("may be missing"));
    ++notes[log->ref()->task()];
  }
  CHECK(notes == std::map<uint64_t, int>{{1, 1}, {2, 1}});
}
