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
  std::string cpus, memory, heartbeat = "1s", max_output = "16MiB";
  std::vector<std::string> labels;
  app.add_option("--cpus", cpus, "announce fewer cpus than were found");
  app.add_option("--memory", memory, "announce less memory than was found (e.g. 4GiB)");
  app.add_option("--label", labels, "K=V label, repeatable");
  app.add_option("--docker-socket", options.docker_socket,
                 "Docker Engine API socket; capability docker is announced while it answers /_ping");
  app.add_option("--heartbeat", heartbeat, "heartbeat and re-probe interval")->capture_default_str();
  app.add_option("--max-output", max_output, "stdout and stderr kept per attempt; the rest is dropped with a note")
      ->capture_default_str();
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
  std::string session_probe = "60s";
  app.add_option("--session-image", options.session_image,
                 "image of interactive sessions (sshd on port 22, keys from $FM_SSH_KEYS); capability session is "
                 "announced while a container of it starts and sshd answers; empty: never")
      ->capture_default_str();
  app.add_option("--session-probe", session_probe, "how often the session image is tried again")->capture_default_str();
  std::string session_max_ttl = "8h";
  app.add_option("--session-max-ttl", session_max_ttl, "the longest a session lives, whatever its ttl")
      ->capture_default_str();
  app.add_option("--advertise-host", options.advertise_host,
                 "host name or address users connect to for sessions on this worker (default: the node name)");
  app.add_option("--session-bind", options.session_bind, "address sessions' ssh ports are published on")
      ->capture_default_str();
  app.add_option("--session-user", options.session_user, "the user sessions log in as (the session image's)")
      ->capture_default_str();
  std::string quarantine_probe = "2s";
  app.add_option("--quarantine-after", options.health.quarantine_after,
                 "failed container starts in a row that withdraw capability docker until a re-probe starts one")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1000u));
  app.add_option("--quarantine-probe", quarantine_probe,
                 "first re-probe of a quarantined capability after this; doubled each time up to 5m")
      ->capture_default_str();
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
  auto output_cap = fm::ParseSize(max_output);
  if (!output_cap.ok() || *output_cap == 0) {
    spdlog::error("--max-output: {}", output_cap.ok() ? "must be above 0" : output_cap.status().message());
    return 2;
  }
  options.max_output = *output_cap;
  if (!memory.empty()) {
    auto v = fm::ParseSize(memory);
    if (!v.ok()) {
      spdlog::error("--memory: {}", v.status().message());
      return 2;
    }
    options.memory = *v;
  }
  // Durations: each above its least, or a usage error naming the flag.
  struct Duration {
    const char* flag;
    const std::string& text;
    uint64_t least_ms;
    uint64_t* out;
  };
  for (const Duration& d : {Duration{"--heartbeat", heartbeat, 1, &options.heartbeat_ms},
                            Duration{"--quarantine-probe", quarantine_probe, 1, &options.health.probe_initial_ms},
                            Duration{"--session-probe", session_probe, 1, &options.session_probe_ms},
                            Duration{"--session-max-ttl", session_max_ttl, 1000, &options.session_max_ttl_ms}}) {
    auto ms = fm::ParseDurationMs(d.text);
    if (!ms.ok() || *ms < d.least_ms) {
      spdlog::error("{}: {}", d.flag,
                    ms.ok() ? "must be at least " + std::to_string(d.least_ms) + "ms" : ms.status().message());
      return 2;
    }
    *d.out = *ms;
  }
  options.health.probe_max_ms = std::max(options.health.probe_initial_ms, options.health.probe_max_ms);
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
