#include "broker/broker.h"

#include <vector>

#include "schemas/codec.h"

namespace fm::bus {
namespace {
constexpr size_t kBudget = 4096;  // messages per drain call, so one socket cannot starve the others
}

Broker::Broker(zmq::context_t& context, BrokerOptions options)
    : options_(std::move(options)),
      router_(context, zmq::socket_type::router),
      xsub_(context, zmq::socket_type::xsub),
      xpub_(context, zmq::socket_type::xpub) {
  if (!options_.logger) options_.logger = spdlog::default_logger();
}

Status Broker::Bind() {
  auto endpoints = ParseBrokerUrl(options_.bind);
  if (!endpoints.ok()) return endpoints.status();
  endpoints_ = *endpoints;
  router_.set(zmq::sockopt::router_mandatory, 1);
  router_.set(zmq::sockopt::sndhwm, 1'000'000);
  router_.set(zmq::sockopt::rcvhwm, 1'000'000);
  router_.set(zmq::sockopt::linger, 0);
  // A hard cap well above the refusal limit: past it ZeroMQ drops the connection.
  router_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(codec::kMaxMessageBytes * 2));
  xsub_.set(zmq::sockopt::rcvhwm, 1'000'000);
  xpub_.set(zmq::sockopt::sndhwm, 1'000'000);
  xpub_.set(zmq::sockopt::linger, 0);
  for (auto [socket, endpoint] : {std::pair{&router_, endpoints_.router}, std::pair{&xsub_, endpoints_.events_in},
                                  std::pair{&xpub_, endpoints_.events_out}}) {
    try {
      socket->bind(endpoint);
    } catch (const zmq::error_t& e) {
      return Status::Unavailable("cannot bind " + endpoint + ": " + e.what());
    }
  }
  options_.logger->info("broker on {} (events in {}, out {})", endpoints_.router, endpoints_.events_in,
                        endpoints_.events_out);
  return Status::Ok();
}

void Broker::Attach(Loop& loop) {
  loop.Watch(router_, [this] { return DrainRouter(); });
  loop.Watch(xsub_, [this] { return DrainEvents(); });
  loop.Watch(xpub_, [this] { return DrainSubscriptions(); });
}

void Broker::ReplyError(const zmq::message_t& to, const std::string& code, const std::string& message,
                        const std::string& about) {
  std::string payload = codec::EncodeError(code, message, about);
  try {
    if (!RetryEintr([&] {
          return router_.send(zmq::buffer(to.data(), to.size()), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
        })) {
      return;
    }
    RetryEintr([&] { return router_.send(zmq::buffer(std::string(kBrokerAddress)), zmq::send_flags::sndmore); });
    RetryEintr([&] { return router_.send(zmq::buffer(payload), zmq::send_flags::none); });
  } catch (const zmq::error_t&) {
    // The sender left meanwhile; nobody to tell.
  }
}

size_t Broker::DrainRouter() {
  size_t n = 0;
  std::vector<zmq::message_t> frames;
  while (n < kBudget) {
    frames.clear();
    auto got =
        RetryEintr([&] { return zmq::recv_multipart(router_, std::back_inserter(frames), zmq::recv_flags::dontwait); });
    if (!got) break;
    ++n;
    const std::string source = frames[0].to_string();
    if (frames.size() != 3) {
      ++counters_.malformed;
      options_.logger->warn("malformed message from {}: {} frames, expected [destination][payload]", source,
                            frames.size() - 1);
      ReplyError(frames[0], "malformed",
                 "expected 2 frames [destination][payload], got " + std::to_string(frames.size() - 1), "");
      continue;
    }
    const std::string destination = frames[1].to_string();
    if (frames[2].size() > codec::kMaxMessageBytes) {
      ++counters_.oversized;
      options_.logger->warn("oversized message from {} to {}: {} bytes", source, destination, frames[2].size());
      ReplyError(frames[0], "oversized",
                 "message of " + std::to_string(frames[2].size()) + " bytes exceeds the limit of " +
                     std::to_string(codec::kMaxMessageBytes),
                 destination);
      continue;
    }
    try {
      if (!RetryEintr([&] { return router_.send(frames[1], zmq::send_flags::sndmore | zmq::send_flags::dontwait); })) {
        ++counters_.unreachable;
        ReplyError(frames[0], "unreachable", "peer \"" + destination + "\" is not accepting messages (queue full)",
                   destination);
        continue;
      }
      RetryEintr([&] { return router_.send(frames[0], zmq::send_flags::sndmore); });
      RetryEintr([&] { return router_.send(frames[2], zmq::send_flags::none); });
      ++counters_.routed;
    } catch (const zmq::error_t& e) {
      ++counters_.unreachable;
      if (destination != kBrokerAddress) {
        options_.logger->debug("unreachable {} from {}: {}", destination, source, e.what());
      }
      ReplyError(frames[0], "unreachable",
                 "no peer \"" + destination + "\" is connected to broker " + endpoints_.router, destination);
    }
  }
  return n;
}

size_t Broker::DrainEvents() {
  size_t n = 0;
  while (n < kBudget) {
    zmq::message_t frame;
    if (!RetryEintr([&] { return xsub_.recv(frame, zmq::recv_flags::dontwait); })) break;
    bool more = frame.more();
    RetryEintr([&] { return xpub_.send(frame, more ? zmq::send_flags::sndmore : zmq::send_flags::none); });
    if (!more) {
      ++n;
      ++counters_.events;
    }
  }
  return n;
}

size_t Broker::DrainSubscriptions() {
  size_t n = 0;
  while (n < kBudget) {
    zmq::message_t frame;
    if (!RetryEintr([&] { return xpub_.recv(frame, zmq::recv_flags::dontwait); })) break;
    RetryEintr([&] { return xsub_.send(frame, zmq::send_flags::none); });
    ++n;
  }
  return n;
}

}  // namespace fm::bus
