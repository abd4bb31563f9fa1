#include "scheduler/engine.h"

#include <algorithm>

#include "runtime/addresses.h"
#include "runtime/policy.h"
#include "scheduler/predicates.h"
#include "scheduler/records.h"
#include "scheduler/views.h"
#include "schemas/codec.h"
#include "schemas/json.h"
#include "schemas/units.h"
#include "schemas/vocabulary.h"
#include "store/keys.h"

namespace fm::sched {

namespace keys = store::keys;
using codec::Str;

namespace {

// "a, b": the workers a task failed on, for task.retrying and fm-ctl task.
std::string Listed(const std::vector<std::string>& ids) {
  std::string out;
  for (const auto& id : ids) out += (out.empty() ? "" : ", ") + id;
  return out;
}

std::vector<std::string> Capabilities(const flatbuffers::Vector<flatbuffers::Offset<flatbuffers::String>>* v) {
  auto caps = codec::Strings(v);
  Normalize(&caps);
  return caps;
}

flatbuffers::Offset<wire::SubmitResult> MakeResult(flatbuffers::FlatBufferBuilder& fbb, uint64_t task,
                                                   wire::SubmitStatus status, wire::Reason reason = wire::Reason::None,
                                                   const std::string& message = {}, const std::string& worker = {}) {
  std::string_view r = Name(reason);
  return wire::CreateSubmitResult(fbb, task, status, r.empty() ? 0 : fbb.CreateString(r.data(), r.size()),
                                  message.empty() ? 0 : fbb.CreateString(message),
                                  worker.empty() ? 0 : fbb.CreateString(worker));
}

EngineOptions Validated(EngineOptions o) {
  o.Validate();
  return o;
}

EventLogOptions LogOptions(const EngineOptions& o) {
  return {o.event_retention_count, o.event_retention_age_ms, o.replay_batch, o.log_retention_bytes};
}

}  // namespace

void EngineOptions::Validate() {
  liveness_window_ms = std::max<uint64_t>(liveness_window_ms, 100);
  default_max_attempts = std::clamp<uint32_t>(default_max_attempts, 1, 1000);
  redispatch_after_ms = std::max<uint64_t>(redispatch_after_ms, 50);
  event_retention_count = std::max<uint64_t>(event_retention_count, 10);
  event_retention_age_ms = std::max<uint64_t>(event_retention_age_ms, 1000);
  log_retention_bytes = std::max<uint64_t>(log_retention_bytes, 1 << 20);
  task_retention_count = std::max<uint64_t>(task_retention_count, 1);
  task_retention_age_ms = std::max<uint64_t>(task_retention_age_ms, 1000);
  task_trim_per_tick = std::max<size_t>(task_trim_per_tick, 1);
  replay_batch = std::clamp<size_t>(replay_batch, 1, 10000);
  if (fresh_epoch == 0) fresh_epoch = 1;
}

Engine::Engine(EngineOptions options) : options_(Validated(options)), log_(LogOptions(options_)) {
  recent_ended_.reserve(options_.recent_ended);
}

// ---------------------------------------------------------------------------
// Recovery.

Status Engine::Recover(const store::Store* store, uint64_t now_ms) {
  store_ = store;
  auto next_task = records::ReadMeta(*store, keys::kMetaNextTask, 1);
  if (!next_task.ok()) return next_task.status();
  next_task_id_ = *next_task;
  persisted_task_id_ = next_task_id_;
  auto epoch = records::ReadMeta(*store, keys::kMetaEpoch, 0);
  if (!epoch.ok()) return epoch.status();
  epoch_ = *epoch;
  epoch_persisted_ = epoch_ != 0;
  if (epoch_ == 0) epoch_ = options_.fresh_epoch;
  if (Status s = log_.Recover(store); !s.ok()) return s;
  if (Status s = RecoverEndedCount(store); !s.ok()) return s;
  if (Status s = RecoverRecentEnded(store); !s.ok()) return s;
  Status s = records::ScanWorkers(*store, now_ms, [&](WorkerState w) { fleet_.Add(std::move(w)); });
  if (!s.ok()) return s;
  return records::ScanActiveTasks(*store, [&](Task t) {
    next_order_ = std::max(next_order_, t.order + 1);
    next_task_id_ = std::max(next_task_id_, t.id + 1);
    if (!t.spec.key.empty()) client_keys_[ScopedKey(t.owner, t.spec.key)] = t.id;
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
      if (t.not_before_ms > now_ms) {
        backoff_.emplace(t.not_before_ms, t.id);
      } else {
        t.not_before_ms = 0;
        pending_.Insert(t.spec, LineOf(t));
      }
    }
    active_.emplace(t.id, std::move(t));
  });
}

