#include "broker/broker.h"

#include <vector>

#include "schemas/codec.h"

namespace fm::bus {
namespace {
constexpr size_t kBudget = 256;  // messages per drain call, so one socket cannot starve the others
constexpr const char* kBrokerPrefix = "broker/";
constexpr size_t kMaxSubscriptionBytes = 64 << 10;  // a subscription is a topic prefix

bool IsBroker(const std::string& identity) { return identity.rfind(kBrokerPrefix, 0) == 0; }

std::vector<zmq::message_t> RecvAll(zmq::socket_t& socket, bool* got) {
  std::vector<zmq::message_t> frames;
  *got = RetryEintr([&] {
           return zmq::recv_multipart(socket, std::back_inserter(frames), zmq::recv_flags::dontwait);
         }).has_value();
  return frames;
}

void SendFrames(zmq::socket_t& socket, std::initializer_list<zmq::const_buffer> frames) {
  size_t i = 0;
  for (const auto& f : frames) {
    bool more = ++i < frames.size();
    RetryEintr([&] { return socket.send(f, more ? zmq::send_flags::sndmore : zmq::send_flags::none); });
  }
}

zmq::const_buffer Buf(const std::string& s) { return zmq::buffer(s); }
zmq::const_buffer Buf(const zmq::message_t& m) { return zmq::buffer(m.data(), m.size()); }

}  // namespace

Broker::Broker(zmq::context_t& context, BrokerOptions options)
    : options_(std::move(options)),
      table_(options_.route_ttl_ms, !options_.upstream.empty()),
      router_(context, zmq::socket_type::router),
      xsub_(context, zmq::socket_type::xsub),
      xpub_(context, zmq::socket_type::xpub) {
  if (!options_.logger) options_.logger = spdlog::default_logger();
  rejected_log_ = std::make_unique<RateLimitedLog>(options_.logger);
  if (!options_.upstream.empty()) {
    up_dealer_ = zmq::socket_t(context, zmq::socket_type::dealer);
    up_xpub_ = zmq::socket_t(context, zmq::socket_type::xpub);
    up_xsub_ = zmq::socket_t(context, zmq::socket_type::xsub);
  }
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
  // Every socket that takes bytes from a peer has a size limit: a message over it drops
  // that peer's connection before it is buffered, and never reaches a subscriber.
  xsub_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(codec::kMaxMessageBytes * 2));
  xpub_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(kMaxSubscriptionBytes));
  for (auto [socket, endpoint] : {std::pair{&router_, endpoints_.router}, std::pair{&xsub_, endpoints_.events_in},
                                  std::pair{&xpub_, endpoints_.events_out}}) {
    try {
      socket->bind(endpoint);
    } catch (const zmq::error_t& e) {
      return Status::Unavailable("cannot bind " + endpoint + ": " + e.what());
    }
  }
  if (!options_.upstream.empty()) {
    auto up = ParseBrokerUrl(options_.upstream);
    if (!up.ok()) return Status::Invalid("--upstream: " + up.status().message());
    has_upstream_ = true;
    identity_ = UniqueAddress("broker");
    up_dealer_.set(zmq::sockopt::routing_id, identity_);
    up_dealer_.set(zmq::sockopt::sndhwm, 1'000'000);
    up_dealer_.set(zmq::sockopt::rcvhwm, 1'000'000);
    up_dealer_.set(zmq::sockopt::linger, 0);
    up_dealer_.set(zmq::sockopt::reconnect_ivl, 100);
    up_dealer_.set(zmq::sockopt::reconnect_ivl_max, 2000);
    up_xpub_.set(zmq::sockopt::sndhwm, 1'000'000);
    up_xpub_.set(zmq::sockopt::linger, 0);
    up_xsub_.set(zmq::sockopt::rcvhwm, 1'000'000);
    up_dealer_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(codec::kMaxMessageBytes * 2));
    up_xsub_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(codec::kMaxMessageBytes * 2));
    up_xpub_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(kMaxSubscriptionBytes));
    up_dealer_.connect(up->router);
    up_xpub_.connect(up->events_in);   // our publishers' events go up
    up_xsub_.connect(up->events_out);  // the tree's events come down
  }
  options_.logger->info("broker on {} (events in {}, out {}){}", endpoints_.router, endpoints_.events_in,
                        endpoints_.events_out, has_upstream_ ? ", upstream " + options_.upstream : "");
  return Status::Ok();
}

