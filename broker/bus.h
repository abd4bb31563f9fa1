// The client side of the bus: how every fm process talks to its local broker.
//
// A broker at tcp://HOST:PORT serves directed messages on PORT (ROUTER), takes events
// in on PORT+1 (XSUB) and gives them out on PORT+2 (XPUB). A client holds a DEALER whose
// identity is its address; it sends frames [destination][payload] and receives
// [source][payload]. Events are frames [topic][payload].
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "broker/addresses.h"
#include "schemas/status.h"

namespace fm::bus {

// Runs a ZeroMQ call again when a signal interrupted it (EINTR). libuv's SIGCHLD handler
// makes that common in the worker: cppzmq throws on it even for non-blocking calls.
template <typename F>
auto RetryEintr(F&& call) -> decltype(call()) {
  for (;;) {
    try {
      return call();
    } catch (const zmq::error_t& e) {
      if (e.num() != EINTR) throw;
    }
  }
}

inline constexpr const char* kDefaultBroker = "tcp://127.0.0.1:5550";

struct Endpoints {
  std::string router;      // tcp://HOST:PORT
  std::string events_in;   // tcp://HOST:PORT+1
  std::string events_out;  // tcp://HOST:PORT+2
};

// Parses "tcp://HOST:PORT" (PORT + 2 must be a port). Error names what is wrong.
Result<Endpoints> ParseBrokerUrl(const std::string& url);

// $FM_BROKER if set, else tcp://127.0.0.1:5550.
std::string DefaultBrokerUrl();

// "<prefix>/<host>/<pid>/<random hex>": unique per process.
std::string UniqueAddress(const std::string& prefix);

// `message` with its bytes at an address aligned for any scalar (copied only when they
// are not): what FlatBuffers needs to read a payload in place.
zmq::message_t Aligned(zmq::message_t message);

struct Received {
  std::string from;
  zmq::message_t payload;
};

struct Event {
  std::string topic;
  zmq::message_t payload;
};

class Client {
 public:
  // Connects a DEALER with `address` as identity; with `publish` a PUB to events in;
  // with `subscribe` a SUB to events out (subscribe to prefixes with Subscribe()).
  Client(zmq::context_t& context, const Endpoints& endpoints, const std::string& address, bool publish, bool subscribe);

  const std::string& address() const { return address_; }
  zmq::socket_t& dealer() { return dealer_; }
  zmq::socket_t& sub() { return sub_; }

  // Queues a directed message; false when it cannot be queued now (high-water mark).
  bool Send(const std::string& to, const std::string& payload);
  // Next directed message, if one is waiting. Frames not shaped [source][payload] are
  // dropped and counted in malformed().
  std::optional<Received> Receive();
  // Tells the local broker this client is here (so a node broker can announce it to
  // its parent before the client sent anything else). Cheap; send it periodically.
  void Hello();
  // Publishes on the bus; dropped by ZeroMQ when no subscriber is connected.
  void Publish(std::string_view topic, std::string_view payload);
  void Subscribe(const std::string& prefix);
  std::optional<Event> ReceiveEvent();
  uint64_t malformed() const { return malformed_; }

 private:
  std::string address_;
  zmq::socket_t dealer_;
  zmq::socket_t pub_;
  zmq::socket_t sub_;
  uint64_t malformed_ = 0;
};

}  // namespace fm::bus
