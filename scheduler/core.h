// The scheduler without sockets: the engine, its store and the turn discipline.
//
// Messages go in as bytes (verified here), each turn ends with EndTurn(), which commits
// the turn's writes as one synced WriteBatch and only then hands out what may be sent.
//
// Storage faults: when a commit fails, nothing derived from that turn is handed out,
// the engine is rebuilt from what the store holds (the failed turn never happened),
// submitters of that turn get an Error "storage", and the core turns degraded: it
// refuses submissions, cancels and drains with that error, keeps answering reads
// (fm-ctl workers/tasks, replay) and heartbeats, holds worker results unacknowledged
// (workers re-send them), and stops judging liveness. Every probe interval it tries a
// small write; when one succeeds it serves normally again.
//
// Thread: one.
#pragma once

#include <spdlog/spdlog.h>

#include <memory>
#include <string>
#include <vector>

#include "scheduler/engine.h"
#include "store/store.h"

namespace fm::sched {

struct Outbox {
  std::vector<Directed> directed;
  std::vector<Publication> events;
  bool empty() const { return directed.empty() && events.empty(); }
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
  Outbox EndTurn(uint64_t now_ms);

  bool degraded() const { return degraded_; }
  const Engine& engine() const { return *engine_; }

 private:
  void Refuse(const std::string& from, uint64_t correlation);
  Status Rebuild(uint64_t now_ms);

  EngineOptions options_;
  store::Store* store_;
  std::shared_ptr<spdlog::logger> logger_;
  uint64_t storage_probe_ms_;
  std::unique_ptr<Engine> engine_;
  Outbox immediate_;  // replies that do not depend on this turn's commit
  // Read-only requests of this turn, fed again after a rebuild so they get answers.
  std::vector<std::pair<std::string, std::string>> turn_reads_;
  std::vector<std::pair<std::string, uint64_t>> turn_submitters_;
  bool degraded_ = false;
  std::string storage_error_;
  uint64_t next_probe_ms_ = 0;
  uint64_t probes_ = 0;
};

}  // namespace fm::sched
