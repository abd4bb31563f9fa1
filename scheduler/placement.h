// Placement: among eligible workers, the ones with room now, chosen by policy.
#pragma once

#include <string>
#include <vector>

#include "scheduler/fleet.h"
#include "schemas/model.h"

namespace fm::sched {

enum class PlacementPolicy { kSpread, kBinpack };

// Parses "spread" or "binpack".
bool ParsePlacementPolicy(const std::string& name, PlacementPolicy* out);

// Free capacity of `w` covers `spec` now: a free slot, cpus, memory, GPUs.
// REQUIRES: `w` is eligible for `spec` (predicates.h).
bool HasRoom(const TaskSpec& spec, const WorkerState& w);

// Reserves and releases `spec`'s resources on `w`.
void Reserve(const TaskSpec& spec, WorkerState* w);
void Release(const TaskSpec& spec, WorkerState* w);

// Picks a worker from `candidates` (all eligible, live, confirmed) that has room:
// spread takes the least loaded (slot share, then cpu share, then id), binpack the most
// loaded that fits. nullptr when none has room.
WorkerState* Choose(const TaskSpec& spec, const std::vector<WorkerState*>& candidates, PlacementPolicy policy);

}  // namespace fm::sched
