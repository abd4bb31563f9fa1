// The worker's decisions without sockets or processes: dispatches, cancels, results
// and acknowledgements as bytes in, the outbox out, attempts through an executor whose
// runs end when the test says so.
#include <catch2/catch.hpp>
#include <map>
#include <set>

#include "schemas/codec.h"
#include "worker/core.h"
#include "worker/gpus.h"

using namespace fm;
using namespace fm::worker;

namespace {

// Holds every started attempt until the test ends it; records what was asked.
class HeldExecutor final : public Executor {
 public:
  std::vector<Ref> started, cancelled;
  std::vector<Grant> grants;                                // of each Start
  std::vector<std::pair<std::string, std::string>> probes;  // capability, image
  std::vector<bool> paused;                                 // each PauseOutput call
  void Start(const Ref& ref, const TaskSpec&, const Grant& grant) override {
    started.push_back(ref);
    grants.push_back(grant);
  }
  void Probe(const std::string& capability, const std::string& image) override {
    probes.emplace_back(capability, image);
  }
  void Cancel(const Ref& ref) override { cancelled.push_back(ref); }
  void PauseOutput(bool p) override { paused.push_back(p); }
};

struct Fixture {
  HeldExecutor executor;
  WorkerCore core;
  uint64_t now = 1'000'000;

  explicit Fixture(uint32_t slots = 1, WorkerCoreOptions options = {}) : Fixture(Identity(slots), options) {}
  Fixture(WorkerIdentity identity, WorkerCoreOptions options) : core(std::move(identity), options) {
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
    TaskSpec spec;
    spec.command = std::move(command);
    DispatchSpec(task, attempt, spec, from);
  }
  // `sequenced`: as this scheduler dispatches (sequenced_output), or as an older one.
  void DispatchSpec(uint64_t task, uint32_t attempt, const TaskSpec& spec, const std::string& from = "fm-scheduler",
                    bool sequenced = true) {
    flatbuffers::FlatBufferBuilder fbb;
    std::vector<flatbuffers::Offset<wire::Assignment>> a{
        wire::CreateAssignment(fbb, task, attempt, codec::ToWire(fbb, spec))};
    std::string bytes = codec::Seal(fbb, wire::CreateDispatch(fbb, fbb.CreateVector(a), 0, sequenced));
    core.OnDirected(from, bytes.data(), bytes.size(), now);
  }
  void Cancel(uint64_t task, uint32_t attempt) {
    flatbuffers::FlatBufferBuilder fbb;
    std::string bytes = codec::Seal(fbb, wire::CreateCancelTask(fbb, wire::CreateTaskRef(fbb, task, attempt)));
    core.OnDirected("fm-scheduler", bytes.data(), bytes.size(), now);
  }
  void Ack(uint64_t task, uint32_t attempt) {
    flatbuffers::FlatBufferBuilder fbb;
    std::vector<flatbuffers::Offset<wire::TaskRef>> refs{wire::CreateTaskRef(fbb, task, attempt)};
    std::string bytes = codec::Seal(fbb, wire::CreateTaskFinishedAck(fbb, 0, fbb.CreateVector(refs)));
    core.OnDirected("fm-scheduler", bytes.data(), bytes.size(), now);
  }

  // The scheduler stored `stream` of the attempt up to `end` (and took `bytes`).
  void AckOutput(uint64_t task, uint32_t attempt, const std::string& stream, uint64_t end, uint64_t bytes = 1,
                 bool behind = false) {
    flatbuffers::FlatBufferBuilder fbb;
    std::vector<flatbuffers::Offset<wire::OutputMark>> marks{
        wire::CreateOutputMark(fbb, wire::CreateTaskRef(fbb, task, attempt), fbb.CreateString(stream), end, behind)};
    std::string b = codec::Seal(fbb, wire::CreateTaskFinishedAck(fbb, 0, 0, bytes, fbb.CreateVector(marks)));
    core.OnDirected("fm-scheduler", b.data(), b.size(), now);
  }

