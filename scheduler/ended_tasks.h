// The ended tasks: their records in the store (t/), how many there are, their retention
// (count, then age, oldest id first) and the newest ones fm-ctl tasks lists. The engine
// hands a task over when it ends and asks for it back by id; it never sees a key.
//
// Thread: one; the engine's.
#pragma once

#include <flatbuffers/flatbuffers.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <vector>

#include "scheduler/task.h"
#include "schemas/status.h"
#include "store/store.h"

namespace fm::sched {

struct EndedTaskOptions {
  uint64_t retention_count = 100'000;
  uint64_t retention_age_ms = 7ull * 24 * 3600 * 1000;
  size_t trim_per_tick = 4096;  // deleted per Trim at most
  size_t recent = 1000;         // kept in memory for fm-ctl tasks
};

class EndedTasks {
 public:
  explicit EndedTasks(EndedTaskOptions options);

  // The count of t/ records (from the meta key or, for an older store, a scan), the
  // lowest id, and the newest `recent` tasks. `next_task_id`: ids are below it.
  Status Recover(const store::Store* store, uint64_t next_task_id);
  // `t` ended (its ended_ms set): its a/ record becomes a t/ record in `writes`, and it
  // joins the recent ones.
  void Add(Task t, store::WriteBatch* writes, flatbuffers::FlatBufferBuilder& scratch);
  // Deletes the records past retention at `now_ms` (at most trim_per_tick), calling
  // `forget` with each deleted task's id, owner and client key (the key goes with it;
  // both empty without one). Error: a read failed.
  using Forget = std::function<void(uint64_t id, const std::string& owner, const std::string& key)>;
  Status Trim(uint64_t now_ms, store::WriteBatch* writes, const Forget& forget);
  // The end of a turn: the count's meta key if it changed.
  void FinishTurn(store::WriteBatch* writes);

  // A recent ended task, or the stored one; nullopt when it is not there.
  Result<std::optional<Task>> Find(uint64_t id) const;
  const Task* FindRecent(uint64_t id) const;
  const std::vector<Task>& recent() const { return recent_; }
  uint64_t stored() const { return stored_; }
  uint64_t trimmed() const { return trimmed_; }

 private:
  Status RecoverCount(const store::Store* store);
  Status RecoverRecent(const store::Store* store, uint64_t next_task_id);

  EndedTaskOptions options_;
  const store::Store* store_ = nullptr;
  std::vector<Task> recent_;  // ring (the newest stored, after a restart)
  size_t recent_next_ = 0;
  uint64_t stored_ = 0;  // t/ records
  bool stored_persisted_ = false;
  uint64_t trim_from_ = 1;  // ids below it hold no t/ record any more
  uint64_t trimmed_ = 0;
  std::set<uint64_t> stragglers_;          // ended below the cursor: trimmed apart
  std::vector<uint64_t> ended_this_turn_;  // ended at or above the cursor this turn
};

}  // namespace fm::sched
