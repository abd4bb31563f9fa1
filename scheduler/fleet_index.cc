#include "scheduler/fleet_index.h"

#include <algorithm>

#include "scheduler/predicates.h"

namespace fm::sched {

Fleet::LoadKey Fleet::Load(const WorkerState& w) {
  WorkerLoad load = LoadOf(w);
  return {load.first, load.second, w.id};
}

void Fleet::Index(WorkerState& w) {
  auto [c, created] = classes_.try_emplace(ClassShape::Of(w));
  if (created) {
    c->second.shape.capabilities = w.capabilities;
    c->second.shape.hardware = w.hardware;
    c->second.shape.labels = w.labels;
    c->second.shape.quarantined = w.quarantined;
  }
  ++c->second.members;
  if (w.draining) ++c->second.draining;
  class_of_[w.id] = c;
  if (w.confirmed && !w.draining) {
    LoadKey load = Load(w);
    c->second.open.insert(load);
    indexed_load_[w.id] = load;
    if (w.slots_used < w.slots) open_slots_ += w.slots - w.slots_used;
  }
}

void Fleet::Unindex(WorkerState& w) {
  auto k = class_of_.find(w.id);
  if (k == class_of_.end()) return;
  auto c = k->second;
  if (auto load = indexed_load_.find(w.id); load != indexed_load_.end()) {
    c->second.open.erase(load->second);
    indexed_load_.erase(load);
    if (w.slots_used < w.slots) open_slots_ -= w.slots - w.slots_used;
  }
  --c->second.members;
  if (w.draining) --c->second.draining;
  if (c->second.members == 0) classes_.erase(c);
  class_of_.erase(k);
}

const WorkerState* Fleet::Find(const std::string& id) const {
  auto it = workers_.find(id);
  return it == workers_.end() ? nullptr : &it->second;
}

WorkerState& Fleet::Add(WorkerState worker) {
  Remove(worker.id);
  std::string id = worker.id;
  WorkerState& w = workers_.emplace(id, std::move(worker)).first->second;
  Index(w);
  return w;
}

void Fleet::Remove(const std::string& id) {
  auto it = workers_.find(id);
  if (it == workers_.end()) return;
  Unindex(it->second);
  workers_.erase(it);
}

void Fleet::Touch(const std::string& id, uint64_t now_ms) {
  auto it = workers_.find(id);
  if (it != workers_.end()) it->second.last_seen_ms = now_ms;
}

bool Fleet::AnyEligible(const TaskSpec& spec) const {
  for (const auto& [shape, c] : classes_) {
    if (c.members > c.draining && CheckEligible(spec, c.shape).ok()) return true;
  }
  return false;
}

Explanation Fleet::Explain(const TaskSpec& spec) const {
  WorkerState draining;
  draining.draining = true;
  std::vector<std::pair<const WorkerState*, uint32_t>> groups;
  for (const auto& [shape, c] : classes_) {
    if (c.members > c.draining) groups.push_back({&c.shape, c.members - c.draining});
    if (c.draining) groups.push_back({&draining, c.draining});
  }
  return ExplainGroups(spec, groups);
}

bool Fleet::AnyEligibleExcept(const TaskSpec& spec, const std::vector<std::string>& except) const {
  for (const auto& [id, w] : workers_) {
    if (w.draining || std::binary_search(except.begin(), except.end(), id)) continue;
    if (CheckEligible(spec, w).ok()) return true;
  }
  return false;
}

const WorkerState* Fleet::BestInClass(const TaskSpec& spec, const Class& c, PlacementPolicy policy,
                                      const std::vector<std::string>* except) const {
  auto usable = [&](const WorkerState& w) {
    return HasRoom(spec, w) && (!except || !std::binary_search(except->begin(), except->end(), w.id));
  };
  // Members in PreferredOver's order; the first with room is the class's candidate.
  if (policy == PlacementPolicy::kSpread) {
    for (const LoadKey& load : c.open) {
      const WorkerState& w = workers_.at(std::get<2>(load));
      if (usable(w)) return &w;
    }
    return nullptr;
  }
  // Binpack: the highest load first, and within one load the smallest id first.
  auto end = c.open.end();
  while (end != c.open.begin()) {
    auto last = std::prev(end);
    auto group = c.open.lower_bound(LoadKey{std::get<0>(*last), std::get<1>(*last), std::string()});
    for (auto it = group; it != end; ++it) {
      const WorkerState& w = workers_.at(std::get<2>(*it));
      if (usable(w)) return &w;
    }
    end = group;
  }
  return nullptr;
}

const WorkerState* Fleet::Place(const TaskSpec& spec, PlacementPolicy policy,
                                const std::vector<std::string>* except) const {
  const WorkerState* best = nullptr;
  WorkerLoad best_load;
  for (const auto& [shape, c] : classes_) {
    if (c.open.empty() || !CheckEligible(spec, c.shape).ok()) continue;
    const WorkerState* candidate = BestInClass(spec, c, policy, except);
    if (!candidate) continue;
    WorkerLoad load = LoadOf(*candidate);
    if (!best || PreferredOver(policy, load, candidate->id, best_load, best->id)) {
      best = candidate;
      best_load = load;
    }
  }
  return best;
}

}  // namespace fm::sched
