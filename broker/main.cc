// fm-broker [--bind URL]... [--upstream URL] [--cert SECRET --trust DIR [--upstream-cert PUBLIC]]
//           [--insecure]
#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <cstdio>

#include "broker/broker.h"
#include "runtime/logging.h"
#include "runtime/loop.h"
#include "runtime/ops.h"
#include "schemas/units.h"

int main(int argc, char** argv) {
  fm::bus::BrokerOptions options;
  std::vector<std::string> binds = {options.bind};
  bool insecure = false;
  CLI::App app{"fm-broker: routes directed messages and the event bus of one fm node"};
  app.add_option("--bind", binds,
                 "where to listen: tcp://HOST:PORT (PORT+1 takes events in, PORT+2 gives them out) or ipc://PATH; "
                 "repeatable")
      ->capture_default_str();
  app.add_option("--upstream", options.upstream, "parent broker (tcp://ROOT:PORT) for a node broker");
  app.add_option("--cert", options.cert, "this broker's certificate (NAME.cert_secret): serve CURVE")
      ->envname("FM_CERT");
  app.add_option("--trust", options.trust_dir,
                 "directory of the public certificates (*.cert) to admit, re-read every second");
  app.add_option("--upstream-cert", options.upstream_cert, "the parent broker's public certificate (node broker)");
  app.add_option("--max-connections", options.max_connections,
                 "refuse peers past this many admitted connections (default: the open-file limit less a reserve)");
  fm::bus::AddDurationFlag(app, "--handshake-timeout", &options.handshake_ms,
                           "a connection that has not completed its handshake by then is closed",
                           fm::bus::AtLeast(100, "100ms"));
  app.add_option("--max-unauthenticated", options.max_unauthenticated,
                 "connections from one address kept while still in their handshake; newer ones are closed (0: any)")
      ->capture_default_str();
  // Below a few MiB a peer that reads, but slowly, is cut: what waits in its kernel
  // queue and one replay batch (1 MiB) count too.
  fm::bus::AddSizeFlag(
      app, "--max-queued", &options.max_queued_bytes,
      "bytes queued for one peer that it has not read (directed messages, or events for a subscriber); "
      "past it its connection is cut (0: no limit)",
      [](uint64_t bytes) { return bytes != 0 && bytes < (4u << 20) ? "must be 0 or at least 4MiB" : ""; });
  app.add_option("--max-subscriptions", options.max_subscriptions,
                 "subscriptions one connection may send, and at most 64 KiB of topics (a broker's: 64 times as "
                 "many); past either the connection is cut (0: no limit)")
      ->capture_default_str();
  app.add_flag("--insecure", insecure, "allow listening on a non-loopback address without --cert (no authentication)");
  fm::bus::DaemonFlags daemon;
  fm::bus::AddDaemonFlags(app, &daemon);
  app.set_config("--config", "", "read options from this file (same names as the flags, key = value)");
  // --cert has FM_CERT already: FM_BROKER_CERT names the broker's public certificate for clients.
  fm::bus::EnvironmentFallbacks(app, "FM_BROKER_");
  if (int rc = fm::bus::ParseCommandLine(app, "fm-broker", argc, argv); rc >= 0) return rc;
  if (fm::Status s = fm::bus::InitLogging("fm-broker", daemon.log_level, daemon.log_format); !s.ok()) {
    std::fprintf(stderr, "fm-broker: %s\n", s.message().c_str());
    return 2;
  }
  if (binds.empty()) binds.push_back(fm::bus::kDefaultBroker);
  options.bind = binds.front();
  options.extra_binds.assign(binds.begin() + 1, binds.end());
  for (const auto& url : binds) {
    auto endpoints = fm::bus::ParseBrokerUrl(url);
    if (!endpoints.ok()) {
      spdlog::error("--bind: {}", endpoints.status().message());
      return 2;
    }
    if (!endpoints->loopback && options.cert.empty() && !insecure) {
      spdlog::error(
          "--bind {}: refusing to listen beyond this host without authentication; give --cert and --trust "
          "(see docs/DEPLOY.md), or --insecure to accept anyone who reaches the port",
          url);
      return 2;
    }
  }
  options.loopback_only = !insecure;
  if (insecure && options.cert.empty()) {
    spdlog::warn("--insecure: anyone who reaches {} may submit, run commands on workers and pose as any peer",
                 options.bind);
  }

  zmq::context_t context(1);
  if (daemon.check_config) {
    fm::bus::Broker checked(context, options);
    return fm::ops::CheckConfig("fm-broker", daemon.metrics_listen, checked.Configure());
  }
  // Every connection is a file: take the hard limit, and keep a reserve below it so
  // that refusing one past the limit never fails for want of a descriptor.
  struct rlimit files {};
  if (getrlimit(RLIMIT_NOFILE, &files) == 0) {
    if (files.rlim_cur < files.rlim_max) {
      files.rlim_cur = files.rlim_max;
      if (setrlimit(RLIMIT_NOFILE, &files) != 0) getrlimit(RLIMIT_NOFILE, &files);
    }
    size_t usable = files.rlim_cur > 256 ? static_cast<size_t>(files.rlim_cur) - 128 : 128;
    if (options.max_connections == 0 || options.max_connections > usable) options.max_connections = usable;
    spdlog::info("open files: {}; at most {} connections", static_cast<uint64_t>(files.rlim_cur),
                 options.max_connections);
  }
  fm::bus::Broker broker(context, options);
  if (fm::Status s = broker.Bind(); !s.ok()) {
    spdlog::error("{}", s.message());
    return s.code() == fm::Status::Code::kInvalid ? 2 : 1;
  }
  fm::bus::Loop loop;
  broker.Attach(loop);
  int rc = fm::ops::RunDaemon(
      loop, daemon.metrics_listen, [&broker](fm::ops::Sheet& sheet) { broker.Metrics(sheet); },
      "routing on " + options.bind);
  if (rc != 0) return rc;
  const auto& c = broker.counters();
  spdlog::info("stopped: routed {}, unreachable {}, malformed {}, oversized {}, unauthorized {}, events {}", c.routed,
               c.unreachable, c.malformed, c.oversized, c.unauthorized, c.events);
  return 0;
}