void Broker::Attach(Loop& loop) {
  loop.Watch(router_, [this] { return Guarded("router", [this] { return DrainRouter(); }); });
  loop.Watch(xsub_, [this] { return Guarded("events in", [this] { return DrainEvents(); }); });
  loop.Watch(xpub_, [this] { return Guarded("events out", [this] { return DrainSubscriptions(); }); });
  if (has_upstream_) {
    loop.Watch(up_dealer_, [this] { return Guarded("upstream", [this] { return DrainUpstream(); }); });
    loop.Watch(up_xpub_,
               [this] { return Guarded("upstream events out", [this] { return DrainUpstreamSubscriptions(); }); });
    loop.Watch(up_xsub_, [this] { return Guarded("upstream events in", [this] { return DrainUpstreamEvents(); }); });
    auto announce = [this] {
      Guarded("announce", [this] {
        Announce();
        return size_t{0};
      });
    };
    loop.Every(options_.announce_ms, announce, 0);
  }
  loop.Every(options_.announce_ms, [this] {
    table_.Expire(WallClockMs());
    rejected_log_->Flush(WallClockMs());
  });
  loop.OnTurnEnd([this] {
    if (announce_now_) {
      Guarded("announce", [this] {
        Announce();
        return size_t{0};
      });
    }
  });
}

void Broker::OnSocketError(const char* what, const zmq::error_t& e) {
  ++counters_.socket_errors;
  ++errors_since_log_;
  uint64_t now = WallClockMs();
  if (now < last_error_log_ms_ + 1000) return;
  options_.logger->error("socket error on {}: {} ({} in the last second, {} in all); serving on", what, e.what(),
                         errors_since_log_, counters_.socket_errors);
  last_error_log_ms_ = now;
  errors_since_log_ = 0;
}

// ---------------------------------------------------------------------------
// Directed messages.

