// fm-worker [--broker URL] [--id ID] [--slots N] [--cpus N] [--memory SIZE]
//           [--label K=V]... [--docker-socket PATH]
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstring>

#include "runtime/logging.h"
#include "runtime/loop.h"
#include "runtime/ops.h"
#include "schemas/units.h"
#include "worker/worker.h"

int main(int argc, char** argv) {
  fm::worker::WorkerOptions options;
  CLI::App app{"fm-worker: runs the tasks the scheduler dispatches to it"};
  app.add_option("--broker", options.broker, "local broker (default $FM_BROKER or tcp://127.0.0.1:5550)")
      ->capture_default_str();
  app.add_option("--id", options.id, "worker id, unique in the cluster (default: host name)");
  app.add_option("--node", options.node, "node name (default: host name)");
  app.add_option("--slots", options.slots, "tasks run at once (default: whole cpus found)");
  std::string cpus, memory;
  std::vector<std::string> labels;
  app.add_option("--cpus", cpus, "announce fewer cpus than were found");
  app.add_option("--memory", memory, "announce less memory than was found (e.g. 4GiB)");
  app.add_option("--label", labels, "K=V label, repeatable");
  app.add_option("--docker-socket", options.docker_socket,
                 "Docker Engine API socket; capability docker is announced while it answers /_ping");
  fm::bus::AddDurationFlag(app, "--heartbeat", &options.heartbeat_ms, "heartbeat and re-probe interval",
                           fm::bus::AtLeast(1, "1ms"));
  fm::bus::AddSizeFlag(app, "--max-output", &options.core.max_output,
                       "stdout and stderr kept per attempt; the rest is dropped with a note",
                       [](uint64_t bytes) { return bytes == 0 ? "must be above 0" : ""; });
  // Never from the environment or a config file: a worker that reports tasks done
  // without running them must be asked for on its command line, and says so.
  app.add_flag("--noop-executor", options.noop_executor,
               "benchmarking only: complete every task at once without running it (command line only)")
      ->configurable(false);
  fm::bus::AddSecurityFlags(app, &options.cert, &options.broker_cert, &options.root_cert);
  app.add_option("--run-as", options.run_as,
                 "run every exec task as this user (the worker must run as root; root only when said: --run-as root)");
  app.add_option("--task-uids", options.task_uids,
                 "run each owner's exec tasks as a uid of its own from this range FIRST-LAST, which no user of the "
                 "system has (the worker must run as root)");
  app.add_option("--state-dir", options.state_dir,
                 "where the worker keeps which owner has which uid of --task-uids, and their homes (0700)");
  app.add_option("--cgroup", options.cgroup,
                 "exec tasks' limits: a cgroup leaf per attempt under the worker's delegated cgroup (v2) or its own "
                 "(v1, as root); off: none")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "v2", "v1", "off"}));
  app.add_option("--session-image", options.sessions.image,
                 "image of interactive sessions (sshd on port 22, keys from $FM_SSH_KEYS); capability session is "
                 "announced while a container of it starts and sshd answers; empty: never")
      ->capture_default_str();
  fm::bus::AddDurationFlag(app, "--session-probe", &options.session_probe_ms,
                           "how often the session image is tried again", fm::bus::AtLeast(1, "1ms"));
  fm::bus::AddDurationFlag(app, "--session-max-ttl", &options.sessions.max_ttl_ms,
                           "the longest a session lives, whatever its ttl", fm::bus::AtLeast(1000, "1s"));
  app.add_option("--advertise-host", options.sessions.advertise,
                 "host name or address users connect to for sessions on this worker (default: the node name)");
  app.add_option("--session-bind", options.sessions.bind, "address sessions' ssh ports are published on")
      ->capture_default_str();
  app.add_option("--session-user", options.sessions.user, "the user sessions log in as (the session image's)")
      ->capture_default_str();
  app.add_option("--quarantine-after", options.core.health.quarantine_after,
                 "failed container starts in a row that withdraw capability docker until a re-probe starts one")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1000u));
  fm::bus::AddDurationFlag(app, "--quarantine-probe", &options.core.health.probe_initial_ms,
                           "first re-probe of a quarantined capability after this; doubled each time up to 5m",
                           fm::bus::AtLeast(1, "1ms"));
  fm::bus::DaemonFlags daemon_flags;
  fm::bus::AddDaemonFlags(app, &daemon_flags);
  app.set_config("--config", "", "read options from this file (same names as the flags, key = value)");
  fm::bus::EnvironmentFallbacks(app, "FM_WORKER_");
  if (int rc = fm::bus::ParseCommandLine(app, "fm-worker", argc, argv); rc >= 0) return rc;
  if (fm::Status s = fm::bus::InitLogging("fm-worker", daemon_flags.log_level, daemon_flags.log_format); !s.ok()) {
    std::fprintf(stderr, "fm-worker: %s\n", s.message().c_str());
    return 2;
  }

  if (!cpus.empty()) {
    auto v = fm::ParseCpus(cpus);
    if (!v.ok()) {
      spdlog::error("--cpus: {}", v.status().message());
      return 2;
    }
    options.cpus_milli = *v;
  }
  if (!memory.empty()) {
    auto v = fm::ParseSize(memory);
    if (!v.ok()) {
      spdlog::error("--memory: {}", v.status().message());
      return 2;
    }
    options.memory = *v;
  }
  options.core.health.probe_max_ms = std::max(options.core.health.probe_initial_ms, options.core.health.probe_max_ms);
  for (const auto& label : labels) {
    auto parsed = fm::ParseLabel(label);
    if (!parsed.ok()) {
      spdlog::error("--label: {}", parsed.status().message());
      return 2;
    }
    options.labels.push_back(std::move(*parsed));
  }

  zmq::context_t context(1);
  if (daemon_flags.check_config) {
    fm::worker::Worker checked(context, options, fm::worker::Probe{});
    return fm::ops::CheckConfig("fm-worker", daemon_flags.metrics_listen, checked.Check());
  }
  fm::worker::Probe probe = fm::worker::ProbeAll(options.docker_socket);
  fm::worker::Worker worker(context, options, probe);
  if (fm::Status s = worker.Open(); !s.ok()) {
    spdlog::error("{}", s.message());
    return 2;
  }
  fm::bus::Loop loop;
  worker.Attach(loop);
  int rc = fm::ops::RunDaemon(
      loop, daemon_flags.metrics_listen, [&worker](fm::ops::Sheet& sheet) { worker.Metrics(sheet); },
      "worker " + options.id);
  if (rc != 0) return rc;
  return worker.exit_code();
}