void Engine::Start(uint64_t now_ms) {
  EventFields f;
  f.type = wire::EventType::SchedulerStarted;
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
  last_inbound_ms_ = now_ms;
  switch (env.body_type()) {
    case wire::Body::SubmitRequest:
      return OnSubmit(from, *env.body_as_SubmitRequest(), now_ms);
    case wire::Body::TaskStarted:
      if (!env.body_as_TaskStarted()->ref()) return;
      return OnTaskStarted(from, *env.body_as_TaskStarted()->ref(), now_ms);
    case wire::Body::WorkerReport:
      return OnWorkerReport(from, *env.body_as_WorkerReport(), now_ms);
    case wire::Body::TaskReady:
      return OnTaskReady(from, *env.body_as_TaskReady(), now_ms);
    case wire::Body::TaskFinished:
      return OnTaskFinished(from, *env.body_as_TaskFinished(), now_ms);
    case wire::Body::TaskLog:
      return OnTaskLog(from, *env.body_as_TaskLog(), now_ms);
    case wire::Body::ControlRequest:
      return OnControl(from, *env.body_as_ControlRequest(), now_ms);
    case wire::Body::ReplayRequest:
      if (!Authorized(from, "replay the event stream", Who::kUser)) return;
      return OnReplay(from, *env.body_as_ReplayRequest());
    case wire::Body::WorkerRegistration:
      // Directed announcements come from the worker they announce, at its address.
      if (Str(env.body_as_WorkerRegistration()->address()) != from ||
          !FromWorkerNamed(from, Str(env.body_as_WorkerRegistration()->id()))) {
        return Refused(from, "a registration of worker \"" + Str(env.body_as_WorkerRegistration()->id()) +
                                 "\" from another address");
      }
      return OnRegistration(*env.body_as_WorkerRegistration(), now_ms);
    case wire::Body::WorkerHeartbeat:
      if (Str(env.body_as_WorkerHeartbeat()->address()) != from ||
          !FromWorkerNamed(from, Str(env.body_as_WorkerHeartbeat()->id()))) {
        return Refused(
            from, "a heartbeat of worker \"" + Str(env.body_as_WorkerHeartbeat()->id()) + "\" from another address");
      }
      return OnHeartbeat(*env.body_as_WorkerHeartbeat(), now_ms);
    case wire::Body::Error:
      return;  // e.g. "unreachable" for a submitter that left
    default:
      Send(from,
           codec::EncodeError(wire::ErrorCode::Unsupported, std::string("the scheduler does not take ") +
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
  last_inbound_ms_ = now_ms;
  // The broker let only this worker's key publish this (runtime/policy.h MayPublish);
  // the announced address must also be one that key may hold.
  switch (env.body_type()) {
    case wire::Body::WorkerRegistration: {
      const auto& reg = *env.body_as_WorkerRegistration();
      if (!FromWorkerNamed(Str(reg.address()), Str(reg.id()))) {
        return Refused(Str(reg.address()), "a registration of worker \"" + Str(reg.id()) + "\" with that address");
      }
      return OnRegistration(reg, now_ms);
    }
    case wire::Body::WorkerHeartbeat: {
      const auto& hb = *env.body_as_WorkerHeartbeat();
      if (!FromWorkerNamed(Str(hb.address()), Str(hb.id()))) {
        return Refused(Str(hb.address()), "a heartbeat of worker \"" + Str(hb.id()) + "\" with that address");
      }
      return OnHeartbeat(hb, now_ms);
    }
    default:
      return;
  }
}

// ---------------------------------------------------------------------------
// Who may do what (runtime/policy.h for the address forms).

bool Engine::FromWorkerOf(const std::string& address, const std::string& id) const {
  const WorkerState* w = fleet_.Find(id);
  return w != nullptr ? w->address == address : FromWorkerNamed(address, id);
}

bool Engine::FromWorkerNamed(const std::string& address, const std::string& id) const {
  if (!options_.authenticate) return true;
  bus::Principal p = bus::PrincipalOf(address);
  return p.role == bus::Role::kWorker && p.name == id;
}

void Engine::Refused(const std::string& from, const std::string& what) {
  ++unauthorized_;
  bus::Principal p = bus::PrincipalOf(from);
  effects_.refused.emplace_back(
      from, std::string("refused ") + what + " from " + from + " (role " + bus::RoleName(p.role) + ")");
}

bool Engine::Authorized(const std::string& from, const char* action, Who who, const std::string& owner) {
  if (!options_.authenticate) return true;
  bus::Principal p = bus::PrincipalOf(from);
  bool ok = p.role == bus::Role::kOperator ||
            (p.role == bus::Role::kClient && (who == Who::kUser || (who == Who::kOwner && owner == p.name)));
  if (ok) return true;
  std::string message = std::string("role ") + bus::RoleName(p.role) + (p.name.empty() ? "" : " (\"" + p.name + "\")") +
                        " may not " + action;
  if (who == Who::kOwner && p.role == bus::Role::kClient) {
    message += ": the task belongs to " + (owner.empty() ? std::string("nobody named") : "\"" + owner + "\"") +
               " (an operator may cancel any task)";
  }
  if (who == Who::kOperator && p.role == bus::Role::kClient) message += " (that takes role operator)";
  Send(from, codec::EncodeError(wire::ErrorCode::Unauthorized, message, bus::kSchedulerAddress));
  Refused(from, std::string("\"") + action + "\"");
  return false;
}

std::optional<std::string> Engine::ClientName(const std::string& from) const {
  if (!options_.authenticate) return std::nullopt;
  bus::Principal p = bus::PrincipalOf(from);
  if (p.role == bus::Role::kOperator) return std::nullopt;
  return p.name;  // a client's (Authorized admitted no other role to read)
}

bool Engine::FromTaskWorker(const Task& t, const std::string& from, const char* what) {
  const WorkerState* w = t.worker.empty() ? nullptr : fleet_.Find(t.worker);
  if (w && w->address == from) return true;
  Refused(from, std::string(what) + " about " + TaskName(t.id) + ", which is " +
                    (t.worker.empty() ? std::string("on no worker") : "on worker " + t.worker));
  return false;
}

// ---------------------------------------------------------------------------
// Submission.

Result<std::optional<Task>> Engine::ReadEnded(uint64_t id) const {
  if (!store_) return std::optional<Task>();
  return records::ReadEndedTask(*store_, id);
}

Result<std::optional<Engine::KeyedTask>> Engine::FindKeyed(const std::string& key) {
  auto it = client_keys_.find(key);
  if (it == client_keys_.end()) {
    if (!store_) return std::optional<KeyedTask>();
    auto id = records::ReadKey(*store_, key);
    if (!id.ok()) return id.status();
    if (!id->has_value()) return std::optional<KeyedTask>();
    it = client_keys_.emplace(key, **id).first;
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
  if (!Authorized(from, "submit tasks", Who::kUser)) return;
  const std::string owner = options_.authenticate ? bus::PrincipalOf(from).name : std::string();
  flatbuffers::FlatBufferBuilder fbb(256);
  std::vector<flatbuffers::Offset<wire::SubmitResult>> results;
  if (req.tasks()) {
    results.reserve(req.tasks()->size());
    for (const wire::TaskSpec* wire_spec : *req.tasks()) {
      TaskSpec spec = codec::FromWire(wire_spec);
      Status valid = ValidateTaskSpec(spec);
      if (!valid.ok()) {
        results.push_back(MakeResult(fbb, 0, wire::SubmitStatus::Rejected, wire::Reason::InvalidTask, valid.message()));
        continue;
      }
      if (!spec.image.empty()) spec.required_capabilities.push_back("docker");
      // A session goes only where one was really started (the worker's probe by doing).
      if (spec.session) spec.required_capabilities.push_back("session");
      Normalize(&spec.required_capabilities);
      if (spec.max_attempts == 0) spec.max_attempts = options_.default_max_attempts;

      if (!spec.key.empty()) {
        auto keyed = FindKeyed(ScopedKey(owner, spec.key));
        if (!keyed.ok()) {
          if (read_error_.ok()) read_error_ = keyed.status();
          std::string message = "cannot look up key \"" + spec.key + "\": " + keyed.status().message();
          results.push_back(
              MakeResult(fbb, 0, wire::SubmitStatus::Rejected, wire::Reason::StorageUnavailable, message));
          continue;
        }
        if (const auto& first = *keyed) {
          if (first->spec && *first->spec != spec) {
            std::string message = "key \"" + spec.key + "\" was first used for task " + TaskName(first->id) +
                                  " with a different body; use a new key for a different task";
            results.push_back(
                MakeResult(fbb, first->id, wire::SubmitStatus::Rejected, wire::Reason::KeyConflict, message));
            continue;
          }
          results.push_back(MakeResult(fbb, first->id, first->status, first->reason, first->message, first->worker));
          continue;
        }
      }

      Task t;
      t.id = next_task_id_++;
      ++stats_.submitted;
      t.spec = std::move(spec);
      t.submitted_ms = now_ms;
      t.first_seq = log_.next_seq();  // its first event is the next one
      t.order = next_order_++;
      t.owner = owner;
      if (req.watch()) t.watcher = from;
      if (!t.spec.key.empty()) {
        const std::string scoped = ScopedKey(owner, t.spec.key);
        client_keys_[scoped] = t.id;
        effects_.writes.Put(keys::ClientKey(scoped), keys::EncodeU64(t.id));
      }
      uint64_t last_lost_ms = 0;
      if (!fleet_.AnyEligible(t.spec) && LostEligible(t.spec, &last_lost_ms) == 0) {
        Explanation why = fleet_.Explain(t.spec);
        // Fail fast: nothing is queued, no worker sees it.
        results.push_back(
            MakeResult(fbb, t.id, wire::SubmitStatus::Rejected, wire::Reason::NoEligibleWorker, why.message));
        t.watcher.clear();  // the reply already says so
        t.rejected = true;
        auto [it, inserted] = active_.emplace(t.id, std::move(t));
        End(&it->second, wire::TaskState::Failed, wire::Reason::NoEligibleWorker, why.message, 0, now_ms, &why);
        continue;
      }
      results.push_back(wire::CreateSubmitResult(fbb, t.id, wire::SubmitStatus::Accepted));
      EventFields f;
      f.type = wire::EventType::TaskSubmitted;
      f.task = t.id;
      f.attempt = t.attempt;
      pending_.Insert(t.spec, LineOf(t));
      dirty_tasks_.push_back(t.id);
      Task& stored = active_.emplace(t.id, std::move(t)).first->second;
      Emit(f, now_ms);
      if (last_lost_ms != 0) MarkWaiting(&stored, now_ms);  // only lost workers could run it
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

void Engine::OnRegistration(const wire::WorkerRegistration& reg, uint64_t now_ms) {
  std::string id = Str(reg.id());
  std::string address = Str(reg.address());
  if (id.empty() || address.empty()) return;  // nobody to answer; the daemon logs malformed input
  if (replaced_.count({id, reg.instance()})) {
    // An instance a restart replaced: it must stop, the new one keeps the id.
    flatbuffers::FlatBufferBuilder fbb(256);
    std::string message = "worker \"" + id + "\" was replaced by a newer instance on its node";
    Send(address, codec::Seal(fbb, wire::CreateWorkerRejectedDirect(fbb, id.c_str(), message.c_str())));
    return;
  }
  const WorkerState* known = fleet_.Find(id);
  // A drain is the operator's word about the worker, not about one process of it: a
  // restart in the middle of maintenance must not bring it back into service.
  const WorkerState* before = known;
  if (!before) {
    auto lost = lost_.find(id);
    if (lost != lost_.end()) before = &lost->second.shape;
  }
  const bool was_draining = before && before->draining;
  const std::string drain_reason = before ? before->drain_reason : std::string();
  if (known && known->instance != reg.instance()) {
    if (known->confirmed && known->node == Str(reg.node())) {
      // The worker restarted on its node (its old instance was killed or hangs): the new
      // instance takes over at once and the old one's tasks are placed again. Should the
      // old one still run, it is told to stop.
      std::string message = "worker \"" + id + "\" was replaced by a newer instance on its node";
      flatbuffers::FlatBufferBuilder fbb(256);
      Send(known->address, codec::Seal(fbb, wire::CreateWorkerRejectedDirect(fbb, id.c_str(), message.c_str())));
      replaced_.insert({id, known->instance});
      if (replaced_.size() > 10000) replaced_.erase(replaced_.begin());
      LoseWorker(id, "replaced by a new instance on node " + known->node, now_ms);
      lost_.erase(id);  // it is back
      known = nullptr;
    } else if (known->confirmed) {
      // A second process claims a live worker's id: refuse it, the live one keeps its work.
      std::string message = "worker id \"" + id + "\" is already in use by a live worker on node " + known->node +
                            " (last heard " + std::to_string(now_ms - std::min(now_ms, known->last_seen_ms)) +
                            " ms ago); choose another --id or stop that worker";
      flatbuffers::FlatBufferBuilder fbb(256);
      Send(address, codec::Seal(fbb, wire::CreateWorkerRejectedDirect(fbb, id.c_str(), message.c_str())));
      EventFields f;
      f.type = wire::EventType::WorkerRejected;
      f.worker = id;
      f.reason = wire::Reason::DuplicateWorkerId;
      f.message = message + " (refused node " + Str(reg.node()) + ")";
      Emit(f, now_ms);
      return;
    } else {
      // Known only from the store since this scheduler started: a restarted process.
      LoseWorker(id, "replaced by a new instance of the same worker", now_ms);
      lost_.erase(id);
      known = nullptr;
    }
  }
  lost_.erase(id);
  if (!known) {
    WorkerState fresh;
    fresh.id = id;
    fresh.draining = was_draining;
    fresh.drain_reason = drain_reason;
    fleet_.Add(std::move(fresh));
  }
  auto caps = Capabilities(reg.capabilities());
  auto hardware = codec::FromWire(reg.hardware());
  auto quarantined = codec::FromWire(reg.quarantined());
  // A changed announcement may leave waiting tasks with no eligible worker.
  if (known && (caps != known->capabilities || hardware != known->hardware)) fleet_shrank_ = true;
  const std::map<std::string, std::string> quarantined_before =
      known ? known->quarantined : std::map<std::string, std::string>();
  fleet_.Modify(id, [&](WorkerState& w) {
    w.address = address;
    w.node = Str(reg.node());
    w.version = Str(reg.version());
    w.noop_executor = reg.noop_executor();
    w.instance = reg.instance();
    w.capabilities = std::move(caps);
    w.hardware = std::move(hardware);
    w.labels = codec::FromWire(reg.labels());
    w.quarantined = quarantined;
    w.limits = Str(reg.limits());
    w.slots = std::max<uint32_t>(reg.slots(), 1);
    w.last_seen_ms = now_ms;
    w.confirmed = true;
  });
  const WorkerState& w = *fleet_.Find(id);
  records::PutWorker(&effects_.writes, w);
  EventFields f;
  f.type = wire::EventType::WorkerRegistered;
  f.worker = id;
  f.worker_info = &w;
  f.message = "node " + w.node + ", " + std::to_string(w.slots) + " slots, version " + w.version +
              (w.noop_executor ? ", NOOP EXECUTOR: completes tasks without running them" : "") +
              (w.limits == "off" ? ", limits: off (exec tasks' cpus and memory are not enforced)" : "");
  Emit(f, now_ms);
  EmitQuarantines(id, quarantined_before, quarantined, now_ms);
  Reconcile(*fleet_.Find(id), reg.running(), now_ms);
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
      Retry(&t, wire::Reason::WorkerLost, "worker " + worker.id + " no longer holds the task (it restarted)", now_ms);
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
  auto quarantined = codec::FromWire(hb.quarantined());
  if (quarantined != known->quarantined) {
    auto before = known->quarantined;
    fleet_.Modify(id, [&](WorkerState& w) {
      w.quarantined = quarantined;
      w.capabilities = caps;
    });
    records::PutWorker(&effects_.writes, *fleet_.Find(id));
    EmitQuarantines(id, before, quarantined, now_ms);
    fleet_shrank_ = true;
    placement_needed_ = true;
    known = fleet_.Find(id);
  }
  if (caps != known->capabilities) {
    std::string before, after;
    for (const auto& c : known->capabilities) before += (before.empty() ? "" : ",") + c;
    for (const auto& c : caps) after += (after.empty() ? "" : ",") + c;
    fleet_.Modify(id, [&](WorkerState& w) { w.capabilities = std::move(caps); });
    const WorkerState& w = *fleet_.Find(id);
    records::PutWorker(&effects_.writes, w);
    EventFields f;
    f.type = wire::EventType::WorkerUpdated;
    f.worker = id;
    f.worker_info = &w;
    f.message = "capabilities [" + before + "] -> [" + after + "]";
    Emit(f, now_ms);
    fleet_shrank_ = true;
    placement_needed_ = true;
  }
}

void Engine::EmitQuarantines(const std::string& id, const std::map<std::string, std::string>& before,
                             const std::map<std::string, std::string>& after, uint64_t now_ms) {
  const WorkerState* w = fleet_.Find(id);
  for (const auto& [capability, reason] : after) {
    auto was = before.find(capability);
    if (was != before.end() && was->second == reason) continue;
    EventFields f;
    f.type = wire::EventType::WorkerQuarantined;
    f.worker = id;
    f.worker_info = w;
    f.message = "capability " + capability + " withdrawn: " + reason;
    Emit(f, now_ms);
  }
  for (const auto& [capability, reason] : before) {
    if (after.count(capability)) continue;
    EventFields f;
    f.type = wire::EventType::WorkerRecovered;
    f.worker = id;
    f.worker_info = w;
    f.message = "capability " + capability + " announced again: a re-probe started a container (was: " + reason + ")";
    Emit(f, now_ms);
  }
}

void Engine::LoseWorker(const std::string& id, const std::string& why, uint64_t now_ms) {
  const WorkerState* lost = fleet_.Find(id);
  if (!lost) return;
  ++stats_.worker_losses;
  std::vector<uint64_t> tasks(lost->tasks.begin(), lost->tasks.end());
  EventFields f;
  f.type = wire::EventType::WorkerLost;
  f.worker = id;
  f.message = why + "; " + std::to_string(tasks.size()) + " tasks to re-place";
  Emit(f, now_ms);
  for (uint64_t task_id : tasks) {
    auto t = active_.find(task_id);
    if (t != active_.end()) Retry(&t->second, wire::Reason::WorkerLost, "worker " + id + " lost: " + why, now_ms);
  }
  effects_.writes.Delete(keys::Worker(id));
  dispatches_.erase(id);
  if (options_.reconnect_grace_ms > 0) lost_[id] = {*fleet_.Find(id), now_ms};
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
  f.type = wire::EventType::TaskQueued;
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

uint64_t RetryDelayMs(const TaskSpec& spec, uint64_t task, uint32_t attempt) {
  const uint64_t base = spec.retry_backoff_ms != 0 ? spec.retry_backoff_ms : kDefaultRetryBackoffMs;
  uint64_t delay = base;
  for (uint32_t i = 1; i < attempt && delay < kMaxRetryDelayMs; ++i) delay *= 2;
  delay = std::min(delay, kMaxRetryDelayMs);
  // Jitter from 0.75x to 1.25x, from the task and attempt alone (the engine has no
  // randomness): retries of a burst that failed together spread out.
  uint64_t h = task * 0x9E3779B97F4A7C15ull + attempt * 0xBF58476D1CE4E5B9ull;
  h ^= h >> 31;
  h *= 0x94D049BB133111EBull;
  h ^= h >> 29;
  return delay * (750 + h % 501) / 1000;
}

void Engine::Retry(Task* t, wire::Reason reason, const std::string& message, uint64_t now_ms, bool blame_worker,
                   bool spent) {
  if (t->spec.session && t->endpoint.port != 0) {
    // It was ready, so someone may be connected to it: a session is never silently
    // started again elsewhere, whatever ended it (its worker lost, its daemon failing).
    End(t, wire::TaskState::Failed, reason, message + "; a session is never re-run elsewhere", 0, now_ms);
    return;
  }
  Unassign(t);
  if (blame_worker && !t->worker.empty() && !std::binary_search(t->failed_on.begin(), t->failed_on.end(), t->worker) &&
      t->failed_on.size() < 64) {
    t->failed_on.insert(std::upper_bound(t->failed_on.begin(), t->failed_on.end(), t->worker), t->worker);
  }
  if (!spent) {
    ++t->handed_back;
  } else if (t->attempt - t->handed_back >= t->spec.max_attempts) {
    End(t, wire::TaskState::Failed, reason,
        message + "; attempts exhausted (" + std::to_string(t->attempt - t->handed_back) + "/" +
            std::to_string(t->spec.max_attempts) + ")",
        0, now_ms);
    return;
  }
  ++stats_.retries;
  std::string last_worker = t->worker;
  t->attempt += 1;
  t->state = wire::TaskState::Pending;
  t->worker.clear();
  t->gpus.clear();
  t->endpoint = Endpoint();
  // A lost worker says nothing about the task: it is placed again at once. A failure
  // waits a backoff (exponential, jittered) so that a burst of retries does not hit the
  // same fault again at once. An attempt handed back unstarted goes elsewhere at once,
  // unless that keeps happening.
  std::string when = "placed again now";
  if (spent ? blame_worker : t->handed_back > kHandBacksWithoutBackoff) {
    uint64_t delay = RetryDelayMs(
        t->spec, t->id, spent ? t->attempt - t->handed_back - 1 : t->handed_back - kHandBacksWithoutBackoff - 1);
    t->not_before_ms = now_ms + delay;
    backoff_.emplace(t->not_before_ms, t->id);
    char text[32];
    std::snprintf(text, sizeof text, "%.1f", delay / 1000.0);
    when = std::string("retry in ") + text + " s (backoff)";
    if (!t->failed_on.empty()) when += ", avoiding " + Listed(t->failed_on) + " where it can";
  } else {
    t->not_before_ms = 0;
    pending_.Insert(t->spec, LineOf(*t));
    placement_needed_ = true;
    if (!spent) when += ", no attempt spent, avoiding " + Listed(t->failed_on) + " where it can";
  }
  dirty_tasks_.push_back(t->id);
  EventFields f;
  f.type = wire::EventType::TaskRetrying;
  f.task = t->id;
  f.worker = last_worker;
  f.attempt = t->attempt;
  f.reason = reason;
  f.message = message + "; " + when;
  Emit(f, now_ms);
}

void Engine::ReleaseBackoff(uint64_t now_ms) {
  while (!backoff_.empty() && backoff_.begin()->first <= now_ms) {
    auto [due, id] = *backoff_.begin();
    backoff_.erase(backoff_.begin());
    auto it = active_.find(id);
    // Ended or placed meanwhile (a cancel), or a later backoff of the same task.
    if (it == active_.end() || it->second.state != wire::TaskState::Pending || it->second.not_before_ms != due) {
      continue;
    }
    it->second.not_before_ms = 0;
    pending_.Insert(it->second.spec, LineOf(it->second));
    placement_needed_ = true;
    fleet_shrank_ = true;  // it may have no eligible worker left: judged at the turn's end
  }
}

void Engine::End(Task* t, wire::TaskState state, wire::Reason reason, const std::string& message, int32_t exit_code,
                 uint64_t now_ms, const Explanation* explanation) {
  Unassign(t);
  if (t->state == wire::TaskState::Pending) pending_.Erase(t->spec, LineOf(*t));
  ++stats_.ended[{state, reason}];
  t->state = state;
  t->reason = reason;
  t->message = message;
  t->exit_code = exit_code;
  EventFields f;
  f.type = state == wire::TaskState::Succeeded ? wire::EventType::TaskSucceeded
           : state == wire::TaskState::Failed  ? wire::EventType::TaskFailed
                                               : wire::EventType::TaskCancelled;
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
  t->ended_ms = now_ms;
  records::PutTask(&effects_.writes, keys::Task(t->id), *t, scratch_);
  ++ended_stored_;
  ended_stored_persisted_ = false;
  // Ended below the trim cursor (it ran long), or in the turn of a trim that cannot see
  // it yet: the scan would pass it by, so the trim visits it apart.
  if (t->id < task_trim_from_) {
    trim_stragglers_.insert(t->id);
  } else {
    ended_this_turn_.push_back(t->id);
  }
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
  if (report.started()) {
    std::map<std::pair<uint64_t, uint32_t>, std::vector<std::string>> devices;
    if (report.devices()) {
      for (const auto* d : *report.devices()) {
        if (d->ref()) devices[{d->ref()->task(), d->ref()->attempt()}] = codec::Strings(d->gpus());
      }
    }
    for (const auto* ref : *report.started()) {
      auto d = devices.find({ref->task(), ref->attempt()});
      OnTaskStarted(from, *ref, now_ms, d == devices.end() ? std::vector<std::string>() : std::move(d->second));
    }
  }
  if (report.finished()) {
    for (const auto* finished : *report.finished()) OnTaskFinished(from, *finished, now_ms);
  }
}

void Engine::OnTaskStarted(const std::string& from, const wire::TaskRef& ref, uint64_t now_ms,
                           std::vector<std::string> gpus) {
  auto it = active_.find(ref.task());
  if (it == active_.end()) return;
  Task& t = it->second;
  if (t.attempt != ref.attempt() || t.state != wire::TaskState::Queued) return;  // stale or duplicate
  if (!FromTaskWorker(t, from, "a start")) return;
  t.state = wire::TaskState::Running;
  // Never more than it asked for: a worker's list is bounded by the task's own count.
  if (gpus.size() > t.spec.resources.gpus) gpus.resize(t.spec.resources.gpus);
  t.gpus = std::move(gpus);
  dirty_tasks_.push_back(t.id);
  EventFields f;
  f.type = wire::EventType::TaskStarted;
  f.task = t.id;
  f.worker = t.worker;
  f.attempt = t.attempt;
  f.gpus = &t.gpus;
  Emit(f, now_ms);
}

void Engine::OnTaskReady(const std::string& from, const wire::TaskReady& msg, uint64_t now_ms) {
  if (!msg.ref() || !msg.endpoint()) return;
  auto it = active_.find(msg.ref()->task());
  if (it == active_.end()) return;
  Task& t = it->second;
  if (t.attempt != msg.ref()->attempt() || t.state != wire::TaskState::Running || !t.spec.session) return;
  if (!FromTaskWorker(t, from, "a session endpoint")) return;
  Endpoint endpoint = codec::FromWire(msg.endpoint());
  if (endpoint == t.endpoint) return;  // said again (a re-registration): nothing new
  if (Status valid = ValidateEndpoint(endpoint); !valid.ok()) {
    Refused(from, "a session endpoint for " + TaskName(t.id) + ": " + valid.message());
    return;
  }
  t.endpoint = std::move(endpoint);
  dirty_tasks_.push_back(t.id);
  EventFields f;
  f.type = wire::EventType::TaskReady;
  f.task = t.id;
  f.worker = t.worker;
  f.attempt = t.attempt;
  f.endpoint = &t.endpoint;
  f.message = "ssh -p " + std::to_string(t.endpoint.port) + " " + t.endpoint.user + "@" + t.endpoint.host;
  Emit(f, now_ms);
  if (!t.watcher.empty()) {  // fm-submit --wait says where to connect as soon as it can
    flatbuffers::FlatBufferBuilder fbb(256);
    auto ref = wire::CreateTaskRef(fbb, t.id, t.attempt);
    Send(t.watcher,
         codec::Seal(fbb, wire::CreateTaskReady(fbb, ref, fbb.CreateString(t.worker), codec::ToWire(fbb, t.endpoint))));
  }
}

void Engine::OnTaskFinished(const std::string& from, const wire::TaskFinished& msg, uint64_t now_ms) {
  if (!msg.ref()) return;
  acks_[from].push_back({msg.ref()->task(), msg.ref()->attempt()});
  if (auto w = winding_down_.find(msg.ref()->task());
      w != winding_down_.end() && w->second.attempt == msg.ref()->attempt() && FromWorkerOf(from, w->second.worker)) {
    winding_down_.erase(w);
  }
  auto it = active_.find(msg.ref()->task());
  if (it == active_.end()) return;  // already ended: completion is idempotent
  Task& t = it->second;
  if (t.attempt != msg.ref()->attempt()) return;  // an earlier attempt's
  if (!FromTaskWorker(t, from, "a result")) return;
  fleet_.Touch(t.worker, now_ms);
  std::string message = Str(msg.message());
  switch (msg.outcome()) {
    case wire::Outcome::Succeeded:
      // A session says how it ended (its ttl, its idle timeout); nothing else has a reason.
      End(&t, wire::TaskState::Succeeded,
          t.spec.session && (msg.reason() == wire::Reason::SessionTtl || msg.reason() == wire::Reason::SessionIdle)
              ? msg.reason()
              : wire::Reason::None,
          message, msg.exit_code(), now_ms);
      break;
    case wire::Outcome::Failed:
      if (std::binary_search(t.spec.retry_exit_codes.begin(), t.spec.retry_exit_codes.end(), msg.exit_code())) {
        Retry(&t, wire::Reason::ExitStatus,
              (message.empty() ? "exit status " + std::to_string(msg.exit_code()) : message) + " (in retry_exit_codes)",
              now_ms, /*blame_worker=*/true);
        break;
      }
      End(&t, wire::TaskState::Failed,
          msg.reason() == wire::Reason::ImageMissing || msg.reason() == wire::Reason::MemoryLimit
              ? msg.reason()
              : wire::Reason::ExitStatus,
          message.empty() ? "exit status " + std::to_string(msg.exit_code()) : message, msg.exit_code(), now_ms);
      break;
    case wire::Outcome::TimedOut:
      End(&t, wire::TaskState::Failed, wire::Reason::Timeout, message, msg.exit_code(), now_ms);
      break;
    case wire::Outcome::Cancelled:
      End(&t, wire::TaskState::Cancelled, wire::Reason::Cancelled, message, msg.exit_code(), now_ms);
      break;
    case wire::Outcome::Retryable:
      if (msg.reason() == wire::Reason::NotStarted && t.state == wire::TaskState::Queued) {
        // Handed back before it started (its capability quarantined meanwhile, no free
        // GPU): placed again, elsewhere where it can, with no attempt spent.
        Retry(&t, wire::Reason::NotStarted, message, now_ms, /*blame_worker=*/true, /*spent=*/false);
      } else {
        Retry(&t, wire::Reason::ExecutorError, message, now_ms, /*blame_worker=*/true);
      }
      break;
  }
}

void Engine::OnTaskLog(const std::string& from, const wire::TaskLog& msg, uint64_t now_ms) {
  // Every worker's output is acknowledged, kept or not (an ended attempt's late lines):
  // the worker sends only so much unacknowledged (worker/core.h, output window).
  if (msg.data() && bus::PrincipalOf(from).role == bus::Role::kWorker) output_taken_[from] += msg.data()->size();
  if (!msg.ref()) return;
  EventFields f;
  f.type = wire::EventType::TaskLog;
  f.stream = Str(msg.stream());
  f.data = Str(msg.data());
  const Task* t = active_task(msg.ref()->task());
  if (t == nullptr) {
    // A cancelled attempt on its way out (it trapped SIGTERM): its last words are kept.
    auto w = winding_down_.find(msg.ref()->task());
    if (w == winding_down_.end() || w->second.attempt != msg.ref()->attempt() ||
        !FromWorkerOf(from, w->second.worker)) {
      return;
    }
    f.task = w->first;
    f.worker = w->second.worker;
    f.attempt = w->second.attempt;
    f.owner = w->second.owner;
    Emit(f, now_ms);
    return;
  }
  if (t->attempt != msg.ref()->attempt()) return;
  if (!FromTaskWorker(*t, from, "output")) return;
  f.task = t->id;
  f.worker = t->worker;
  f.attempt = t->attempt;
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
    case wire::ControlOp::Tasks:
    case wire::ControlOp::Task:
    case wire::ControlOp::Ping:
      if (!Authorized(from, "list workers and tasks", Who::kUser)) return;
      break;
    case wire::ControlOp::Drain:
      if (!Authorized(from, "drain workers", Who::kOperator)) return;
      break;
    case wire::ControlOp::Undrain:
      if (!Authorized(from, "undrain workers", Who::kOperator)) return;
      break;
    case wire::ControlOp::Snapshot:
      if (!Authorized(from, "snapshot the store", Who::kOperator)) return;
      break;
    case wire::ControlOp::Cancel:
      break;  // below: a client may cancel its own tasks
  }
  switch (req.op()) {
    case wire::ControlOp::Ping:
      // Answered like every reply, after this turn's commit: an answer also says that
      // the store takes writes (or that the scheduler says it does not).
      message = std::string("fm-scheduler ") + FM_VERSION + ": " + std::to_string(fleet_.size()) + " workers, " +
                std::to_string(active_.size()) + " tasks not ended (" + std::to_string(pending_.size()) +
                " waiting), event seq " + std::to_string(log_.next_seq() - 1);
      break;
    case wire::ControlOp::Workers:
      workers = views::Workers(fbb, fleet_, now_ms);
      break;
    case wire::ControlOp::Snapshot:
      if (target.empty() || target[0] != '/') {
        ok = false;
        message = "snapshot: \"" + target + "\" is not an absolute path (a new directory on the scheduler's host)";
        break;
      }
      // Written by the daemon once this turn is committed: the copy holds everything
      // acknowledged before the request.
      effects_.snapshots.push_back({from, req.correlation(), target});
      return;
    case wire::ControlOp::Tasks: {
      // A client sees only its own tasks; an operator (or a keyless cluster) all.
      std::optional<std::string> only_owner = ClientName(from);
      const std::string asked = Str(req.owner());
      if (only_owner && !asked.empty() && asked != *only_owner) {
        ok = false;
        message = "tasks --owner " + asked + ": a client sees only its own tasks (\"" + *only_owner +
                  "\"); an operator sees all";
        break;
      }
      views::TaskPage page = views::Tasks(
          fbb, req, options_.task_page,
          [&](const auto& visit) {
            for (const auto& [id, t] : active_) visit(t);
            for (const Task& t : recent_ended_) visit(t);
          },
          only_owner);
      tasks = std::move(page.tasks);
      next_page = page.next;
      break;
    }
    case wire::ControlOp::Task: {
      Status found = TaskDetail(fbb, target, ClientName(from), &tasks, &events, now_ms);
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
      std::string reason = drain ? Str(req.reason()).substr(0, 512) : std::string();
      if (w->draining != drain || w->drain_reason != reason) {
        bool changed = w->draining != drain;
        fleet_.Modify(target, [&](WorkerState& x) {
          x.draining = drain;
          x.drain_reason = reason;
        });
        records::PutWorker(&effects_.writes, *w);
        if (changed) {
          EventFields f;
          f.type = drain ? wire::EventType::WorkerDraining : wire::EventType::WorkerUndrained;
          f.worker = target;
          f.message = drain ? "takes no new tasks" + (reason.empty() ? "" : " (" + reason + ")") + "; " +
                                  std::to_string(w->tasks.size()) + " still held"
                            : "takes new tasks again";
          Emit(f, now_ms);
          if (drain) fleet_shrank_ = true;
          placement_needed_ = true;
        }
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
      if (!Authorized(from, "cancel this task", Who::kOwner, t.owner)) return;
      if (!t.worker.empty()) {
        flatbuffers::FlatBufferBuilder c(64);
        auto ref = wire::CreateTaskRef(c, t.id, t.attempt);
        if (const WorkerState* w = fleet_.Find(t.worker)) {
          Send(w->address, codec::Seal(c, wire::CreateCancelTask(c, ref)));
        }
      }
      message = "cancelled " + TaskName(t.id);
      // Its attempt stops gracefully (SIGTERM first): what it prints on the way out is
      // still its output, until the worker reports the attempt ended.
      if (!t.worker.empty()) {
        if (winding_down_.size() >= 10000) winding_down_.erase(winding_down_.begin());
        winding_down_[t.id] = {t.attempt, t.worker, t.owner};
      }
      std::string by = options_.authenticate ? bus::PrincipalOf(from).name : std::string();
      End(&t, wire::TaskState::Cancelled, wire::Reason::Cancelled,
          by.empty() ? "cancelled by fm-ctl" : "cancelled by " + by + " (fm-ctl)", 0, now_ms);
      break;
    }
  }
  auto reply =
      wire::CreateControlReply(fbb, req.correlation(), ok, fbb.CreateString(message), fbb.CreateVector(workers),
                               fbb.CreateVector(tasks), next_page, events.empty() ? 0 : fbb.CreateVector(events));
  Send(from, codec::Seal(fbb, reply));
}

Status Engine::TaskDetail(flatbuffers::FlatBufferBuilder& fbb, const std::string& name,
                          const std::optional<std::string>& only_owner,
                          std::vector<flatbuffers::Offset<wire::TaskView>>* out,
                          std::vector<flatbuffers::Offset<wire::Event>>* events, uint64_t now_ms) {
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
  if (only_owner && t->owner != *only_owner) {
    return Status::Invalid("task " + TaskName(id) + " is not " + *only_owner +
                           "'s: a client sees only the tasks it submitted (an operator sees all)");
  }
  std::string waiting;
  if (t->state == wire::TaskState::Pending && t->not_before_ms > now_ms) {
    waiting = "retry backoff: placed again in " + std::to_string((t->not_before_ms - now_ms + 999) / 1000) + " s";
  } else if (t->state == wire::TaskState::Pending) {
    Explanation why = fleet_.Explain(t->spec);
    waiting = why.eligible > 0 ? std::to_string(why.eligible) + " eligible, all full" : WaitingForLost(t->spec, now_ms);
    if (waiting.empty()) waiting = "no eligible worker: " + why.message;
    if (!t->failed_on.empty() && why.eligible > 0) waiting += "; not on " + Listed(t->failed_on) + ", which failed it";
  }
  out->push_back(views::TaskDetail(fbb, *t, waiting));
  // Its events, from its first one on; the look is bounded (a task's events are near
  // each other in the stream).
  if (t->first_seq == 0) return Status::Ok();
  constexpr size_t kLookAt = 20000, kKeep = 500;
  size_t looked = 0;
  const std::string task_name = TaskName(t->id);
  return log_.ForEach(t->first_seq, [&](const wire::Event& e) {
    if (Str(e.task()) == task_name) events->push_back(codec::CopyEvent(fbb, e));
    return ++looked < kLookAt && events->size() < kKeep && fbb.GetSize() < kReplyBytes;
  });
}

void Engine::OnReplay(const std::string& from, const wire::ReplayRequest& req) {
  // A client sees only its own tasks' events (an operator, or a keyless cluster, all).
  Send(from, log_.Replay(req.since(), req.correlation(), ClientName(from)));
}

// ---------------------------------------------------------------------------
// Time and the end of a turn.

void Engine::RefreshLiveness(uint64_t now_ms) { fleet_.TouchAll(now_ms); }

void Engine::Tick(uint64_t now_ms) {
  // The scheduler's own silence is not the fleet's. After a gap in its own ticks (a
  // stalled loop, a paused process) every worker gets a fresh window: heartbeats sent
  // meanwhile may not even have been read yet.
  const uint64_t gap = options_.liveness_window_ms / 4;
  if (last_tick_ms_ != 0 && now_ms > last_tick_ms_ + gap) {
    RefreshLiveness(now_ms);
    ++self_silences_;
  }
  last_tick_ms_ = now_ms;
  std::vector<std::string> lost;
  size_t confirmed = 0, confirmed_lost = 0;
  for (const auto& [id, w] : fleet_.workers()) {
    confirmed += w.confirmed;
    if (now_ms > w.last_seen_ms + options_.liveness_window_ms) {
      lost.push_back(id);
      confirmed_lost += w.confirmed;
    }
  }
  // Most of the fleet silent at once while nothing at all reached the scheduler lately:
  // its own link (the broker, the network) is the likelier fault. Losses wait until it
  // hears from the broker again; then every worker gets a fresh window.
  const bool quiet = now_ms > last_inbound_ms_ + options_.liveness_window_ms / 2;
  if (confirmed >= 2 && confirmed_lost * 2 > confirmed && quiet) {
    if (hold_since_ms_ == 0) {
      hold_since_ms_ = now_ms;
      ++self_silences_;
    }
    lost.clear();
  } else if (hold_since_ms_ != 0) {
    hold_since_ms_ = 0;
    if (last_inbound_ms_ > 0) RefreshLiveness(last_inbound_ms_);
    lost.clear();
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
        ++stats_.redeliveries;
        dispatches_[id].push_back(task_id);
      }
    }
  }
  // The reconnect grace of lost workers ends: tasks only they could run fail now.
  for (auto it = lost_.begin(); it != lost_.end();) {
    if (now_ms >= it->second.lost_ms + options_.reconnect_grace_ms) {
      it = lost_.erase(it);
      fleet_shrank_ = true;
    } else {
      ++it;
    }
  }
  log_.ApplyRetention(now_ms, &effects_.writes);
  TrimEndedTasks(now_ms);
  ReleaseBackoff(now_ms);
}

Status Engine::RecoverEndedCount(const store::Store* store) {
  // The first t/ key: ids below it were deleted.
  std::string begin = keys::Task(0), end = keys::PrefixEnd(keys::kTaskPrefix);
  Status s = store->Scan(begin, end, [&](std::string_view key, std::string_view) {
    task_trim_from_ = keys::DecodeU64(key.substr(keys::kTaskPrefix.size()));
    return false;
  });
  if (!s.ok()) return s;
  auto counted = records::ReadMeta(*store, keys::kMetaEndedTasks, UINT64_MAX);
  if (!counted.ok()) return counted.status();
  if (*counted != UINT64_MAX) {
    ended_stored_ = *counted;
    ended_stored_persisted_ = true;
    return Status::Ok();
  }
  // A store from before the count: count once, and write it with the next turn.
  ended_stored_ = 0;
  ended_stored_persisted_ = false;
  return store->Scan(begin, end, [&](std::string_view, std::string_view) {
    ++ended_stored_;
    return true;
  });
}

Status Engine::RecoverRecentEnded(const store::Store* store) {
  // What fm-ctl tasks lists of ended tasks: the newest ones stored (t/ keys, in id
  // order), found from the ids given last. Tasks end out of id order, so the window
  // scanned is a few times the list.
  const size_t keep = options_.recent_ended;
  if (keep == 0) return Status::Ok();
  const uint64_t window = 4 * static_cast<uint64_t>(keep);
  const uint64_t first = std::max<uint64_t>(task_trim_from_, next_task_id_ > window ? next_task_id_ - window : 0);
  std::vector<Task> found;
  Status failed = Status::Ok();
  Status s = store->Scan(keys::Task(first), keys::PrefixEnd(keys::kTaskPrefix),
                         [&](std::string_view key, std::string_view value) {
                           auto t = records::DecodeTask(value, key);
                           if (!t.ok()) {
                             failed = t.status();
                             return false;
                           }
                           found.push_back(std::move(*t));
                           return true;
                         });
  if (!s.ok()) return s;
  if (!failed.ok()) return failed;
  const size_t skip = found.size() > keep ? found.size() - keep : 0;
  recent_ended_.assign(std::make_move_iterator(found.begin() + static_cast<long>(skip)),
                       std::make_move_iterator(found.end()));
  recent_next_ = 0;  // in id order: the oldest (first) is replaced first once the ring is full
  return Status::Ok();
}

void Engine::TrimEndedTasks(uint64_t now_ms) {
  if (store_ == nullptr || ended_stored_ == 0) return;
  const uint64_t cutoff = now_ms > options_.task_retention_age_ms ? now_ms - options_.task_retention_age_ms : 0;
  size_t budget = options_.task_trim_per_tick;
  std::vector<Task> expired;
  uint64_t over = ended_stored_ > options_.task_retention_count ? ended_stored_ - options_.task_retention_count : 0;
  // The record at `key`: expired (by count, then age), or false to stop there.
  auto consider = [&](std::string_view key, std::string_view value) {
    auto t = records::DecodeTask(value, key);
    if (!t.ok()) {
      // An unreadable record is dropped with its count, never kept forever.
      Task gone;
      gone.id = keys::DecodeU64(key.substr(keys::kTaskPrefix.size()));
      expired.push_back(std::move(gone));
      return true;
    }
    uint64_t ended = t->ended_ms != 0 ? t->ended_ms : t->submitted_ms;
    if (expired.size() >= over && ended >= cutoff) return false;
    expired.push_back(std::move(*t));
    return true;
  };
  // Stragglers first: they hold the lowest ids.
  for (auto it = trim_stragglers_.begin(); it != trim_stragglers_.end() && budget > 0;) {
    std::string key = keys::Task(*it);
    auto value = store_->Get(key);
    if (!value.ok()) {
      if (read_error_.ok()) read_error_ = value.status();
      return;
    }
    if (!value->has_value()) {  // written this turn: not visible yet
      ++it;
      continue;
    }
    if (!consider(key, **value)) break;
    --budget;
    it = trim_stragglers_.erase(it);
  }
  uint64_t cursor = task_trim_from_;
  Status s = store_->Scan(keys::Task(task_trim_from_), keys::PrefixEnd(keys::kTaskPrefix),
                          [&](std::string_view key, std::string_view value) {
                            if (budget == 0) return false;
                            if (!consider(key, value)) return false;
                            cursor = expired.back().id + 1;
                            --budget;
                            return true;
                          });
  if (!s.ok()) {
    if (read_error_.ok()) read_error_ = s;
    return;
  }
  task_trim_from_ = cursor;
  for (uint64_t id : ended_this_turn_) {
    if (id < task_trim_from_) trim_stragglers_.insert(id);
  }
  for (const Task& t : expired) {
    effects_.writes.Delete(keys::Task(t.id));
    if (!t.spec.key.empty()) {
      std::string scoped = ScopedKey(t.owner, t.spec.key);
      // The key names this task (a key is first used by one task only).
      auto named = records::ReadKey(*store_, scoped);
      if (!named.ok()) {
        // Not "no such key": the store cannot be read (engine.h, TakeReadError).
        if (read_error_.ok()) read_error_ = named.status();
      } else if (*named && **named == t.id) {
        effects_.writes.Delete(keys::ClientKey(scoped));
      }
      auto cached = client_keys_.find(scoped);
      if (cached != client_keys_.end() && cached->second == t.id) client_keys_.erase(cached);
    }
    --ended_stored_;
    ++tasks_trimmed_;
    ended_stored_persisted_ = false;
  }
}

void Engine::FailUnrunnable(uint64_t now_ms) {
  // Eligibility is a property of the demand: one look per demand, not per task. A demand
  // that only recently lost workers could run waits for them (the reconnect grace).
  std::vector<std::pair<std::vector<uint64_t>, Explanation>> doomed;
  std::vector<uint64_t> waiting;
  pending_.ForEachDemand([&](const TaskSpec& demand, const std::vector<uint64_t>& ids) {
    if (fleet_.AnyEligible(demand)) return;
    uint64_t last_lost_ms = 0;
    if (LostEligible(demand, &last_lost_ms) > 0) {
      waiting.insert(waiting.end(), ids.begin(), ids.end());
    } else {
      doomed.push_back({ids, fleet_.Explain(demand)});
    }
  });
  for (uint64_t id : waiting) MarkWaiting(&active_.at(id), now_ms);
  for (const auto& [ids, why] : doomed) {
    for (uint64_t id : ids) {
      End(&active_.at(id), wire::TaskState::Failed, wire::Reason::NoEligibleWorker, why.message, 0, now_ms, &why);
    }
  }
}

size_t Engine::LostEligible(const TaskSpec& spec, uint64_t* last_lost_ms) const {
  size_t n = 0;
  for (const auto& [id, lost] : lost_) {
    if (!CheckEligible(spec, lost.shape).ok()) continue;
    ++n;
    *last_lost_ms = std::max(*last_lost_ms, lost.lost_ms);
  }
  return n;
}

std::string Engine::WaitingForLost(const TaskSpec& spec, uint64_t now_ms) const {
  uint64_t last_lost_ms = 0;
  size_t n = LostEligible(spec, &last_lost_ms);
  if (n == 0) return {};
  uint64_t ago_s = (now_ms - std::min(now_ms, last_lost_ms)) / 1000;
  return "waiting: " + std::to_string(n) + (n == 1 ? " eligible worker" : " eligible workers") + " lost " +
         std::to_string(ago_s) + " s ago; fails no_eligible_worker if none is back within the reconnect grace (" +
         std::to_string(options_.reconnect_grace_ms / 1000) + " s)";
}

void Engine::MarkWaiting(Task* t, uint64_t now_ms) {
  if (t->waiting_for_lost) return;
  t->waiting_for_lost = true;
  EventFields f;
  f.type = wire::EventType::TaskWaiting;
  f.task = t->id;
  f.attempt = t->attempt;
  f.message = WaitingForLost(t->spec, now_ms);
  Emit(f, now_ms);
}

void Engine::PlacePending(uint64_t now_ms) {
  pending_.Walk([&](uint64_t id, const TaskSpec& demand) {
    if (!fleet_.HasOpenSlot()) return PendingSet::Offer::kStop;
    ++placement_offers_;
    Task& t = active_.at(id);
    const WorkerState* chosen = nullptr;
    if (!t.failed_on.empty()) {
      // A retry goes to a worker that has not failed it, whenever one could run it: it
      // waits for one that is full now, and goes back to one that failed it only when no
      // other could ever run it.
      chosen = fleet_.Place(demand, options_.policy, &t.failed_on);
      if (!chosen && fleet_.AnyEligibleExcept(demand, t.failed_on)) return PendingSet::Offer::kSkip;
    }
    if (!chosen) chosen = fleet_.Place(demand, options_.policy);
    if (!chosen) return PendingSet::Offer::kNoRoom;  // waits for capacity; other demands may fit
    t.waiting_for_lost = false;
    Queue(&t, chosen->id, now_ms);
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
      assignments.push_back(
          wire::CreateAssignment(fbb, t->id, t->attempt, codec::ToWire(fbb, t->spec), fbb.CreateString(t->owner)));
    }
    if (assignments.empty()) continue;
    Send(w->address, codec::Seal(fbb, wire::CreateDispatch(fbb, fbb.CreateVector(assignments), epoch_)));
  }
  dispatches_.clear();
}

void Engine::FlushBatched() {
  for (const auto& [address, bytes] : output_taken_) acks_[address];  // an acknowledgement of output alone
  for (auto& [address, refs] : acks_) {
    flatbuffers::FlatBufferBuilder fbb(64 + 16 * refs.size());
    std::vector<flatbuffers::Offset<wire::TaskRef>> offsets;
    offsets.reserve(refs.size());
    for (auto [task, attempt] : refs) offsets.push_back(wire::CreateTaskRef(fbb, task, attempt));
    auto first = refs.empty() ? 0 : wire::CreateTaskRef(fbb, refs.front().first, refs.front().second);
    auto taken = output_taken_.find(address);
    uint64_t output = taken == output_taken_.end() ? 0 : taken->second;
    Send(address, codec::Seal(fbb, wire::CreateTaskFinishedAck(fbb, first, fbb.CreateVector(offsets), output)));
  }
  acks_.clear();
  output_taken_.clear();
  for (auto& [watcher, ended] : ended_for_watchers_) {
    flatbuffers::FlatBufferBuilder fbb(256 + 64 * ended.size());
    std::vector<flatbuffers::Offset<wire::SubmitResult>> results;
    results.reserve(ended.size());
    for (const auto& e : ended) {
      results.push_back(MakeResult(fbb, e.task, e.status, e.reason, e.message, e.worker));
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
  log_.FinishTurn(&effects_);
  // Ended tasks are no longer active: their record moved to t/ when they ended.
  std::sort(dirty_tasks_.begin(), dirty_tasks_.end());
  dirty_tasks_.erase(std::unique(dirty_tasks_.begin(), dirty_tasks_.end()), dirty_tasks_.end());
  for (uint64_t id : dirty_tasks_) {
    if (const Task* t = active_task(id)) records::PutTask(&effects_.writes, keys::ActiveTask(id), *t, scratch_);
  }
  dirty_tasks_.clear();
  if (!ended_stored_persisted_) {
    effects_.writes.Put(std::string(keys::kMetaEndedTasks), keys::EncodeU64(ended_stored_));
    ended_stored_persisted_ = true;
  }
  ended_this_turn_.clear();
  if (next_task_id_ != persisted_task_id_) {
    effects_.writes.Put(std::string(keys::kMetaNextTask), keys::EncodeU64(next_task_id_));
    persisted_task_id_ = next_task_id_;
  }
  if (!epoch_persisted_) {
    effects_.writes.Put(std::string(keys::kMetaEpoch), keys::EncodeU64(epoch_));
    epoch_persisted_ = true;
  }
}

// ---------------------------------------------------------------------------
// Encoding.

void Engine::Send(const std::string& to, std::string payload) {
  if (to.empty()) return;
  effects_.directed.push_back({to, std::move(payload)});
}

}  // namespace fm::sched

namespace fm::sched {

EngineCensus Engine::Census() const {
  EngineCensus c;
  for (const auto& [id, t] : active_) {
    switch (t.state) {
      case wire::TaskState::Pending:
        ++c.pending;
        if (c.oldest_pending_ms == 0 || t.submitted_ms < c.oldest_pending_ms) c.oldest_pending_ms = t.submitted_ms;
        break;
      case wire::TaskState::Queued:
        ++c.queued;
        break;
      case wire::TaskState::Running:
        ++c.running;
        break;
      default:
        break;
    }
  }
  for (const auto& [id, w] : fleet_.workers()) {
    if (!w.confirmed) {
      ++c.workers_unconfirmed;
    } else if (w.draining) {
      ++c.workers_draining;
    } else {
      ++c.workers_live;
    }
  }
  c.workers_lost = lost_.size();
  return c;
}

}  // namespace fm::sched