bool Broker::DeliverLocal(const std::string& destination, const std::string& source, zmq::message_t& payload) {
  try {
    if (!RetryEintr([&] {
          return router_.send(zmq::buffer(destination), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
        })) {
      ++counters_.unreachable;
      ErrorTo(source, wire::ErrorCode::Unreachable,
              "peer \"" + destination + "\" is not accepting messages (queue full)", destination);
      return true;
    }
  } catch (const zmq::error_t& e) {
    if (e.num() == EHOSTUNREACH) return false;
    throw;
  }
  SendFrames(router_, {Buf(source), Buf(payload)});
  ++counters_.routed;
  return true;
}

void Broker::Route(const std::string& destination, const std::string& source, zmq::message_t& payload,
                   bool from_parent) {
  if (DeliverLocal(destination, source, payload)) return;
  RoutingTable::Hop hop = table_.NextHop(destination, from_parent);
  if (hop.kind == RoutingTable::Hop::kChild) {
    try {
      RetryEintr([&] { return router_.send(zmq::buffer(hop.child), zmq::send_flags::sndmore); });
      SendFrames(router_, {Buf(destination), Buf(payload), Buf(source)});
      ++counters_.relayed_down;
      return;
    } catch (const zmq::error_t&) {
      table_.ForgetChild(hop.child);  // that child is gone: on up, or unreachable
      hop = table_.NextHop(destination, from_parent);
    }
  }
  if (hop.kind == RoutingTable::Hop::kUp) {
    SendFrames(up_dealer_, {Buf(destination), Buf(payload), Buf(source)});
    ++counters_.relayed_up;
    return;
  }
  ++counters_.unreachable;
  if (destination != kBrokerAddress) {
    options_.logger->debug("unreachable {} from {}", destination, source);
    ErrorTo(source, wire::ErrorCode::Unreachable,
            "no peer \"" + destination + "\" is connected to the broker tree at " + endpoints_.router, destination);
  }
}

void Broker::ErrorTo(const std::string& source, wire::ErrorCode code, const std::string& message,
                     const std::string& about) {
  zmq::message_t payload(codec::EncodeError(code, message, about));
  try {
    if (DeliverLocal(source, kBrokerAddress, payload)) return;
    RoutingTable::Hop hop = table_.NextHop(source, false);
    if (hop.kind == RoutingTable::Hop::kChild) {
      RetryEintr([&] { return router_.send(zmq::buffer(hop.child), zmq::send_flags::sndmore); });
      SendFrames(router_, {Buf(source), Buf(payload), Buf(std::string(kBrokerAddress))});
    } else if (hop.kind == RoutingTable::Hop::kUp) {
      SendFrames(up_dealer_, {Buf(source), Buf(payload), Buf(std::string(kBrokerAddress))});
    }
  } catch (const zmq::error_t&) {
    // The sender left meanwhile; nobody to tell.
  }
}

void Broker::HandleForBroker(const std::string& source, const zmq::message_t& frame, bool local_peer) {
  std::string storage;
  std::string_view payload =
      codec::AlignedBytes(std::string_view(static_cast<const char*>(frame.data()), frame.size()), &storage);
  auto envelope = codec::Decode(payload.data(), payload.size());
  if (!envelope.ok()) {
    ++counters_.malformed;
    rejected_log_->Warn(source, WallClockMs(),
                        "malformed message from " + source + " to the broker: " + envelope.status().message());
    ErrorTo(source, wire::ErrorCode::Malformed, envelope.status().message(), kBrokerAddress);
    return;
  }
  const wire::Envelope& env = **envelope;
  if (env.body_type() == wire::Body::BrokerHello) {
    if (local_peer && table_.SeenLocal(source, WallClockMs())) announce_now_ = true;
    return;
  }
  if (env.body_type() == wire::Body::RouteAnnouncement && IsBroker(source)) {
    const uint64_t now = WallClockMs();
    table_.SeenChild(source, now);
    if (const auto* peers = env.body_as_RouteAnnouncement()->peers()) {
      for (const auto* p : *peers) table_.Learn(p->str(), source, now);
    }
    announce_now_ |= has_upstream_;  // our parent learns them through us
    return;
  }
  if (env.body_type() == wire::Body::Error) return;
  ErrorTo(source, wire::ErrorCode::Unsupported,
          std::string("the broker does not take ") + wire::EnumNameBody(env.body_type()) + " messages", kBrokerAddress);
}

size_t Broker::DrainRouter() {
  size_t n = 0;
  while (n < kBudget) {
    bool got = false;
    std::vector<zmq::message_t> frames = RecvAll(router_, &got);
    if (!got) break;
    ++n;
    const std::string peer = frames[0].to_string();
    if (frames.size() == 4 && IsBroker(peer)) {
      // Relayed up from a child broker: [child][destination][payload][source].
      std::string destination = frames[1].to_string(), source = frames[3].to_string();
      table_.SeenChild(peer, WallClockMs());
      table_.Learn(source, peer, WallClockMs());
      if (destination == kBrokerAddress) {
        HandleForBroker(source, frames[2], false);
      } else {
        Route(destination, source, frames[2], false);
      }
      continue;
    }
    if (frames.size() != 3) {
      ++counters_.malformed;
      rejected_log_->Warn(peer, WallClockMs(),
                          "malformed message from " + peer + ": " + std::to_string(frames.size() - 1) +
                              " frames, expected [destination][payload]");
      ErrorTo(peer, wire::ErrorCode::Malformed,
              "expected 2 frames [destination][payload], got " + std::to_string(frames.size() - 1), "");
      continue;
    }
    const std::string destination = frames[1].to_string();
    if (!IsBroker(peer)) table_.SeenLocal(peer, WallClockMs());
    if (frames[2].size() > codec::kMaxMessageBytes) {
      ++counters_.oversized;
      rejected_log_->Warn(
          peer, WallClockMs(),
          "oversized message from " + peer + " to " + destination + ": " + std::to_string(frames[2].size()) + " bytes");
      ErrorTo(peer, wire::ErrorCode::Oversized,
              "message of " + std::to_string(frames[2].size()) + " bytes exceeds the limit of " +
                  std::to_string(codec::kMaxMessageBytes),
              destination);
      continue;
    }
    if (destination == kBrokerAddress) {
      HandleForBroker(peer, frames[2], !IsBroker(peer));
      continue;
    }
    Route(destination, peer, frames[2], false);
  }
  return n;
}

size_t Broker::DrainUpstream() {
  size_t n = 0;
  while (n < kBudget) {
    bool got = false;
    std::vector<zmq::message_t> frames = RecvAll(up_dealer_, &got);
    if (!got) break;
    ++n;
    if (frames.size() != 3) {
      ++counters_.malformed;
      options_.logger->warn("malformed message from the parent broker: {} frames", frames.size());
      continue;
    }
    // From the parent: [destination][payload][source].
    Route(frames[0].to_string(), frames[2].to_string(), frames[1], true);
  }
  return n;
}

void Broker::Announce() {
  announce_now_ = false;
  if (!has_upstream_) return;
  flatbuffers::FlatBufferBuilder fbb(1024);
  std::vector<std::string> peers = table_.Reachable();
  std::string payload = codec::Seal(fbb, wire::CreateRouteAnnouncement(fbb, codec::ToWire(fbb, peers)));
  SendFrames(up_dealer_, {Buf(std::string(kBrokerAddress)), Buf(payload)});
}

// ---------------------------------------------------------------------------
// Events.

namespace {
// Moves whole multipart messages from one socket to another.
size_t Forward(zmq::socket_t& from, zmq::socket_t& to, uint64_t* counted) {
  size_t n = 0;
  while (n < kBudget) {
    zmq::message_t frame;
    if (!RetryEintr([&] { return from.recv(frame, zmq::recv_flags::dontwait); })) break;
    bool more = frame.more();
    RetryEintr([&] { return to.send(frame, more ? zmq::send_flags::sndmore : zmq::send_flags::none); });
    if (!more) {
      ++n;
      if (counted) ++*counted;
    }
  }
  return n;
}
}  // namespace

size_t Broker::DrainEvents() {
  // Local publishers: at the root straight to local subscribers; at a node up the tree,
  // from where they come back down once, to everyone.
  return Forward(xsub_, has_upstream_ ? up_xpub_ : xpub_, &counters_.events);
}

size_t Broker::DrainSubscriptions() { return Forward(xpub_, has_upstream_ ? up_xsub_ : xsub_, nullptr); }

size_t Broker::DrainUpstreamEvents() { return Forward(up_xsub_, xpub_, &counters_.events); }

size_t Broker::DrainUpstreamSubscriptions() { return Forward(up_xpub_, xsub_, nullptr); }

}  // namespace fm::bus
