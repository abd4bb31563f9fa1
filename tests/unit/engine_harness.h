// The engine stepped turn by turn with a manual clock and the in-memory store, the way
// the daemon drives it: messages in, FinishTurn, the writes committed, then what was
// derived handed out. Shared by the engine's unit and model tests.
#pragma once

#include <catch2/catch.hpp>
#include <deque>

#include "scheduler/engine.h"
#include "schemas/codec.h"
#include "store/faulty_store.h"
#include "store/store.h"

namespace fm::sched::testing {

constexpr uint64_t GiB = 1ull << 30;

struct Turn {
  std::vector<Directed> directed;
  std::vector<Publication> events;

  // Every directed message of body type `type` sent to `to`.
  std::vector<const wire::Envelope*> To(const std::string& to, wire::Body type) const {
    std::vector<const wire::Envelope*> out;
    for (const auto& d : directed) {
      const auto* env = wire::GetEnvelope(d.payload.data());
      if (d.to == to && env->body_type() == type) out.push_back(env);
    }
    return out;
  }
  std::vector<const wire::Event*> Events(const std::string& type) const {
    std::vector<const wire::Event*> out;
    for (const auto& e : events) {
      if (e.topic == type) out.push_back(wire::GetEnvelope(e.payload().data())->body_as_Event());
    }
    return out;
  }
  // Task ids dispatched to `address`.
  std::vector<uint64_t> Dispatched(const std::string& address) const {
    std::vector<uint64_t> ids;
    for (const auto* env : To(address, wire::Body::Dispatch)) {
      for (const auto* a : *env->body_as_Dispatch()->assignments()) ids.push_back(a->task());
    }
    return ids;
  }
};

struct WorkerSpec {
  std::string id;
  std::vector<std::string> caps;
  uint32_t cpus = 4;
  uint64_t memory = 8 * GiB;
  uint32_t slots = 2;
  Labels labels;
  uint64_t instance = 1;
  std::vector<Gpu> gpus;
  std::string node;  // default: "node-<id>"
};

class Harness {
 public:
  explicit Harness(EngineOptions options = {})
      : mem_(store::NewMemStore()), store_(std::make_unique<store::FaultyStore>(mem_.get())) {
    Restart(options);
  }

  void Restart(EngineOptions options = {}) {
    engine_ = std::make_unique<Engine>(options);
    REQUIRE(engine_->Recover(store_.get(), now).ok());
    engine_->Start(now);
    Commit();
  }

  Engine& engine() { return *engine_; }
  store::Store& store() { return *store_; }
  // The store the engine reads, which a test may make fail (store/faulty_store.h).
  store::FaultyStore& faults() { return *store_; }

  // Ends the turn the way the daemon does: writes first, then what was derived.
  Turn Commit() {
    engine_->FinishTurn(now);
    Effects& e = engine_->effects();
    REQUIRE(store_->Write(e.writes, true).ok());
    Turn t{std::move(e.directed), std::move(e.events)};
    e.Clear();
    return t;
  }

  static std::string Address(const std::string& id, uint64_t instance = 1) {
    return "w/" + id + "/" + std::to_string(instance);
  }

  Turn Register(const WorkerSpec& w, std::vector<std::pair<uint64_t, uint32_t>> running = {}) {
    flatbuffers::FlatBufferBuilder fbb;
    std::vector<flatbuffers::Offset<wire::TaskRef>> refs;
    for (auto [task, attempt] : running) refs.push_back(wire::CreateTaskRef(fbb, task, attempt));
    Hardware hw{w.cpus * 1000, w.memory, w.gpus};
    auto reg = wire::CreateWorkerRegistration(
        fbb, fbb.CreateString(w.id), fbb.CreateString(Address(w.id, w.instance)),
        fbb.CreateString(w.node.empty() ? "node-" + w.id : w.node), w.instance, fbb.CreateString("test"), w.slots,
        codec::ToWire(fbb, hw), codec::ToWire(fbb, w.labels), fbb.CreateVector(refs), codec::ToWire(fbb, w.caps));
    std::string bytes = codec::Seal(fbb, reg);
    engine_->OnBus(*wire::GetEnvelope(bytes.data()), now);
    return Commit();
  }

