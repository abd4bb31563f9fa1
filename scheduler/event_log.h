// The authoritative event stream. Every event gets the next sequence number and is
// encoded once into the turn's shared buffer, from which it is both published (after
// the turn's commit) and stored: a turn's events form one e/ block keyed by its last
// seq (split at ~1 MiB). Events are kept within a retention by count and age, and
// replayed from the store in batches bounded in count and bytes.
//
// Thread: one; the engine's.
#pragma once

#include <flatbuffers/flatbuffers.h>

#include <cstdint>
#include <functional>
#include <string>

#include "scheduler/effects.h"
#include "scheduler/explain.h"
#include "scheduler/fleet.h"
#include "schemas/fm_generated.h"
#include "schemas/status.h"
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
  std::string owner;                         // task events: who submitted the task
  const Explanation* explanation = nullptr;  // task.failed no_eligible_worker: the breakdown
  const WorkerState* worker_info = nullptr;  // worker.*: capabilities, hardware, labels
};

struct EventLogOptions {
  uint64_t retention_count = 1'000'000;
  uint64_t retention_age_ms = 7ull * 24 * 3600 * 1000;
  size_t replay_batch = 512;  // events per ReplayBatch (and at most ~1 MiB)
};

class EventLog {
 public:
  // What the daemon publishes for a turn's events, in seq order: task.* and worker.*
  // events gathered into Envelope(EventBlock) messages, one per run of one class, with
  // topic "task." or "worker." (at most ~256 KiB each); scheduler.* events one by one
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
  // Drops events beyond the retention count and those older than the retention age
  // (looked at once a second).
  void ApplyRetention(uint64_t now_ms, store::WriteBatch* writes);

  // The ReplayBatch (sealed envelope) answering `since`, bounded in count and bytes;
  // an error batch when `since` is older than retention or the store failed.
  std::string Replay(uint64_t since, uint64_t correlation) const;
  // Visits retained events from `since` in seq order until `visit` returns false.
  Status ForEach(uint64_t since, const std::function<bool(const wire::Event&)>& visit) const;

  uint64_t next_seq() const { return next_seq_; }
  uint64_t oldest_seq() const { return oldest_seq_; }

 private:
  void StoreBlock(Effects* effects);
  // `now_ms` as an event's time string, formatted once per millisecond.
  const std::string& EventTime(uint64_t now_ms);

  EventLogOptions options_;
  const store::Store* store_ = nullptr;
  uint64_t next_seq_ = 1, oldest_seq_ = 1, persisted_seq_ = 0;
  uint64_t next_age_check_ms_ = 0;
  flatbuffers::FlatBufferBuilder scratch_{1024};        // reused: no builder per event
  size_t last_event_bytes_ = 0, last_event_count_ = 0;  // the last turn's, to size the next
  uint64_t formatted_ms_ = 0;
  std::string formatted_time_;
};

}  // namespace fm::sched
