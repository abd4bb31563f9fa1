// fm-scheduler [--broker URL] [--data DIR]
#include <signal.h>
#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>

#include "runtime/logging.h"
#include "runtime/loop.h"
#include "runtime/ops.h"
#include "scheduler/daemon.h"
#include "scheduler/ha.h"
#include "scheduler/replication.h"
#include "schemas/units.h"

namespace {

std::atomic<bool> stop_waiting{false};

std::string HostName() {
  char name[256] = {0};
  if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

}  // namespace

int main(int argc, char** argv) {
  fm::bus::TuneAllocator();
  fm::sched::SchedulerOptions options;
  CLI::App app{"fm-scheduler: places tasks on workers that can run them"};
  app.add_option("--broker", options.broker, "root broker (default $FM_BROKER or tcp://127.0.0.1:5550)")
      ->capture_default_str();
  auto* data = app.add_option("--data", options.data_dir,
                              "data directory (RocksDB store); default under systemd: $STATE_DIRECTORY")
                   ->capture_default_str();
  std::string placement = "spread";
  fm::bus::AddDurationFlag(app, "--liveness", &options.engine.liveness_window_ms,
                           "a worker unheard for this long is lost");
  app.add_option("--placement", placement, "spread (least loaded) or binpack")->capture_default_str();
  fm::bus::AddDurationFlag(app, "--reconnect-grace", &options.engine.reconnect_grace_ms,
                           "tasks only lost workers could run wait this long for one to come back (0: fail at once)");
  app.add_option("--max-attempts", options.engine.default_max_attempts, "default attempts per task")
      ->capture_default_str();
  app.add_option("--event-retention", options.engine.event_retention_count, "events kept for fm-tap --since")
      ->capture_default_str();
  fm::bus::AddSizeFlag(app, "--store-write-buffer", &options.store.write_buffer_size,
                       "RocksDB memtable size; also the free space it needs to resume after a full disk",
                       fm::bus::AtLeast(1u << 20, "1MiB"));
  fm::bus::AddDurationFlag(app, "--event-retention-age", &options.engine.event_retention_age_ms,
                           "events and task output older than this are dropped (e.g. 24h, 7d)");
  fm::bus::AddSizeFlag(app, "--log-retention", &options.engine.log_retention_bytes,
                       "task output kept for replay, apart from the other events: however much tasks print, "
                       "it never pushes the other events out");
  app.add_option("--task-retention", options.engine.task_retention_count,
                 "ended tasks kept (fm-ctl task, idempotency keys); older ones are deleted with their keys")
      ->capture_default_str();
  fm::bus::AddDurationFlag(app, "--task-retention-age", &options.engine.task_retention_age_ms,
                           "ended tasks older than this are deleted with their keys", fm::bus::AtLeast(1000, "1s"));
  app.add_option("--waiting-in-memory", options.engine.cached_waiting_tasks,
                 "tasks waiting for their first placement kept whole in memory (~1 KB each); the rest wait in "
                 "the store and are read back when placed")
      ->capture_default_str();
  app.add_option("--max-blocked", options.engine.max_blocked_tasks,
                 "tasks waiting for tasks they run after (after) held at once (~1 KB each, in memory); past "
                 "it a new one is rejected with limit_reached")
      ->capture_default_str();
  std::string etcd;
  fm::ha::LeadershipOptions ha;
  app.add_option("--etcd", etcd,
                 "etcd endpoints (http://HOST:PORT,...): schedulers given the same etcd and --ha-name elect one "
                 "leader; the others wait as standbys");
  app.add_option("--ha-name", ha.name, "the cluster's name in etcd (keys under /fm/NAME/)")->capture_default_str();
  app.add_option("--ha-node", ha.node,
                 "this scheduler's name in the in-sync set, which names stores (default: HOST:DATA-DIR)");
  fm::bus::AddDurationFlag(app, "--ha-lease", &ha.lease_ms,
                           "the leader's lease in etcd: a standby may lead this long after the leader was last "
                           "heard, and a leader that cannot renew it stops sending before then",
                           fm::bus::AtLeast(2000, "2s"));
  fm::ha::ReplicationOptions replication;
  app.add_option("--ha-listen", replication.listen,
                 "where this scheduler, leading, ships its batches to standbys (tcp://HOST:PORT, PORT may be *); "
                 "without it no standby can be in sync with it");
  fm::bus::AddDurationFlag(app, "--ha-lag-max", &replication.lag_max_ms,
                           "an in-sync standby that has not acknowledged a batch this long after it was written "
                           "leaves the in-sync set (until then the batch's output waits for it)",
                           fm::bus::AtLeast(100, "100ms"));
  app.add_option("--ha-peers", replication.peers_dir,
                 "with --cert: the directory of the public certificates of the cluster's schedulers; the link "
                 "to standbys is CURVE, and only those keys (of role scheduler) follow or are followed");
  app.add_flag("--ha-force-promotion", ha.force_promotion,
               "lead even though not in the in-sync set (an operator's act: what only the last leader had is lost)");
  fm::bus::DaemonFlags daemon_flags;
  fm::bus::AddDaemonFlags(app, &daemon_flags);
  app.set_config("--config", "", "read options from this file (same names as the flags, key = value)");
  fm::bus::AddSecurityFlags(app, &options.cert, &options.broker_cert);
  fm::bus::EnvironmentFallbacks(app, "FM_SCHEDULER_");
  if (int rc = fm::bus::ParseCommandLine(app, "fm-scheduler", argc, argv); rc >= 0) return rc;
  // Under systemd (StateDirectory=fm) the store goes where the unit says, unless a flag,
  // the config file or FM_SCHEDULER_DATA named a directory.
  if (const char* state = std::getenv("STATE_DIRECTORY"); state != nullptr && *state != '\0' && data->count() == 0) {
    options.data_dir = std::string(state).substr(0, std::string(state).find(':'));
  }
  if (fm::Status s = fm::bus::InitLogging("fm-scheduler", daemon_flags.log_level, daemon_flags.log_format); !s.ok()) {
    std::fprintf(stderr, "fm-scheduler: %s\n", s.message().c_str());
    return 2;
  }

  if (!fm::sched::ParsePlacementPolicy(placement, &options.engine.policy)) {
    spdlog::error("--placement \"{}\": use spread or binpack", placement);
    return 2;
  }
  if (options.engine.task_retention_count == 0) {
    spdlog::error("--task-retention: must be at least 1");
    return 2;
  }
  options.engine.Validate();

  if (!etcd.empty()) {
    auto endpoints = fm::ha::ParseEtcdEndpoints(etcd);
    if (!endpoints.ok()) {
      spdlog::error("{}", endpoints.status().message());
      return 2;
    }
    ha.etcd = std::move(*endpoints);
    // The in-sync set says which stores hold everything acknowledged: by default a
    // scheduler is named by its host and its store's directory, so that two on one host
    // are never taken for each other.
    if (ha.node.empty()) {
      std::error_code ec;
      ha.node = HostName() + ":" + std::filesystem::absolute(options.data_dir, ec).lexically_normal().string();
    }
    ha.describe = "host " + HostName() + ", pid " + std::to_string(getpid()) + ", data " + options.data_dir;
  } else if (ha.force_promotion || !replication.listen.empty()) {
    spdlog::error("{}: only with --etcd", ha.force_promotion ? "--ha-force-promotion" : "--ha-listen");
    return 2;
  }
  if (!replication.peers_dir.empty() && (replication.listen.empty() || options.cert.empty())) {
    spdlog::error("--ha-peers: only with --ha-listen and --cert (it names who may follow this scheduler)");
    return 2;
  }
  if (!replication.listen.empty() && options.cert.empty()) {
    spdlog::warn(
        "--ha-listen without --cert: the link to standbys is not authenticated (whoever reaches {} can read the "
        "store); keep it on a private network",
        replication.listen);
  }
  if (!replication.listen.empty() && !options.cert.empty()) {
    if (replication.peers_dir.empty()) {
      spdlog::error(
          "--ha-listen with --cert: name --ha-peers (the schedulers' public certificates), so that only they "
          "receive this scheduler's store");
      return 2;
    }
    auto own = fm::bus::LoadCertificate(options.cert, /*need_secret=*/true);
    if (!own.ok()) {
      spdlog::error("--cert: {}", own.status().message());
      return 2;
    }
    replication.own = *own;
  }

  // Declared first, so gone last: the lease is revoked (a standby may lead) only once the
  // ZeroMQ context has ended, that is once what was queued has left or been dropped.
  std::unique_ptr<fm::ha::Leadership> leadership;
  std::unique_ptr<fm::ha::Replicator> replicator;  // gone before the leadership it may fence
  zmq::context_t context(1);
  fm::bus::Loop loop;  // outlives the daemon, whose commit thread reports on it
  fm::sched::SchedulerDaemon daemon(context, options);
  if (daemon_flags.check_config) {
    return fm::ops::CheckConfig("fm-scheduler", daemon_flags.metrics_listen, daemon.Check());
  }
  if (!ha.etcd.empty()) {
    if (fm::Status s = fm::ha::StoreIdentity(options.data_dir, &ha.store, &ha.fresh_store); !s.ok()) {
      spdlog::error("{}", s.message());
      return 1;
    }
    // A standby waits here, its store closed, until it leads; a signal ends the wait.
    struct sigaction stop {};
    stop.sa_handler = [](int) { stop_waiting = true; };
    sigaction(SIGTERM, &stop, nullptr);
    sigaction(SIGINT, &stop, nullptr);
    // Under systemd a standby is up (it waits by design): ready, alive, and saying for what.
    ha.waiting = [](const std::string& status) { sd_notifyf(0, "READY=1\nWATCHDOG=1\nSTATUS=%s", status.c_str()); };
    // With --ha-listen a standby keeps its store a copy of the leader's while it waits.
    std::unique_ptr<fm::store::Store> standby_store;
    std::unique_ptr<fm::ha::Follower> follower;
    if (!replication.listen.empty()) {
      replication.name = ha.name;
      replication.etcd = ha.etcd;
      replication.lease_ms = ha.lease_ms;
      replication.self = {ha.node, ha.store};
      replication.data_dir = options.data_dir;
      replicator = std::make_unique<fm::ha::Replicator>(replication, *spdlog::default_logger());
      if (fm::Status s = replicator->Bind(); !s.ok()) {
        spdlog::error("{}", s.message());
        return 2;
      }
      ha.replication = replicator->endpoint();
      auto opened = fm::store::OpenRocksStore(options.data_dir + "/store", options.store);
      if (!opened.ok()) {
        spdlog::error("{}", opened.status().message());
        return 1;
      }
      standby_store = std::move(*opened);
      follower = std::make_unique<fm::ha::Follower>(standby_store.get(), replication, *spdlog::default_logger());
      ha.follow = [&follower](const std::string& leader, uint64_t epoch) { follower->Follow(leader, epoch); };
      ha.ready = [&follower, &options]() -> std::string {
        follower->Stop();
        return follower->Complete() ? ""
                                    : "its store is an incomplete copy of the leader's (" + options.data_dir +
                                          "/ha-incomplete): a leader must send it a whole copy first";
      };
    }
    auto led = fm::ha::Leadership::Acquire(ha, stop_waiting, *spdlog::default_logger());
    follower.reset();  // nothing more is applied
    standby_store.reset();
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    if (!led.ok()) {
      if (led.status().code() != fm::Status::Code::kUnavailable) {
        spdlog::error("{}", led.status().message());
        return 2;
      }
      spdlog::info("{}", led.status().message());
      return 0;
    }
    leadership = std::move(*led);
    if (stop_waiting) {  // a signal as it won: stop (the lease is revoked on the way out)
      spdlog::info("stopped as it took the lead of {}", ha.name);
      return 0;
    }
    daemon.Lead(leadership.get(), ha,
                "leader of " + ha.name + " as " + ha.node + ", epoch " + std::to_string(leadership->epoch()) +
                    (leadership->forced() ? " (promoted by force)" : ""));
    if (replicator) {  // (after Lead, which sets what fm-ctl ha says of the leader)
      replicator->Lead(leadership.get());
      daemon.Replicate(replicator.get());
    }
  }
  if (fm::Status s = daemon.Open(); !s.ok()) {
    spdlog::error("{}", s.message());
    return s.code() == fm::Status::Code::kInvalid ? 2 : 1;
  }
  daemon.Attach(loop);
  int rc = fm::ops::RunDaemon(
      loop, daemon_flags.metrics_listen, [&daemon](fm::ops::Sheet& sheet) { daemon.Metrics(sheet); },
      "scheduling from " + options.data_dir);
  if (rc != 0) return rc;
  return daemon.exit_code();
}