  Turn Heartbeat(const std::string& id, std::vector<std::string> caps, uint64_t instance = 1,
                 const codec::Quarantines& quarantined = {}) {
    flatbuffers::FlatBufferBuilder fbb;
    auto hb = wire::CreateWorkerHeartbeat(fbb, fbb.CreateString(id), fbb.CreateString(Address(id, instance)), instance,
                                          0, codec::ToWire(fbb, caps), codec::ToWire(fbb, quarantined));
    std::string bytes = codec::Seal(fbb, hb);
    engine_->OnBus(*wire::GetEnvelope(bytes.data()), now);
    return Commit();
  }

  Turn Submit(std::vector<TaskSpec> specs, bool watch = false, const std::string& from = "client") {
    Deliver(specs, watch, from);
    return Commit();
  }
  // The submission alone, without ending the turn (several messages in one turn).
  void Deliver(const std::vector<TaskSpec>& specs, bool watch = false, const std::string& from = "client") {
    flatbuffers::FlatBufferBuilder fbb;
    std::vector<flatbuffers::Offset<wire::TaskSpec>> offsets;
    for (const auto& s : specs) offsets.push_back(codec::ToWire(fbb, s));
    std::string bytes = codec::Seal(fbb, wire::CreateSubmitRequest(fbb, fbb.CreateVector(offsets), watch, 7));
    engine_->OnDirected(from, *wire::GetEnvelope(bytes.data()), now);
  }

  // An fm-ctl request from "ctl" (op, target); its reply, kept readable in `kept`.
  const wire::ControlReply* Control(wire::ControlOp op, const std::string& target, std::deque<Turn>* kept,
                                    const std::string& from = "ctl", const std::string& group = "",
                                    const std::string& owner = "") {
    flatbuffers::FlatBufferBuilder fbb;
    std::string bytes =
        codec::Seal(fbb, wire::CreateControlRequestDirect(fbb, op, target.empty() ? nullptr : target.c_str(), 1, 0, 0,
                                                          nullptr, nullptr, owner.empty() ? nullptr : owner.c_str(),
                                                          nullptr, group.empty() ? nullptr : group.c_str()));
    engine_->OnDirected(from, *wire::GetEnvelope(bytes.data()), now);
    const Turn& t = kept->emplace_back(Commit());
    auto replies = t.To(from, wire::Body::ControlReply);
    REQUIRE(replies.size() == 1);
    return replies[0]->body_as_ControlReply();
  }

  Turn Started(uint64_t task, uint32_t attempt, const std::string& worker) {
    flatbuffers::FlatBufferBuilder fbb;
    auto ref = wire::CreateTaskRef(fbb, task, attempt);
    std::string bytes = codec::Seal(fbb, wire::CreateTaskStarted(fbb, ref, fbb.CreateString(worker)));
    engine_->OnDirected(Address(worker), *wire::GetEnvelope(bytes.data()), now);
    return Commit();
  }

  // A WorkerReport saying the attempt started with these GPUs.
  Turn StartedWith(uint64_t task, uint32_t attempt, const std::string& worker, const std::vector<std::string>& gpus) {
    flatbuffers::FlatBufferBuilder fbb;
    std::vector<flatbuffers::Offset<wire::TaskRef>> started{wire::CreateTaskRef(fbb, task, attempt)};
    std::vector<flatbuffers::Offset<wire::AttemptDevices>> devices{
        wire::CreateAttemptDevices(fbb, wire::CreateTaskRef(fbb, task, attempt), codec::ToWire(fbb, gpus))};
    std::string bytes =
        codec::Seal(fbb, wire::CreateWorkerReport(fbb, fbb.CreateString(worker), fbb.CreateVector(started), 0,
                                                  fbb.CreateVector(devices)));
    engine_->OnDirected(Address(worker), *wire::GetEnvelope(bytes.data()), now);
    return Commit();
  }

