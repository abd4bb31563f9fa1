// Tasks waiting for room, kept per demand. Tasks that ask for the same capabilities,
// resources and labels are eligible for exactly the same workers and fit, or do not
// fit, the same worker at any moment; so within a demand only the head needs a look.
// A walk over the waiting tasks in (priority, FIFO) order then costs
// O((placed + demands) log demands), however long the backlog: a demand whose head
// finds no room is passed over, with every task behind it, until the next walk.
//
// Thread: one.
#pragma once

#include <algorithm>
#include <compare>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "schemas/model.h"

namespace fm::sched {

class PendingSet {
 public:
  // A task's place in line: higher priority first, then submission order.
  struct Entry {
    int64_t neg_priority = 0;
    uint64_t order = 0;
    uint64_t id = 0;
    auto operator<=>(const Entry&) const = default;
    static Entry Of(int32_t priority, uint64_t order, uint64_t id) {
      return {-static_cast<int64_t>(priority), order, id};
    }
  };
  enum class Offer { kPlaced, kNoRoom, kSkip, kStop };

  void Insert(const TaskSpec& spec, Entry entry);
  // No-op when the task does not wait.
  void Erase(const TaskSpec& spec, Entry entry);
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  size_t demand_count() const { return demands_.size(); }

  // Offers waiting tasks in line order to `offer(id, demand)`, where `demand` is a spec
  // holding only the fields that decide eligibility and room. kPlaced: the task left the
  // line (it is removed here); kNoRoom: nothing of that demand fits now, so none of its
  // later tasks is offered in this walk; kSkip: this task waits (for a worker of its
  // own choosing), the next of its demand is offered; kStop: end the walk.
  template <typename F>
  void Walk(F&& offer);

  // Calls `visit(demand, line)` for every demand with its waiting tasks in line order
  // (a std::set<Entry>, not to be changed during the call).
  template <typename F>
  void ForEachDemand(F&& visit) const {
    for (const auto& [key, d] : demands_) visit(d.spec, d.line);
  }

 private:
  struct DemandKey {
    std::vector<std::string> capabilities;
    Resources resources;
    Labels labels;
    auto operator<=>(const DemandKey&) const = default;
  };
  struct Demand {
    TaskSpec spec;  // requirements only
    std::set<Entry> line;
  };
  static DemandKey KeyOf(const TaskSpec& spec) { return {spec.required_capabilities, spec.resources, spec.labels}; }

  std::map<DemandKey, Demand> demands_;
  size_t size_ = 0;
};

template <typename F>
void PendingSet::Walk(F&& offer) {
  using Head = std::pair<Entry, std::map<DemandKey, Demand>::iterator>;
  auto later = [](const Head& a, const Head& b) { return a.first > b.first; };
  std::vector<Head> heads;  // a min-heap of each demand's first waiting task
  heads.reserve(demands_.size());
  for (auto it = demands_.begin(); it != demands_.end(); ++it) heads.push_back({*it->second.line.begin(), it});
  std::make_heap(heads.begin(), heads.end(), later);
  while (!heads.empty()) {
    std::pop_heap(heads.begin(), heads.end(), later);
    auto [entry, demand] = heads.back();
    heads.pop_back();
    Offer result = offer(entry.id, static_cast<const TaskSpec&>(demand->second.spec));
    if (result == Offer::kStop) return;
    if (result == Offer::kNoRoom) continue;
    auto& line = demand->second.line;
    auto next = line.upper_bound(entry);
    if (result == Offer::kPlaced) {
      next = line.erase(line.find(entry));
      --size_;
      if (line.empty()) {
        demands_.erase(demand);
        continue;
      }
    }
    if (next == line.end()) continue;
    heads.push_back({*next, demand});
    std::push_heap(heads.begin(), heads.end(), later);
  }
}

}  // namespace fm::sched
