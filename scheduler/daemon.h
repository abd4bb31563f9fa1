// fm-scheduler's shell around the engine: sockets, the store, the clock. Each loop turn
// it feeds the engine what arrived and closes the turn; the turn's writes are committed
// as one synced WriteBatch, and only then are the replies, dispatches and events derived
// from them sent.
//
// Commits: a small one (a quiet scheduler: a task or two per turn) is written on the
// loop thread at the end of its turn, which keeps the round trip short. A large one
// goes to the commit thread, and the loop goes on with the next turns while RocksDB
// inserts and fsyncs; those gather into the next commit, started when this one is done.
// So under load the loop and the store work on two cores, and every commit groups the
// turns that arrived while the previous one was written.
#pragma once

#include <spdlog/spdlog.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <zmq.hpp>

#include "runtime/bus.h"
#include "runtime/loop.h"
#include "runtime/ops.h"
#include "runtime/rate_limited_log.h"
#include "scheduler/core.h"
#include "scheduler/ha.h"
#include "scheduler/intake.h"
#include "scheduler/replication.h"
#include "store/store.h"

namespace fm::sched {

struct SchedulerOptions {
  std::string broker = bus::DefaultBrokerUrl();
  std::string data_dir = "fm-data";
  std::string cert, broker_cert;  // CURVE: own certificate (role scheduler), the root broker's
  uint64_t tick_ms = 100;
  EngineOptions engine;
  store::RocksOptions store;
  std::shared_ptr<spdlog::logger> logger;
  // With --etcd: this scheduler's leadership (outlives the daemon). Nothing is sent once
  // it cannot show its lease is alive.
  const ha::Leadership* leadership = nullptr;
  // With --ha-listen: ships every batch to the standbys (outlives the daemon).
  ha::Replicator* replicator = nullptr;
};

// Writes one batch at a time on its own thread and reports back on the loop's thread.
class Committer {
 public:
  // `done` runs on the loop thread with the result of each Start.
  Committer(store::Store* store, uv_loop_t* loop, std::function<void(Status)> done);
  ~Committer();
  // REQUIRES: !busy(); `batch` unchanged until `done` ran (or Wait returned).
  void Start(const store::WriteBatch* batch);
  bool busy() const { return busy_; }
  // Blocks until the commit in flight is written; `done` runs here instead of later.
  void Wait();

 private:
  void Run();
  void Deliver();

  store::Store* store_;
  std::function<void(Status)> done_;
  uv_async_t* async_;  // freed by its close callback
  bool busy_ = false;  // loop thread only
  std::mutex mu_;
  std::condition_variable cv_;
  const store::WriteBatch* batch_ = nullptr;  // guarded by mu_
  std::optional<Status> result_;              // guarded by mu_
  bool stop_ = false;                         // guarded by mu_
  std::thread thread_;
};

class SchedulerDaemon {
 public:
  SchedulerDaemon(zmq::context_t& context, SchedulerOptions options);
  // What Open checks before it opens anything: the broker URL and the certificates
  // (--check-config). Error names the option.
  Status Check();
  // Opens the store under data_dir, recovers, connects. Error names what failed.
  Status Open();
  // REQUIRES: Open() succeeded.
  void Attach(bus::Loop& loop);
  // Ends the process when this scheduler leads through etcd and its lease may be gone
  // (called before anything is sent).
  void CheckLease() const;
  // Before Open, after Lead: every batch goes through `replicator` (with --ha-listen).
  void Replicate(ha::Replicator* replicator) {
    options_.replicator = replicator;
    options_.engine.leader.standbys = [replicator](uint64_t* batches) {
      std::vector<EngineOptions::Standby> out;
      for (const auto& s : replicator->Standbys()) out.push_back({s.node, s.state, s.acked, s.behind, s.in_sync});
      *batches = replicator->index();
      return out;
    };
  }
  // Before Open: this scheduler leads (with --etcd); `what` says which leadership.
  void Lead(const ha::Leadership* leadership, const ha::LeadershipOptions& ha, std::string what) {
    options_.leadership = leadership;
    options_.engine.leadership = std::move(what);
    options_.engine.leadership_epoch = leadership->epoch();
    options_.engine.leader = {ha.name, ha.node, ha.describe, leadership->since_ms(), leadership->forced()};
  }
  // 0 after a normal stop; 1 when the store was removed or replaced while running.
  int exit_code() const { return exit_code_; }
  // Everything GET /metrics shows, read now. REQUIRES: Open() succeeded.
  void Metrics(ops::Sheet& sheet) const;

 private:
  // The bus client: its claim of fm-scheduler (with the leadership epoch) goes out at once.
  void Connect(const bus::Endpoints& endpoints);
  size_t DrainDirected();
  size_t DrainBus();
  void TurnEnd();
  void SendOut(Outbox& out);
  // fm-ctl snapshot: a checkpoint of the store, then the reply. On the loop thread: the
  // table files are hard links and the WAL a copy, so it takes milliseconds to seconds.
  void Snapshot(const SnapshotRequest& request);
  // Gives the store copy in `store_dir` an epoch of its own.
  Status NewEpoch(const std::string& store_dir);
  // Starts a commit of what was gathered, if none is in flight.
  void Commit();
  void Committed(const Status& status);
  void CommitTimed();  // the commit started at commit_started_ is done
  // Stops the scheduler (exit 1) when the store's files are no longer the ones it opened.
  void CheckStoreIdentity();

  SchedulerOptions options_;
  zmq::context_t& context_;
  std::unique_ptr<store::Store> store_;
  bus::Security security_;
  std::unique_ptr<bus::Client> client_;
  bus::RateLimitedLog link_log_{spdlog::default_logger()};
  FairIntake intake_;  // directed messages read, not handled yet
  bus::RateLimitedLog intake_log_{spdlog::default_logger()};
  uint64_t intake_refused_ = 0;
  std::unordered_map<std::string, uint64_t> busy_told_ms_;  // sender -> when it was last told "busy"
  std::chrono::steady_clock::time_point started_;           // when Open began
  std::unique_ptr<SchedulerCore> core_;
  std::unique_ptr<Committer> committer_;
  bus::Loop* loop_ = nullptr;
  // The store's IDENTITY file as opened: a data directory deleted or replaced under a
  // running scheduler would take "durable" writes into unlinked files.
  uint64_t store_dev_ = 0, store_ino_ = 0;
  int exit_code_ = 0;
  std::chrono::steady_clock::time_point commit_started_;
  ops::LatencyHistogram commit_seconds_{{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}};
  ops::LatencyHistogram batch_ops_{{1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144}};
};

}  // namespace fm::sched
