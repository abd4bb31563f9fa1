#include "scheduler/engine.h"

#include <algorithm>

#include "scheduler/predicates.h"
#include "schemas/codec.h"
#include "schemas/json.h"
#include "schemas/units.h"
#include "store/keys.h"

namespace fm::sched {

namespace keys = store::keys;
using codec::Str;

namespace {

constexpr const char* kNoEligible = "no_eligible_worker";
// Events of a turn are stored as one e/ block, split at about this size so that a
// block stays far under the decoder's limit.
constexpr size_t kEventBlockBytes = 1 << 20;

// Calls `visit(event)` for each event stored in an e/ value (an EventBlock, or one Event
// as stores written before blocks hold), in seq order, until it returns false. Returns
// false when the value is not a well-formed event record (or `visit` stopped).
template <typename Visit>
bool ForEachStoredEvent(std::string_view value, Visit visit) {
  auto env = codec::Decode(value.data(), value.size());
  if (!env.ok()) return false;
  if ((*env)->body_type() == wire::Body::Event) return visit(*(*env)->body_as_Event());
  const auto* block = (*env)->body_as_EventBlock();
  if (!block || !block->events()) return false;
  std::string aligned;  // a nested buffer is copied out so that its fields are aligned
  for (const auto* bytes : *block->events()) {
    if (!bytes->envelope()) return false;
    aligned.assign(reinterpret_cast<const char*>(bytes->envelope()->data()), bytes->envelope()->size());
    auto inner = codec::Decode(aligned.data(), aligned.size());
    if (!inner.ok() || (*inner)->body_type() != wire::Body::Event) return false;
    if (!visit(*(*inner)->body_as_Event())) return false;
  }
  return true;
}

// Replies are bounded in bytes well under the directed message limit.
constexpr size_t kReplyBytes = 1 << 20;

// Re-encodes a stored event into `fbb` field by field (FlatBuffers has no deep copy for
// tables).
flatbuffers::Offset<wire::Event> CopyEvent(flatbuffers::FlatBufferBuilder& fbb, const wire::Event& e) {
  std::vector<flatbuffers::Offset<wire::PredicateCount>> breakdown;
  if (e.breakdown()) {
    for (const auto* pc : *e.breakdown()) {
      breakdown.push_back(wire::CreatePredicateCountDirect(fbb, Str(pc->predicate()).c_str(), pc->workers(),
                                                           Str(pc->detail()).c_str()));
    }
  }
  auto opt = [&](const flatbuffers::String* s) { return s ? fbb.CreateString(s) : 0; };
  auto caps = e.capabilities() ? codec::ToWire(fbb, codec::Strings(e.capabilities())) : 0;
  auto hw = e.hardware() ? codec::ToWire(fbb, codec::FromWire(e.hardware())) : 0;
  auto labels = e.labels() ? codec::ToWire(fbb, codec::FromWire(e.labels())) : 0;
  auto type = opt(e.type()), time = opt(e.time()), task = opt(e.task()), worker = opt(e.worker()),
       reason = opt(e.reason()), message = opt(e.message()), stream = opt(e.stream()), data = opt(e.data());
  auto bd = breakdown.empty() ? 0 : fbb.CreateVector(breakdown);
  return wire::CreateEvent(fbb, e.seq(), type, time, task, worker, reason, message, e.attempt(), e.exit_code(), stream,
                           data, e.eligible(), e.fleet(), bd, caps, hw, labels, e.time_ms());
}

const char* StateName(wire::TaskState s) {
  switch (s) {
    case wire::TaskState::Pending:
      return "pending";
    case wire::TaskState::Queued:
      return "queued";
    case wire::TaskState::Running:
      return "running";
    case wire::TaskState::Succeeded:
      return "succeeded";
    case wire::TaskState::Failed:
      return "failed";
    case wire::TaskState::Cancelled:
      return "cancelled";
  }
  return "unknown";
}

wire::SubmitStatus StatusOf(wire::TaskState s) {
  switch (s) {
    case wire::TaskState::Succeeded:
      return wire::SubmitStatus::Succeeded;
    case wire::TaskState::Failed:
      return wire::SubmitStatus::Failed;
    case wire::TaskState::Cancelled:
      return wire::SubmitStatus::Cancelled;
    default:
      return wire::SubmitStatus::Accepted;
  }
}

Task TaskFromRecord(const wire::TaskRecord& r) {
  Task t;
  t.id = r.id();
  t.spec = codec::FromWire(r.spec());
  t.state = r.state();
  t.attempt = r.attempt();
  t.worker = Str(r.worker());
  t.submitted_ms = r.submitted_ms();
  t.reason = Str(r.reason());
  t.message = Str(r.message());
  t.exit_code = r.exit_code();
  t.watcher = Str(r.watcher());
  t.order = r.order();
  t.rejected = r.rejected();
  t.first_seq = r.first_seq();
  return t;
}

std::vector<std::string> Capabilities(const flatbuffers::Vector<flatbuffers::Offset<flatbuffers::String>>* v) {
  auto caps = codec::Strings(v);
  Normalize(&caps);
  return caps;
}

}  // namespace

void EngineOptions::Validate() {
  liveness_window_ms = std::max<uint64_t>(liveness_window_ms, 100);
  default_max_attempts = std::clamp<uint32_t>(default_max_attempts, 1, 1000);
  redispatch_after_ms = std::max<uint64_t>(redispatch_after_ms, 50);
  event_retention_count = std::max<uint64_t>(event_retention_count, 10);
  event_retention_age_ms = std::max<uint64_t>(event_retention_age_ms, 1000);
  replay_batch = std::clamp<size_t>(replay_batch, 1, 10000);
  if (fresh_epoch == 0) fresh_epoch = 1;
}

Engine::Engine(EngineOptions options) : options_(options) {
  options_.Validate();
  recent_ended_.reserve(options_.recent_ended);
}

// ---------------------------------------------------------------------------
// Recovery.

Status Engine::Recover(const store::Store* store, uint64_t now_ms) {
  store_ = store;
  auto meta = [&](std::string_view key, uint64_t* out) -> Status {
    auto v = store->Get(key);
    if (!v.ok()) return v.status();
    if (v->has_value() && (*v)->size() == 8) *out = keys::DecodeU64(**v);
    return Status::Ok();
  };
  if (Status s = meta(keys::kMetaNextTask, &next_task_id_); !s.ok()) return s;
  if (Status s = meta(keys::kMetaNextSeq, &next_seq_); !s.ok()) return s;
  if (Status s = meta(keys::kMetaEpoch, &epoch_); !s.ok()) return s;
  epoch_persisted_ = epoch_ != 0;
  if (epoch_ == 0) epoch_ = options_.fresh_epoch;
  persisted_task_id_ = next_task_id_;
  persisted_seq_ = next_seq_;
  oldest_seq_ = next_seq_;
  // The first stored record's first event (a block is keyed by its last one).
  Status s = store->Scan(keys::kEventPrefix, keys::PrefixEnd(keys::kEventPrefix),
                         [&](std::string_view key, std::string_view value) {
                           oldest_seq_ = keys::DecodeU64(key.substr(2));
                           ForEachStoredEvent(value, [&](const wire::Event& e) {
                             oldest_seq_ = e.seq();
                             return false;
                           });
                           return false;
                         });
  if (!s.ok()) return s;

  Status bad = Status::Ok();
  s = store->Scan(keys::kWorkerPrefix, keys::PrefixEnd(keys::kWorkerPrefix),
                  [&](std::string_view key, std::string_view value) {
                    flatbuffers::Verifier v(reinterpret_cast<const uint8_t*>(value.data()), value.size());
                    if (!v.VerifyBuffer<wire::WorkerRecord>(nullptr)) {
                      bad = Status::Internal("store: bad worker record at " + std::string(key));
                      return false;
                    }
                    const auto* rec = flatbuffers::GetRoot<wire::WorkerRecord>(value.data());
                    const auto* reg = rec->registration();
                    if (!reg || !reg->id()) return true;
                    WorkerState w;
                    w.id = Str(reg->id());
                    w.address = Str(reg->address());
                    w.node = Str(reg->node());
                    w.version = Str(reg->version());
                    w.instance = reg->instance();
                    w.capabilities = Capabilities(reg->capabilities());
                    w.hardware = codec::FromWire(reg->hardware());
                    w.labels = codec::FromWire(reg->labels());
                    w.slots = std::max<uint32_t>(reg->slots(), 1);
                    w.draining = rec->draining();
                    w.last_seen_ms = now_ms;
                    w.confirmed = false;
                    fleet_.Add(std::move(w));
                    return true;
                  });
  if (!s.ok()) return s;
  if (!bad.ok()) return bad;

  s = store->Scan(
      keys::kActivePrefix, keys::PrefixEnd(keys::kActivePrefix), [&](std::string_view key, std::string_view value) {
        flatbuffers::Verifier v(reinterpret_cast<const uint8_t*>(value.data()), value.size());
        if (!v.VerifyBuffer<wire::TaskRecord>(nullptr)) {
          bad = Status::Internal("store: bad task record at a/" + std::to_string(keys::DecodeU64(key.substr(2))));
          return false;
        }
        Task t = TaskFromRecord(*flatbuffers::GetRoot<wire::TaskRecord>(value.data()));
        next_order_ = std::max(next_order_, t.order + 1);
        next_task_id_ = std::max(next_task_id_, t.id + 1);
        if (!t.spec.key.empty()) client_keys_[t.spec.key] = t.id;
        if ((t.state == wire::TaskState::Queued || t.state == wire::TaskState::Running) && fleet_.Find(t.worker)) {
          fleet_.ModifyLoad(t.worker, [&](WorkerState& w) {
            Reserve(t.spec, &w);
            w.tasks.insert(t.id);
          });
          t.dispatched_ms = now_ms;
        } else if (t.state != wire::TaskState::Pending) {
          // Its worker is not known any more: run it again.
          t.state = wire::TaskState::Pending;
          t.worker.clear();
          dirty_tasks_.push_back(t.id);
        }
        if (t.state == wire::TaskState::Pending) {
          pending_.Insert(t.spec, LineOf(t));
        }
        active_.emplace(t.id, std::move(t));
        return true;
      });
  if (!s.ok()) return s;
  return bad;
}

void Engine::Start(uint64_t now_ms) {
  EventFields f;
  f.type = "scheduler.started";
  f.message =
      std::to_string(fleet_.size()) + " workers last known, " + std::to_string(active_.size()) + " tasks not ended";
  Emit(f, now_ms);
  for (const auto& [id, w] : fleet_.workers()) {
    flatbuffers::FlatBufferBuilder fbb(64);
    Send(w.address, codec::Seal(fbb, wire::CreateReRegister(fbb, epoch_)));
  }
  placement_needed_ = true;
}

// ---------------------------------------------------------------------------
// Dispatch of inbound messages.

void Engine::OnDirected(const std::string& from, const wire::Envelope& env, uint64_t now_ms) {
  switch (env.body_type()) {
    case wire::Body::SubmitRequest:
      return OnSubmit(from, *env.body_as_SubmitRequest(), now_ms);
    case wire::Body::TaskStarted:
      if (!env.body_as_TaskStarted()->ref()) return;
      return OnTaskStarted(*env.body_as_TaskStarted()->ref(), Str(env.body_as_TaskStarted()->worker()), now_ms);
    case wire::Body::WorkerReport:
      return OnWorkerReport(from, *env.body_as_WorkerReport(), now_ms);
    case wire::Body::TaskFinished:
      return OnTaskFinished(from, *env.body_as_TaskFinished(), now_ms);
    case wire::Body::TaskLog:
      return OnTaskLog(*env.body_as_TaskLog(), now_ms);
    case wire::Body::ControlRequest:
      return OnControl(from, *env.body_as_ControlRequest(), now_ms);
    case wire::Body::ReplayRequest:
      return OnReplay(from, *env.body_as_ReplayRequest());
    case wire::Body::WorkerRegistration:
      return OnRegistration(*env.body_as_WorkerRegistration(), now_ms);
    case wire::Body::WorkerHeartbeat:
      return OnHeartbeat(*env.body_as_WorkerHeartbeat(), now_ms);
    case wire::Body::Error:
      return;  // e.g. "unreachable" for a submitter that left
    default:
      Send(from, codec::EncodeError("unsupported", std::string("the scheduler does not take ") +
                                                       wire::EnumNameBody(env.body_type()) + " messages"));
  }
}

void Engine::OnUnreachable(const std::string& address, uint64_t now_ms) {
  constexpr uint64_t kSoon = 100;
  for (const auto& [id, w] : fleet_.workers()) {
    if (w.address != address) continue;
    for (uint64_t task_id : w.tasks) {
      Task& t = active_.at(task_id);
      if (t.state != wire::TaskState::Queued) continue;
      uint64_t soon = now_ms + kSoon > options_.redispatch_after_ms ? now_ms + kSoon - options_.redispatch_after_ms : 0;
      t.dispatched_ms = std::min(t.dispatched_ms, soon);
    }
  }
}

void Engine::OnBus(const wire::Envelope& env, uint64_t now_ms) {
  switch (env.body_type()) {
    case wire::Body::WorkerRegistration:
      return OnRegistration(*env.body_as_WorkerRegistration(), now_ms);
    case wire::Body::WorkerHeartbeat:
      return OnHeartbeat(*env.body_as_WorkerHeartbeat(), now_ms);
    default:
      return;
  }
}

// ---------------------------------------------------------------------------
// Submission.

Result<std::optional<Task>> Engine::ReadEnded(uint64_t id) const {
  if (!store_) return std::optional<Task>();
  auto v = store_->Get(keys::Task(id));
  if (!v.ok()) return v.status();
  if (!v->has_value()) return std::optional<Task>();
  flatbuffers::Verifier ver(reinterpret_cast<const uint8_t*>((*v)->data()), (*v)->size());
  if (!ver.VerifyBuffer<wire::TaskRecord>(nullptr)) {
    return Status::Internal("store: bad task record at t/" + std::to_string(id));
  }
  return std::optional<Task>(TaskFromRecord(*flatbuffers::GetRoot<wire::TaskRecord>((*v)->data())));
}

Result<std::optional<Engine::KeyedTask>> Engine::FindKeyed(const std::string& key) {
  auto it = client_keys_.find(key);
  if (it == client_keys_.end()) {
    if (!store_) return std::optional<KeyedTask>();
    auto v = store_->Get(keys::ClientKey(key));
    if (!v.ok()) return v.status();
    if (!v->has_value()) return std::optional<KeyedTask>();
    if ((*v)->size() != 8) return Status::Internal("store: bad key record for \"" + key + "\"");
    it = client_keys_.emplace(key, keys::DecodeU64(**v)).first;
  }
  KeyedTask found;
  found.id = it->second;
  // A task answers with the status it has now; one refused at submission stays refused.
  auto answer = [&](const Task& t) {
    found.status = t.rejected ? wire::SubmitStatus::Rejected : StatusOf(t.state);
    found.reason = t.reason;
    found.message = t.message;
    found.worker = t.worker;
    found.spec = t.spec;
  };
  if (const Task* t = active_task(found.id)) {
    answer(*t);
    return std::optional<KeyedTask>(std::move(found));
  }
  for (const Task& t : recent_ended_) {
    if (t.id == found.id) {
      answer(t);
      return std::optional<KeyedTask>(std::move(found));
    }
  }
  auto ended = ReadEnded(found.id);
  if (!ended.ok()) return ended.status();
  if (ended->has_value()) answer(**ended);
  return std::optional<KeyedTask>(std::move(found));
}

void Engine::OnSubmit(const std::string& from, const wire::SubmitRequest& req, uint64_t now_ms) {
  flatbuffers::FlatBufferBuilder fbb(256);
  std::vector<flatbuffers::Offset<wire::SubmitResult>> results;
  if (req.tasks()) {
    results.reserve(req.tasks()->size());
    for (const wire::TaskSpec* wire_spec : *req.tasks()) {
      TaskSpec spec = codec::FromWire(wire_spec);
      Status valid = ValidateTaskSpec(spec);
      if (!valid.ok()) {
        results.push_back(wire::CreateSubmitResultDirect(fbb, 0, wire::SubmitStatus::Rejected, "invalid_task",
                                                         valid.message().c_str()));
        continue;
      }
      if (!spec.image.empty()) {
        spec.required_capabilities.push_back("docker");
        Normalize(&spec.required_capabilities);
      }
      if (spec.max_attempts == 0) spec.max_attempts = options_.default_max_attempts;

      if (!spec.key.empty()) {
        auto keyed = FindKeyed(spec.key);
        if (!keyed.ok()) {
          if (read_error_.ok()) read_error_ = keyed.status();
          std::string message = "cannot look up key \"" + spec.key + "\": " + keyed.status().message();
          results.push_back(wire::CreateSubmitResultDirect(fbb, 0, wire::SubmitStatus::Rejected, "storage_unavailable",
                                                           message.c_str()));
          continue;
        }
        if (const auto& first = *keyed) {
          if (first->spec && *first->spec != spec) {
            std::string message = "key \"" + spec.key + "\" was first used for task " + TaskName(first->id) +
                                  " with a different body; use a new key for a different task";
            results.push_back(wire::CreateSubmitResultDirect(fbb, first->id, wire::SubmitStatus::Rejected,
                                                             "key_conflict", message.c_str()));
            continue;
          }
          results.push_back(wire::CreateSubmitResultDirect(fbb, first->id, first->status, first->reason.c_str(),
                                                           first->message.c_str(), first->worker.c_str()));
          continue;
        }
      }

      Task t;
      t.id = next_task_id_++;
      t.spec = std::move(spec);
      t.submitted_ms = now_ms;
      t.first_seq = next_seq_;  // its first event is the next one
      t.order = next_order_++;
      if (req.watch()) t.watcher = from;
      if (!t.spec.key.empty()) {
        client_keys_[t.spec.key] = t.id;
        effects_.writes.Put(keys::ClientKey(t.spec.key), keys::EncodeU64(t.id));
      }
      if (!fleet_.AnyEligible(t.spec)) {
        Explanation why = fleet_.Explain(t.spec);
        // Fail fast: nothing is queued, no worker sees it.
        results.push_back(
            wire::CreateSubmitResultDirect(fbb, t.id, wire::SubmitStatus::Rejected, kNoEligible, why.message.c_str()));
        t.watcher.clear();  // the reply already says so
        t.rejected = true;
        auto [it, inserted] = active_.emplace(t.id, std::move(t));
        End(&it->second, wire::TaskState::Failed, kNoEligible, why.message, 0, now_ms, &why);
        continue;
      }
      results.push_back(wire::CreateSubmitResult(fbb, t.id, wire::SubmitStatus::Accepted));
      EventFields f;
      f.type = "task.submitted";
      f.task = t.id;
      f.attempt = t.attempt;
      pending_.Insert(t.spec, LineOf(t));
      dirty_tasks_.push_back(t.id);
      active_.emplace(t.id, std::move(t));
      Emit(f, now_ms);
      placement_needed_ = true;
    }
  }
  auto reply = wire::CreateSubmitReply(fbb, req.correlation(), fbb.CreateVector(results));
  Send(from, codec::Seal(fbb, reply));
}

// ---------------------------------------------------------------------------
// The fleet.

const WorkerState* Engine::worker(const std::string& id) const { return fleet_.Find(id); }

const Task* Engine::active_task(uint64_t id) const {
  auto it = active_.find(id);
  return it == active_.end() ? nullptr : &it->second;
}

void Engine::PersistWorker(const WorkerState& w) {
  flatbuffers::FlatBufferBuilder fbb(512);
  auto caps = codec::ToWire(fbb, w.capabilities);
  auto hw = codec::ToWire(fbb, w.hardware);
  auto labels = codec::ToWire(fbb, w.labels);
  auto reg =
      wire::CreateWorkerRegistration(fbb, fbb.CreateString(w.id), fbb.CreateString(w.address), fbb.CreateString(w.node),
                                     w.instance, fbb.CreateString(w.version), w.slots, hw, labels, 0, caps);
  fbb.Finish(wire::CreateWorkerRecord(fbb, reg, w.draining));
  effects_.writes.Put(keys::Worker(w.id),
                      std::string(reinterpret_cast<const char*>(fbb.GetBufferPointer()), fbb.GetSize()));
}

void Engine::OnRegistration(const wire::WorkerRegistration& reg, uint64_t now_ms) {
  std::string id = Str(reg.id());
  std::string address = Str(reg.address());
  if (id.empty() || address.empty()) return;  // nobody to answer; the daemon logs malformed input
  const WorkerState* known = fleet_.Find(id);
  if (known && known->instance != reg.instance()) {
    if (known->confirmed) {
      // A second process claims a live worker's id: refuse it, the live one keeps its work.
      std::string message = "worker id \"" + id + "\" is already in use by a live worker on node " + known->node +
                            " (last heard " + std::to_string(now_ms - std::min(now_ms, known->last_seen_ms)) +
                            " ms ago); choose another --id or stop that worker";
      flatbuffers::FlatBufferBuilder fbb(256);
      Send(address, codec::Seal(fbb, wire::CreateWorkerRejectedDirect(fbb, id.c_str(), message.c_str())));
      EventFields f;
      f.type = "worker.rejected";
      f.worker = id;
      f.reason = "duplicate_worker_id";
      f.message = message + " (refused node " + Str(reg.node()) + ")";
      Emit(f, now_ms);
      return;
    }
    // Known only from the store since this scheduler started: a restarted process.
    LoseWorker(id, "replaced by a new instance of the same worker", now_ms);
    known = nullptr;
  }
  if (!known) {
    WorkerState fresh;
    fresh.id = id;
    fleet_.Add(std::move(fresh));
  }
  auto caps = Capabilities(reg.capabilities());
  auto hardware = codec::FromWire(reg.hardware());
  // A changed announcement may leave waiting tasks with no eligible worker.
  if (known && (caps != known->capabilities || hardware != known->hardware)) fleet_shrank_ = true;
  fleet_.Modify(id, [&](WorkerState& w) {
    w.address = address;
    w.node = Str(reg.node());
    w.version = Str(reg.version());
    w.instance = reg.instance();
    w.capabilities = std::move(caps);
    w.hardware = std::move(hardware);
    w.labels = codec::FromWire(reg.labels());
    w.slots = std::max<uint32_t>(reg.slots(), 1);
    w.last_seen_ms = now_ms;
    w.confirmed = true;
  });
  const WorkerState& w = *fleet_.Find(id);
  PersistWorker(w);
  EventFields f;
  f.type = "worker.registered";
  f.worker = id;
  f.worker_info = &w;
  f.message = "node " + w.node + ", " + std::to_string(w.slots) + " slots, version " + w.version;
  Emit(f, now_ms);
  Reconcile(w, reg.running(), now_ms);
  placement_needed_ = true;
}

void Engine::Reconcile(const WorkerState& worker, const flatbuffers::Vector<flatbuffers::Offset<wire::TaskRef>>* held,
                       uint64_t now_ms) {
  std::set<std::pair<uint64_t, uint32_t>> reported;
  if (held) {
    for (const auto* ref : *held) reported.insert({ref->task(), ref->attempt()});
  }
  const WorkerState* w = &worker;
  std::vector<uint64_t> mine(w->tasks.begin(), w->tasks.end());
  for (uint64_t id : mine) {
    Task& t = active_.at(id);
    if (reported.count({t.id, t.attempt})) continue;
    if (t.state == wire::TaskState::Queued) {
      dispatches_[w->id].push_back(t.id);  // never arrived: send again
    } else {
      Retry(&t, "worker_lost", "worker " + worker.id + " no longer holds the task (it restarted)", now_ms);
      w = fleet_.Find(worker.id);  // Retry released its reservation
    }
  }
  for (const auto& [task_id, attempt] : reported) {
    const Task* t = active_task(task_id);
    if (t && t->worker == w->id && t->attempt == attempt) continue;
    // Held by the worker but not ours to run there (ended, moved, cancelled): drop it.
    flatbuffers::FlatBufferBuilder fbb(64);
    auto ref = wire::CreateTaskRef(fbb, task_id, attempt);
    Send(w->address, codec::Seal(fbb, wire::CreateCancelTask(fbb, ref)));
  }
}

void Engine::OnHeartbeat(const wire::WorkerHeartbeat& hb, uint64_t now_ms) {
  std::string id = Str(hb.id());
  std::string address = Str(hb.address());
  if (id.empty() || address.empty()) return;
  const WorkerState* known = fleet_.Find(id);
  if (!known || known->instance != hb.instance() || !known->confirmed) {
    flatbuffers::FlatBufferBuilder fbb(64);
    Send(address, codec::Seal(fbb, wire::CreateReRegister(fbb, epoch_)));
    return;
  }
  fleet_.Touch(id, now_ms);
  auto caps = Capabilities(hb.capabilities());
  if (caps != known->capabilities) {
    std::string before, after;
    for (const auto& c : known->capabilities) before += (before.empty() ? "" : ",") + c;
    for (const auto& c : caps) after += (after.empty() ? "" : ",") + c;
    fleet_.Modify(id, [&](WorkerState& w) { w.capabilities = std::move(caps); });
    const WorkerState& w = *fleet_.Find(id);
    PersistWorker(w);
    EventFields f;
    f.type = "worker.updated";
    f.worker = id;
    f.worker_info = &w;
    f.message = "capabilities [" + before + "] -> [" + after + "]";
    Emit(f, now_ms);
    fleet_shrank_ = true;
    placement_needed_ = true;
  }
}

void Engine::LoseWorker(const std::string& id, const std::string& why, uint64_t now_ms) {
  const WorkerState* lost = fleet_.Find(id);
  if (!lost) return;
  std::vector<uint64_t> tasks(lost->tasks.begin(), lost->tasks.end());
  EventFields f;
  f.type = "worker.lost";
  f.worker = id;
  f.message = why + "; " + std::to_string(tasks.size()) + " tasks to re-place";
  Emit(f, now_ms);
  for (uint64_t task_id : tasks) {
    auto t = active_.find(task_id);
    if (t != active_.end()) Retry(&t->second, "worker_lost", "worker " + id + " lost: " + why, now_ms);
  }
  effects_.writes.Delete(keys::Worker(id));
  dispatches_.erase(id);
  fleet_.Remove(id);
  fleet_shrank_ = true;
}

// ---------------------------------------------------------------------------
// Task transitions.

void Engine::Queue(Task* t, const std::string& worker_id, uint64_t now_ms) {
  fleet_.ModifyLoad(worker_id, [&](WorkerState& w) {
    Reserve(t->spec, &w);
    w.tasks.insert(t->id);
  });
  t->state = wire::TaskState::Queued;
  t->worker = worker_id;
  t->dispatched_ms = now_ms;
  dirty_tasks_.push_back(t->id);
  dispatches_[worker_id].push_back(t->id);
  EventFields f;
  f.type = "task.queued";
  f.task = t->id;
  f.worker = worker_id;
  f.attempt = t->attempt;
  Emit(f, now_ms);
}

void Engine::Unassign(Task* t) {
  if (t->worker.empty()) return;
  const WorkerState* w = fleet_.Find(t->worker);
  if (w && w->tasks.count(t->id)) {
    fleet_.ModifyLoad(t->worker, [&](WorkerState& x) {
      x.tasks.erase(t->id);
      Release(t->spec, &x);
    });
    placement_needed_ = true;
  }
}

void Engine::Retry(Task* t, const std::string& reason, const std::string& message, uint64_t now_ms) {
  Unassign(t);
  if (t->attempt >= t->spec.max_attempts) {
    End(t, wire::TaskState::Failed, reason,
        message + "; attempts exhausted (" + std::to_string(t->attempt) + "/" + std::to_string(t->spec.max_attempts) +
            ")",
        0, now_ms);
    return;
  }
  std::string last_worker = t->worker;
  t->attempt += 1;
  t->state = wire::TaskState::Pending;
  t->worker.clear();
  pending_.Insert(t->spec, LineOf(*t));
  dirty_tasks_.push_back(t->id);
  EventFields f;
  f.type = "task.retrying";
  f.task = t->id;
  f.worker = last_worker;
  f.attempt = t->attempt;
  f.reason = reason;
  f.message = message;
  Emit(f, now_ms);
  placement_needed_ = true;
}

void Engine::End(Task* t, wire::TaskState state, const std::string& reason, const std::string& message,
                 int32_t exit_code, uint64_t now_ms, const Explanation* explanation) {
  Unassign(t);
  if (t->state == wire::TaskState::Pending) pending_.Erase(t->spec, LineOf(*t));
  t->state = state;
  t->reason = reason;
  t->message = message;
  t->exit_code = exit_code;
  EventFields f;
  f.type = state == wire::TaskState::Succeeded ? "task.succeeded"
           : state == wire::TaskState::Failed  ? "task.failed"
                                               : "task.cancelled";
  f.task = t->id;
  f.worker = t->worker;
  f.attempt = t->attempt;
  f.reason = reason;
  f.message = message;
  f.exit_code = exit_code;
  f.explanation = explanation;
  Emit(f, now_ms);
  if (!t->watcher.empty()) {
    ended_for_watchers_[t->watcher].push_back({t->id, StatusOf(state), reason, message, t->worker});
  }
  effects_.writes.Delete(keys::ActiveTask(t->id));
  PutTaskRecord(keys::Task(t->id), *t);
  uint64_t id = t->id;
  if (options_.recent_ended > 0) {  // the task leaves the active set: move, not copy
    if (recent_ended_.size() < options_.recent_ended) {
      recent_ended_.push_back(std::move(*t));
    } else {
      recent_ended_[recent_next_] = std::move(*t);
      recent_next_ = (recent_next_ + 1) % options_.recent_ended;
    }
  }
  active_.erase(id);
}

void Engine::OnWorkerReport(const std::string& from, const wire::WorkerReport& report, uint64_t now_ms) {
  std::string worker = Str(report.worker());
  if (report.started()) {
    for (const auto* ref : *report.started()) OnTaskStarted(*ref, worker, now_ms);
  }
  if (report.finished()) {
    for (const auto* finished : *report.finished()) OnTaskFinished(from, *finished, now_ms);
  }
}

void Engine::OnTaskStarted(const wire::TaskRef& ref, const std::string& worker, uint64_t now_ms) {
  auto it = active_.find(ref.task());
  if (it == active_.end()) return;
  Task& t = it->second;
  if (t.attempt != ref.attempt() || t.worker != worker || t.state != wire::TaskState::Queued) {
    return;  // stale or duplicate
  }
  t.state = wire::TaskState::Running;
  dirty_tasks_.push_back(t.id);
  EventFields f;
  f.type = "task.started";
  f.task = t.id;
  f.worker = t.worker;
  f.attempt = t.attempt;
  Emit(f, now_ms);
}

void Engine::OnTaskFinished(const std::string& from, const wire::TaskFinished& msg, uint64_t now_ms) {
  if (!msg.ref()) return;
  acks_[from].push_back({msg.ref()->task(), msg.ref()->attempt()});
  auto it = active_.find(msg.ref()->task());
  if (it == active_.end()) return;  // already ended: completion is idempotent
  Task& t = it->second;
  if (t.attempt != msg.ref()->attempt() || t.worker != Str(msg.worker())) return;
  fleet_.Touch(t.worker, now_ms);
  std::string message = Str(msg.message());
  switch (msg.outcome()) {
    case wire::Outcome::Succeeded:
      End(&t, wire::TaskState::Succeeded, "", message, msg.exit_code(), now_ms);
      break;
    case wire::Outcome::Failed:
      End(&t, wire::TaskState::Failed, "exit_status",
          message.empty() ? "exit status " + std::to_string(msg.exit_code()) : message, msg.exit_code(), now_ms);
      break;
    case wire::Outcome::TimedOut:
      End(&t, wire::TaskState::Failed, "timeout", message, msg.exit_code(), now_ms);
      break;
    case wire::Outcome::Cancelled:
      End(&t, wire::TaskState::Cancelled, "cancelled", message, msg.exit_code(), now_ms);
      break;
    case wire::Outcome::Retryable:
      Retry(&t, "executor_error", message, now_ms);
      break;
  }
}

void Engine::OnTaskLog(const wire::TaskLog& msg, uint64_t now_ms) {
  if (!msg.ref()) return;
  const Task* t = active_task(msg.ref()->task());
  if (!t || t->attempt != msg.ref()->attempt()) return;
  EventFields f;
  f.type = "task.log";
  f.task = t->id;
  f.worker = t->worker;
  f.attempt = t->attempt;
  f.stream = Str(msg.stream());
  f.data = Str(msg.data());
  Emit(f, now_ms);
}

// ---------------------------------------------------------------------------
// Control and replay.

void Engine::OnControl(const std::string& from, const wire::ControlRequest& req, uint64_t now_ms) {
  flatbuffers::FlatBufferBuilder fbb(1024);
  bool ok = true;
  std::string message;
  std::vector<flatbuffers::Offset<wire::WorkerView>> workers;
  std::vector<flatbuffers::Offset<wire::TaskView>> tasks;
  std::vector<flatbuffers::Offset<wire::Event>> events;
  uint64_t next_page = 0;
  std::string target = Str(req.target());
  switch (req.op()) {
    case wire::ControlOp::Workers:
      for (const auto& [id, w] : fleet_.workers()) {
        workers.push_back(wire::CreateWorkerView(
            fbb, fbb.CreateString(w.id), fbb.CreateString(w.node), fbb.CreateString(w.address),
            codec::ToWire(fbb, w.capabilities), codec::ToWire(fbb, w.hardware), codec::ToWire(fbb, w.labels), w.slots,
            w.slots_used, w.confirmed, w.draining, now_ms - std::min(now_ms, w.last_seen_ms),
            fbb.CreateString(w.version), w.cpus_used, w.memory_used, w.gpus_used));
      }
      break;
    case wire::ControlOp::Tasks: {
      uint64_t next = 0;
      TasksPage(fbb, req, &tasks, &next);
      next_page = next;
      break;
    }
    case wire::ControlOp::Task: {
      Status found = TaskDetail(fbb, target, &tasks, &events);
      if (!found.ok()) {
        ok = false;
        message = found.message();
      }
      break;
    }
    case wire::ControlOp::Drain:
    case wire::ControlOp::Undrain: {
      const WorkerState* w = fleet_.Find(target);
      if (!w) {
        ok = false;
        message = "no live worker \"" + target + "\"";
        break;
      }
      bool drain = req.op() == wire::ControlOp::Drain;
      if (w->draining != drain) {
        fleet_.Modify(target, [&](WorkerState& x) { x.draining = drain; });
        PersistWorker(*w);
        EventFields f;
        f.type = drain ? "worker.draining" : "worker.undrained";
        f.worker = target;
        f.message =
            drain ? "takes no new tasks; " + std::to_string(w->tasks.size()) + " still held" : "takes new tasks again";
        Emit(f, now_ms);
        if (drain) fleet_shrank_ = true;
        placement_needed_ = true;
      }
      message = (drain ? "draining " : "undrained ") + target;
      break;
    }
    case wire::ControlOp::Cancel: {
      uint64_t id = 0;
      auto it = ParseTaskName(target, &id) ? active_.find(id) : active_.end();
      if (it == active_.end()) {
        ok = false;
        message = "no task \"" + target + "\" that has not ended";
        break;
      }
      Task& t = it->second;
      if (!t.worker.empty()) {
        flatbuffers::FlatBufferBuilder c(64);
        auto ref = wire::CreateTaskRef(c, t.id, t.attempt);
        if (const WorkerState* w = fleet_.Find(t.worker)) {
          Send(w->address, codec::Seal(c, wire::CreateCancelTask(c, ref)));
        }
      }
      message = "cancelled " + TaskName(t.id);
      End(&t, wire::TaskState::Cancelled, "cancelled", "cancelled by fm-ctl", 0, now_ms);
      break;
    }
  }
  auto reply =
      wire::CreateControlReply(fbb, req.correlation(), ok, fbb.CreateString(message), fbb.CreateVector(workers),
                               fbb.CreateVector(tasks), next_page, events.empty() ? 0 : fbb.CreateVector(events));
  Send(from, codec::Seal(fbb, reply));
}

void Engine::TasksPage(flatbuffers::FlatBufferBuilder& fbb, const wire::ControlRequest& req,
                       std::vector<flatbuffers::Offset<wire::TaskView>>* views, uint64_t* next) {
  const std::string state = Str(req.state()), worker = Str(req.worker());
  const size_t limit = std::min<size_t>(req.limit() ? req.limit() : options_.task_page, options_.task_page);
  std::vector<const Task*> list;
  auto consider = [&](const Task& t) {
    if (t.id <= req.after()) return;
    if (!state.empty() && state != StateName(t.state)) return;
    if (!worker.empty() && worker != t.worker) return;
    list.push_back(&t);
  };
  for (const auto& [id, t] : active_) consider(t);
  for (const Task& t : recent_ended_) consider(t);
  // Only the page is sorted: O(tasks) per page however many there are.
  auto by_id = [](const Task* a, const Task* b) { return a->id < b->id; };
  const size_t take = std::min(limit, list.size());
  std::partial_sort(list.begin(), list.begin() + static_cast<long>(take), list.end(), by_id);
  *next = 0;
  for (size_t i = 0; i < take; ++i) {
    const Task& t = *list[i];
    if (fbb.GetSize() >= kReplyBytes) {  // the rest on the next page
      *next = list[i - 1]->id;
      return;
    }
    views->push_back(wire::CreateTaskViewDirect(fbb, TaskName(t.id).c_str(), StateName(t.state), t.attempt,
                                                t.worker.c_str(), nullptr, t.reason.c_str(), t.message.c_str()));
  }
  if (take < list.size() && take > 0) *next = list[take - 1]->id;
}

Status Engine::TaskDetail(flatbuffers::FlatBufferBuilder& fbb, const std::string& name,
                          std::vector<flatbuffers::Offset<wire::TaskView>>* views,
                          std::vector<flatbuffers::Offset<wire::Event>>* events) {
  uint64_t id = 0;
  if (!ParseTaskName(name, &id)) return Status::Invalid("\"" + name + "\" is not a task id (t42)");
  std::optional<Task> stored;
  const Task* t = active_task(id);
  if (!t) {
    for (const Task& ended : recent_ended_) {
      if (ended.id == id) t = &ended;
    }
  }
  if (!t) {
    auto read = ReadEnded(id);
    if (!read.ok()) return read.status();
    stored = std::move(*read);
    if (!stored) return Status::NotFound("no task " + TaskName(id));
    t = &*stored;
  }
  std::string waiting;
  if (t->state == wire::TaskState::Pending) {
    Explanation why = fleet_.Explain(t->spec);
    waiting =
        why.eligible == 0 ? "no eligible worker: " + why.message : std::to_string(why.eligible) + " eligible, all full";
  }
  auto command = codec::ToWire(fbb, t->spec.command);
  auto spec = codec::ToWire(fbb, t->spec);
  views->push_back(wire::CreateTaskView(fbb, fbb.CreateString(TaskName(t->id)), fbb.CreateString(StateName(t->state)),
                                        t->attempt, fbb.CreateString(t->worker), command, fbb.CreateString(t->reason),
                                        fbb.CreateString(t->message), spec,
                                        waiting.empty() ? 0 : fbb.CreateString(waiting), t->submitted_ms));
  // Its events, from its first one on; the look is bounded (a task's events are near
  // each other in the stream).
  if (!store_ || t->first_seq == 0) return Status::Ok();
  constexpr size_t kLookAt = 20000, kKeep = 500;
  size_t looked = 0;
  const std::string task_name = TaskName(t->id);
  Status s = store_->Scan(keys::Event(std::max(t->first_seq, oldest_seq_)), keys::PrefixEnd(keys::kEventPrefix),
                          [&](std::string_view, std::string_view value) {
                            ForEachStoredEvent(value, [&](const wire::Event& e) {
                              if (e.seq() >= t->first_seq && Str(e.task()) == task_name) {
                                events->push_back(CopyEvent(fbb, e));
                              }
                              return ++looked < kLookAt && events->size() < kKeep && fbb.GetSize() < kReplyBytes;
                            });
                            return looked < kLookAt && events->size() < kKeep && fbb.GetSize() < kReplyBytes;
                          });
  return s;
}

void Engine::OnReplay(const std::string& from, const wire::ReplayRequest& req) {
  flatbuffers::FlatBufferBuilder fbb(4096);
  uint64_t since = std::max<uint64_t>(req.since(), 1);
  if (since < oldest_seq_) {
    std::string error = "sequence " + std::to_string(since) + " is older than retention: the oldest available is " +
                        std::to_string(oldest_seq_);
    Send(from, codec::Seal(fbb, wire::CreateReplayBatchDirect(fbb, req.correlation(), nullptr, true, oldest_seq_,
                                                              error.c_str())));
    return;
  }
  // Blocks are keyed by their last seq: the first one at or after `since` holds it.
  std::vector<flatbuffers::Offset<wire::Event>> events;
  bool full = false;
  auto copy = [&](const wire::Event& e) {
    if (e.seq() < since) return true;
    if (events.size() >= options_.replay_batch || fbb.GetSize() >= kReplyBytes) {
      full = true;
      return false;
    }
    events.push_back(CopyEvent(fbb, e));
    return true;
  };
  Status s = store_ ? store_->Scan(keys::Event(since), keys::PrefixEnd(keys::kEventPrefix),
                                   [&](std::string_view, std::string_view value) {
                                     ForEachStoredEvent(value, copy);
                                     return !full;
                                   })
                    : Status::Ok();
  if (!s.ok()) {
    fbb.Clear();
    Send(from, codec::Seal(fbb, wire::CreateReplayBatchDirect(fbb, req.correlation(), nullptr, true, oldest_seq_,
                                                              s.message().c_str())));
    return;
  }
  bool done = !full;
  auto batch = wire::CreateReplayBatch(fbb, req.correlation(), fbb.CreateVector(events), done, oldest_seq_);
  Send(from, codec::Seal(fbb, batch));
}

// ---------------------------------------------------------------------------
// Time and the end of a turn.

void Engine::Tick(uint64_t now_ms) {
  std::vector<std::string> lost;
  for (const auto& [id, w] : fleet_.workers()) {
    if (now_ms > w.last_seen_ms + options_.liveness_window_ms) lost.push_back(id);
  }
  for (const auto& id : lost) {
    const WorkerState& w = *fleet_.Find(id);
    LoseWorker(id,
               std::string(w.confirmed ? "no heartbeat for " : "did not re-register within ") +
                   std::to_string(options_.liveness_window_ms) + " ms",
               now_ms);
  }
  for (const auto& [id, w] : fleet_.workers()) {
    if (!w.confirmed) continue;
    for (uint64_t task_id : w.tasks) {
      Task& t = active_.at(task_id);
      if (t.state == wire::TaskState::Queued && now_ms >= t.dispatched_ms + options_.redispatch_after_ms) {
        t.dispatched_ms = now_ms;
        dispatches_[id].push_back(task_id);
      }
    }
  }
  ApplyRetention(now_ms);
}

void Engine::ApplyRetention(uint64_t now_ms) {
  uint64_t new_oldest = oldest_seq_;
  if (next_seq_ - oldest_seq_ > options_.event_retention_count) {
    new_oldest = next_seq_ - options_.event_retention_count;
  }
  // By age: at most once a second, look at the oldest stored events.
  if (store_ && now_ms >= next_age_check_ms_ && now_ms > options_.event_retention_age_ms) {
    next_age_check_ms_ = now_ms + 1000;
    uint64_t cutoff = now_ms - options_.event_retention_age_ms;
    size_t looked = 0;
    // A record goes when its newest (last) event is older than the cutoff.
    Status s = store_->Scan(keys::Event(new_oldest), keys::Event(persisted_seq_),
                            [&](std::string_view key, std::string_view value) {
                              uint64_t newest_ms = UINT64_MAX;
                              if (!ForEachStoredEvent(value, [&](const wire::Event& e) {
                                    newest_ms = e.time_ms();
                                    return true;
                                  })) {
                                return false;
                              }
                              if (newest_ms >= cutoff) return false;
                              new_oldest = keys::DecodeU64(key.substr(2)) + 1;
                              return ++looked < 10000;
                            });
    (void)s;  // a failed scan only delays retention
  }
  if (new_oldest > oldest_seq_) {
    effects_.writes.DeleteRange(keys::Event(oldest_seq_), keys::Event(new_oldest));
    oldest_seq_ = new_oldest;
  }
}

void Engine::FailUnrunnable(uint64_t now_ms) {
  // Eligibility is a property of the demand: one look per demand, not per task.
  std::vector<std::pair<std::vector<uint64_t>, Explanation>> doomed;
  pending_.ForEachDemand([&](const TaskSpec& demand, const std::vector<uint64_t>& ids) {
    if (!fleet_.AnyEligible(demand)) doomed.push_back({ids, fleet_.Explain(demand)});
  });
  for (const auto& [ids, why] : doomed) {
    for (uint64_t id : ids) End(&active_.at(id), wire::TaskState::Failed, kNoEligible, why.message, 0, now_ms, &why);
  }
}

void Engine::PlacePending(uint64_t now_ms) {
  pending_.Walk([&](uint64_t id, const TaskSpec& demand) {
    if (!fleet_.HasOpenSlot()) return PendingSet::Offer::kStop;
    ++placement_offers_;
    const WorkerState* chosen = fleet_.Place(demand, options_.policy);
    if (!chosen) return PendingSet::Offer::kNoRoom;  // waits for capacity; other demands may fit
    Queue(&active_.at(id), chosen->id, now_ms);
    return PendingSet::Offer::kPlaced;
  });
}

void Engine::FlushDispatches() {
  for (auto& [worker_id, ids] : dispatches_) {
    const WorkerState* w = fleet_.Find(worker_id);
    if (!w || ids.empty()) continue;
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    flatbuffers::FlatBufferBuilder fbb(1024);
    std::vector<flatbuffers::Offset<wire::Assignment>> assignments;
    for (uint64_t id : ids) {
      const Task* t = active_task(id);
      if (!t || t->worker != worker_id || t->state == wire::TaskState::Pending) continue;
      assignments.push_back(wire::CreateAssignment(fbb, t->id, t->attempt, codec::ToWire(fbb, t->spec)));
    }
    if (assignments.empty()) continue;
    Send(w->address, codec::Seal(fbb, wire::CreateDispatch(fbb, fbb.CreateVector(assignments), epoch_)));
  }
  dispatches_.clear();
}

void Engine::FlushBatched() {
  for (auto& [address, refs] : acks_) {
    flatbuffers::FlatBufferBuilder fbb(64 + 16 * refs.size());
    std::vector<flatbuffers::Offset<wire::TaskRef>> offsets;
    offsets.reserve(refs.size());
    for (auto [task, attempt] : refs) offsets.push_back(wire::CreateTaskRef(fbb, task, attempt));
    auto first = wire::CreateTaskRef(fbb, refs.front().first, refs.front().second);
    Send(address, codec::Seal(fbb, wire::CreateTaskFinishedAck(fbb, first, fbb.CreateVector(offsets))));
  }
  acks_.clear();
  for (auto& [watcher, ended] : ended_for_watchers_) {
    flatbuffers::FlatBufferBuilder fbb(256 + 64 * ended.size());
    std::vector<flatbuffers::Offset<wire::SubmitResult>> results;
    results.reserve(ended.size());
    for (const auto& e : ended) {
      results.push_back(
          wire::CreateSubmitResultDirect(fbb, e.task, e.status, e.reason.c_str(), e.message.c_str(), e.worker.c_str()));
    }
    Send(watcher, codec::Seal(fbb, wire::CreateTaskEnded(fbb, results.front(), fbb.CreateVector(results))));
  }
  ended_for_watchers_.clear();
}

void Engine::FinishTurn(uint64_t now_ms) {
  if (fleet_shrank_) {
    fleet_shrank_ = false;
    FailUnrunnable(now_ms);
  }
  if (placement_needed_) {
    placement_needed_ = false;
    PlacePending(now_ms);
  }
  FlushDispatches();
  FlushBatched();
  StoreEventBlock();
  if (effects_.event_bytes) {
    last_event_bytes_ = effects_.event_bytes->size();
    last_event_count_ = effects_.events.size();
  }
  // Ended tasks are no longer active: their record moved to t/ when they ended.
  std::sort(dirty_tasks_.begin(), dirty_tasks_.end());
  dirty_tasks_.erase(std::unique(dirty_tasks_.begin(), dirty_tasks_.end()), dirty_tasks_.end());
  for (uint64_t id : dirty_tasks_) {
    if (const Task* t = active_task(id)) PutTaskRecord(keys::ActiveTask(id), *t);
  }
  dirty_tasks_.clear();
  if (next_task_id_ != persisted_task_id_) {
    effects_.writes.Put(std::string(keys::kMetaNextTask), keys::EncodeU64(next_task_id_));
    persisted_task_id_ = next_task_id_;
  }
  if (!epoch_persisted_) {
    effects_.writes.Put(std::string(keys::kMetaEpoch), keys::EncodeU64(epoch_));
    epoch_persisted_ = true;
  }
  if (next_seq_ != persisted_seq_) {
    effects_.writes.Put(std::string(keys::kMetaNextSeq), keys::EncodeU64(next_seq_));
    persisted_seq_ = next_seq_;
  }
}

// ---------------------------------------------------------------------------
// Encoding.

void Engine::Send(const std::string& to, std::string payload) {
  if (to.empty()) return;
  effects_.directed.push_back({to, std::move(payload)});
}

void Engine::PutTaskRecord(const std::string& key, const Task& t) {
  flatbuffers::FlatBufferBuilder& fbb = scratch_;
  fbb.Clear();
  auto spec = codec::ToWire(fbb, t.spec);
  auto worker = fbb.CreateString(t.worker);
  auto reason = t.reason.empty() ? 0 : fbb.CreateString(t.reason);
  auto message = t.message.empty() ? 0 : fbb.CreateString(t.message);
  auto watcher = t.watcher.empty() ? 0 : fbb.CreateString(t.watcher);
  fbb.Finish(wire::CreateTaskRecord(fbb, t.id, spec, t.state, t.attempt, worker, t.submitted_ms, reason, message,
                                    t.exit_code, watcher, t.order, t.rejected, t.first_seq));
  effects_.writes.Put(key, std::string_view(reinterpret_cast<const char*>(fbb.GetBufferPointer()), fbb.GetSize()));
}

void Engine::Emit(const EventFields& f, uint64_t now_ms) {
  flatbuffers::FlatBufferBuilder& fbb = scratch_;
  fbb.Clear();
  auto opt = [&](const std::string& s) { return s.empty() ? 0 : fbb.CreateString(s); };
  flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<wire::PredicateCount>>> breakdown = 0;
  uint32_t eligible = 0, fleet = 0;
  if (f.explanation) {
    std::vector<flatbuffers::Offset<wire::PredicateCount>> counts;
    for (const auto& pc : f.explanation->breakdown) {
      counts.push_back(wire::CreatePredicateCountDirect(fbb, pc.predicate.c_str(), pc.workers, pc.detail.c_str()));
    }
    breakdown = fbb.CreateVector(counts);
    eligible = f.explanation->eligible;
    fleet = f.explanation->fleet;
  }
  flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<flatbuffers::String>>> caps = 0;
  flatbuffers::Offset<wire::Hardware> hw = 0;
  flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<wire::KeyValue>>> labels = 0;
  if (f.worker_info) {
    caps = codec::ToWire(fbb, f.worker_info->capabilities);
    hw = codec::ToWire(fbb, f.worker_info->hardware);
    labels = codec::ToWire(fbb, f.worker_info->labels);
  }
  uint64_t seq = next_seq_++;
  auto type = fbb.CreateString(f.type);
  auto time = fbb.CreateString(EventTime(now_ms));
  auto task = f.task ? fbb.CreateString(TaskName(f.task)) : 0;
  auto worker = opt(f.worker), reason = opt(f.reason), message = opt(f.message), stream = opt(f.stream),
       data = opt(f.data);
  auto event = wire::CreateEvent(fbb, seq, type, time, task, worker, reason, message, f.attempt, f.exit_code, stream,
                                 data, eligible, fleet, breakdown, caps, hw, labels, now_ms);
  codec::FinishEnvelope(fbb, event);
  if (!effects_.event_bytes) {
    // Sized like the last turn's, so that a busy turn does not grow it step by step.
    effects_.event_bytes = std::make_shared<std::string>();
    effects_.event_bytes->reserve(std::max<size_t>(64 << 10, last_event_bytes_));
    effects_.events.reserve(last_event_count_);
  }
  std::string& bytes = *effects_.event_bytes;
  auto offset = static_cast<uint32_t>(bytes.size());
  auto size = static_cast<uint32_t>(fbb.GetSize());
  bytes.append(reinterpret_cast<const char*>(fbb.GetBufferPointer()), size);
  effects_.events.push_back({f.type, effects_.event_bytes, offset, size});
  effects_.unstored.push_back({offset, size});
  effects_.unstored_last_seq = seq;
  effects_.unstored_size += size;
  if (effects_.unstored_size >= kEventBlockBytes) StoreEventBlock();
}

const std::string& Engine::EventTime(uint64_t now_ms) {
  if (now_ms == formatted_ms_) return formatted_time_;
  // "YYYY-MM-DDTHH:MM:SS.mmmZ": the calendar part changes once a second.
  if (formatted_time_.size() != 24 || now_ms / 1000 != formatted_ms_ / 1000) {
    formatted_time_ = FormatTimeMs(now_ms);
  } else {
    unsigned ms = now_ms % 1000;
    formatted_time_[20] = static_cast<char>('0' + ms / 100);
    formatted_time_[21] = static_cast<char>('0' + ms / 10 % 10);
    formatted_time_[22] = static_cast<char>('0' + ms % 10);
  }
  formatted_ms_ = now_ms;
  return formatted_time_;
}

void Engine::StoreEventBlock() {
  if (effects_.unstored.empty()) return;
  flatbuffers::FlatBufferBuilder& fbb = scratch_;
  fbb.Clear();
  const std::string& bytes = *effects_.event_bytes;
  std::vector<flatbuffers::Offset<wire::EventBytes>> events;
  events.reserve(effects_.unstored.size());
  for (auto [offset, size] : effects_.unstored) {
    auto envelope = fbb.CreateVector(reinterpret_cast<const uint8_t*>(bytes.data()) + offset, size);
    events.push_back(wire::CreateEventBytes(fbb, envelope));
  }
  effects_.writes.Put(keys::Event(effects_.unstored_last_seq),
                      codec::Seal(fbb, wire::CreateEventBlock(fbb, fbb.CreateVector(events))));
  effects_.unstored.clear();
  effects_.unstored_size = 0;
}

}  // namespace fm::sched
