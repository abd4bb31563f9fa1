#include "scheduler/pending.h"

namespace fm::sched {

void PendingSet::Insert(const TaskSpec& spec, Entry entry) {
  auto [it, created] = demands_.try_emplace(KeyOf(spec));
  if (created) {
    it->second.spec.required_capabilities = spec.required_capabilities;
    it->second.spec.resources = spec.resources;
    it->second.spec.labels = spec.labels;
  }
  // Tasks mostly join at the end of their line (recovery reads them in id order, and
  // submissions come in order): the hint makes that O(1).
  const size_t before = it->second.line.size();
  it->second.line.emplace_hint(it->second.line.end(), entry);
  if (it->second.line.size() != before) ++size_;
}

void PendingSet::Erase(const TaskSpec& spec, Entry entry) {
  auto it = demands_.find(KeyOf(spec));
  if (it == demands_.end()) return;
  if (it->second.line.erase(entry)) --size_;
  if (it->second.line.empty()) demands_.erase(it);
}

}  // namespace fm::sched
