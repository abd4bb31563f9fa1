// Task groups (TaskSpec.group): a name of the owner's for tasks listed, counted and
// cancelled together (fm-ctl tasks --group, fm-ctl group, fm-ctl cancel --group).
//
// Per group, in memory: the ids of its tasks not ended (8 bytes each, ascending, ended
// ones marked and compacted away once half are), and how many of its tasks ended per terminal state.
// The counts are stored (g/<owner>\0<group>, g/<group> in a keyless cluster, written in the turn they change); the open
// ids are rebuilt at a start from the task records (a/, and q/ as the backlog is read).
// A group with no open task is forgotten, record and all, once its last end is older
// than the task retention's age (its ended tasks are gone by then too).
//
// Thread: one; the engine's.
#pragma once

#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "scheduler/task.h"
#include "schemas/fm_generated.h"
#include "schemas/status.h"
#include "store/store.h"

namespace fm::sched {

class Groups {
 public:
  struct Ended {
    uint64_t succeeded = 0, failed = 0, cancelled = 0;
    uint64_t last_ms = 0;  // the last end (0: none yet)
  };

  // Reads every stored group's ended counts. Error: the store could not be read.
  Status Recover(const store::Store& store);
  // Task `id` of `owner`'s `group` (non-empty) is open: submitted, or read at a start.
  void Open(const std::string& owner, const std::string& group, uint64_t id);
  // It ended in `state` (succeeded, failed or cancelled).
  void Close(const std::string& owner, const std::string& group, uint64_t id, wire::TaskState state, uint64_t now_ms);
  // The open tasks' ids, ascending; empty when there is no such group.
  std::vector<uint64_t> OpenTasks(const std::string& owner, const std::string& group);
  // False when the group is not known (never used, or forgotten).
  bool Find(const std::string& owner, const std::string& group, Ended* ended) const;
  // Arrays: a group may bound its tasks in line, queued or running at once (an array's
  // max_running; the first one given counts). Those past it are held: pending, out of
  // the line, released in id order as others end. In flight: admitted, not ended.
  void SetCap(const std::string& owner, const std::string& group, uint32_t cap);
  // Task `id` of a group wants to join the line: true when it may (then counted in
  // flight; always for a group without a bound), false when it is held.
  bool Admit(const std::string& owner, const std::string& group, uint64_t id);
  // At a start: counted in flight as it is (queued, running or in retry backoff), or held
  // to be released by TakeReleased (every pending one: admitted again up to the bound).
  void CountInFlight(const std::string& owner, const std::string& group, uint64_t id);
  void Hold(const std::string& owner, const std::string& group, uint64_t id);
  bool Held(const std::string& owner, const std::string& group, uint64_t id) const;
  uint32_t Cap(const std::string& owner, const std::string& group) const;
  // Array elements held back by their group's bound, in all groups.
  size_t held() const { return held_; }
  // The held tasks that may join the line now, lowest id first, each counted in flight.
  struct Released {
    std::string key;  // Key(owner, group)
    uint64_t id = 0;
  };
  std::vector<Released> TakeReleased();
  // A released task that could not be read: held again (`hold`), or let go (it is gone).
  void Unrelease(const Released& r, bool hold);

  // Writes the groups changed since the last call.
  void FinishTurn(store::WriteBatch* writes);
  // Forgets the groups with no open task whose last end is before `before_ms`, or any
  // with no open task while there are more than `max_groups` (at most `most` looked at
  // per call, round-robin; the round's list is made at most every 10 s).
  void Trim(uint64_t before_ms, size_t max_groups, size_t most, uint64_t now_ms, store::WriteBatch* writes);
  size_t size() const { return groups_.size(); }

  static std::string Key(const std::string& owner, const std::string& group) { return OwnerScoped(owner, group); }

 private:
  struct Group {
    std::vector<uint64_t> open;  // ascending once sorted; ended ones marked in `gone`
    std::vector<bool> gone;      // per entry of `open`: ended (both compacted when half are)
    size_t live = 0;             // entries of `open` not gone
    bool sorted = true;
    Ended ended;
    uint32_t cap = 0;                     // at most this many in flight (0: no bound)
    std::unordered_set<uint64_t> flying;  // with a cap: admitted and not ended (at most cap)
    std::set<uint64_t> held;
  };
  // The group, its open ids sorted; nullptr when unknown.
  Group* Lookup(const std::string& key);
  static void Compact(Group* g);  // drops the ids marked gone

  std::unordered_map<std::string, Group> groups_;
  std::unordered_set<std::string> dirty_;
  std::unordered_set<std::string> releasable_;  // groups with held tasks and maybe room
  std::vector<std::string> trim_order_;         // the names the next Trim goes through
  size_t trim_at_ = 0;
  uint64_t next_round_ms_ = 0;
  size_t held_ = 0;
};

}  // namespace fm::sched
