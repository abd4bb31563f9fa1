#include "scheduler/membership.h"

#include <algorithm>

#include "runtime/policy.h"
#include "scheduler/predicates.h"
#include "scheduler/records.h"
#include "schemas/codec.h"

namespace fm::sched {

using codec::Str;

namespace {

std::vector<std::string> Capabilities(const flatbuffers::Vector<flatbuffers::Offset<flatbuffers::String>>* v) {
  auto caps = codec::Strings(v);
  Normalize(&caps);
  return caps;
}

}  // namespace

Membership::Membership(MembershipOptions options, EventLog* log, Effects* effects)
    : options_(options), log_(log), effects_(effects) {}

Status Membership::Recover(const store::Store& store, uint64_t now_ms, uint64_t epoch) {
  epoch_ = epoch;
  return records::ScanWorkers(store, now_ms, [&](WorkerState w) { fleet_.Add(std::move(w)); });
}

void Membership::AskAllToRegister() {
  for (const auto& [id, w] : fleet_.workers()) Send(w.address, codec::EncodeReRegister(epoch_));
}

void Membership::EmitWorker(wire::EventType type, const std::string& id, std::string message, uint64_t now_ms,
                            const WorkerState* info, wire::Reason reason) {
  EventFields f;
  f.type = type;
  f.worker = id;
  f.worker_info = info;
  f.reason = reason;
  f.message = std::move(message);
  log_->Append(f, now_ms, effects_);
}

void Membership::Send(const std::string& to, std::string payload) {
  if (to.empty()) return;
  effects_->directed.push_back({to, std::move(payload)});
}

void Membership::Reject(const std::string& address, const std::string& id, const std::string& message) {
  Send(address, codec::EncodeWorkerRejected(id, message));
}

MembershipVerdict Membership::Register(const wire::WorkerRegistration& reg, uint64_t now_ms) {
  MembershipVerdict verdict;
  std::string id = Str(reg.id());
  std::string address = Str(reg.address());
  if (id.empty() || address.empty()) return verdict;  // nobody to answer; the daemon logs malformed input
  if (replaced_.count({id, reg.instance()})) {
    // An instance a restart replaced: it must stop, the new one keeps the id.
    Reject(address, id, "worker \"" + id + "\" was replaced by a newer instance on its node");
    return verdict;
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
      Reject(known->address, id, "worker \"" + id + "\" was replaced by a newer instance on its node");
      replaced_.insert({id, known->instance});
      if (replaced_.size() > 10000) replaced_.erase(replaced_.begin());
      Lose(id, "replaced by a new instance on node " + known->node, now_ms, &verdict);
      lost_.erase(id);  // it is back
      known = nullptr;
    } else if (known->confirmed) {
      // A second process claims a live worker's id: refuse it, the live one keeps its work.
      std::string message = "worker id \"" + id + "\" is already in use by a live worker on node " + known->node +
                            " (last heard " + std::to_string(now_ms - std::min(now_ms, known->last_seen_ms)) +
                            " ms ago); choose another --id or stop that worker";
      Reject(address, id, message);
      EmitWorker(wire::EventType::WorkerRejected, id, message + " (refused node " + Str(reg.node()) + ")", now_ms,
                 nullptr, wire::Reason::DuplicateWorkerId);
      return verdict;
    } else {
      // Known only from the store since this scheduler started: a restarted process.
      Lose(id, "replaced by a new instance of the same worker", now_ms, &verdict);
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
  if (known && (caps != known->capabilities || hardware != known->hardware)) verdict.fleet_shrank = true;
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
  records::PutWorker(&effects_->writes, w);
  EmitWorker(wire::EventType::WorkerRegistered, id,
             "node " + w.node + ", " + std::to_string(w.slots) + " slots, version " + w.version +
                 (w.noop_executor ? ", NOOP EXECUTOR: completes tasks without running them" : "") +
                 (w.limits == "off" ? ", limits: off (exec tasks' cpus and memory are not enforced)" : ""),
             now_ms, &w);
  EmitQuarantines(id, quarantined_before, quarantined, now_ms);
  verdict.rejoined = id;
  if (reg.running()) {
    for (const auto* ref : *reg.running()) verdict.held.insert({ref->task(), ref->attempt()});
  }
  verdict.placement_needed = true;
  return verdict;
}

MembershipVerdict Membership::Heartbeat(const wire::WorkerHeartbeat& hb, uint64_t now_ms) {
  MembershipVerdict verdict;
  std::string id = Str(hb.id());
  std::string address = Str(hb.address());
  if (id.empty() || address.empty()) return verdict;
  const WorkerState* known = fleet_.Find(id);
  if (!known || known->instance != hb.instance() || !known->confirmed) {
    Send(address, codec::EncodeReRegister(epoch_));
    return verdict;
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
    records::PutWorker(&effects_->writes, *fleet_.Find(id));
    EmitQuarantines(id, before, quarantined, now_ms);
    verdict.fleet_shrank = verdict.placement_needed = true;
    known = fleet_.Find(id);
  }
  if (caps != known->capabilities) {
    std::string before, after;
    for (const auto& c : known->capabilities) before += (before.empty() ? "" : ",") + c;
    for (const auto& c : caps) after += (after.empty() ? "" : ",") + c;
    fleet_.Modify(id, [&](WorkerState& w) { w.capabilities = std::move(caps); });
    const WorkerState& w = *fleet_.Find(id);
    records::PutWorker(&effects_->writes, w);
    EmitWorker(wire::EventType::WorkerUpdated, id, "capabilities [" + before + "] -> [" + after + "]", now_ms, &w);
    verdict.fleet_shrank = verdict.placement_needed = true;
  }
  return verdict;
}

void Membership::EmitQuarantines(const std::string& id, const std::map<std::string, std::string>& before,
                                 const std::map<std::string, std::string>& after, uint64_t now_ms) {
  const WorkerState* w = fleet_.Find(id);
  for (const auto& [capability, reason] : after) {
    auto was = before.find(capability);
    if (was != before.end() && was->second == reason) continue;
    EmitWorker(wire::EventType::WorkerQuarantined, id, "capability " + capability + " withdrawn: " + reason, now_ms, w);
  }
  for (const auto& [capability, reason] : before) {
    if (after.count(capability)) continue;
    EmitWorker(wire::EventType::WorkerRecovered, id,
               "capability " + capability + " announced again: a re-probe started a container (was: " + reason + ")",
               now_ms, w);
  }
}

void Membership::Lose(const std::string& id, const std::string& why, uint64_t now_ms, MembershipVerdict* verdict) {
  const WorkerState* lost = fleet_.Find(id);
  if (!lost) return;
  MembershipVerdict::Lost out{id, std::vector<uint64_t>(lost->tasks.begin(), lost->tasks.end()), why};
  EmitWorker(wire::EventType::WorkerLost, id, why + "; " + std::to_string(out.tasks.size()) + " tasks to re-place",
             now_ms);
  records::DeleteWorker(&effects_->writes, id);
  if (options_.reconnect_grace_ms > 0) {
    LostWorker& kept = lost_[id] = {*lost, now_ms};
    // Its shape only: what it held is the engine's to re-place.
    kept.shape.tasks.clear();
    kept.shape.slots_used = kept.shape.cpus_used = kept.shape.gpus_used = 0;
    kept.shape.memory_used = 0;
  }
  fleet_.Remove(id);
  verdict->lost.push_back(std::move(out));
  verdict->fleet_shrank = true;
}

MembershipVerdict Membership::Tick(uint64_t now_ms) {
  MembershipVerdict verdict;
  // The scheduler's own silence is not the fleet's. After a gap in its own ticks (a
  // stalled loop, a paused process) every worker gets a fresh window: heartbeats sent
  // meanwhile may not even have been read yet.
  const uint64_t gap = options_.liveness_window_ms / 4;
  if (last_tick_ms_ != 0 && now_ms > last_tick_ms_ + gap) {
    fleet_.TouchAll(now_ms);
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
    if (last_inbound_ms_ > 0) fleet_.TouchAll(last_inbound_ms_);
    lost.clear();
  }
  for (const auto& id : lost) {
    const WorkerState& w = *fleet_.Find(id);
    Lose(id,
         std::string(w.confirmed ? "no heartbeat for " : "did not re-register within ") +
             std::to_string(options_.liveness_window_ms) + " ms",
         now_ms, &verdict);
  }
  // The reconnect grace of lost workers ends: tasks only they could run fail now.
  for (auto it = lost_.begin(); it != lost_.end();) {
    if (now_ms >= it->second.lost_ms + options_.reconnect_grace_ms) {
      it = lost_.erase(it);
      verdict.fleet_shrank = true;
    } else {
      ++it;
    }
  }
  return verdict;
}

Result<std::string> Membership::SetDraining(const std::string& id, bool drain, const std::string& reason,
                                            uint64_t now_ms, MembershipVerdict* verdict) {
  const WorkerState* w = fleet_.Find(id);
  if (!w) return Status::NotFound("no live worker \"" + id + "\"");
  if (w->draining != drain || w->drain_reason != reason) {
    bool changed = w->draining != drain;
    fleet_.Modify(id, [&](WorkerState& x) {
      x.draining = drain;
      x.drain_reason = reason;
    });
    records::PutWorker(&effects_->writes, *w);
    if (changed) {
      EmitWorker(drain ? wire::EventType::WorkerDraining : wire::EventType::WorkerUndrained, id,
                 drain ? "takes no new tasks" + (reason.empty() ? "" : " (" + reason + ")") + "; " +
                             std::to_string(w->tasks.size()) + " still held"
                       : "takes new tasks again",
                 now_ms);
      if (drain) verdict->fleet_shrank = true;
      verdict->placement_needed = true;
    }
  }
  return (drain ? "draining " : "undrained ") + id;
}

bool Membership::FromWorkerOf(const std::string& address, const std::string& id) const {
  const WorkerState* w = fleet_.Find(id);
  return w != nullptr ? w->address == address : FromWorkerNamed(address, id);
}

bool Membership::FromWorkerNamed(const std::string& address, const std::string& id) const {
  if (!options_.authenticate) return true;
  bus::Principal p = bus::PrincipalOf(address);
  return p.role == bus::Role::kWorker && p.name == id;
}

size_t Membership::LostEligible(const TaskSpec& spec, uint64_t* last_lost_ms) const {
  size_t n = 0;
  for (const auto& [id, lost] : lost_) {
    if (!CheckEligible(spec, lost.shape).ok()) continue;
    ++n;
    *last_lost_ms = std::max(*last_lost_ms, lost.lost_ms);
  }
  return n;
}

std::string Membership::WaitingForLost(const TaskSpec& spec, uint64_t now_ms) const {
  uint64_t last_lost_ms = 0;
  size_t n = LostEligible(spec, &last_lost_ms);
  if (n == 0) return {};
  uint64_t ago_s = (now_ms - std::min(now_ms, last_lost_ms)) / 1000;
  return "waiting: " + std::to_string(n) + (n == 1 ? " eligible worker" : " eligible workers") + " lost " +
         std::to_string(ago_s) + " s ago; fails no_eligible_worker if none is back within the reconnect grace (" +
         std::to_string(options_.reconnect_grace_ms / 1000) + " s)";
}

WorkerCounts Membership::Count() const {
  WorkerCounts c;
  for (const auto& [id, w] : fleet_.workers()) {
    if (!w.confirmed) {
      ++c.unconfirmed;
    } else if (w.draining) {
      ++c.draining;
    } else {
      ++c.live;
    }
  }
  c.lost = lost_.size();
  return c;
}

}  // namespace fm::sched
