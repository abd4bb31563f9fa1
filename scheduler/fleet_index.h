// The live fleet with an index by worker class. Workers that announce the same
// capabilities, hardware and labels form a class; eligibility is a property of the class,
// so admission, the ineligibility explanation and the search for a worker with room cost
// O(classes) rather than O(workers). Within a class the workers that may take work now
// (confirmed, not draining) are kept ordered by load.
//
// A class is keyed by the announced values themselves (ClassShape), never by text built
// from them: two workers share a class only when every capability, hardware figure and
// label is equal, whatever characters a label holds.
//
// Every change to a worker goes through Add, Modify or Remove so the index stays true.
// Thread: one.
#pragma once

#include <compare>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>

#include "scheduler/explain.h"
#include "scheduler/fleet.h"
#include "scheduler/placement.h"

namespace fm::sched {

// What makes two workers interchangeable for eligibility.
struct ClassShape {
  std::vector<std::string> capabilities;
  Hardware hardware;
  Labels labels;
  std::map<std::string, std::string> quarantined;  // capabilities only (reasons are each worker's)
  auto operator<=>(const ClassShape&) const = default;
  // Device UUIDs and quarantine reasons differ from worker to worker and change nothing
  // about eligibility: left out, so that identical machines share a class.
  static ClassShape Of(const WorkerState& w) {
    ClassShape shape{w.capabilities, w.hardware, w.labels, {}};
    for (auto& gpu : shape.hardware.gpus) gpu.uuid.clear();
    for (const auto& [capability, reason] : w.quarantined) shape.quarantined[capability];
    return shape;
  }
};

class Fleet {
 public:
  const WorkerState* Find(const std::string& id) const;
  const std::map<std::string, WorkerState>& workers() const { return workers_; }
  size_t size() const { return workers_.size(); }

  // Adds a worker (replacing one with the same id).
  WorkerState& Add(WorkerState worker);
  void Remove(const std::string& id);
  // Runs `change` on the worker and re-indexes it. REQUIRES: the worker exists.
  template <typename F>
  void Modify(const std::string& id, F&& change) {
    WorkerState& w = workers_.at(id);
    Unindex(w);
    change(w);
    Index(w);
  }
  // Runs `change`, which may alter only the worker's load (reservations, slots and tasks
  // in use), and re-orders the worker within its class: no class lookup by shape.
  // REQUIRES: the worker exists.
  template <typename F>
  void ModifyLoad(const std::string& id, F&& change) {
    WorkerState& w = workers_.at(id);
    auto load = indexed_load_.find(id);
    if (load == indexed_load_.end()) {  // not taking work: in no order
      change(w);
      return;
    }
    Class& c = class_of_.at(id)->second;
    c.open.erase(load->second);
    if (w.slots_used < w.slots) open_slots_ -= w.slots - w.slots_used;
    change(w);
    load->second = Load(w);
    c.open.insert(load->second);
    if (w.slots_used < w.slots) open_slots_ += w.slots - w.slots_used;
  }
  // Liveness only: no index depends on it.
  void Touch(const std::string& id, uint64_t now_ms);
  void TouchAll(uint64_t now_ms) {
    for (auto& [id, w] : workers_) w.last_seen_ms = now_ms;
  }

  // Could any live worker ever run `spec`?
  bool AnyEligible(const TaskSpec& spec) const;
  // The same among the workers not in `except` (sorted ids). O(workers).
  bool AnyEligibleExcept(const TaskSpec& spec, const std::vector<std::string>& except) const;
  // Why no live worker can run `spec`, counted per worker.
  Explanation Explain(const TaskSpec& spec) const;
  // The worker with room now that `policy` prefers (PreferredOver's order, the same as
  // Choose() over every worker); nullptr when none has room.
  // With `except` (sorted ids), none of those workers.
  const WorkerState* Place(const TaskSpec& spec, PlacementPolicy policy,
                           const std::vector<std::string>* except = nullptr) const;
  // Whether any worker may take work now and has a free slot.
  bool HasOpenSlot() const { return open_slots_ > 0; }

  size_t class_count() const { return classes_.size(); }

 private:
  using LoadKey = std::tuple<double, double, std::string>;  // slot share, cpu share, id
  struct Class {
    WorkerState shape;  // the shape as the predicates take it (only announced fields set)
    uint32_t members = 0;
    uint32_t draining = 0;
    std::set<LoadKey> open;  // members that may take work now, least loaded first
  };
  using ClassMap = std::map<ClassShape, Class>;
  static LoadKey Load(const WorkerState& w);
  // The class's member with room that `policy` prefers; nullptr when none has room.
  const WorkerState* BestInClass(const TaskSpec& spec, const Class& c, PlacementPolicy policy,
                                 const std::vector<std::string>* except) const;
  void Index(WorkerState& w);
  void Unindex(WorkerState& w);

  std::map<std::string, WorkerState> workers_;
  ClassMap classes_;
  std::unordered_map<std::string, ClassMap::iterator> class_of_;  // worker id -> its class
  std::unordered_map<std::string, LoadKey> indexed_load_;         // worker id -> key in its class's open set
  uint64_t open_slots_ = 0;
};

}  // namespace fm::sched
