#include "scheduler/fleet_index.h"

#include "scheduler/predicates.h"

namespace fm::sched {

std::string Fleet::ClassKey(const WorkerState& w) {
  std::string key;
  for (const auto& c : w.capabilities) key += c + ",";
  key += "|" + std::to_string(w.hardware.cpus_milli) + "|" + std::to_string(w.hardware.memory) + "|";
  for (const auto& g : w.hardware.gpus) key += g.model + ":" + std::to_string(g.memory) + ",";
  key += "|";
  for (const auto& [k, v] : w.labels) key += k + "=" + v + ",";
  return key;
}

Fleet::LoadKey Fleet::Load(const WorkerState& w) {
  double slots = w.slots ? static_cast<double>(w.slots_used) / w.slots : 1.0;
  double cpus = w.hardware.cpus_milli ? static_cast<double>(w.cpus_used) / w.hardware.cpus_milli : 0.0;
  return {slots, cpus, w.id};
}

void Fleet::Index(WorkerState& w) {
  std::string key = ClassKey(w);
  Class& c = classes_[key];
  if (c.members == 0) {
    c.shape.capabilities = w.capabilities;
    c.shape.hardware = w.hardware;
    c.shape.labels = w.labels;
  }
  ++c.members;
  if (w.draining) ++c.draining;
  class_of_[w.id] = key;
  if (w.confirmed && !w.draining) {
    LoadKey load = Load(w);
    c.open.insert(load);
    indexed_load_[w.id] = load;
    if (w.slots_used < w.slots) open_slots_ += w.slots - w.slots_used;
  }
}

void Fleet::Unindex(WorkerState& w) {
  auto k = class_of_.find(w.id);
  if (k == class_of_.end()) return;
  auto c = classes_.find(k->second);
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
  for (const auto& [key, c] : classes_) {
    if (c.members > c.draining && CheckEligible(spec, c.shape).ok()) return true;
  }
  return false;
}

Explanation Fleet::Explain(const TaskSpec& spec) const {
  WorkerState draining;
  draining.draining = true;
  std::vector<std::pair<const WorkerState*, uint32_t>> groups;
  for (const auto& [key, c] : classes_) {
    if (c.members > c.draining) groups.push_back({&c.shape, c.members - c.draining});
    if (c.draining) groups.push_back({&draining, c.draining});
  }
  return ExplainGroups(spec, groups);
}

const WorkerState* Fleet::Place(const TaskSpec& spec, PlacementPolicy policy) const {
  const WorkerState* best = nullptr;
  LoadKey best_load;
  for (const auto& [key, c] : classes_) {
    if (c.open.empty() || !CheckEligible(spec, c.shape).ok()) continue;
    auto consider = [&](const LoadKey& load) {
      const WorkerState& w = workers_.at(std::get<2>(load));
      if (!HasRoom(spec, w)) return false;
      bool better = !best || (policy == PlacementPolicy::kSpread ? load < best_load : load > best_load);
      if (better) {
        best = &w;
        best_load = load;
      }
      return true;
    };
    // The class's first member with room in the policy's order is its candidate.
    if (policy == PlacementPolicy::kSpread) {
      for (auto it = c.open.begin(); it != c.open.end() && !consider(*it); ++it) {
      }
    } else {
      for (auto it = c.open.rbegin(); it != c.open.rend() && !consider(*it); ++it) {
      }
    }
  }
  return best;
}

}  // namespace fm::sched
