// fm-broker [--bind tcp://HOST:PORT] [--upstream tcp://ROOT:PORT]
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>

#include "broker/broker.h"
#include "broker/logging.h"
#include "broker/loop.h"

int main(int argc, char** argv) {
  fm::bus::BrokerOptions options;
  CLI::App app{"fm-broker: routes directed messages and the event bus of one fm node"};
  app.add_option("--bind", options.bind, "ROUTER endpoint; PORT+1 takes events in, PORT+2 gives them out")
      ->capture_default_str();
  app.add_option("--upstream", options.upstream, "parent broker (tcp://ROOT:PORT) for a node broker");
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error")->capture_default_str();
  app.set_config("--config", "", "read options from this file (same names as the flags, key = value)");
  fm::bus::EnvironmentFallbacks(app, "FM_BROKER_");
  CLI11_PARSE(app, argc, argv);
  if (fm::Status s = fm::bus::InitLogging("fm-broker", log_level); !s.ok()) {
    std::fprintf(stderr, "fm-broker: %s\n", s.message().c_str());
    return 2;
  }

  zmq::context_t context(1);
  fm::bus::Broker broker(context, options);
  if (fm::Status s = broker.Bind(); !s.ok()) {
    spdlog::error("{}", s.message());
    return 1;
  }
  fm::bus::Loop loop;
  broker.Attach(loop);
  loop.StopOnSignals([](int signum) { spdlog::info("signal {}: stopping", signum); });
  loop.Run();
  const auto& c = broker.counters();
  spdlog::info("stopped: routed {}, unreachable {}, malformed {}, oversized {}, events {}", c.routed, c.unreachable,
               c.malformed, c.oversized, c.events);
  return 0;
}
