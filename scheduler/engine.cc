#include "scheduler/engine.h"

#include <algorithm>
#include <limits>

#include "runtime/addresses.h"
#include "runtime/policy.h"
#include "scheduler/control.h"
#include "scheduler/predicates.h"
#include "scheduler/records.h"
#include "scheduler/task_machine.h"
#include "scheduler/views.h"
#include "schemas/codec.h"
#include "schemas/units.h"
#include "schemas/validate.h"
#include "schemas/vocabulary.h"

namespace fm::sched {

using codec::Str;

namespace {

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
  return {o.event_retention_count, o.event_retention_age_ms, o.replay_batch, o.log_retention_bytes, o.leadership_epoch};
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
  waiting_load_batch = std::max<size_t>(waiting_load_batch, 1);
  if (fresh_epoch == 0) fresh_epoch = 1;
}

Engine::Engine(EngineOptions options)
    : options_(Validated(options)),
      log_(LogOptions(options_)),
      membership_({options_.liveness_window_ms, options_.reconnect_grace_ms, options_.authenticate}, &log_, &effects_),
      fleet_(membership_.fleet()),
      ended_({options_.task_retention_count, options_.task_retention_age_ms, options_.task_trim_per_tick,
              options_.recent_ended}) {}

// ---------------------------------------------------------------------------
// Recovery.

Status Engine::Recover(const store::Store* store, uint64_t now_ms) {
  store_ = store;
  auto next_task = records::ReadNextTaskId(*store);
  if (!next_task.ok()) return next_task.status();
  next_task_id_ = *next_task;
  persisted_task_id_ = next_task_id_;
  auto epoch = records::ReadEpoch(*store);
  if (!epoch.ok()) return epoch.status();
  epoch_ = *epoch;
  epoch_persisted_ = epoch_ != 0;
  if (epoch_ == 0) epoch_ = options_.fresh_epoch;
  if (Status s = log_.Recover(store); !s.ok()) return s;
  if (Status s = ended_.Recover(store, next_task_id_); !s.ok()) return s;
  if (Status s = membership_.Recover(*store, now_ms, epoch_); !s.ok()) return s;
  if (Status s = groups_.Recover(*store); !s.ok()) return s;
  std::vector<uint64_t> blocked;
  Status scanned = records::ScanActiveTasks(*store, [&](Task t) {
    if (!t.spec.group.empty()) groups_.Open(t.owner, t.spec.group, t.id);
    const bool bounded = Bounded(t.spec);
    if (bounded) groups_.SetCap(t.owner, t.spec.group, t.spec.array->max_running);
    next_order_ = std::max(next_order_, t.order + 1);
    next_task_id_ = std::max(next_task_id_, t.id + 1);
    if ((t.state == wire::TaskState::Queued || t.state == wire::TaskState::Running) && fleet_.Find(t.worker)) {
      fleet_.ModifyLoad(t.worker, [&](WorkerState& w) {
        Reserve(t.spec, &w);
        w.tasks.insert(t.id);
      });
      t.dispatched_ms = now_ms;
    } else if (Step(&t, TaskEvent::kOrphaned)) {
      // Its worker is not known any more: run it again.
      t.worker.clear();
      dirty_tasks_.push_back(t.id);
    }
    if (t.state == wire::TaskState::Pending && !t.waits_for.empty()) {
      blocked.push_back(t.id);  // judged once every task at a/ is known
    } else if (bounded && t.state != wire::TaskState::Pending) {
      groups_.CountInFlight(t.owner, t.spec.group, t.id);
    } else if (t.state == wire::TaskState::Pending) {
      if (t.not_before_ms > now_ms) {
        if (bounded) groups_.CountInFlight(t.owner, t.spec.group, t.id);
        backoff_.emplace(t.not_before_ms, t.id);
      } else if (bounded) {
        // In line again only as its array's bound allows (released at the turn's end).
        groups_.Hold(t.owner, t.spec.group, t.id);
      } else {
        t.not_before_ms = 0;
        pending_.Insert(t.spec, LineOf(t));
        if (t.attempt - t.handed_back == 1 && t.failed_on.empty()) {
          t.first_wait = true;  // as far as the record tells (it counts toward the cache only)
          ++hot_first_waits_;
        }
      }
    }
    active_.emplace(t.id, std::move(t));
  });
  if (!scanned.ok()) return scanned;
  // Blocked tasks: a parent that failed ended them in the same batch, so a parent not
  // at a/ nor q/ any more succeeded (their records are not rewritten for each parent).
  std::unordered_map<uint64_t, bool> at_q;  // parents not at a/: read once each, however many wait
  for (uint64_t id : blocked) {
    Task& t = active_.at(id);
    std::vector<uint64_t> left;
    for (uint64_t parent : t.waits_for) {
      bool open = active_.count(parent) > 0;
      if (!open) {
        auto known = at_q.find(parent);
        if (known == at_q.end()) {
          auto waiting = records::ReadWaitingTask(*store, parent);
          if (!waiting.ok()) return waiting.status();
          known = at_q.emplace(parent, waiting->has_value()).first;
        }
        open = known->second;
      }
      if (open) left.push_back(parent);
    }
    t.waits_for = std::move(left);
    if (t.waits_for.empty()) {
      dirty_tasks_.push_back(id);
      JoinLine(t);
      continue;
    }
    for (uint64_t parent : t.waits_for) dependents_[parent].push_back(id);
    ++blocked_;
  }
  // The waiting tasks (q/) are read a batch per turn from here on. Their ids are below
  // the stored next id, and a task's order never exceeds its id: new tasks line up after them.
  load_from_ = 1;
  load_to_ = next_task_id_;
  next_order_ = std::max(next_order_, next_task_id_);
  return Status::Ok();
}

void Engine::LoadWaiting() {
  if (waiting_loaded() || store_ == nullptr) return;
  std::vector<records::WaitingLine> read;
  auto next = records::ScanWaiting(*store_, load_from_, load_to_, options_.waiting_load_batch,
                                   [&](records::WaitingLine line) { read.push_back(std::move(line)); });
  if (!next.ok()) {
    if (read_error_.ok()) read_error_ = next.status();
    return;  // nothing of the batch taken: tried again in a later turn
  }
  for (records::WaitingLine& line : read) {
    if (skip_on_load_.erase(line.id) || active_.count(line.id)) continue;
    ++waiting_records_;
    if (!line.demand.group.empty()) groups_.Open(line.owner, line.demand.group, line.id);
    if (Bounded(line.demand)) {
      groups_.SetCap(line.owner, line.demand.group, line.demand.array->max_running);
      groups_.Hold(line.owner, line.demand.group, line.id);
      continue;
    }
    pending_.Insert(line.demand, PendingSet::Entry::Of(line.demand.priority, line.order, line.id));
  }
  load_from_ = *next;
  if (waiting_loaded()) skip_on_load_.clear();
  placement_needed_ = true;
  // Judged like every demand when the fleet changed meanwhile: a demand no worker can
  // run any more fails (or waits for its lost workers) whenever its tasks were read.
  if (!read.empty()) fleet_shrank_ = true;
}

Task* Engine::Load(uint64_t id) {
  if (auto it = active_.find(id); it != active_.end()) return &it->second;
  if (store_ == nullptr) return nullptr;
  auto ahead = read_ahead_.find(id);
  if (ahead == read_ahead_.end()) {
    // This one and the next ones in id order, with one scan: the walk takes a line's
    // tasks one after another, and a scan decompresses each block of the store once
    // where a point read per task would read the same block again and again.
    if (read_ahead_.size() > 4 * kReadAhead) read_ahead_.clear();
    size_t seen = 0;
    Status scanned = records::ScanWaitingTasks(*store_, id - 1, [&](Task& t) {
      if (!active_.count(t.id)) read_ahead_.try_emplace(t.id, std::move(t));
      return ++seen < kReadAhead;
    });
    if (!scanned.ok()) {
      if (read_error_.ok()) read_error_ = scanned;
      return nullptr;
    }
    ahead = read_ahead_.find(id);
    if (ahead == read_ahead_.end()) {
      // Not written yet (a scan sees the store only): the point read sees the batches
      // on their way, and says whether it is there at all.
      auto read = records::ReadWaitingTask(*store_, id);
      if (!read.ok()) {
        if (read_error_.ok()) read_error_ = read.status();
        return nullptr;
      }
      if (!*read) return nullptr;
      ahead = read_ahead_.try_emplace(id, std::move(**read)).first;
    }
  }
  // Moved into memory as it was read (the same node: no copy).
  Task& t = active_.insert(read_ahead_.extract(ahead)).position->second;
  if (id >= load_from_ && id < load_to_) {
    // Not read by the load yet: counted now, and skipped when the load comes to it.
    ++waiting_records_;
    skip_on_load_.insert(id);
    if (!t.spec.group.empty()) groups_.Open(t.owner, t.spec.group, id);
    if (Bounded(t.spec)) {  // as the load would have
      groups_.SetCap(t.owner, t.spec.group, t.spec.array->max_running);
      groups_.Hold(t.owner, t.spec.group, id);
    }
  }
  ++cached_waiting_;
  t.first_wait = true;  // q/ holds only tasks never placed
  ++hot_first_waits_;
  return &t;
}

const Task* Engine::Peek(uint64_t id, std::optional<Task>* copy) const {
  if (const Task* t = active_task(id)) return t;
  if (store_ == nullptr) return nullptr;
  auto read = records::ReadWaitingTask(*store_, id);
  if (!read.ok() && read_error_.ok()) read_error_ = read.status();
  if (!read.ok() || !*read) return nullptr;
  *copy = std::move(*read);
  return &**copy;
}

void Engine::Notice(wire::EventType type, const std::string& message, uint64_t now_ms) {
  EventFields f;
  f.type = type;
  f.message = message;
  Emit(f, now_ms);
}

void Engine::Start(uint64_t now_ms) {
  EventFields f;
  f.type = wire::EventType::SchedulerStarted;
  f.message = std::to_string(fleet_.size()) + " workers last known, " + std::to_string(active_.size()) +
              " tasks placed or retrying" + (waiting_loaded() ? "" : ", the waiting ones being read") +
              (options_.leadership.empty() ? "" : "; " + options_.leadership);
  Emit(f, now_ms);
  membership_.AskAllToRegister();
  placement_needed_ = true;
}

// ---------------------------------------------------------------------------
// Dispatch of inbound messages.

void Engine::OnDirected(const std::string& from, const wire::Envelope& env, uint64_t now_ms) {
  membership_.Heard(now_ms);
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
      return control::Handle(*this, from, *env.body_as_ControlRequest(), now_ms);
    case wire::Body::ReplayRequest:
      if (!Authorized(from, bus::Action::kReplay)) return;
      return OnReplay(from, *env.body_as_ReplayRequest());
    case wire::Body::WorkerRegistration:
      // Directed announcements come from the worker they announce, at its address.
      if (Str(env.body_as_WorkerRegistration()->address()) != from ||
          !membership_.FromWorkerNamed(from, Str(env.body_as_WorkerRegistration()->id()))) {
        return Refused(from, "a registration of worker \"" + Str(env.body_as_WorkerRegistration()->id()) +
                                 "\" from another address");
      }
      return Apply(membership_.Register(*env.body_as_WorkerRegistration(), now_ms), now_ms);
    case wire::Body::WorkerHeartbeat:
      if (Str(env.body_as_WorkerHeartbeat()->address()) != from ||
          !membership_.FromWorkerNamed(from, Str(env.body_as_WorkerHeartbeat()->id()))) {
        return Refused(
            from, "a heartbeat of worker \"" + Str(env.body_as_WorkerHeartbeat()->id()) + "\" from another address");
      }
      return Apply(membership_.Heartbeat(*env.body_as_WorkerHeartbeat(), now_ms), now_ms);
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
  membership_.Heard(now_ms);
  // The broker let only this worker's key publish this (runtime/policy.h MayPublish);
  // the announced address must also be one that key may hold.
  switch (env.body_type()) {
    case wire::Body::WorkerRegistration: {
      const auto& reg = *env.body_as_WorkerRegistration();
      if (!membership_.FromWorkerNamed(Str(reg.address()), Str(reg.id()))) {
        return Refused(Str(reg.address()), "a registration of worker \"" + Str(reg.id()) + "\" with that address");
      }
      return Apply(membership_.Register(reg, now_ms), now_ms);
    }
    case wire::Body::WorkerHeartbeat: {
      const auto& hb = *env.body_as_WorkerHeartbeat();
      if (!membership_.FromWorkerNamed(Str(hb.address()), Str(hb.id()))) {
        return Refused(Str(hb.address()), "a heartbeat of worker \"" + Str(hb.id()) + "\" with that address");
      }
      return Apply(membership_.Heartbeat(hb, now_ms), now_ms);
    }
    default:
      return;
  }
}

// ---------------------------------------------------------------------------
// Who may do what (runtime/policy.h for the address forms).

void Engine::Refused(const std::string& from, const std::string& what) {
  ++unauthorized_;
  bus::Principal p = bus::PrincipalOf(from);
  effects_.refused.emplace_back(
      from, std::string("refused ") + what + " from " + from + " (role " + bus::RoleName(p.role) + ")");
}

bool Engine::Authorized(const std::string& from, bus::Action action, const std::string& owner) {
  if (!options_.authenticate) return true;
  bus::Principal p = bus::PrincipalOf(from);
  Status may = bus::MayAct(p.role, p.name, action, owner);
  if (may.ok()) return true;
  Send(from, codec::EncodeError(wire::ErrorCode::Unauthorized, may.message(), bus::kSchedulerAddress));
  Refused(from, std::string("\"") + bus::ActionText(action) + "\"");
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

Result<std::optional<Engine::KeyedTask>> Engine::FindKeyed(const std::string& key) {
  // The store answers (through the turns not yet written), and this turn's keys, which
  // are in no batch yet: no other key is held in memory.
  KeyedTask found;
  if (auto in_turn = turn_keys_.find(key); in_turn != turn_keys_.end()) {
    found.id = in_turn->second;
  } else {
    if (!store_) return std::optional<KeyedTask>();
    auto id = records::ReadKey(*store_, key);
    if (!id.ok()) return id.status();
    if (!id->has_value()) return std::optional<KeyedTask>();
    found.id = **id;
  }
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
  if (store_ != nullptr) {
    auto waiting = records::ReadWaitingTask(*store_, found.id);
    if (!waiting.ok()) return waiting.status();
    if (*waiting) {
      answer(**waiting);
      return std::optional<KeyedTask>(std::move(found));
    }
  }
  auto ended = ended_.Find(found.id);
  if (!ended.ok()) return ended.status();
  if (ended->has_value()) answer(**ended);
  return std::optional<KeyedTask>(std::move(found));
}

void Engine::OnSubmit(const std::string& from, const wire::SubmitRequest& req, uint64_t now_ms) {
  if (!Authorized(from, bus::Action::kSubmit)) return;
  const std::string owner = options_.authenticate ? bus::PrincipalOf(from).name : std::string();
  flatbuffers::FlatBufferBuilder fbb(256);
  std::vector<flatbuffers::Offset<wire::SubmitResult>> results;
  size_t after_keys = 0;  // looked up for this message (kMaxAfterPerMessage)
  if (req.tasks()) {
    results.reserve(req.tasks()->size());
    for (const wire::TaskSpec* wire_spec : *req.tasks()) {
      TaskSpec spec = codec::FromWire(wire_spec);
      Status valid = ValidateTaskSpec(spec);
      if (!valid.ok()) {
        results.push_back(MakeResult(fbb, 0, wire::SubmitStatus::Rejected, wire::Reason::InvalidTask, valid.message()));
        continue;
      }
      for (auto& cap : ImpliedCapabilities(spec)) spec.required_capabilities.push_back(std::move(cap));
      Normalize(&spec.required_capabilities);
      Normalize(&spec.after);  // before a resubmission is compared with its first
      if (spec.max_attempts == 0) spec.max_attempts = options_.default_max_attempts;

      if (!spec.key.empty()) {
        auto keyed = FindKeyed(OwnerScoped(owner, spec.key));
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

      // What it runs after: each key names an earlier task of the same owner (so no
      // cycle can form and nothing waits for a task that will never be).
      if (spec.array && spec.group.empty()) {
        results.push_back(MakeResult(fbb, 0, wire::SubmitStatus::Rejected, wire::Reason::InvalidTask,
                                     "an array element needs a group, its array's (fm-submit names one)"));
        continue;
      }
      if (!spec.after.empty() && after_keys + spec.after.size() > kMaxAfterPerMessage) {
        results.push_back(MakeResult(fbb, 0, wire::SubmitStatus::Rejected, wire::Reason::InvalidTask,
                                     "this submission names over " + std::to_string(kMaxAfterPerMessage) +
                                         " after keys in all; send fewer tasks per message"));
        continue;
      }
      after_keys += spec.after.size();
      std::vector<uint64_t> waits_for;
      std::string doomed;  // a parent that ended without succeeding: why
      std::string refused;
      wire::Reason refused_reason = wire::Reason::InvalidTask;
      for (const std::string& key : spec.after) {
        auto parent = FindKeyed(OwnerScoped(owner, key));
        if (!parent.ok()) {
          if (read_error_.ok()) read_error_ = parent.status();
          refused = "cannot look up after key \"" + key + "\": " + parent.status().message();
          refused_reason = wire::Reason::StorageUnavailable;
          break;
        }
        if (!*parent) {
          refused = "after names key \"" + key +
                    "\", which no earlier task of yours has (or the task retention removed it): submit the task "
                    "it runs after first";
          break;
        }
        const KeyedTask& p = **parent;
        if (!p.spec) {
          // The key outlived its task's record (a record the retention could not read):
          // nothing can say how it ended, so nothing may wait for it.
          refused = "after names key \"" + key + "\", whose task " + TaskName(p.id) +
                    " is not kept any more (task retention)";
          break;
        }
        if (p.status == wire::SubmitStatus::Accepted) {
          waits_for.push_back(p.id);
        } else if (p.status != wire::SubmitStatus::Succeeded && doomed.empty()) {
          wire::TaskState state =
              p.status == wire::SubmitStatus::Cancelled ? wire::TaskState::Cancelled : wire::TaskState::Failed;
          doomed = DependencyMessage(key, p.id, DependencyCause(key, p.id, state, p.reason, p.message, p.spec->after),
                                     p.reason != wire::Reason::DependencyFailed);
        }
      }
      if (!refused.empty()) {
        results.push_back(MakeResult(fbb, 0, wire::SubmitStatus::Rejected, refused_reason, refused));
        continue;
      }
      std::sort(waits_for.begin(), waits_for.end());
      waits_for.erase(std::unique(waits_for.begin(), waits_for.end()), waits_for.end());
      if (!waits_for.empty() && doomed.empty() && blocked_ >= options_.max_blocked_tasks) {
        results.push_back(MakeResult(fbb, 0, wire::SubmitStatus::Rejected, wire::Reason::LimitReached,
                                     "the scheduler holds " + std::to_string(blocked_) +
                                         " tasks waiting for tasks they run after, its limit (--max-blocked); "
                                         "submit this one once some of them ran"));
        continue;
      }

      Task t;
      t.id = next_task_id_++;
      ++stats_.submitted;
      t.spec = std::move(spec);
      t.submitted_ms = now_ms;
      t.first_seq = log_.next_seq();  // its first event is the next one
      t.order = next_order_++;
      t.owner = owner;
      if (!t.spec.group.empty()) groups_.Open(owner, t.spec.group, t.id);
      if (Bounded(t.spec)) groups_.SetCap(owner, t.spec.group, t.spec.array->max_running);
      if (req.watch()) t.watcher = from;
      if (!t.spec.key.empty()) {
        const std::string scoped = OwnerScoped(owner, t.spec.key);
        records::PutClientKey(&effects_.writes, scoped, t.id);
        turn_keys_[scoped] = t.id;
      }
      uint64_t last_lost_ms = 0;
      if (!fleet_.AnyEligible(t.spec) && membership_.LostEligible(t.spec, &last_lost_ms) == 0) {
        Explanation why = fleet_.Explain(t.spec);
        // Fail fast: nothing is queued, no worker sees it.
        results.push_back(
            MakeResult(fbb, t.id, wire::SubmitStatus::Rejected, wire::Reason::NoEligibleWorker, why.message));
        t.watcher.clear();  // the reply already says so
        t.rejected = true;
        auto [it, inserted] = active_.emplace(t.id, std::move(t));
        End(&it->second, TaskEvent::kUnrunnable, wire::Reason::NoEligibleWorker, why.message, 0, now_ms, &why);
        continue;
      }
      EventFields f = EventAbout(wire::EventType::TaskSubmitted, t);
      dirty_tasks_.push_back(t.id);
      if (!doomed.empty()) {
        // A task it runs after already failed: it ends at once, and says which.
        results.push_back(MakeResult(fbb, t.id, wire::SubmitStatus::Failed, wire::Reason::DependencyFailed, doomed));
        t.watcher.clear();  // the reply already says so
        auto [it, inserted] = active_.emplace(t.id, std::move(t));
        Emit(f, now_ms);
        End(&it->second, TaskEvent::kUnrunnable, wire::Reason::DependencyFailed, doomed, 0, now_ms);
        continue;
      }
      results.push_back(wire::CreateSubmitResult(fbb, t.id, wire::SubmitStatus::Accepted));
      if (!waits_for.empty()) {
        // Blocked: held in memory (its record at a/) out of the line until its parents succeed.
        for (uint64_t parent : waits_for) dependents_[parent].push_back(t.id);
        t.waits_for = std::move(waits_for);
        ++blocked_;
        active_.emplace(t.id, std::move(t));
        Emit(f, now_ms);
        continue;
      }
      t.first_wait = true;
      ++hot_first_waits_;
      Task& stored = active_.emplace(t.id, std::move(t)).first->second;
      JoinLine(stored);
      Emit(f, now_ms);
      if (last_lost_ms != 0) MarkWaiting(stored, now_ms);  // only lost workers could run it
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

void Engine::Apply(const MembershipVerdict& verdict, uint64_t now_ms) {
  for (const auto& lost : verdict.lost) {
    ++stats_.worker_losses;
    dispatches_.erase(lost.id);
    for (uint64_t task_id : lost.tasks) {
      auto t = active_.find(task_id);
      if (t != active_.end()) {
        Retry(&t->second, wire::Reason::WorkerLost, "worker " + lost.id + " lost: " + lost.why, now_ms);
      }
    }
  }
  if (verdict.rejoined) Reconcile(*verdict.rejoined, verdict.held, now_ms);
  if (verdict.fleet_shrank) fleet_shrank_ = true;
  if (verdict.placement_needed) placement_needed_ = true;
}

void Engine::Reconcile(const std::string& worker_id, const std::set<AttemptRef>& reported, uint64_t now_ms) {
  const WorkerState* w = fleet_.Find(worker_id);
  if (!w) return;
  std::vector<uint64_t> mine(w->tasks.begin(), w->tasks.end());
  for (uint64_t id : mine) {
    Task& t = active_.at(id);
    if (reported.count({t.id, t.attempt})) continue;
    if (t.state == wire::TaskState::Queued) {
      dispatches_[worker_id].push_back(t.id);  // never arrived: send again
    } else {
      Retry(&t, wire::Reason::WorkerLost, "worker " + worker_id + " no longer holds the task (it restarted)", now_ms);
    }
  }
  w = fleet_.Find(worker_id);  // Retry released reservations
  for (const AttemptRef& held : reported) {
    const Task* t = active_task(held.task);
    if (t && t->worker == worker_id && t->attempt == held.attempt) continue;
    // Held by the worker but not ours to run there (ended, moved, cancelled): drop it.
    Send(w->address, codec::EncodeCancelTask(held));
  }
}

// ---------------------------------------------------------------------------
// Task transitions.

void Engine::Queue(Task* t, const std::string& worker_id, uint64_t now_ms) {
  fleet_.ModifyLoad(worker_id, [&](WorkerState& w) {
    Reserve(t->spec, &w);
    w.tasks.insert(t->id);
  });
  Step(t, TaskEvent::kPlace);
  if (t->first_wait) {
    t->first_wait = false;
    --hot_first_waits_;
  }
  t->worker = worker_id;
  t->dispatched_ms = now_ms;
  dirty_tasks_.push_back(t->id);
  dispatches_[worker_id].push_back(t->id);
  EventFields f = EventAbout(wire::EventType::TaskQueued, *t);
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
  if (!NextState(t->state, spent ? TaskEvent::kRetry : TaskEvent::kHandBack)) return;
  if (t->spec.session && t->endpoint.port != 0) {
    // It was ready, so someone may be connected to it: a session is never silently
    // started again elsewhere, whatever ended it (its worker lost, its daemon failing).
    End(t, TaskEvent::kFail, reason, message + "; a session is never re-run elsewhere", 0, now_ms);
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
    End(t, TaskEvent::kFail, reason,
        message + "; attempts exhausted (" + std::to_string(t->attempt - t->handed_back) + "/" +
            std::to_string(t->spec.max_attempts) + ")",
        0, now_ms);
    return;
  }
  ++stats_.retries;
  std::string last_worker = t->worker;
  t->attempt += 1;
  t->output_end[0] = t->output_end[1] = 0;  // a new attempt's output starts afresh
  Step(t, spent ? TaskEvent::kRetry : TaskEvent::kHandBack);
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
  EventFields f = EventAbout(wire::EventType::TaskRetrying, *t);
  f.worker = last_worker;
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
    if (it == active_.end() || !NextState(it->second.state, TaskEvent::kBackoffOver) ||
        it->second.not_before_ms != due) {
      continue;
    }
    it->second.not_before_ms = 0;
    pending_.Insert(it->second.spec, LineOf(it->second));
    placement_needed_ = true;
    fleet_shrank_ = true;  // it may have no eligible worker left: judged at the turn's end
  }
}

bool Engine::Step(Task* t, TaskEvent event) {
  std::optional<wire::TaskState> next = NextState(t->state, event);
  if (!next) return false;  // no such transition (task_machine.h): nothing changes
  t->state = *next;
  return true;
}

void Engine::End(Task* t, TaskEvent event, wire::Reason reason, const std::string& message, int32_t exit_code,
                 uint64_t now_ms, const Explanation* explanation) {
  const std::optional<wire::TaskState> next = NextState(t->state, event);
  if (!next) return;
  const wire::TaskState state = *next;
  Unassign(t);
  if (t->state == wire::TaskState::Pending) pending_.Erase(t->spec, LineOf(*t));
  ++stats_.ended[{state, reason}];
  Step(t, event);
  t->reason = reason;
  t->message = message;
  t->exit_code = exit_code;
  EventFields f = EventAbout(state == wire::TaskState::Succeeded ? wire::EventType::TaskSucceeded
                             : state == wire::TaskState::Failed  ? wire::EventType::TaskFailed
                                                                 : wire::EventType::TaskCancelled,
                             *t);
  f.reason = reason;
  f.message = message;
  f.exit_code = exit_code;
  f.explanation = explanation;
  Emit(f, now_ms);
  if (!t->watcher.empty()) {
    ended_for_watchers_[t->watcher].push_back({t->id, StatusOf(state), reason, message, t->worker});
  }
  t->ended_ms = now_ms;
  const uint64_t id = t->id;
  if (t->record == Task::Record::kWaiting) {
    --cached_waiting_;
    --waiting_records_;
  }
  if (t->first_wait) --hot_first_waits_;
  if (!announced_waiting_.empty()) announced_waiting_.erase(id);
  if (!t->waits_for.empty()) {
    --blocked_;
    // Its id stays in its parents' lists (removing it there costs a walk of each):
    // compacted once the stale ones outnumber the blocked.
    if (++stale_dependents_ > blocked_ + 4096) CompactDependents();
  }
  if (!t->spec.group.empty()) groups_.Close(t->owner, t->spec.group, id, state, now_ms);
  if (dependents_.count(id)) {
    ended_parents_.push_back(
        {id, state == wire::TaskState::Succeeded, reason != wire::Reason::DependencyFailed, t->spec.key,
         reason == wire::Reason::DependencyFailed ? ending_cause_
                                                  : DependencyCause(t->spec.key, id, state, reason, message, {})});
  }
  ended_.Add(std::move(*t), &effects_.writes, scratch_);  // the task leaves the active set: moved, not copied
  active_.erase(id);
  ResolveDependents(now_ms);
}

void Engine::CompactDependents() {
  for (auto it = dependents_.begin(); it != dependents_.end();) {
    auto& ids = it->second;
    ids.erase(std::remove_if(ids.begin(), ids.end(),
                             [&](uint64_t id) {
                               auto t = active_.find(id);
                               return t == active_.end() || t->second.waits_for.empty();
                             }),
              ids.end());
    it = ids.empty() ? dependents_.erase(it) : std::next(it);
  }
  stale_dependents_ = 0;
}

void Engine::JoinLine(Task& t) {
  if (Bounded(t.spec) && !groups_.Admit(t.owner, t.spec.group, t.id)) return;  // held by its array's bound
  pending_.Insert(t.spec, LineOf(t));
  placement_needed_ = true;
}

void Engine::ReleaseHeld() {
  for (const Groups::Released& r : groups_.TakeReleased()) {
    Task* t = Load(r.id);
    if (t == nullptr) {
      groups_.Unrelease(r, /*hold=*/!read_error_.ok());  // tried again next turn, or it is gone
      continue;
    }
    pending_.Insert(t->spec, LineOf(*t));
    placement_needed_ = true;
    fleet_shrank_ = true;  // judged for eligibility at the turn's end, like a retry
  }
}

std::string Engine::DependencyMessage(const std::string& key, uint64_t id, const std::string& cause, bool direct) {
  // "after "prep" (t3) failed exit_status: exit status 1" when prep failed itself, else
  // "after "train" (t4): "prep" (t3) failed ...", the first failure of the chain.
  return direct ? "after " + cause : "after \"" + key + "\" (" + TaskName(id) + "): " + cause;
}

std::string Engine::DependencyCause(const std::string& key, uint64_t id, wire::TaskState state, wire::Reason reason,
                                    const std::string& message, const std::vector<std::string>& parent_after) {
  constexpr size_t kMaxCause = 512;
  if (reason == wire::Reason::DependencyFailed) {
    // It failed for its own parent: the first failure of the chain is named, not each link.
    // Its message is DependencyMessage's: `after "K" (tN) <cause>` when its parent K
    // failed itself, `after "K" (tN): <cause>` when K failed for its own parent.
    for (const std::string& k : parent_after) {
      const std::string prefix = "after \"" + k + "\" (t";
      if (message.rfind(prefix, 0) != 0) continue;
      size_t at = prefix.size();
      while (at < message.size() && message[at] >= '0' && message[at] <= '9') ++at;
      if (message.compare(at, 3, "): ") == 0) return message.substr(at + 3, kMaxCause);
      if (message.compare(at, 2, ") ") == 0) return message.substr(6, kMaxCause);  // after the "after "
    }
    return message.substr(0, kMaxCause);
  }
  std::string cause = "\"" + key + "\" (" + TaskName(id) + ") " + StateName(state);
  if (std::string_view r = Name(reason); !r.empty() && r != StateName(state)) cause += " " + std::string(r);
  if (!message.empty()) cause += ": " + message;
  return cause.substr(0, kMaxCause);
}

void Engine::ResolveDependents(uint64_t now_ms) {
  if (resolving_) return;  // an End inside the loop below: its dependents are taken by the loop
  resolving_ = true;
  // A worklist, not recursion: a chain of any length ends in this one turn.
  while (!ended_parents_.empty()) {
    EndedParent parent = std::move(ended_parents_.back());
    ended_parents_.pop_back();
    auto waiting = dependents_.extract(parent.id);
    if (waiting.empty()) continue;
    for (uint64_t id : waiting.mapped()) {
      auto it = active_.find(id);
      if (it == active_.end()) continue;  // ended meanwhile (cancelled)
      Task& t = it->second;
      auto at = std::lower_bound(t.waits_for.begin(), t.waits_for.end(), parent.id);
      if (at == t.waits_for.end() || *at != parent.id) continue;
      if (!parent.succeeded) {
        ending_cause_ = parent.cause;
        End(&t, TaskEvent::kUnrunnable, wire::Reason::DependencyFailed,
            DependencyMessage(parent.key, parent.id, parent.cause, parent.direct), 0, now_ms);
        continue;
      }
      // Not written for each parent (K parents of M tasks would be M x K records): its
      // record keeps the parents it listed until it joins the line, and a start drops
      // those that ended meanwhile (Recover: they can only have succeeded).
      t.waits_for.erase(at);
      if (!t.waits_for.empty()) continue;
      dirty_tasks_.push_back(id);
      // Every task it ran after succeeded: it takes its place in line (its order is
      // its submission's), judged for eligibility at the turn's end like a retry.
      --blocked_;
      JoinLine(t);
      fleet_shrank_ = true;
    }
  }
  ending_cause_.clear();
  resolving_ = false;
}

void Engine::OnWorkerReport(const std::string& from, const wire::WorkerReport& report, uint64_t now_ms) {
  if (report.started()) {
    std::map<AttemptRef, std::vector<std::string>> devices;
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
  if (t.attempt != ref.attempt() || !NextState(t.state, TaskEvent::kStart)) return;  // stale or duplicate
  if (!FromTaskWorker(t, from, "a start")) return;
  Step(&t, TaskEvent::kStart);
  // Never more than it asked for: a worker's list is bounded by the task's own count.
  if (gpus.size() > t.spec.resources.gpus) gpus.resize(t.spec.resources.gpus);
  t.gpus = std::move(gpus);
  dirty_tasks_.push_back(t.id);
  EventFields f = EventAbout(wire::EventType::TaskStarted, t);
  f.gpus = &t.gpus;
  Emit(f, now_ms);
}

void Engine::OnTaskReady(const std::string& from, const wire::TaskReady& msg, uint64_t now_ms) {
  if (!msg.ref() || !msg.endpoint()) return;
  auto it = active_.find(msg.ref()->task());
  if (it == active_.end()) return;
  Task& t = it->second;
  if (t.attempt != msg.ref()->attempt() || !NextState(t.state, TaskEvent::kReady) || !t.spec.session) return;
  if (!FromTaskWorker(t, from, "a session endpoint")) return;
  Endpoint endpoint = codec::FromWire(msg.endpoint());
  if (endpoint == t.endpoint) return;  // said again (a re-registration): nothing new
  if (Status valid = ValidateEndpoint(endpoint); !valid.ok()) {
    Refused(from, "a session endpoint for " + TaskName(t.id) + ": " + valid.message());
    return;
  }
  t.endpoint = std::move(endpoint);
  dirty_tasks_.push_back(t.id);
  EventFields f = EventAbout(wire::EventType::TaskReady, t);
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
  if (auto w = winding_down_.find(msg.ref()->task()); w != winding_down_.end() &&
                                                      w->second.attempt == msg.ref()->attempt() &&
                                                      membership_.FromWorkerOf(from, w->second.worker)) {
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
      End(&t, TaskEvent::kSucceed,
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
      End(&t, TaskEvent::kFail,
          msg.reason() == wire::Reason::ImageMissing || msg.reason() == wire::Reason::MemoryLimit
              ? msg.reason()
              : wire::Reason::ExitStatus,
          message.empty() ? "exit status " + std::to_string(msg.exit_code()) : message, msg.exit_code(), now_ms);
      break;
    case wire::Outcome::TimedOut:
      End(&t, TaskEvent::kFail, wire::Reason::Timeout, message, msg.exit_code(), now_ms);
      break;
    case wire::Outcome::Cancelled:
      End(&t, TaskEvent::kCancel, wire::Reason::Cancelled, message, msg.exit_code(), now_ms);
      break;
    case wire::Outcome::Retryable:
      if (msg.reason() == wire::Reason::NotStarted && NextState(t.state, TaskEvent::kHandBack)) {
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
  const bool from_worker = bus::PrincipalOf(from).role == bus::Role::kWorker;
  if (msg.data() && from_worker) output_taken_[from] += msg.data()->size();
  if (!msg.ref()) return;
  // Sequenced output of an attempt that is no longer current (ended, or a later one
  // runs): its output was stored before its end was, so nothing of it is wanted now.
  auto let_go = [&] {
    if (msg.offset().has_value() && from_worker) {
      output_marks_[from][{msg.ref()->task(), msg.ref()->attempt(), Str(msg.stream()) == "stderr"}] = {UINT64_MAX,
                                                                                                       false};
    }
  };
  EventFields f;
  f.type = wire::EventType::TaskLog;
  f.stream = Str(msg.stream());
  f.data = Str(msg.data());
  auto active = active_.find(msg.ref()->task());
  Task* t = active == active_.end() ? nullptr : &active->second;
  if (t == nullptr) {
    // A cancelled attempt on its way out (it trapped SIGTERM): its last words are kept.
    auto w = winding_down_.find(msg.ref()->task());
    let_go();
    if (w == winding_down_.end() || w->second.attempt != msg.ref()->attempt() ||
        !membership_.FromWorkerOf(from, w->second.worker)) {
      return;
    }
    f.task = w->first;
    f.worker = w->second.worker;
    f.attempt = w->second.attempt;
    f.owner = w->second.owner;
    Emit(f, now_ms);
    return;
  }
  if (t->attempt != msg.ref()->attempt()) {
    let_go();
    return;
  }
  if (!FromTaskWorker(*t, from, "output")) {
    let_go();  // not that worker's to send: nothing of it is wanted from there
    return;
  }
  const bool sequenced = msg.offset().has_value() && (f.stream == "stdout" || f.stream == "stderr");
  if (sequenced) {
    // Each byte once: a range resent after a restart or a lost acknowledgement is cut
    // to what is new; one past a gap (what came before it was lost on the way) waits for
    // the worker to send again from the end it is told.
    uint64_t& end = t->output_end[f.stream == "stderr" ? 1 : 0];
    const uint64_t offset = *msg.offset();
    const uint64_t skip = offset <= end ? end - offset : 0;
    if (offset <= end && skip < f.data.size()) {
      f.data.erase(0, skip);
      end += f.data.size();
      dirty_tasks_.push_back(t->id);
    } else {
      f.data.clear();
    }
    if (from_worker) {
      auto& mark = output_marks_[from][{t->id, t->attempt, f.stream == "stderr"}];
      mark.end = end;
      mark.behind = mark.behind || offset > end;  // dropped past a gap: to be sent again
    }
    if (f.data.empty()) return;
  }
  EventFields log = EventAbout(wire::EventType::TaskLog, *t);
  log.stream = std::move(f.stream);
  log.data = std::move(f.data);
  Emit(log, now_ms);
}

// ---------------------------------------------------------------------------
// Control and replay.

void Engine::Cancel(Task* t, const std::string& from, uint64_t now_ms) {
  if (!t->worker.empty()) {
    if (const WorkerState* w = fleet_.Find(t->worker)) Send(w->address, codec::EncodeCancelTask({t->id, t->attempt}));
    // Its attempt stops gracefully (SIGTERM first): what it prints on the way out is
    // still its output, until the worker reports the attempt ended.
    if (winding_down_.size() >= 10000) winding_down_.erase(winding_down_.begin());
    winding_down_[t->id] = {t->attempt, t->worker, t->owner};
  }
  std::string by = options_.authenticate ? bus::PrincipalOf(from).name : std::string();
  End(t, TaskEvent::kCancel, wire::Reason::Cancelled,
      by.empty() ? "cancelled by fm-ctl" : "cancelled by " + by + " (fm-ctl)", 0, now_ms);
}

void Engine::OnReplay(const std::string& from, const wire::ReplayRequest& req) {
  // A client sees only its own tasks' events (an operator, or a keyless cluster, all).
  Send(from, log_.Replay(req.since(), req.correlation(), ClientName(from)));
}

// ---------------------------------------------------------------------------
// Time and the end of a turn.

void Engine::Tick(uint64_t now_ms) {
  Apply(membership_.Tick(now_ms), now_ms);
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
  log_.ApplyRetention(now_ms, &effects_.writes);
  Status trimmed =
      ended_.Trim(now_ms, &effects_.writes,
                  [&](uint64_t id, const std::string& owner, const std::string& key) { ForgetKey(id, owner, key); });
  if (!trimmed.ok() && read_error_.ok()) read_error_ = trimmed;
  // A group is kept while it has tasks, and as long as its ended tasks would be.
  if (waiting_loaded()) {  // a group whose tasks are all still at q/ looks idle before
    groups_.Trim(now_ms > options_.task_retention_age_ms ? now_ms - options_.task_retention_age_ms : 0,
                 options_.task_retention_count, options_.task_trim_per_tick, now_ms, &effects_.writes);
  }
  ReleaseBackoff(now_ms);
}

void Engine::ForgetKey(uint64_t id, const std::string& owner, const std::string& key) {
  if (key.empty()) return;
  std::string scoped = OwnerScoped(owner, key);
  // The key names this task (a key is first used by one task only).
  auto named = records::ReadKey(*store_, scoped);
  if (!named.ok()) {
    // Not "no such key": the store cannot be read (engine.h, TakeReadError).
    if (read_error_.ok()) read_error_ = named.status();
  } else if (*named && **named == id) {
    records::DeleteClientKey(&effects_.writes, scoped);
  }
}

void Engine::FailUnrunnable(uint64_t now_ms) {
  // Eligibility is a property of the demand: one look per demand, not per task. A demand
  // that only recently lost workers could run waits for them (the reconnect grace).
  struct Doomed {
    TaskSpec demand;
    std::vector<PendingSet::Entry> line;
    Explanation why;
  };
  std::vector<Doomed> doomed;
  std::vector<uint64_t> waiting;
  pending_.ForEachDemand([&](const TaskSpec& demand, const auto& line) {
    if (fleet_.AnyEligible(demand)) return;
    uint64_t last_lost_ms = 0;
    if (membership_.LostEligible(demand, &last_lost_ms) > 0) {
      for (const auto& e : line) {
        if (!announced_waiting_.count(e.id)) waiting.push_back(e.id);
      }
    } else {
      doomed.push_back({demand, {line.begin(), line.end()}, fleet_.Explain(demand)});
    }
  });
  for (uint64_t id : waiting) {
    std::optional<Task> read;  // a waiting task is told about as read, not held
    if (const Task* t = Peek(id, &read)) MarkWaiting(*t, now_ms);
  }
  for (const auto& [demand, line, why] : doomed) {
    for (const PendingSet::Entry& e : line) {
      if (Task* t = Load(e.id)) {
        End(t, TaskEvent::kUnrunnable, wire::Reason::NoEligibleWorker, why.message, 0, now_ms, &why);
      } else if (!read_error_.ok()) {
        return;  // the store cannot be read: judged again in a later turn
      } else {
        pending_.Erase(demand, e);  // its record is gone (ended meanwhile)
      }
    }
  }
}

void Engine::MarkWaiting(const Task& t, uint64_t now_ms) {
  if (!announced_waiting_.insert(t.id).second) return;
  EventFields f = EventAbout(wire::EventType::TaskWaiting, t);
  f.message = membership_.WaitingForLost(t.spec, now_ms);
  Emit(f, now_ms);
}

void Engine::PlacePending(uint64_t now_ms) {
  pending_.Walk([&](uint64_t id, const TaskSpec& demand) {
    if (!fleet_.HasOpenSlot()) return PendingSet::Offer::kStop;
    ++placement_offers_;
    auto held = active_.find(id);
    const WorkerState* chosen = nullptr;
    if (held != active_.end() && !held->second.failed_on.empty()) {
      // A retry goes to a worker that has not failed it, whenever one could run it: it
      // waits for one that is full now, and goes back to one that failed it only when no
      // other could ever run it. (A task read back from q/ never failed anywhere.)
      const auto& failed_on = held->second.failed_on;
      chosen = fleet_.Place(demand, options_.policy, &failed_on);
      if (!chosen && fleet_.AnyEligibleExcept(demand, failed_on)) return PendingSet::Offer::kSkip;
    }
    if (!chosen) chosen = fleet_.Place(demand, options_.policy);
    if (!chosen) return PendingSet::Offer::kNoRoom;  // waits for capacity; other demands may fit
    Task* t = held != active_.end() ? &held->second : Load(id);
    if (t == nullptr) {
      // The store cannot be read (judged again next turn), or the record is gone: the
      // task ended meanwhile and its place in line goes with it.
      return read_error_.ok() ? PendingSet::Offer::kPlaced : PendingSet::Offer::kStop;
    }
    if (!announced_waiting_.empty()) announced_waiting_.erase(id);
    Queue(t, chosen->id, now_ms);
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
    Send(w->address,
         codec::Seal(fbb, wire::CreateDispatch(fbb, fbb.CreateVector(assignments), epoch_, /*sequenced_output=*/true)));
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
    auto first = refs.empty() ? 0 : wire::CreateTaskRef(fbb, refs.front().task, refs.front().attempt);
    auto taken = output_taken_.find(address);
    uint64_t output = taken == output_taken_.end() ? 0 : taken->second;
    // With output taken, the marks always (maybe none): their presence says this
    // scheduler stores sequenced output once (worker/core.h).
    flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<wire::OutputMark>>> marks = 0;
    if (output > 0) {
      std::vector<flatbuffers::Offset<wire::OutputMark>> each;
      if (auto m = output_marks_.find(address); m != output_marks_.end()) {
        each.reserve(m->second.size());
        for (const auto& [key, mark] : m->second) {
          const auto& [task, attempt, err] = key;
          each.push_back(wire::CreateOutputMark(fbb, wire::CreateTaskRef(fbb, task, attempt),
                                                fbb.CreateString(err ? "stderr" : "stdout"), mark.end, mark.behind));
        }
      }
      marks = fbb.CreateVector(each);
    }
    Send(address, codec::Seal(fbb, wire::CreateTaskFinishedAck(fbb, first, fbb.CreateVector(offsets), output, marks)));
  }
  acks_.clear();
  output_taken_.clear();
  output_marks_.clear();
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

void Engine::WriteTasks() {
  // Ended tasks are no longer active: their record moved to t/ when they ended.
  std::sort(dirty_tasks_.begin(), dirty_tasks_.end());
  dirty_tasks_.erase(std::unique(dirty_tasks_.begin(), dirty_tasks_.end()), dirty_tasks_.end());
  // Past the bound, the newest tasks submitted this turn wait at q/ out of memory (their
  // place in line stays): they are the last to be placed, and read back then. The others
  // are written at a/ as every task in memory is: a burst placed soon costs no more.
  std::vector<uint64_t> leaving;
  size_t excess =
      hot_first_waits_ > options_.cached_waiting_tasks ? hot_first_waits_ - options_.cached_waiting_tasks : 0;
  for (auto id = dirty_tasks_.rbegin(); id != dirty_tasks_.rend() && excess > 0; ++id) {
    auto it = active_.find(*id);
    if (it == active_.end() || !it->second.first_wait || it->second.record != Task::Record::kNone) continue;
    leaving.push_back(*id);
    --excess;
  }
  std::reverse(leaving.begin(), leaving.end());  // ascending, as dirty_tasks_
  for (uint64_t id : dirty_tasks_) {
    auto it = active_.find(id);
    if (it == active_.end()) continue;
    Task& t = it->second;
    if (!leaving.empty() && std::binary_search(leaving.begin(), leaving.end(), id)) {
      records::PutActiveTask(&effects_.writes, t, /*waiting=*/true, scratch_);
      ++waiting_records_;
      --hot_first_waits_;
      active_.erase(it);
      continue;
    }
    // A task read back from q/ stays there while it waits; once placed it moves to a/.
    const bool waiting = t.record == Task::Record::kWaiting && t.state == wire::TaskState::Pending;
    records::PutActiveTask(&effects_.writes, t, waiting, scratch_);
    if (!waiting && t.record == Task::Record::kWaiting) {
      --waiting_records_;
      --cached_waiting_;
    }
    t.record = waiting ? Task::Record::kWaiting : Task::Record::kActive;
  }
  dirty_tasks_.clear();
}

void Engine::FinishTurn(uint64_t now_ms) {
  LoadWaiting();
  ReleaseHeld();
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
  WriteTasks();
  turn_keys_.clear();  // in the turn's batch from now on, which the store's view reads
  ended_.FinishTurn(&effects_.writes);
  groups_.FinishTurn(&effects_.writes);
  if (next_task_id_ != persisted_task_id_) {
    records::PutNextTaskId(&effects_.writes, next_task_id_);
    persisted_task_id_ = next_task_id_;
  }
  if (!epoch_persisted_) {
    records::PutEpoch(&effects_.writes, epoch_);
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
  // The waiting tasks (q/): counted apart; the oldest of them is the first in the store.
  c.pending = waiting_records_;
  if (store_ != nullptr && waiting_records_ > 0) {
    // From the first waiting id seen last time: ids only leave q/ (new ones are higher),
    // so the deleted records before it are not walked over again.
    (void)records::ScanWaiting(*store_, waiting_floor_, std::numeric_limits<uint64_t>::max(), 1,
                               [&](const records::WaitingLine& line) {
                                 c.oldest_pending_ms = line.submitted_ms;
                                 waiting_floor_ = line.id;
                               });
  }
  for (const auto& [id, t] : active_) {
    switch (t.state) {
      case wire::TaskState::Pending:
        if (t.record == Task::Record::kWaiting) break;  // counted above
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
  WorkerCounts workers = membership_.Count();
  c.workers_live = workers.live;
  c.workers_draining = workers.draining;
  c.workers_unconfirmed = workers.unconfirmed;
  c.workers_lost = workers.lost;
  return c;
}

}  // namespace fm::sched
