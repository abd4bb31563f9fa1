// fm-scheduler [--broker URL] [--data DIR]
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>

#include "runtime/logging.h"
#include "runtime/loop.h"
#include "runtime/ops.h"
#include "scheduler/daemon.h"
#include "schemas/units.h"

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

  zmq::context_t context(1);
  fm::bus::Loop loop;  // outlives the daemon, whose commit thread reports on it
  fm::sched::SchedulerDaemon daemon(context, options);
  if (daemon_flags.check_config) {
    return fm::ops::CheckConfig("fm-scheduler", daemon_flags.metrics_listen, daemon.Check());
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
