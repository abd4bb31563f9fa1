// Task groups (TaskSpec.group): a name of the owner's for tasks listed, counted and
// cancelled together (fm-ctl tasks --group, fm-ctl group, fm-ctl cancel --group).
//
// Per group, in memory: the ids of its tasks not ended (8 bytes each, ascending, ended
// ones marked and compacted away once half are), and how many of its tasks ended per terminal state.
// The counts are stored (g/<owner>\0<group>, written in the turn they change); the open
// ids are rebuilt at a start from the task records (a/, and q/ as the backlog is read).
// A group with no open task is forgotten, record and all, once its last end is older
// than the task retention's age (its ended tasks are gone by then too).
//
// Thread: one; the engine's.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

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
  bool Find(const std::string& owner, const std::string& group, Ended* ended, size_t* open) const;
  // Writes the groups changed since the last call.
  void FinishTurn(store::WriteBatch* writes);
  // Forgets the groups with no open task whose last end is before `before_ms` (at most
  // `most` looked at per call, round-robin).
  void Trim(uint64_t before_ms, size_t most, store::WriteBatch* writes);
  size_t size() const { return groups_.size(); }

  static std::string Key(const std::string& owner, const std::string& group) {
    return owner + std::string(1, '\0') + group;
  }

 private:
  struct Group {
    std::vector<uint64_t> open;  // ascending once sorted; ended ones marked in `gone`
    std::vector<bool> gone;      // per entry of `open`: ended (both compacted when half are)
    size_t live = 0;             // entries of `open` not gone
    bool sorted = true;
    Ended ended;
  };
  // The group, its open ids sorted; nullptr when unknown.
  Group* Lookup(const std::string& key);
  static void Compact(Group* g);  // drops the ids marked gone

  std::unordered_map<std::string, Group> groups_;
  std::unordered_set<std::string> dirty_;
  std::vector<std::string> trim_order_;  // the names the next Trim goes through
  size_t trim_at_ = 0;
};

}  // namespace fm::sched
