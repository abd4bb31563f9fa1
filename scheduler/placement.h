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

// What placement compares: the share of slots in use, then the share of cpus.
using WorkerLoad = std::pair<double, double>;
WorkerLoad LoadOf(const WorkerState& w);
// The one preference order of placement: spread prefers the lower load, binpack the
// higher; between equal loads the smaller worker id wins, under both policies.
bool PreferredOver(PlacementPolicy policy, const WorkerLoad& a, const std::string& a_id, const WorkerLoad& b,
                   const std::string& b_id);

// Picks a worker from `candidates` (all eligible, live, confirmed) that has room:
// the first in PreferredOver's order. nullptr when none has room. This is the plain
// scan the fleet index (fleet_index.h) must agree with.
WorkerState* Choose(const TaskSpec& spec, const std::vector<WorkerState*>& candidates, PlacementPolicy policy);

}  // namespace fm::sched