  // The turn's report: (started, finished with outcome).
  struct Report {
    std::vector<Ref> started;
    std::vector<std::pair<Ref, wire::Outcome>> finished;
    std::vector<std::string> messages;
    std::vector<wire::Reason> reasons;
    std::map<Ref, std::vector<std::string>> devices;
    std::vector<std::string> warnings;
    std::vector<const wire::WorkerHeartbeat*> heartbeats;
    std::vector<std::string> keep;  // what heartbeats point into
  };
  Report EndTurn() {
    Report r;
    WorkerOutbox out = core.EndTurn();
    r.warnings = out.warnings;
    for (const auto& [topic, payload] : out.publications) {
      if (topic != "fleet.heartbeat") continue;
      r.keep.push_back(payload);
    }
    for (const auto& payload : r.keep)
      r.heartbeats.push_back(wire::GetEnvelope(payload.data())->body_as_WorkerHeartbeat());
    for (const auto& payload : out.to_scheduler) {
      const auto* env = wire::GetEnvelope(payload.data());
      if (env->body_type() != wire::Body::WorkerReport) continue;
      const auto* rep = env->body_as_WorkerReport();
      for (const auto* s : *rep->started()) r.started.push_back({s->task(), s->attempt()});
      if (rep->devices()) {
        for (const auto* d : *rep->devices())
          r.devices[{d->ref()->task(), d->ref()->attempt()}] = codec::Strings(d->gpus());
      }
      for (const auto* f : *rep->finished()) {
        r.finished.push_back({{f->ref()->task(), f->ref()->attempt()}, f->outcome()});
        r.messages.push_back(codec::Str(f->message()));
        r.reasons.push_back(f->reason());
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
  f.AckOutput(1, 1, "stdout", 10);  // stored: its end may be reported
  WorkerOutbox then = f.core.EndTurn();
  out.to_scheduler.insert(out.to_scheduler.end(), then.to_scheduler.begin(), then.to_scheduler.end());
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

TEST_CASE(
    "with a scheduler that does not say what it stored, output the broker could not queue for it is said to be "
    "missing, once per attempt",
    "[unit]") {
  Fixture f(2);
  f.Dispatch(1, 1, {"yes"});
  f.Dispatch(2, 1, {"yes"});
  f.EndTurn();
  {  // output acknowledged without marks: an older scheduler
    f.core.OnRunOutput({1, 1}, "stdout", "x");
    f.EndTurn();
    flatbuffers::FlatBufferBuilder fbb;
    std::string b = codec::Seal(fbb, wire::CreateTaskFinishedAck(fbb, 0, 0, 1));
    f.core.OnDirected("fm-scheduler", b.data(), b.size(), f.now);
  }
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

namespace {
// The TaskLogs of a turn: (stream, offset or -1, data).
struct SentLog {
  std::string stream;
  int64_t offset;
  std::string data;
  bool operator==(const SentLog&) const = default;
};
std::vector<SentLog> Logs(const WorkerOutbox& out) {
  std::vector<SentLog> logs;
  for (const auto& payload : out.to_scheduler) {
    const auto* env = wire::GetEnvelope(payload.data());
    if (env->body_type() != wire::Body::TaskLog) continue;
    const auto* log = env->body_as_TaskLog();
    logs.push_back(
        {log->stream()->str(), log->offset() ? static_cast<int64_t>(*log->offset()) : -1, log->data()->str()});
  }
  return logs;
}
bool Reported(const WorkerOutbox& out) {
  for (const auto& payload : out.to_scheduler) {
    const auto* env = wire::GetEnvelope(payload.data());
    if (env->body_type() == wire::Body::WorkerReport && env->body_as_WorkerReport()->finished()->size() > 0) {
      return true;
    }
  }
  return false;
}
}  // namespace

TEST_CASE(
    "output is sent at least once: each stream carries offsets, what the scheduler has not stored is sent again after "
    "a re-registration or a stall, and an attempt's end is reported once its output is stored",
    "[unit]") {
  WorkerCoreOptions options;
  options.output_stall_ms = 3000;
  options.max_output = 100;
  Fixture f(1, options);
  f.Dispatch(1, 1, {"yes"});
  f.EndTurn();
  f.core.OnRunOutput({1, 1}, "stdout", "abc");
  f.core.OnRunOutput({1, 1}, "stderr", "E");
  f.core.OnRunOutput({1, 1}, "stdout", "de");
  CHECK(Logs(f.core.EndTurn()) == std::vector<SentLog>{{"stdout", 0, "abc"}, {"stderr", 0, "E"}, {"stdout", 3, "de"}});
  f.AckOutput(1, 1, "stdout", 4);  // stored up to "d"
  // The scheduler restarted and asks the worker to register again: what it may not have
  // stored goes again, from where it starts.
  flatbuffers::FlatBufferBuilder fbb;
  std::string again = codec::Seal(fbb, wire::CreateReRegister(fbb, 0));
  f.core.OnDirected("fm-scheduler", again.data(), again.size(), f.now);
  CHECK(Logs(f.core.EndTurn()) == std::vector<SentLog>{{"stdout", 4, "e"}, {"stderr", 0, "E"}});
  // It ends: not reported while some of its output is not stored ...
  f.core.OnRunEnded({1, 1}, {});
  CHECK_FALSE(Reported(f.core.EndTurn()));
  // ... sent again when acknowledgements stop coming ...
  f.now += 3100;
  f.core.Tick(f.now);
  WorkerOutbox stalled = f.core.EndTurn();
  CHECK(Logs(stalled) == std::vector<SentLog>{{"stdout", 4, "e"}, {"stderr", 0, "E"}});
  CHECK_FALSE(Reported(stalled));
  // ... and reported once all of it is.
  f.AckOutput(1, 1, "stdout", 5);
  CHECK_FALSE(Reported(f.core.EndTurn()));
  f.AckOutput(1, 1, "stderr", 1);
  CHECK(Reported(f.core.EndTurn()));
  // Nothing kept any more: a later stall sends nothing.
  f.now += 60000;
  f.core.Tick(f.now);
  CHECK(Logs(f.core.EndTurn()).empty());
  // A mark that says some was lost past a gap: that stream again at once, from there.
  f.Dispatch(3, 1, {"yes"});
  f.EndTurn();
  f.core.OnRunOutput({3, 1}, "stdout", "one");
  f.core.OnRunOutput({3, 1}, "stderr", "err");
  f.EndTurn();
  f.core.OnRunOutput({3, 1}, "stdout", "two");
  f.EndTurn();
  f.AckOutput(3, 1, "stdout", 0, 3, /*behind=*/true);  // "one" was lost, "two" dropped
  CHECK(Logs(f.core.EndTurn()) == std::vector<SentLog>{{"stdout", 0, "onetwo"}});
  f.AckOutput(3, 1, "stdout", 0, 3, /*behind=*/true);  // again within a second: not yet
  CHECK(Logs(f.core.EndTurn()).empty());
  f.AckOutput(3, 1, "stdout", 6);
  f.AckOutput(3, 1, "stderr", 3);
  f.core.OnRunEnded({3, 1}, {});
  CHECK(Reported(f.core.EndTurn()));
  // An end whose output is never acknowledged is not held forever.
  f.Dispatch(4, 1, {"yes"});
  f.EndTurn();
  f.core.OnRunOutput({4, 1}, "stdout", "never stored");
  f.core.OnRunEnded({4, 1}, {});
  CHECK_FALSE(Reported(f.core.EndTurn()));
  f.now += WorkerCore::kHoldEndMs;
  f.core.Tick(f.now);
  WorkerOutbox late = f.core.EndTurn();
  CHECK(Reported(late));
  REQUIRE_FALSE(late.warnings.empty());
  CHECK_THAT(late.warnings.back(), Catch::Contains("not acknowledged"));
  // The worker's own notes carry no offset and are not kept.
  f.Dispatch(2, 1, {"yes"});
  f.core.OnRunOutput({2, 1}, "stdout", std::string(options.max_output + 1, 'x'));
  auto logs = Logs(f.core.EndTurn());
  REQUIRE(logs.size() == 2);
  CHECK(logs[1].stream == "fm");
  CHECK(logs[1].offset == -1);
}

TEST_CASE(
    "an attempt an older scheduler dispatched (no sequenced_output) sends its output as it comes: no offsets, nothing "
    "kept, its end not held",
    "[unit]") {
  Fixture f;
  TaskSpec spec;
  spec.command = {"yes"};
  f.DispatchSpec(1, 1, spec, "fm-scheduler", /*sequenced=*/false);
  f.EndTurn();
  f.core.OnRunOutput({1, 1}, "stdout", "abc");
  f.core.OnRunEnded({1, 1}, {});
  WorkerOutbox out = f.core.EndTurn();
  CHECK(Logs(out) == std::vector<SentLog>{{"stdout", -1, "abc"}});
  CHECK(Reported(out));
}

// ---------------------------------------------------------------------------
// GPUs: chosen, given, never shared.

namespace {
std::vector<Gpu> MixedGpus() {
  return {{"NVIDIA A100-SXM4-80GB", 80ull << 30, "GPU-a"},
          {"Tesla T4", 16ull << 30, "GPU-b"},
          {"NVIDIA A100-SXM4-80GB", 80ull << 30, "GPU-c"},
          {"Tesla T4", 16ull << 30, ""}};
}
Resources Need(uint32_t gpus, const std::string& model = "", uint64_t memory = 0) {
  Resources r;
  r.gpus = gpus;
  r.gpu_model = model;
  r.gpu_memory = memory;
  return r;
}
}  // namespace

TEST_CASE("ChooseGpus takes free devices that serve the task, the smallest that do first", "[unit]") {
  const auto gpus = MixedGpus();
  std::vector<bool> none(gpus.size(), false);
  CHECK(ChooseGpus(gpus, none, Need(0)) == std::vector<size_t>{});
  CHECK(ChooseGpus(gpus, none, Need(1)) == std::vector<size_t>{1});                   // a T4 serves: keep the A100s
  CHECK(ChooseGpus(gpus, none, Need(1, "a100")) == std::vector<size_t>{0});           // model, any case
  CHECK(ChooseGpus(gpus, none, Need(1, "", 40ull << 30)) == std::vector<size_t>{0});  // per-GPU memory
  CHECK(ChooseGpus(gpus, none, Need(3)) == std::vector<size_t>{0, 1, 3});
  CHECK(ChooseGpus(gpus, {true, false, false, false}, Need(2, "A100")) == std::nullopt);  // one of two is busy
  CHECK(ChooseGpus(gpus, {true, false, false, false}, Need(1, "A100")) == std::vector<size_t>{2});
  CHECK(ChooseGpus(gpus, none, Need(5)) == std::nullopt);
  CHECK(ChooseGpus(gpus, none, Need(1, "H100")) == std::nullopt);
  CHECK(GpuDeviceId(gpus[0], 0) == "GPU-a");
  CHECK(GpuDeviceId(gpus[3], 3) == "3");  // no UUID: the index
}

TEST_CASE("a worker gives each GPU attempt its own devices, reports them, and frees them when it ends", "[unit]") {
  WorkerIdentity id = Fixture::Identity(4);
  id.hardware.gpus = MixedGpus();
  Fixture f(id, {});
  TaskSpec spec;
  spec.command = {"train"};
  spec.resources = Need(1, "A100");
  f.DispatchSpec(1, 1, spec);
  f.DispatchSpec(2, 1, spec);
  Fixture::Report r = f.EndTurn();
  REQUIRE(r.started.size() == 2);
  CHECK(r.devices[{1, 1}] == std::vector<std::string>{"GPU-a"});
  CHECK(r.devices[{2, 1}] == std::vector<std::string>{"GPU-c"});
  REQUIRE(f.executor.grants.size() == 2);
  CHECK(f.executor.grants[0].gpus == std::vector<std::string>{"GPU-a"});
  CHECK(f.executor.grants[1].gpus == std::vector<std::string>{"GPU-c"});
  // A third A100 task: the scheduler would not send it; if it does, it is refused, not doubled up.
  f.DispatchSpec(3, 1, spec);
  r = f.EndTurn();
  REQUIRE(r.finished.size() == 1);
  CHECK(r.finished[0] == std::make_pair(Ref{3, 1}, wire::Outcome::Retryable));
  CHECK_THAT(r.messages[0], Catch::Contains("no free GPU"));
  // Task 1 ends: its A100 is free for the next.
  f.core.OnRunEnded({1, 1}, {});
  f.DispatchSpec(4, 1, spec);
  r = f.EndTurn();
  CHECK(r.devices[{4, 1}] == std::vector<std::string>{"GPU-a"});
}

TEST_CASE("a GPU attempt whose devices a cancelled attempt still holds waits for them, and starts when it ends",
          "[unit]") {
  WorkerIdentity id = Fixture::Identity(2);
  id.hardware.gpus = {{"Tesla T4", 16ull << 30, "GPU-only"}};
  Fixture f(id, {});
  TaskSpec spec;
  spec.command = {"train"};
  spec.resources = Need(1);
  f.DispatchSpec(1, 1, spec);
  REQUIRE(f.EndTurn().started.size() == 1);
  // Cancelled: the scheduler frees its GPU at once and places task 2 here, while task
  // 1 still stops (SIGTERM, its kill timeout).
  f.Cancel(1, 1);
  f.DispatchSpec(2, 1, spec);
  Fixture::Report r = f.EndTurn();
  CHECK(r.started.empty());
  CHECK(r.finished.empty());
  CHECK(f.core.waiting() == 1);
  CHECK(f.executor.started.size() == 1);
  f.core.OnRunEnded({1, 1}, {wire::Outcome::Cancelled, 0, "cancelled"});
  r = f.EndTurn();
  CHECK(r.started == std::vector<Ref>{{2, 1}});
  CHECK(r.devices[{2, 1}] == std::vector<std::string>{"GPU-only"});
  CHECK(f.core.waiting() == 0);
  // A waiting attempt that is cancelled ends without ever starting.
  f.Cancel(2, 1);
  f.core.OnRunEnded({2, 1}, {wire::Outcome::Cancelled, 0, "cancelled"});
  f.DispatchSpec(3, 1, spec);
  f.DispatchSpec(4, 1, spec);  // a stale double dispatch: refused (nothing stopping holds the GPU)
  r = f.EndTurn();
  CHECK(f.core.gpus_of({3, 1}) == std::vector<size_t>{0});
}

// ---------------------------------------------------------------------------
// Health: failed starts quarantine a capability; a re-probe that starts a container ends it.

TEST_CASE("Health quarantines after N failed starts in a row and re-probes with doubling waits", "[unit]") {
  HealthOptions options;
  options.quarantine_after = 3;
  options.probe_initial_ms = 1000;
  options.probe_max_ms = 3000;
  Health h(options);
  uint64_t now = 0;
  CHECK_FALSE(h.OnStartFailed("docker", "docker start", "OCI runtime error", "img", now));
  h.OnStarted("docker");  // a start between: the count begins again
  CHECK_FALSE(h.OnStartFailed("docker", "docker start", "OCI runtime error", "img", now));
  CHECK_FALSE(h.OnStartFailed("docker", "docker start", "OCI runtime error", "img", now));
  CHECK(h.OnStartFailed("docker", "docker start", "OCI runtime error", "img", now));
  CHECK(h.quarantined("docker"));
  CHECK(h.quarantines().at("docker").reason == "docker start failed 3x in a row: OCI runtime error");
  CHECK(h.Announced({"docker", "gpu"}) == std::vector<std::string>{"gpu"});
  CHECK(h.DueProbes(999).empty());
  auto due = h.DueProbes(1000);
  REQUIRE(due.size() == 1);
  CHECK(due[0] == std::make_pair(std::string("docker"), std::string("img")));
  CHECK(h.DueProbes(5000).empty());  // one out at a time
  CHECK_FALSE(h.OnProbe("docker", false, "still broken", 1000));
  CHECK(h.DueProbes(2999).empty());  // 2 s later
  CHECK(h.DueProbes(3000).size() == 1);
  CHECK_FALSE(h.OnProbe("docker", false, "still broken", 3000));
  CHECK(h.DueProbes(5999).empty());  // capped at 3 s
  CHECK(h.DueProbes(6000).size() == 1);
  CHECK(h.OnProbe("docker", true, "", 6000));
  CHECK_FALSE(h.quarantined("docker"));
  CHECK(h.Announced({"docker", "gpu"}) == std::vector<std::string>{"docker", "gpu"});
}

TEST_CASE("a worker whose container starts fail withdraws docker, says why, and announces it again after a probe",
          "[unit]") {
  WorkerCoreOptions options;
  options.health.quarantine_after = 2;
  options.health.probe_initial_ms = 500;
  WorkerIdentity id = Fixture::Identity(4);
  id.capabilities = {"docker"};
  Fixture f(id, options);
  TaskSpec spec;
  spec.command = {"true"};
  spec.image = "localhost/img";
  RunResult failed{wire::Outcome::Retryable, 0, "docker start: OCI runtime error"};
  failed.start_failure = "docker start";
  f.DispatchSpec(1, 1, spec);
  f.core.OnRunEnded({1, 1}, failed);
  CHECK(f.EndTurn().heartbeats.empty());
  // A task's own failure (a command missing from the image) does not count.
  f.DispatchSpec(2, 1, spec);
  f.core.OnRunEnded({2, 1}, {wire::Outcome::Failed, 127, "command not runnable"});
  f.DispatchSpec(3, 1, spec);
  f.core.OnRunEnded({3, 1}, failed);
  Fixture::Report r = f.EndTurn();
  REQUIRE(r.heartbeats.size() == 1);
  CHECK(codec::Strings(r.heartbeats[0]->capabilities()).empty());
  auto q = codec::FromWire(r.heartbeats[0]->quarantined());
  CHECK(q.at("docker") == "docker start failed 2x in a row: docker start: OCI runtime error");
  REQUIRE(r.warnings.size() == 1);
  CHECK_THAT(r.warnings[0], Catch::Contains("capability docker quarantined"));
  // The re-probe is due: the executor is asked to start the image that failed.
  f.core.Tick(f.now + 499);
  CHECK(f.executor.probes.empty());
  f.core.Tick(f.now + 500);
  REQUIRE(f.executor.probes.size() == 1);
  CHECK(f.executor.probes[0] == std::make_pair(std::string("docker"), std::string("localhost/img")));
  f.core.OnProbeEnded("docker", false, "docker start: OCI runtime error");
  CHECK(f.EndTurn().heartbeats.empty());
  CHECK(f.core.health().quarantined("docker"));
  f.core.Tick(f.now + 1500);  // 1 s after the failed probe
  REQUIRE(f.executor.probes.size() == 2);
  f.core.OnProbeEnded("docker", true, "");
  r = f.EndTurn();
  REQUIRE(r.heartbeats.size() == 1);
  CHECK(codec::Strings(r.heartbeats[0]->capabilities()) == std::vector<std::string>{"docker"});
  CHECK(r.heartbeats[0]->quarantined() == nullptr);
}

TEST_CASE(
    "until the docker executor has started a container, a worker starts one at a time, so a broken daemon "
    "fails N starts, not a burst",
    "[unit]") {
  WorkerCoreOptions options;
  options.health.quarantine_after = 2;
  WorkerIdentity id = Fixture::Identity(8);
  id.capabilities = {"docker"};
  Fixture f(id, options);
  TaskSpec spec;
  spec.command = {"true"};
  spec.image = "localhost/img";
  for (uint64_t t = 1; t <= 4; ++t) f.DispatchSpec(t, 1, spec);
  CHECK(f.executor.started == std::vector<Ref>{{1, 1}});  // the others wait for its start
  CHECK(f.core.waiting() == 3);
  CHECK(f.core.slots_in_use() == 4);
  // Exec tasks are never held back.
  f.Dispatch(9, 1, {"true"});
  CHECK(f.executor.started.size() == 2);
  // It started: proven, the rest go at once.
  f.core.OnRunStarted({1, 1});
  CHECK(f.executor.started.size() == 5);
  CHECK(f.core.waiting() == 0);
  // Two failed starts in a row (one at a time again after the first): quarantined; what
  // still waits is refused, Retryable, without a start.
  for (uint64_t t = 2; t <= 4; ++t) f.core.OnRunEnded({t, 1}, {});
  f.EndTurn();
  RunResult failed{wire::Outcome::Retryable, 0, "docker start: OCI runtime error"};
  failed.start_failure = "docker start";
  f.DispatchSpec(10, 1, spec);  // proven: starts
  f.DispatchSpec(11, 1, spec);
  CHECK(f.executor.started.size() == 7);
  f.core.OnRunEnded({10, 1}, failed);  // unproven now
  f.DispatchSpec(12, 1, spec);
  CHECK(f.executor.started.size() == 7);  // 11 is starting: 12 waits
  f.core.OnRunEnded({11, 1}, failed);     // the second failure: quarantined
  CHECK(f.core.health().quarantined("docker"));
  CHECK(f.executor.started.size() == 7);  // 12 never started
  Fixture::Report r = f.EndTurn();
  bool refused = false;
  for (size_t i = 0; i < r.finished.size(); ++i) {
    if (r.finished[i].first == Ref{12, 1}) {
      // Handed back unstarted: the scheduler spends no attempt on it (issue #23).
      refused = r.finished[i].second == wire::Outcome::Retryable && r.reasons[i] == wire::Reason::NotStarted &&
                r.messages[i].find("capability docker is quarantined on worker pw1") != std::string::npos;
    }
  }
  CHECK(refused);
}
