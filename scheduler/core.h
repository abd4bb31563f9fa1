// The scheduler without sockets: the engine, its store and the turn discipline.
//
// Messages go in as bytes (verified here). Each turn ends with EndTurn(), which commits
// the turn's writes as one synced WriteBatch and only then hands out what may be sent.
//
// Pipelined commits (the daemon's commit thread): CloseTurn() ends a turn without
// writing; its writes and everything derived from them join the gathered commit.
// StartCommit() puts the gathered commit in flight (one at a time), the caller writes
// its batch on any thread, and FinishCommit() hands out what it held. Turns go on while
// a commit is in flight, on top of its state: the engine reads through a view that
// includes the batches not yet written. Commits finish in order, so nothing leaves
// before the writes it depends on, and none of them before those of earlier turns.
//
// Storage faults: when a commit fails, nothing derived from that turn is handed out,
// the engine is rebuilt from what the store holds (the failed turn never happened),
// submitters of that turn get an Error "storage", and the core turns degraded: it
// refuses submissions, cancels and drains with that error, keeps answering reads
// (fm-ctl workers/tasks, replay) and heartbeats, holds worker results unacknowledged
// (workers re-send them), and stops judging liveness. Every probe interval it tries a
// small write; when one succeeds it serves normally again.
//
// Thread: one; only the batch StartCommit() returns may be written on another.
#pragma once

#include <spdlog/spdlog.h>

#include <memory>
#include <string>
#include <vector>

#include "runtime/rate_limited_log.h"
#include "scheduler/engine.h"
#include "store/pending_view.h"
#include "store/store.h"

namespace fm::sched {

struct Outbox {
  std::vector<Directed> directed;
  std::vector<Publication> events;
  std::vector<SnapshotRequest> snapshots;  // for the daemon, after the commit they follow
  bool empty() const { return directed.empty() && events.empty() && snapshots.empty(); }
};

// What a commit carries besides its writes: the messages that may leave once they are
// on disk, and, should they fail, who to tell and which reads to answer anyway.
struct Commit {
  store::WriteBatch writes;
  Outbox out;
  std::vector<std::pair<std::string, uint64_t>> submitters;  // address, correlation
  std::vector<std::pair<std::string, std::string>> reads;    // address, request bytes
  bool empty() const { return writes.empty() && out.empty() && submitters.empty() && reads.empty(); }
  void Append(Commit&& other);
};

class SchedulerCore {
 public:
  // REQUIRES: `store` outlives the core.
  SchedulerCore(EngineOptions options, store::Store* store, std::shared_ptr<spdlog::logger> logger,
                uint64_t storage_probe_ms = 1000);

  // Recovers from the store and announces the scheduler. Error: the store is unreadable.
  Status Open(uint64_t now_ms);

  void OnDirected(const std::string& from, const void* data, size_t size, uint64_t now_ms);
  void OnBus(const void* data, size_t size, uint64_t now_ms);
  void Tick(uint64_t now_ms);
  // Commits the turn, then returns what may leave the process.
  // REQUIRES: no commit in flight.
  Outbox EndTurn(uint64_t now_ms);

  // Pipelined: ends the turn without writing; returns what may leave at once (replies
  // that depend on no write: malformed input, refusals).
  Outbox CloseTurn(uint64_t now_ms);
  bool commit_in_flight() const { return in_flight_active_; }
  // Something gathered waits for a commit (writes, or messages behind earlier writes).
  bool has_gathered() const { return !gathered_.empty(); }
  size_t gathered_ops() const { return gathered_.writes.size(); }
  size_t gathered_bytes() const { return gathered_.writes.bytes(); }
  // Puts the gathered commit in flight. The batch stays valid and unchanged until
  // FinishCommit. REQUIRES: !commit_in_flight().
  const store::WriteBatch& StartCommit();
  // The in-flight commit's batch was written with `status`: returns what may leave now.
  // On failure the commit and everything gathered after it never happened.
  Outbox FinishCommit(const Status& status, uint64_t now_ms);
  // StartCommit, the write on this thread, FinishCommit. REQUIRES: !commit_in_flight().
  Outbox CommitGathered(uint64_t now_ms);

  bool degraded() const { return degraded_; }
  const Engine& engine() const { return *engine_; }
  Engine& engine() { return *engine_; }
  // Commits written, and those the store refused, since the start (metrics).
  uint64_t commits() const { return commits_; }
  uint64_t write_errors() const { return write_errors_; }

 private:
  void Refuse(const std::string& from, uint64_t correlation);
  // Logs (rate-limited) the messages the engine refused for their sender.
  void LogRefusals(uint64_t now_ms);
  Status Rebuild(uint64_t now_ms);
  void ShowPending();
  // The commit failed: everything derived since the last good one is dropped.
  Outbox Fail(const Status& status, Commit failed, uint64_t now_ms);

  EngineOptions options_;
  store::Store* store_;
  store::PendingView view_;  // what the engine reads: the store plus commits not yet written
  std::shared_ptr<spdlog::logger> logger_;
  bus::RateLimitedLog rejected_log_;  // bad input from peers: no flood can flood the log
  uint64_t storage_probe_ms_;
  std::unique_ptr<Engine> engine_;
  Outbox immediate_;  // replies that do not depend on this turn's commit
  // Read-only requests of this turn, fed again after a rebuild so they get answers.
  std::vector<std::pair<std::string, std::string>> turn_reads_;
  std::vector<std::pair<std::string, uint64_t>> turn_submitters_;
  Commit gathered_;   // closed turns not yet written
  Commit in_flight_;  // being written
  bool in_flight_active_ = false;
  bool degraded_ = false;
  std::string storage_error_;
  uint64_t next_probe_ms_ = 0;
  uint64_t probes_ = 0;
  uint64_t commits_ = 0, write_errors_ = 0;
};

}  // namespace fm::sched