  Turn Ready(uint64_t task, uint32_t attempt, const std::string& worker, const Endpoint& endpoint) {
    flatbuffers::FlatBufferBuilder fbb;
    auto ref = wire::CreateTaskRef(fbb, task, attempt);
    std::string bytes =
        codec::Seal(fbb, wire::CreateTaskReady(fbb, ref, fbb.CreateString(worker), codec::ToWire(fbb, endpoint)));
    engine_->OnDirected(Address(worker), *wire::GetEnvelope(bytes.data()), now);
    return Commit();
  }

  Turn Finished(uint64_t task, uint32_t attempt, const std::string& worker, wire::Outcome outcome, int code = 0,
                wire::Reason reason = wire::Reason::None) {
    DeliverFinished(task, attempt, worker, outcome, code, reason);
    return Commit();
  }
  void DeliverFinished(uint64_t task, uint32_t attempt, const std::string& worker, wire::Outcome outcome, int code = 0,
                       wire::Reason reason = wire::Reason::None) {
    flatbuffers::FlatBufferBuilder fbb;
    auto ref = wire::CreateTaskRef(fbb, task, attempt);
    std::string bytes =
        codec::Seal(fbb, wire::CreateTaskFinished(fbb, ref, fbb.CreateString(worker), outcome, code, 0, reason));
    engine_->OnDirected(Address(worker), *wire::GetEnvelope(bytes.data()), now);
  }

  // Asks for a replay from `since` as a tap would; the batch points into the turn, which
  // is kept in `kept`.
  const wire::ReplayBatch* Replay(uint64_t since, std::deque<Turn>* kept, uint64_t correlation = 5) {
    flatbuffers::FlatBufferBuilder fbb;
    std::string bytes = codec::Seal(fbb, wire::CreateReplayRequest(fbb, since, correlation));
    engine_->OnDirected("tap", *wire::GetEnvelope(bytes.data()), now);
    const Turn& t = kept->emplace_back(Commit());
    auto batches = t.To("tap", wire::Body::ReplayBatch);
    REQUIRE(batches.size() == 1);
    return batches[0]->body_as_ReplayBatch();
  }

  // Advances the clock by `advance_ms` the way the daemon does, with a Tick at least
  // every 100 ms; returns what those turns produced together.
  Turn Tick(uint64_t advance_ms) {
    Turn all;
    do {
      uint64_t step = std::min<uint64_t>(advance_ms, 100);
      advance_ms -= step;
      Turn t = TickOnce(step);
      for (auto& d : t.directed) all.directed.push_back(std::move(d));
      for (auto& e : t.events) all.events.push_back(std::move(e));
    } while (advance_ms > 0);
    return all;
  }
  // One Tick after `advance_ms` of silence: a stalled or paused scheduler.
  Turn TickOnce(uint64_t advance_ms) {
    now += advance_ms;
    engine_->Tick(now);
    return Commit();
  }

  uint64_t now = 1'700'000'000'000;

 private:
  std::unique_ptr<store::Store> mem_;
  std::unique_ptr<store::FaultyStore> store_;
  std::unique_ptr<Engine> engine_;
};

inline TaskSpec NewTask(std::vector<std::string> caps = {}, Resources r = {}, Labels labels = {}) {
  TaskSpec s;
  s.command = {"true"};
  s.required_capabilities = std::move(caps);
  s.resources = std::move(r);
  s.labels = std::move(labels);
  return s;
}

inline const wire::SubmitResult* OnlyResult(const Turn& t) {
  auto replies = t.To("client", wire::Body::SubmitReply);
  REQUIRE(replies.size() == 1);
  const auto* results = replies[0]->body_as_SubmitReply()->results();
  REQUIRE(results->size() == 1);
  return results->Get(0);
}

// The same for a turn passed as a temporary: the turn is kept (for the rest of the test
// program) so that the result it returns stays readable.
inline const wire::SubmitResult* OnlyResult(Turn&& t) {
  static std::deque<Turn> kept;
  return OnlyResult(static_cast<const Turn&>(kept.emplace_back(std::move(t))));
}

}  // namespace fm::sched::testing
