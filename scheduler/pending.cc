#include "scheduler/pending.h"

namespace fm::sched {

void PendingSet::Insert(const TaskSpec& spec, Entry entry) {
  auto [it, created] = demands_.try_emplace(KeyOf(spec));
  if (created) {
    it->second.spec.required_capabilities = spec.required_capabilities;
    it->second.spec.resources = spec.resources;
    it->second.spec.labels = spec.labels;
  }
  if (it->second.line.insert(entry).second) ++size_;
}

void PendingSet::Erase(const TaskSpec& spec, Entry entry) {
  auto it = demands_.find(KeyOf(spec));
  if (it == demands_.end()) return;
  if (it->second.line.erase(entry)) --size_;
  if (it->second.line.empty()) demands_.erase(it);
}

}  // namespace fm::sched
