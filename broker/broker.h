// fm-broker: routes directed messages between the peers connected to its ROUTER (by
// destination identity) and forwards the event bus from XSUB to XPUB.
//
// A malformed frame (not [destination][payload]), an oversized payload or an
// unreachable destination gets an Error message back to its sender and a log line;
// nothing else is disturbed.
#pragma once

#include <spdlog/spdlog.h>

#include <memory>
#include <string>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "broker/bus.h"
#include "broker/loop.h"
#include "schemas/status.h"

namespace fm::bus {

struct BrokerOptions {
  std::string bind = kDefaultBroker;  // ROUTER; PORT+1 events in, PORT+2 events out
  std::string upstream;               // parent broker (broker trees); empty for the root
  std::shared_ptr<spdlog::logger> logger;
};

class Broker {
 public:
  Broker(zmq::context_t& context, BrokerOptions options);
  // Binds the three sockets. Error names the endpoint that could not be bound.
  Status Bind();
  // Registers the sockets on `loop`. REQUIRES: Bind() succeeded.
  void Attach(Loop& loop);

  struct Counters {
    uint64_t routed = 0, unreachable = 0, malformed = 0, oversized = 0, events = 0;
  };
  const Counters& counters() const { return counters_; }

 private:
  size_t DrainRouter();
  size_t DrainEvents();
  size_t DrainSubscriptions();
  void ReplyError(const zmq::message_t& to, const std::string& code, const std::string& message,
                  const std::string& about);

  BrokerOptions options_;
  Endpoints endpoints_;
  zmq::socket_t router_, xsub_, xpub_;
  Counters counters_;
};

}  // namespace fm::bus
