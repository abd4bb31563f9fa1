#include "scheduler/explain.h"

#include <algorithm>
#include <map>
#include <tuple>

#include "scheduler/predicates.h"
#include "schemas/units.h"

namespace fm::sched {
namespace {

struct Group {
  uint32_t count = 0;
  uint64_t largest = 0;
};

std::string Phrase(Predicate p, const std::string& missing, const Group& g, const Resources& need) {
  const std::string n = std::to_string(g.count);
  const bool one = g.count == 1;
  switch (p) {
    case Predicate::kDraining:
      return n + (one ? " is draining" : " are draining");
    case Predicate::kCapability:
      return n + (one ? " lacks" : " lack") + " capability " + missing;
    case Predicate::kLabels:
      return n + (one ? " lacks" : " lack") + " label " + missing;
    case Predicate::kQuarantined:
      return n + " quarantined: " + missing;
    case Predicate::kCpus:
      if (one) return n + " has " + FormatCpus(g.largest) + " cpus < " + FormatCpus(need.cpus_milli);
      return n + " have fewer than " + FormatCpus(need.cpus_milli) + " cpus (largest " + FormatCpus(g.largest) + ")";
    case Predicate::kMemory:
      if (one) return n + " has " + FormatSize(g.largest) + " memory < " + FormatSize(need.memory);
      return n + " have less than " + FormatSize(need.memory) + " memory (largest " + FormatSize(g.largest) + ")";
    case Predicate::kGpus:
      if (one) {
        return n + " has " + (g.largest == 0 ? std::string("no GPU") : std::to_string(g.largest) + " GPUs") + " < " +
               std::to_string(need.gpus);
      }
      return n + " have fewer than " + std::to_string(need.gpus) + " GPUs (most " + std::to_string(g.largest) + ")";
    case Predicate::kGpuModel:
      return n + (one ? " has" : " have") + " fewer than " + std::to_string(need.gpus) + " GPUs of model " +
             need.gpu_model;
    case Predicate::kGpuMemory:
      if (one) {
        return n + " has GPUs with " + FormatSize(g.largest) + " memory < " + FormatSize(need.gpu_memory);
      }
      return n + " have GPUs with less than " + FormatSize(need.gpu_memory) + " memory (largest " +
             FormatSize(g.largest) + ")";
    case Predicate::kNone:
      break;
  }
  return n + " ineligible";
}

}  // namespace

Explanation Explain(const TaskSpec& spec, const std::vector<const WorkerState*>& fleet) {
  std::vector<std::pair<const WorkerState*, uint32_t>> ones;
  ones.reserve(fleet.size());
  for (const WorkerState* w : fleet) ones.push_back({w, 1});
  return ExplainGroups(spec, ones);
}

Explanation ExplainGroups(const TaskSpec& spec, const std::vector<std::pair<const WorkerState*, uint32_t>>& fleet) {
  Explanation out;
  std::map<std::tuple<Predicate, std::string>, Group> groups;
  for (const auto& [w, count] : fleet) {
    out.fleet += count;
    Verdict v = CheckEligible(spec, *w);
    if (v.ok()) {
      out.eligible += count;
      continue;
    }
    Group& g = groups[{v.failed, v.failed == Predicate::kCapability || v.failed == Predicate::kLabels ||
                                         v.failed == Predicate::kQuarantined
                                     ? v.missing
                                     : std::string()}];
    g.count += count;
    g.largest = std::max(g.largest, v.have);
  }
  out.message = std::to_string(out.eligible) + "/" + std::to_string(out.fleet) + " workers eligible";
  if (out.fleet == 0) {
    out.message += ": no live workers";
    return out;
  }
  std::string sep = ": ";
  for (const auto& [key, group] : groups) {
    const auto& [predicate, missing] = key;
    PredicateCount pc{PredicateName(predicate), group.count, Phrase(predicate, missing, group, spec.resources)};
    out.message += sep + pc.detail;
    sep = ", ";
    out.breakdown.push_back(std::move(pc));
  }
  return out;
}

}  // namespace fm::sched
