// Why no worker can run a task: a per-predicate breakdown over the live fleet, and the
// sentence a person reads ("0/2 workers eligible: 1 lacks capability gpu, 1 has 4 GiB
// memory < 8 GiB"). Each ineligible worker is counted under the first predicate it fails.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "scheduler/fleet.h"
#include "schemas/model.h"

namespace fm::sched {

struct PredicateCount {
  std::string predicate;  // PredicateName()
  uint32_t workers = 0;
  std::string detail;  // the phrase for this group, e.g. "2 lack capability docker"
};

struct Explanation {
  uint32_t eligible = 0;
  uint32_t fleet = 0;
  std::vector<PredicateCount> breakdown;  // in predicate order
  std::string message;
};

Explanation Explain(const TaskSpec& spec, const std::vector<const WorkerState*>& fleet);
// The same over groups of identical workers: (a representative, how many).
Explanation ExplainGroups(const TaskSpec& spec, const std::vector<std::pair<const WorkerState*, uint32_t>>& groups);

}  // namespace fm::sched
