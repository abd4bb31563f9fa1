#include "scheduler/placement.h"

#include <algorithm>

#include "scheduler/predicates.h"

namespace fm::sched {

bool ParsePlacementPolicy(const std::string& name, PlacementPolicy* out) {
  if (name == "spread") {
    *out = PlacementPolicy::kSpread;
  } else if (name == "binpack") {
    *out = PlacementPolicy::kBinpack;
  } else {
    return false;
  }
  return true;
}

bool HasRoom(const TaskSpec& spec, const WorkerState& w) {
  const Resources& r = spec.resources;
  return w.slots_used < w.slots && w.cpus_used + r.cpus_milli <= w.hardware.cpus_milli &&
         w.memory_used + r.memory <= w.hardware.memory &&
         w.gpus_used + r.gpus <= (r.gpus == 0 ? w.gpus_used : MatchingGpus(r, w.hardware));
}

void Reserve(const TaskSpec& spec, WorkerState* w) {
  w->slots_used += 1;
  w->cpus_used += spec.resources.cpus_milli;
  w->memory_used += spec.resources.memory;
  w->gpus_used += spec.resources.gpus;
}

void Release(const TaskSpec& spec, WorkerState* w) {
  auto sub = [](auto& v, auto d) { v = v > d ? v - d : 0; };
  sub(w->slots_used, 1u);
  sub(w->cpus_used, spec.resources.cpus_milli);
  sub(w->memory_used, spec.resources.memory);
  sub(w->gpus_used, spec.resources.gpus);
}

WorkerLoad LoadOf(const WorkerState& w) {
  double slots = w.slots ? static_cast<double>(w.slots_used) / w.slots : 1.0;
  double cpus = w.hardware.cpus_milli ? static_cast<double>(w.cpus_used) / w.hardware.cpus_milli : 0.0;
  return {slots, cpus};
}

bool PreferredOver(PlacementPolicy policy, const WorkerLoad& a, const std::string& a_id, const WorkerLoad& b,
                   const std::string& b_id) {
  if (a != b) return policy == PlacementPolicy::kSpread ? a < b : a > b;
  return a_id < b_id;
}

WorkerState* Choose(const TaskSpec& spec, const std::vector<WorkerState*>& candidates, PlacementPolicy policy) {
  WorkerState* best = nullptr;
  WorkerLoad best_load;
  for (WorkerState* w : candidates) {
    if (!HasRoom(spec, *w)) continue;
    WorkerLoad load = LoadOf(*w);
    if (!best || PreferredOver(policy, load, w->id, best_load, best->id)) {
      best = w;
      best_load = load;
    }
  }
  return best;
}

}  // namespace fm::sched
