// The authoritative event stream. Every event gets the next sequence number and is
// encoded once into the turn's shared buffer, from which it is both published (after
// the turn's commit) and stored: a turn's events form one e/ block keyed by its last
// seq (split at ~1 MiB), its task output (task.log) one l/ block, each with an index
// entry (E/, L/) that retention reads. Events are kept within a retention by count and
// age, task output within its own by bytes and age: however much one task prints, it
// never pushes other events out. Replay merges the two by seq, in batches bounded in
// count and bytes.
//
// Thread: one; the engine's.
#pragma once

#include <flatbuffers/flatbuffers.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "scheduler/effects.h"
#include "scheduler/explain.h"
#include "scheduler/fleet.h"
#include "schemas/fm_generated.h"
#include "schemas/status.h"
#include "store/keys.h"
#include "store/store.h"

namespace fm::sched {

struct EventFields {
  wire::EventType type = wire::EventType::Unknown;
  uint64_t task = 0;
  std::string worker;
  wire::Reason reason = wire::Reason::None;
  std::string message;
  uint32_t attempt = 0;
  int32_t exit_code = 0;
  std::string stream, data;
  std::string owner;                               // task events: who submitted the task
  const Explanation* explanation = nullptr;        // task.failed no_eligible_worker: the breakdown
  const WorkerState* worker_info = nullptr;        // worker.*: capabilities, hardware, labels
  const std::vector<std::string>* gpus = nullptr;  // task.started: the devices given
  const Endpoint* endpoint = nullptr;              // task.ready: where the session is reached
};

struct EventLogOptions {
  uint64_t retention_count = 1'000'000;
  uint64_t retention_age_ms = 7ull * 24 * 3600 * 1000;
  size_t replay_batch = 512;                  // events per ReplayBatch (and at most ~1 MiB)
  uint64_t log_retention_bytes = 1ull << 30;  // stored task.log blocks
  uint64_t epoch = 0;                         // stamped on every event: the leadership (etcd) writing them
};

class EventLog {
 public:
  // What the daemon publishes for a turn's events, in seq order: task.* and worker.*
  // events gathered into Envelope(EventBlock) messages, one per run of one class, with
  // topic "task." or "worker." (at most ~64 KiB each, but for one bigger event); scheduler.* events one by one
  // under their own type (workers subscribe to scheduler.started). One message per turn
  // instead of one per event: what each carries costs once, CURVE above all.
  static std::vector<std::pair<std::string, std::string>> Messages(const std::vector<Publication>& events);

  explicit EventLog(EventLogOptions options) : options_(options) {}

  // Reads the next seq and finds the oldest retained one. REQUIRES: `store` outlives
  // the log. Error: the store could not be read.
  Status Recover(const store::Store* store);

  // Appends an event to the turn in `effects`: assigns its seq (returned), encodes it,
  // queues its publication; a block that reached ~1 MiB goes into effects->writes.
  uint64_t Append(const EventFields& fields, uint64_t now_ms, Effects* effects);
  // Ends the turn: its remaining events as one block and the next seq, into writes.
  void FinishTurn(Effects* effects);
  // Drops events beyond the retention count, task output beyond its bytes, and both
  // older than the retention age (looked at once a second), a whole block at a time.
  void ApplyRetention(uint64_t now_ms, store::WriteBatch* writes);

  // The ReplayBatch (sealed envelope) answering `since`, bounded in count and bytes;
  // an error batch when `since` is older than retention or the store failed.
  // With `only_owner` (a client's replay), task events of other owners are left out; at
  // most kReplayScan events are looked at per batch, and `next` says where to go on.
  std::string Replay(uint64_t since, uint64_t correlation,
                     const std::optional<std::string>& only_owner = std::nullopt) const;
  // Visits retained events from `since` in seq order until `visit` returns false.
  Status ForEach(uint64_t since, const std::function<bool(const wire::Event&)>& visit) const;

  uint64_t next_seq() const { return next_seq_; }
  // The oldest event retained (task output may be gone from before it, never after).
  uint64_t oldest_seq() const { return oldest_seq_; }
  // What is stored: events (not task output), and bytes of task output.
  uint64_t stored_events() const { return events_.events; }
  uint64_t stored_log_bytes() const { return logs_.bytes; }
  // The last seq whose task output the log retention removed (kept in the store across
  // restarts); 0 when none: what fm-ctl logs says rather than print a silent gap.
  uint64_t log_removed_through() const { return log_removed_through_; }

 private:
  // One kind of stored block and its index, with what it holds.
  struct Space {
    std::string_view data, index;
    uint64_t events = 0, bytes = 0;
    uint64_t trimmed_through = 0;  // the last block seq dropped (its deletion may not be written yet)
  };
  // Totals the space's index, rebuilding it (into recovered_) when it does not cover
  // the blocks (a store from before the index). Returns the first stored event's seq,
  // 0 when none.
  Result<uint64_t> RecoverSpace(Space* space);
  // Drops the space's oldest blocks while it holds more than `max_events` or
  // `max_bytes`, or their newest event is older than `cutoff_ms`. Returns the last
  // seq dropped, 0 when none.
  uint64_t Trim(Space* space, uint64_t max_events, uint64_t max_bytes, uint64_t cutoff_ms, store::WriteBatch* writes);
  void StoreBlock(Effects* effects, bool logs);
  // `now_ms` as an event's time string, formatted once per millisecond.
  const std::string& EventTime(uint64_t now_ms);

  EventLogOptions options_;
  const store::Store* store_ = nullptr;
  uint64_t next_seq_ = 1, oldest_seq_ = 1, persisted_seq_ = 0, log_removed_through_ = 0;
  uint64_t next_age_check_ms_ = 0;
  Space events_{store::keys::kEventPrefix, store::keys::kEventIndexPrefix};
  Space logs_{store::keys::kLogPrefix, store::keys::kLogIndexPrefix};
  store::WriteBatch recovered_;                         // index entries rebuilt by Recover, written with the first turn
  flatbuffers::FlatBufferBuilder scratch_{1024};        // reused: no builder per event
  size_t last_event_bytes_ = 0, last_event_count_ = 0;  // the last turn's, to size the next
  uint64_t formatted_ms_ = 0;
  std::string formatted_time_;
};

}  // namespace fm::sched
