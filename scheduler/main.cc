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
  fm::sched::SchedulerOptions options;
  CLI::App app{"fm-scheduler: places tasks on workers that can run them"};
  app.add_option("--broker", options.broker, "root broker (default $FM_BROKER or tcp://127.0.0.1:5550)")
      ->capture_default_str();
  auto* data = app.add_option("--data", options.data_dir,
                              "data directory (RocksDB store); default under systemd: $STATE_DIRECTORY")
                   ->capture_default_str();
  std::string liveness = "5s", placement = "spread";
  app.add_option("--liveness", liveness, "a worker unheard for this long is lost")->capture_default_str();
  app.add_option("--placement", placement, "spread (least loaded) or binpack")->capture_default_str();
  std::string grace = "30s";
  app.add_option("--reconnect-grace", grace,
                 "tasks only lost workers could run wait this long for one to come back (0: fail at once)")
      ->capture_default_str();
  app.add_option("--max-attempts", options.engine.default_max_attempts, "default attempts per task")
      ->capture_default_str();
  app.add_option("--event-retention", options.engine.event_retention_count, "events kept for fm-tap --since")
      ->capture_default_str();
  std::string write_buffer = "64MiB";
  app.add_option("--store-write-buffer", write_buffer,
                 "RocksDB memtable size; also the free space it needs to resume after a full disk")
      ->capture_default_str();
  std::string retention_age = "7d";
  app.add_option("--event-retention-age", retention_age,
                 "events and task output older than this are dropped (e.g. 24h, 7d)")
      ->capture_default_str();
  std::string log_retention = "1GiB";
  app.add_option("--log-retention", log_retention,
                 "task output kept for replay, apart from the other events: however much tasks print, "
                 "it never pushes the other events out")
      ->capture_default_str();
  app.add_option("--task-retention", options.engine.task_retention_count,
                 "ended tasks kept (fm-ctl task, idempotency keys); older ones are deleted with their keys")
      ->capture_default_str();
  std::string task_age = "7d";
  app.add_option("--task-retention-age", task_age, "ended tasks older than this are deleted with their keys")
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

  auto window = fm::ParseDurationMs(liveness);
  if (!window.ok()) {
    spdlog::error("--liveness: {}", window.status().message());
    return 2;
  }
  options.engine.liveness_window_ms = *window;
  auto grace_ms = fm::ParseDurationMs(grace);
  if (!grace_ms.ok()) {
    spdlog::error("--reconnect-grace: {}", grace_ms.status().message());
    return 2;
  }
  options.engine.reconnect_grace_ms = *grace_ms;
  if (!fm::sched::ParsePlacementPolicy(placement, &options.engine.policy)) {
    spdlog::error("--placement \"{}\": use spread or binpack", placement);
    return 2;
  }
  auto age = fm::ParseDurationMs(retention_age);
  if (!age.ok()) {
    spdlog::error("--event-retention-age: {}", age.status().message());
    return 2;
  }
  options.engine.event_retention_age_ms = *age;
  auto log_bytes = fm::ParseSize(log_retention);
  if (!log_bytes.ok()) {
    spdlog::error("--log-retention: {}", log_bytes.status().message());
    return 2;
  }
  options.engine.log_retention_bytes = *log_bytes;
  auto task_age_ms = fm::ParseDurationMs(task_age);
  if (!task_age_ms.ok() || *task_age_ms < 1000) {
    spdlog::error("--task-retention-age: {}",
                  task_age_ms.ok() ? "must be at least 1s" : task_age_ms.status().message());
    return 2;
  }
  options.engine.task_retention_age_ms = *task_age_ms;
  if (options.engine.task_retention_count == 0) {
    spdlog::error("--task-retention: must be at least 1");
    return 2;
  }
  options.engine.Validate();
  auto buffer = fm::ParseSize(write_buffer);
  if (!buffer.ok() || *buffer < (1u << 20)) {
    spdlog::error("--store-write-buffer: {}", buffer.ok() ? "must be at least 1MiB" : buffer.status().message());
    return 2;
  }
  options.store.write_buffer_size = *buffer;

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
