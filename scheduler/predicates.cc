#include "scheduler/predicates.h"

#include <algorithm>
#include <cctype>

namespace fm::sched {

const char* PredicateName(Predicate p) {
  switch (p) {
    case Predicate::kNone:
      return "none";
    case Predicate::kDraining:
      return "draining";
    case Predicate::kCapability:
      return "capability";
    case Predicate::kCpus:
      return "cpus";
    case Predicate::kMemory:
      return "memory";
    case Predicate::kQuarantined:
      return "quarantined";
    case Predicate::kGpus:
      return "gpus";
    case Predicate::kGpuModel:
      return "gpu_model";
    case Predicate::kGpuMemory:
      return "gpu_memory";
    case Predicate::kLabels:
      return "labels";
  }
  return "unknown";
}

bool CapabilitySatisfies(const std::vector<std::string>& required, const std::vector<std::string>& announced,
                         std::string* missing) {
  for (const auto& cap : required) {
    if (!std::binary_search(announced.begin(), announced.end(), cap)) {
      if (missing) *missing = cap;
      return false;
    }
  }
  return true;
}

bool LabelsSatisfy(const Labels& selector, const Labels& labels, std::string* missing) {
  for (const auto& [key, value] : selector) {
    auto it = std::lower_bound(labels.begin(), labels.end(), key,
                               [](const auto& kv, const std::string& k) { return kv.first < k; });
    if (it == labels.end() || it->first != key || it->second != value) {
      if (missing) *missing = key + "=" + value;
      return false;
    }
  }
  return true;
}

namespace {
bool ContainsNoCase(const std::string& haystack, const std::string& needle) {
  if (needle.empty()) return true;
  auto it = std::search(haystack.begin(), haystack.end(), needle.begin(), needle.end(), [](char a, char b) {
    return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
  });
  return it != haystack.end();
}
}  // namespace

uint32_t MatchingGpus(const Resources& need, const Hardware& hw) {
  uint32_t n = 0;
  for (const auto& gpu : hw.gpus) {
    if (GpuServes(gpu, need)) ++n;
  }
  return n;
}

Verdict HwSatisfies(const Resources& need, const Hardware& hw) {
  Verdict v;
  if (need.cpus_milli > hw.cpus_milli) return {Predicate::kCpus, {}, hw.cpus_milli};
  if (need.memory > hw.memory) return {Predicate::kMemory, {}, hw.memory};
  if (need.gpus == 0) return v;
  if (hw.gpus.size() < need.gpus) return {Predicate::kGpus, {}, hw.gpus.size()};
  uint32_t model_matches = 0;
  uint64_t largest = 0;
  for (const auto& gpu : hw.gpus) {
    if (ContainsNoCase(gpu.model, need.gpu_model)) {
      ++model_matches;
      largest = std::max(largest, gpu.memory);
    }
  }
  if (model_matches < need.gpus) {
    return {Predicate::kGpuModel, {}, model_matches};
  }
  if (MatchingGpus(need, hw) < need.gpus) return {Predicate::kGpuMemory, {}, largest};
  return v;
}

Verdict CheckEligible(const TaskSpec& spec, const WorkerState& worker) {
  if (worker.draining) return {Predicate::kDraining, {}, 0};
  Verdict v;
  if (!CapabilitySatisfies(spec.required_capabilities, worker.capabilities, &v.missing)) {
    v.failed = Predicate::kCapability;
    if (auto q = worker.quarantined.find(v.missing); q != worker.quarantined.end()) {
      v.failed = Predicate::kQuarantined;
      v.missing = q->second;
    }
    return v;
  }
  v = HwSatisfies(spec.resources, worker.hardware);
  if (!v.ok()) return v;
  if (!LabelsSatisfy(spec.labels, worker.labels, &v.missing)) v.failed = Predicate::kLabels;
  return v;
}

}  // namespace fm::sched
