#include "broker/broker.h"

#include <vector>

#include "schemas/codec.h"

namespace fm::bus {
namespace {
constexpr size_t kBudget = 256;  // messages per drain call, so one socket cannot starve the others
constexpr const char* kBrokerPrefix = "broker/";

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
      router_(context, zmq::socket_type::router),
      xsub_(context, zmq::socket_type::xsub),
      xpub_(context, zmq::socket_type::xpub) {
  if (!options_.logger) options_.logger = spdlog::default_logger();
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
    up_dealer_.connect(up->router);
    up_xpub_.connect(up->events_in);   // our publishers' events go up
    up_xsub_.connect(up->events_out);  // the tree's events come down
  }
  options_.logger->info("broker on {} (events in {}, out {}){}", endpoints_.router, endpoints_.events_in,
                        endpoints_.events_out, has_upstream_ ? ", upstream " + options_.upstream : "");
  return Status::Ok();
}

void Broker::Attach(Loop& loop) {
  loop.Watch(router_, [this] { return DrainRouter(); });
  loop.Watch(xsub_, [this] { return DrainEvents(); });
  loop.Watch(xpub_, [this] { return DrainSubscriptions(); });
  if (has_upstream_) {
    loop.Watch(up_dealer_, [this] { return DrainUpstream(); });
    loop.Watch(up_xpub_, [this] { return DrainUpstreamSubscriptions(); });
    loop.Watch(up_xsub_, [this] { return DrainUpstreamEvents(); });
    loop.Every(
        options_.announce_ms, [this] { Announce(); }, 0);
  }
  loop.Every(options_.announce_ms, [this] { Expire(); });
  loop.OnTurnEnd([this] {
    if (announce_now_) Announce();
  });
}

// ---------------------------------------------------------------------------
// Directed messages.

bool Broker::DeliverLocal(const std::string& destination, const std::string& source, zmq::message_t& payload) {
  try {
    if (!RetryEintr([&] {
          return router_.send(zmq::buffer(destination), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
        })) {
      ++counters_.unreachable;
      ErrorTo(source, "unreachable", "peer \"" + destination + "\" is not accepting messages (queue full)",
              destination);
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
  if (auto r = routes_.find(destination); r != routes_.end()) {
    try {
      RetryEintr([&] { return router_.send(zmq::buffer(r->second.child), zmq::send_flags::sndmore); });
      SendFrames(router_, {Buf(destination), Buf(payload), Buf(source)});
      ++counters_.relayed_down;
      return;
    } catch (const zmq::error_t&) {
      routes_.erase(r);  // that child is gone: fall through
    }
  }
  if (has_upstream_ && !from_parent) {
    SendFrames(up_dealer_, {Buf(destination), Buf(payload), Buf(source)});
    ++counters_.relayed_up;
    return;
  }
  ++counters_.unreachable;
  if (destination != kBrokerAddress) {
    options_.logger->debug("unreachable {} from {}", destination, source);
    ErrorTo(source, "unreachable",
            "no peer \"" + destination + "\" is connected to the broker tree at " + endpoints_.router, destination);
  }
}

void Broker::ErrorTo(const std::string& source, const std::string& code, const std::string& message,
                     const std::string& about) {
  zmq::message_t payload(codec::EncodeError(code, message, about));
  try {
    if (DeliverLocal(source, kBrokerAddress, payload)) return;
    if (auto r = routes_.find(source); r != routes_.end()) {
      RetryEintr([&] { return router_.send(zmq::buffer(r->second.child), zmq::send_flags::sndmore); });
      SendFrames(router_, {Buf(source), Buf(payload), Buf(std::string(kBrokerAddress))});
    } else if (has_upstream_) {
      SendFrames(up_dealer_, {Buf(source), Buf(payload), Buf(std::string(kBrokerAddress))});
    }
  } catch (const zmq::error_t&) {
    // The sender left meanwhile; nobody to tell.
  }
}

void Broker::Learn(const std::string& peer, const std::string& child) {
  if (peer == kBrokerAddress) return;
  routes_[peer] = {child, WallClockMs()};
}

void Broker::HandleForBroker(const std::string& source, const zmq::message_t& payload, bool local_peer) {
  auto envelope = codec::Decode(payload.data(), payload.size());
  if (!envelope.ok()) {
    ++counters_.malformed;
    options_.logger->warn("malformed message from {} to the broker: {}", source, envelope.status().message());
    ErrorTo(source, "malformed", envelope.status().message(), kBrokerAddress);
    return;
  }
  const wire::Envelope& env = **envelope;
  if (env.body_type() == wire::Body::BrokerHello) {
    if (local_peer && local_peers_.emplace(source, WallClockMs()).second) announce_now_ = true;
    if (local_peer) local_peers_[source] = WallClockMs();
    return;
  }
  if (env.body_type() == wire::Body::RouteAnnouncement && IsBroker(source)) {
    children_[source] = WallClockMs();
    if (const auto* peers = env.body_as_RouteAnnouncement()->peers()) {
      for (const auto* p : *peers) Learn(p->str(), source);
    }
    announce_now_ |= has_upstream_;  // our parent learns them through us
    return;
  }
  if (env.body_type() == wire::Body::Error) return;
  ErrorTo(source, "unsupported",
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
      children_[peer] = WallClockMs();
      Learn(source, peer);
      if (destination == kBrokerAddress) {
        HandleForBroker(source, frames[2], false);
      } else {
        Route(destination, source, frames[2], false);
      }
      continue;
    }
    if (frames.size() != 3) {
      ++counters_.malformed;
      options_.logger->warn("malformed message from {}: {} frames, expected [destination][payload]", peer,
                            frames.size() - 1);
      ErrorTo(peer, "malformed", "expected 2 frames [destination][payload], got " + std::to_string(frames.size() - 1),
              "");
      continue;
    }
    const std::string destination = frames[1].to_string();
    if (!IsBroker(peer)) local_peers_[peer] = WallClockMs();
    if (frames[2].size() > codec::kMaxMessageBytes) {
      ++counters_.oversized;
      options_.logger->warn("oversized message from {} to {}: {} bytes", peer, destination, frames[2].size());
      ErrorTo(peer, "oversized",
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
  std::vector<std::string> peers;
  peers.reserve(local_peers_.size() + routes_.size());
  for (const auto& [peer, seen] : local_peers_) peers.push_back(peer);
  for (const auto& [peer, route] : routes_) peers.push_back(peer);
  std::string payload = codec::Seal(fbb, wire::CreateRouteAnnouncement(fbb, codec::ToWire(fbb, peers)));
  SendFrames(up_dealer_, {Buf(std::string(kBrokerAddress)), Buf(payload)});
}

void Broker::Expire() {
  uint64_t now = WallClockMs();
  for (auto it = routes_.begin(); it != routes_.end();) {
    it = now > it->second.seen_ms + options_.route_ttl_ms ? routes_.erase(it) : std::next(it);
  }
  for (auto it = local_peers_.begin(); it != local_peers_.end();) {
    it = now > it->second + options_.route_ttl_ms ? local_peers_.erase(it) : std::next(it);
  }
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
