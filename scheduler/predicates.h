// The eligibility predicates: pure functions of a task's needs and a worker's
// announcement. "Eligible" means the worker could ever run the task (total capacity);
// whether it has room now is placement's question (placement.h).
#pragma once

#include <string>
#include <vector>

#include "scheduler/fleet.h"
#include "schemas/model.h"

namespace fm::sched {

// Which predicate a worker failed first, in the order they are checked.
// kQuarantined: the capability is missing because the worker withdrew it (it failed to
// start tasks); Verdict::missing holds the worker's reason.
enum class Predicate {
  kNone,
  kDraining,
  kCapability,
  kQuarantined,
  kCpus,
  kMemory,
  kGpus,
  kGpuModel,
  kGpuMemory,
  kLabels
};

const char* PredicateName(Predicate p);

struct Verdict {
  Predicate failed = Predicate::kNone;
  std::string missing;  // capability: the first missing name; labels: "key=value"
  uint64_t have = 0;    // cpus_milli, bytes, or GPU count, for the explanation
  bool ok() const { return failed == Predicate::kNone; }
};

// required ⊆ announced. Both sorted. An empty `announced` satisfies only an empty
// `required` (strict default). On failure *missing holds the first missing name.
bool CapabilitySatisfies(const std::vector<std::string>& required, const std::vector<std::string>& announced,
                         std::string* missing = nullptr);

// Every key=value of `selector` is among `labels`.
bool LabelsSatisfy(const Labels& selector, const Labels& labels, std::string* missing = nullptr);

// Does total `hw` cover `need`? GPUs count only when they match gpu_model
// (case-insensitive substring) and have at least gpu_memory each.
Verdict HwSatisfies(const Resources& need, const Hardware& hw);

// All predicates except liveness, in order: draining, capability, hardware, labels.
Verdict CheckEligible(const TaskSpec& spec, const WorkerState& worker);

// How many of hw's GPUs match the model and per-GPU memory of `need`.
uint32_t MatchingGpus(const Resources& need, const Hardware& hw);

}  // namespace fm::sched
