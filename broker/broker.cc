#include "broker/broker.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>
#include <unordered_set>
#include <vector>

#include "schemas/codec.h"
#include "schemas/vocabulary.h"

namespace fm::bus {
namespace {
constexpr size_t kBudget = 256;  // messages per drain call, so one socket cannot starve the others
constexpr const char* kBrokerPrefix = "broker/";
constexpr size_t kMaxAddressBytes = 256;        // a claimed or relayed address
constexpr size_t kMaxSubscriberMessage = 1024;  // a handshake or a subscription from a subscriber
constexpr size_t kMaxClaimsPerKey = 1024;       // open connections one certificate may name
constexpr size_t kMaxHeldMessages = 1024;       // a claimer's messages waiting for its proof
constexpr size_t kMaxHeldBytes = 32u << 20;
// ZAP domains of the router, events-in and events-out sockets: a handshake says which.
constexpr const char* kZapDomains[] = {"fm", "fm-in", "fm-out"};

// An address is short printable ASCII: it is stored, logged and announced.
bool ValidAddress(const std::string& address) {
  if (address.empty() || address.size() > kMaxAddressBytes) return false;
  for (unsigned char c : address) {
    if (c <= 0x20 || c >= 0x7f) return false;
  }
  return true;
}

bool IsBroker(const std::string& identity) { return identity.rfind(kBrokerPrefix, 0) == 0; }

// Sends `frames`, then `seal` as one more frame unless it is empty (runtime/seal.h).
void SendFrames(zmq::socket_t& socket, std::initializer_list<zmq::const_buffer> frames, std::string_view seal = {}) {
  size_t i = 0;
  for (const auto& f : frames) {
    bool more = ++i < frames.size() || !seal.empty();
    RetryEintr([&] { return socket.send(f, more ? zmq::send_flags::sndmore : zmq::send_flags::none); });
  }
  if (!seal.empty()) RetryEintr([&] { return socket.send(zmq::buffer(seal), zmq::send_flags::none); });
}

zmq::const_buffer Buf(const std::string& s) { return zmq::buffer(s); }
zmq::const_buffer Buf(const zmq::message_t& m) { return zmq::buffer(m.data(), m.size()); }

}  // namespace

Broker::Broker(zmq::context_t& context, BrokerOptions options)
    : options_(std::move(options)),
      context_(context),
      router_(context, zmq::socket_type::router),
      xsub_(context, zmq::socket_type::xsub),
      xpub_(context, zmq::socket_type::xpub),
      table_(options_.route_ttl_ms, !options_.upstream.empty()),
      directed_backlog_(options_.max_queued_bytes),
      subscriber_backlog_(options_.max_queued_bytes) {
  if (!options_.logger) options_.logger = spdlog::default_logger();
  rejected_log_ = std::make_unique<RateLimitedLog>(options_.logger);
  if (!options_.upstream.empty()) {
    up_dealer_ = zmq::socket_t(context, zmq::socket_type::dealer);
    up_xpub_ = zmq::socket_t(context, zmq::socket_type::xpub);
    up_xsub_ = zmq::socket_t(context, zmq::socket_type::xsub);
  }
}

Status Broker::Configure() {
  auto endpoints = ParseBrokerUrl(options_.bind);
  if (!endpoints.ok()) return endpoints.status();
  endpoints_ = *endpoints;
  std::vector<Endpoints> all = {endpoints_};
  for (const auto& url : options_.extra_binds) {
    auto more = ParseBrokerUrl(url);
    if (!more.ok()) return more.status();
    all.push_back(*more);
  }
  if (!options_.cert.empty()) {
    if (options_.trust_dir.empty()) {
      return Status::Invalid("--cert needs --trust DIR (the public certificates of the peers to admit)");
    }
    auto own = LoadCertificate(options_.cert, true);
    if (!own.ok()) return Status::Invalid("--cert: " + own.status().message());
    own_ = std::move(*own);
    trust_ = std::make_unique<TrustStore>(options_.trust_dir);
    std::vector<std::string> removed, problems;
    auto loaded = trust_->Refresh(&removed, &problems);
    if (!loaded.ok()) return Status::Invalid("--trust: " + loaded.status().message());
    for (const auto& p : problems) options_.logger->warn("trust: {}", p);
    secure_ = true;
    for (zmq::socket_t* socket : {&router_, &xsub_, &xpub_}) {
      socket->set(zmq::sockopt::curve_server, 1);
      socket->set(zmq::sockopt::curve_secretkey, own_.secret_key);
    }
  } else if (!options_.trust_dir.empty()) {
    return Status::Invalid("--trust needs --cert (the broker's own certificate)");
  }
  if (!options_.upstream.empty()) {
    auto up = ParseBrokerUrl(options_.upstream);
    if (!up.ok()) return Status::Invalid("--upstream: " + up.status().message());
    if (secure_) {
      if (options_.upstream_cert.empty()) {
        return Status::Invalid("a node broker with --cert needs --upstream-cert (its parent's public certificate)");
      }
      auto parent = LoadCertificate(options_.upstream_cert, false);
      if (!parent.ok()) return Status::Invalid("--upstream-cert: " + parent.status().message());
      if (own_.role != "broker") {
        return Status::Invalid("--cert: a node broker joins its parent with a certificate of role broker, not " +
                               own_.role);
      }
      upstream_key_ = parent->public_key;
      root_key_ = upstream_key_;  // until the parent, a node broker itself, names the root
    } else if (!options_.upstream_cert.empty()) {
      return Status::Invalid("--upstream-cert needs --cert (the node broker's own certificate of role broker)");
    }
  }
  return Status::Ok();
}

namespace {

void BindOwnerOnly(zmq::socket_t& socket, const std::string& endpoint) {
  if (endpoint.rfind("ipc://", 0) != 0) return socket.bind(endpoint);
  // An ipc:// socket file only the broker's user (and root) may connect to: its peers
  // are local processes whose queues the kernel cannot count in bytes (broker/outbound.h),
  // so none of them may be anyone else's. Everyone else connects over TCP. The bind runs
  // in this thread, at start or on a rebind, when nothing else creates files.
  const mode_t before = umask(077);
  try {
    socket.bind(endpoint);
  } catch (...) {
    umask(before);
    throw;
  }
  umask(before);
}

}  // namespace

Status Broker::Bind() {
  if (Status s = Configure(); !s.ok()) return s;
  std::vector<Endpoints> all = {endpoints_};
  for (const auto& url : options_.extra_binds) all.push_back(*ParseBrokerUrl(url));
  // Every handshake goes through our ZAP handler (keyless too): it admits or refuses
  // keys, and refuses connections past the limit.
  zap_ = std::make_unique<ZapHandler>(context_, trust_.get(), options_.logger,
                                      [this](const ZapRequest& request) { return Admit(request); });
  if (Status s = zap_->Bind(); !s.ok()) return s;
  const char* names[] = {"router", "events-in", "events-out"};
  zmq::socket_t* sockets[] = {&router_, &xsub_, &xpub_};
  for (int i = 0; i < 3; ++i) {
    sockets[i]->set(zmq::sockopt::zap_domain, kZapDomains[i]);
    // Connections counted from the sockets' own events (accepted, disconnected).
    if (!MonitorSocket(context_, *sockets[i], ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED, &monitors_[i])) {
      return Status::Unavailable(std::string("cannot monitor the ") + names[i] + " socket");
    }
    // An outsider's connection that never completes its handshake is closed soon.
    if (options_.handshake_ms > 0)
      sockets[i]->set(zmq::sockopt::handshake_ivl, static_cast<int>(options_.handshake_ms));
  }
  router_.set(zmq::sockopt::router_mandatory, 1);
  router_.set(zmq::sockopt::sndhwm, kDirectedQueue);
  router_.set(zmq::sockopt::rcvhwm, kDirectedQueue);
  router_.set(zmq::sockopt::linger, 0);
  // A connection whose peer vanished (host down, network cut) is closed, so that a
  // claim it held can be taken over.
  router_.set(zmq::sockopt::heartbeat_ivl, 2000);
  router_.set(zmq::sockopt::heartbeat_timeout, 15000);
  // A hard cap well above the refusal limit: past it ZeroMQ drops the connection.
  router_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(codec::kMaxMessageBytes * 2));
  xsub_.set(zmq::sockopt::rcvhwm, kDirectedQueue);
  xpub_.set(zmq::sockopt::sndhwm, kEventQueue);
  xpub_.set(zmq::sockopt::linger, 0);
  // Every socket that takes bytes from a peer has a size limit: a message over it drops
  // that peer's connection before it is buffered, and never reaches a subscriber.
  xsub_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(codec::kMaxMessageBytes * 2));
  // What a subscriber sends is its handshake (a CURVE INITIATE with its metadata is a few
  // hundred bytes) and subscriptions: a message over 1 KiB drops its connection before
  // ZeroMQ keeps anything of it. Prefixes that match no topic stop here (below).
  xpub_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(kMaxSubscriberMessage));
  // ZeroMQ files each subscription in its own table (tens of bytes per byte of topic)
  // as it takes it from the connection, in one go for all that came meanwhile, before
  // the broker sees any. A queue of two makes that go nearly one by one: each waits
  // for the broker to take the last, so a connection past --max-subscriptions is cut
  // before its flood is filed. (Not one: with CURVE the connection's first message is
  // its credential, which ZeroMQ counts in and never out, and one would never move.)
  xpub_.set(zmq::sockopt::rcvhwm, 2);
  // Subscriptions apply only once the broker allowed them (ForwardSubscriptions).
  xpub_.set(zmq::sockopt::xpub_manual, 1);
  for (const Endpoints& e : all) {
    for (auto [socket, endpoint] :
         {std::pair{&router_, e.router}, std::pair{&xsub_, e.events_in}, std::pair{&xpub_, e.events_out}}) {
      if (endpoint.rfind("ipc://@", 0) == 0) {
        return Status::Invalid("--bind " + endpoint +
                               ": an abstract ipc socket has no file permissions, so any local user could connect; "
                               "give a path (its file is this broker's user's alone)");
      }
      std::string bound;
      try {
        BindOwnerOnly(*socket, endpoint);
        bound = socket->get(zmq::sockopt::last_endpoint);
      } catch (const zmq::error_t& ex) {
        return Status::Unavailable("cannot bind " + endpoint + ": " + ex.what());
      }
      if (!secure_ && options_.loopback_only && !IsLoopbackEndpoint(bound)) {
        socket->unbind(bound);
        return Status::Invalid("--bind " + endpoint + " listens on " + bound +
                               ", beyond this host, without authentication: give --cert and --trust (see "
                               "docs/DEPLOY.md), or --insecure to accept anyone who reaches the port");
      }
      if (socket == &xpub_) events_out_bound_.push_back(bound);
    }
  }
  if (!options_.upstream.empty()) {
    auto up = ParseBrokerUrl(options_.upstream);
    Security security;
    if (secure_) {
      security.own = own_;
      security.broker_key = upstream_key_;
    }
    has_upstream_ = true;
    identity_ = UniqueAddress(secure_ ? "broker/" + own_.name : "broker");
    for (zmq::socket_t* socket : {&up_dealer_, &up_xpub_, &up_xsub_}) SecureClientSocket(*socket, security);
    up_dealer_.set(zmq::sockopt::sndhwm, kDirectedQueue);
    up_dealer_.set(zmq::sockopt::rcvhwm, kDirectedQueue);
    up_dealer_.set(zmq::sockopt::linger, 0);
    up_dealer_.set(zmq::sockopt::reconnect_ivl, 100);
    up_dealer_.set(zmq::sockopt::reconnect_ivl_max, 2000);
    up_xpub_.set(zmq::sockopt::sndhwm, kEventQueue);
    up_xpub_.set(zmq::sockopt::linger, 0);
    up_xsub_.set(zmq::sockopt::rcvhwm, kDirectedQueue);
    up_dealer_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(codec::kMaxMessageBytes * 2));
    up_xsub_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(codec::kMaxMessageBytes * 2));
    up_xpub_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(kMaxSubscriberMessage));
    up_dealer_.connect(up->router);
    SendUpHello();                     // the claim goes first on the connection
    up_xpub_.connect(up->events_in);   // our publishers' events go up
    up_xsub_.connect(up->events_out);  // the tree's events come down
  }
  options_.logger->info("broker on {} (events in {}, out {}){}{}", endpoints_.router, endpoints_.events_in,
                        endpoints_.events_out, has_upstream_ ? ", upstream " + options_.upstream : "",
                        secure_ ? ", CURVE as \"" + own_.name + "\" admitting the " + std::to_string(trust_->size()) +
                                      " certificates in " + options_.trust_dir
                                : ", without CURVE");
  return Status::Ok();
}

void Broker::SendUpHello() {
  flatbuffers::FlatBufferBuilder fbb(64);
  std::string payload = codec::Seal(fbb, wire::CreateBrokerHello(fbb, fbb.CreateString(identity_)));
  SendFrames(up_dealer_, {Buf(std::string(kBrokerAddress)), Buf(payload)});
}

void Broker::Attach(Loop& loop) {
  for (auto& monitor : monitors_) {
    loop.Watch(monitor,
               [this, &monitor] { return Guarded("monitor", [this, &monitor] { return DrainMonitor(monitor); }); });
  }
  loop.Watch(zap_->socket(), [this] { return Guarded("zap", [this] { return zap_->Drain(WallClockMs()); }); });
  if (trust_) {
    loop.Every(options_.trust_reload_ms, [this] {
      Guarded("trust", [this] {
        ReloadTrust();
        return size_t{0};
      });
    });
  }
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
    Guarded("sweep", [this] {
      Sweep();
      return size_t{0};
    });
    table_.Expire(WallClockMs());
    rejected_log_->Flush(WallClockMs());
    zap_->FlushLog(WallClockMs());
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

namespace {
// The peer's IP as ZAP names it (inet_ntop), "" for a unix socket or an unreadable one.
std::string PeerAddress(int fd) {
  sockaddr_storage peer{};
  socklen_t len = sizeof peer;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &len) != 0) return "";
  char text[INET6_ADDRSTRLEN] = {0};
  if (peer.ss_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(&peer)->sin_addr, text, sizeof text);
  } else if (peer.ss_family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(&peer)->sin6_addr, text, sizeof text);
  }
  return text;
}
}  // namespace

size_t Broker::DrainMonitor(zmq::socket_t& monitor) {
  size_t n = 0;
  auto forget = [this](int fd) {
    auto it = open_.find(fd);
    if (it == open_.end()) return;
    if (it->second.admitted) {
      --admitted_;
    } else if (auto waiting = unauthenticated_.find(it->second.address); waiting != unauthenticated_.end()) {
      auto& fds = waiting->second;
      fds.erase(std::remove(fds.begin(), fds.end(), fd), fds.end());
      if (fds.empty()) unauthenticated_.erase(waiting);
    }
    open_.erase(it);
  };
  for (;;) {
    auto e = NextMonitorEvent(monitor);
    if (!e) break;
    ++n;
    const int fd = static_cast<int>(e->value);
    if (e->event == ZMQ_EVENT_ACCEPTED) {
      ++connections_;
      forget(fd);  // a descriptor reused before its disconnect was read
      std::string address = PeerAddress(fd);
      auto& waiting = unauthenticated_[address];
      waiting.push_back(fd);
      open_[fd] = {address, false};
      if (options_.max_unauthenticated > 0 && waiting.size() > options_.max_unauthenticated) {
        // Closed under ZeroMQ's feet: it sees the connection end and cleans up.
        ::shutdown(fd, SHUT_RDWR);
        ++counters_.unauthenticated_closed;
        rejected_log_->Warn("unauthenticated " + address, WallClockMs(),
                            "closed a connection from " + (address.empty() ? std::string("a local peer") : address) +
                                ": " + std::to_string(waiting.size() - 1) +
                                " connections from it are still in their handshake (at most " +
                                std::to_string(options_.max_unauthenticated) + ", each for " +
                                std::to_string(options_.handshake_ms) + " ms)");
      }
    } else if (e->event == ZMQ_EVENT_DISCONNECTED) {
      if (connections_ > 0) --connections_;
      forget(fd);
      directed_backlog_.Forget(fd);
      subscriber_backlog_.Forget(fd);
    }
  }
  return n;
}

void Broker::Cut(int fd, const std::string& who, const std::string& why) {
  // What the monitor queued first: a descriptor closed and reused is not cut by mistake.
  for (auto& monitor : monitors_) DrainMonitor(monitor);
  if (!open_.count(fd)) return;
  ::shutdown(fd, SHUT_RDWR);
  directed_backlog_.Forget(fd);
  subscriber_backlog_.Forget(fd);
  rejected_log_->Warn(who, WallClockMs(), "cut off " + who + ": " + why);
}

void Broker::Charge(const std::string& pipe, size_t bytes) {
  const int fd = directed_backlog_.Charge(pipe, bytes);
  if (fd < 0) return;
  auto claim = claims_.find(pipe);
  const std::string who = claim == claims_.end() ? "a connection" : "\"" + claim->second.address + "\"";
  ++counters_.slow_cut;
  Cut(fd, who,
      std::to_string(directed_backlog_.Queued(pipe) >> 10) + " KiB queued for it and not read (at most " +
          std::to_string(options_.max_queued_bytes >> 10) + " KiB, --max-queued)");
  Unclaim(pipe);
}

std::string Broker::Admit(const ZapRequest& request) {
  // ZeroMQ queued the connection's "accepted" before asking us: count it first.
  for (auto& monitor : monitors_) DrainMonitor(monitor);
  if (request.domain == kZapDomains[2] && !request.key.empty()) {
    auto bar = barred_.find(request.key);
    const uint64_t now = WallClockMs();
    if (bar != barred_.end() && now < bar->second.until_ms) {
      return "this key may not subscribe for another " + std::to_string((bar->second.until_ms - now + 999) / 1000) +
             " s: a connection of it sent too many subscriptions (--max-subscriptions)";
    }
  }
  if (options_.max_connections > 0 && admitted_ >= options_.max_connections) {
    return "the connection limit is reached (--max-connections); serving the ones open";
  }
  ++admitted_;
  auto waiting = unauthenticated_.find(request.address);
  if (waiting == unauthenticated_.end()) return "";  // not seen (yet): counted, never forgotten early
  open_[waiting->second.front()].admitted = true;
  waiting->second.pop_front();
  if (waiting->second.empty()) unauthenticated_.erase(waiting);
  return "";
}

void Broker::Bar(const std::string& key) {
  if (key.empty()) return;  // keyless: loopback peers share an address, none is barred
  constexpr uint64_t kFirstMs = 1000, kLongestMs = 300'000, kForgivenMs = 600'000;
  const uint64_t now = WallClockMs();
  Barred& bar = barred_[key];
  if (bar.next_ms == 0 || now - bar.last_ms > kForgivenMs) bar.next_ms = kFirstMs;
  bar.until_ms = now + bar.next_ms;
  bar.next_ms = std::min(bar.next_ms * 2, kLongestMs);
  bar.last_ms = now;
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
// Claims and trust.

bool Broker::Trusted(const Peer& peer) const {
  if (!secure_) return true;
  const Certificate* cert = trust_->Find(peer.key);
  return cert && cert->name == peer.name && cert->role == RoleName(peer.role);
}

void Broker::ReloadTrust() {
  if (!rebind_events_out_.empty()) RebindEventsOut();
  std::vector<std::string> removed, problems;
  auto changed = trust_->Refresh(&removed, &problems);
  const uint64_t now = WallClockMs();
  if (!changed.ok()) {
    rejected_log_->Warn("trust", now, changed.status().message() + "; the certificates read before stay in force");
    return;
  }
  for (const auto& p : problems) options_.logger->warn("trust: {}", p);
  if (!*changed) return;
  options_.logger->info("trust directory {} changed: {} certificates admitted", options_.trust_dir, trust_->size());
  if (removed.empty()) return;
  std::unordered_set<std::string> gone(removed.begin(), removed.end());
  std::vector<std::string> cut;
  for (const auto& [pipe, claim] : claims_) {
    if (gone.count(claim.peer.key)) cut.push_back(pipe);
  }
  for (const auto& pipe : cut) {
    options_.logger->warn("certificate \"{}\" ({}) was removed from the trust directory: {} is refused from now on",
                          claims_[pipe].peer.name, RoleName(claims_[pipe].peer.role), claims_[pipe].address);
    Unclaim(pipe);
  }
  for (const auto& key : removed) options_.logger->info("trust: key {} is no longer admitted", key);
  ReopenEventsOut();
}

void Broker::ReopenEventsOut() {
  for (const auto& endpoint : events_out_bound_) {
    try {
      xpub_.unbind(endpoint);
    } catch (const zmq::error_t& e) {
      options_.logger->warn("cannot close {} to cut off revoked subscribers: {}", endpoint, e.what());
    }
  }
  rebind_events_out_ = events_out_bound_;
  RebindEventsOut();
}

void Broker::RebindEventsOut() {
  // A port (or ipc path) just closed may take a moment to be free again: what does not
  // bind now is tried again on the next trust check (every second), never waited on.
  std::vector<std::string> left;
  for (const auto& endpoint : rebind_events_out_) {
    try {
      BindOwnerOnly(xpub_, endpoint);
    } catch (const zmq::error_t& e) {
      left.push_back(endpoint);
      rejected_log_->Warn("rebind " + endpoint, WallClockMs(),
                          "cannot listen on " + endpoint + " again yet (" + e.what() + "); retrying");
    }
  }
  rebind_events_out_ = std::move(left);
}

void Broker::Refuse(const std::string& pipe, const Peer& peer, wire::ErrorCode code, const std::string& why,
                    const std::string& about) {
  ++counters_.unauthorized;
  std::string who =
      peer.role == Role::kNone ? "connection" : std::string(RoleName(peer.role)) + " \"" + peer.name + "\"";
  rejected_log_->Warn(who, WallClockMs(), "refused " + who + ": " + why);
  ErrorToPipe(pipe, code, why, about);
}

bool Broker::PipeAlive(const std::string& pipe) {
  flatbuffers::FlatBufferBuilder fbb(32);
  std::string probe = codec::Seal(fbb, wire::CreateBrokerHello(fbb));
  try {
    if (!RetryEintr(
            [&] { return router_.send(zmq::buffer(pipe), zmq::send_flags::sndmore | zmq::send_flags::dontwait); })) {
      return true;  // its queue is full: it is there
    }
  } catch (const zmq::error_t& e) {
    if (e.num() == EHOSTUNREACH) return false;
    throw;
  }
  bool child = claims_.count(pipe) && IsBroker(claims_[pipe].address);
  if (child) {
    // A child broker reads [destination][payload][source]: a message for nobody it knows.
    SendFrames(router_, {Buf(std::string(kBrokerAddress)), Buf(probe), Buf(std::string(kBrokerAddress))});
  } else {
    SendFrames(router_, {Buf(std::string(kBrokerAddress)), Buf(probe)});
  }
  return true;
}

void Broker::Unclaim(const std::string& pipe) {
  auto it = claims_.find(pipe);
  if (it == claims_.end()) return;
  if (secure_) {
    auto count = claims_per_key_.find(it->second.peer.key);
    if (count != claims_per_key_.end() && --count->second == 0) claims_per_key_.erase(count);
  }
  auto held = pipes_.find(it->second.address);
  if (held != pipes_.end() && held->second == pipe) pipes_.erase(held);
  if (IsBroker(it->second.address)) table_.ForgetChild(it->second.address);
  if (it->second.proof) proofs_.erase(it->second.address);
  claims_.erase(it);
}

void Broker::HandleClaim(const std::string& pipe, const std::string& address, const Peer& peer, uint64_t epoch) {
  const uint64_t now = WallClockMs();
  if (!ValidAddress(address) || address == kBrokerAddress) {
    return Refuse(pipe, peer, wire::ErrorCode::Malformed,
                  "a BrokerHello must claim an address of 1 to " + std::to_string(kMaxAddressBytes) +
                      " printable characters other than fm-broker",
                  kBrokerAddress);
  }
  if (secure_) {
    if (Status s = MayClaim(peer.role, peer.name, address); !s.ok()) {
      return Refuse(pipe, peer, wire::ErrorCode::Unauthorized, s.message(), address);
    }
  }
  if (address == kSchedulerAddress) {
    // Leaderships elected through etcd (DESIGN.md "A standby scheduler"): the greatest
    // epoch is routed to, older ones fenced. Bounded: an epoch is an etcd revision, and
    // an older one is refused only while the newer one's holder is there or was in the
    // last 10 s (no lockout outlives a bad claim; a scheduler without --etcd is epoch 0).
    constexpr uint64_t kRememberMs = 10'000;
    if (epoch >= kMaxLeadershipEpoch) {
      return Refuse(pipe, peer, wire::ErrorCode::Malformed,
                    "epoch " + std::to_string(epoch) + " is beyond any etcd revision", address);
    }
    auto holder = pipes_.find(address);
    const bool held = holder != pipes_.end() && holder->second != pipe;
    if (epoch < scheduler_epoch_ && !held && now > scheduler_epoch_seen_ms_ + kRememberMs) {
      options_.logger->info("fm-scheduler: epoch {} has been gone for {} s: forgotten", scheduler_epoch_,
                            kRememberMs / 1000);
      scheduler_epoch_ = 0;
    }
    if (epoch < scheduler_epoch_) {
      return Refuse(pipe, peer, wire::ErrorCode::Fenced,
                    "fenced: fm-scheduler is led by epoch " + std::to_string(scheduler_epoch_) +
                        " and this scheduler's is " + std::to_string(epoch) + " (a newer leader was elected)",
                    address);
    }
    if (epoch > scheduler_epoch_) {
      // Taking over from a live holder: only a scheduler elected through etcd is replaced
      // so (never one on its own), and without CURVE only by a claim of the same kind.
      if (held && claims_[holder->second].epoch == 0 && !secure_) {
        return Refuse(pipe, peer, wire::ErrorCode::Unauthorized,
                      "address \"fm-scheduler\" is held by a scheduler without --etcd that is still connected",
                      address);
      }
      options_.logger->info("fm-scheduler: epoch {} leads from now on (was {})", epoch, scheduler_epoch_);
      scheduler_epoch_ = epoch;
      if (held) {
        // Told, and no longer routed to, whether or not its connection is still open.
        const std::string old = holder->second;
        ErrorToPipe(old, wire::ErrorCode::Fenced,
                    "fenced: epoch " + std::to_string(epoch) + " leads fm-scheduler from now on", address);
        Unclaim(old);
      }
    }
    scheduler_epoch_seen_ms_ = now;
  }
  auto mine = claims_.find(pipe);
  if (mine != claims_.end() && mine->second.address == address) {
    mine->second.seen_ms = now;
    if (!IsBroker(address) && table_.SeenLocal(address, now)) announce_now_ = true;
    return;
  }
  auto held = pipes_.find(address);
  if (held != pipes_.end() && held->second != pipe) {
    if (PipeAlive(held->second)) {
      const Claim& holder = claims_[held->second];
      return Refuse(pipe, peer, wire::ErrorCode::Unauthorized,
                    "address \"" + address + "\" is held by another connection that is still open (" +
                        (holder.peer.role == Role::kNone ? std::string("without a certificate")
                                                         : "certificate \"" + holder.peer.name + "\"") +
                        "); is a second process running with the same identity?",
                    address);
    }
    options_.logger->info("{} reconnected: its new connection takes over the address", address);
    Unclaim(held->second);
  }
  if (mine != claims_.end()) Unclaim(pipe);
  if (secure_ && ++claims_per_key_[peer.key] > kMaxClaimsPerKey) {
    --claims_per_key_[peer.key];
    return Refuse(pipe, peer, wire::ErrorCode::Unauthorized,
                  "certificate \"" + peer.name + "\" already holds " + std::to_string(kMaxClaimsPerKey) +
                      " addresses on open connections",
                  address);
  }
  claims_[pipe] = Claim{address, peer, now, address == kSchedulerAddress ? epoch : 0};
  pipes_[address] = pipe;
  if (!IsBroker(address) && table_.SeenLocal(address, now)) announce_now_ = true;
}

void Broker::Sweep() {
  // A connection that went away unnoticed keeps its claim until a message for it fails;
  // probe the quiet ones, so that the table stays bounded by the open connections.
  const uint64_t now = WallClockMs();
  if (now < last_sweep_ms_ + options_.route_ttl_ms / 2) return;
  last_sweep_ms_ = now;
  for (auto it = barred_.begin(); it != barred_.end();) {
    it = now > it->second.last_ms + 600'000 ? barred_.erase(it) : std::next(it);
  }
  std::vector<std::string> gone;
  for (auto& [pipe, claim] : claims_) {
    if (now < claim.seen_ms + options_.route_ttl_ms / 2) continue;
    if (!PipeAlive(pipe)) {
      gone.push_back(pipe);
      continue;
    }
    claim.seen_ms = now;
    if (!IsBroker(claim.address)) table_.SeenLocal(claim.address, now);
  }
  for (const auto& pipe : gone) Unclaim(pipe);
  // The root forgets proofs too old to count: a live peer renews its own every minute.
  for (auto it = proven_.begin(); it != proven_.end();) {
    it = now > it->second.proof.time_ms + kClaimProofValidMs ? proven_.erase(it) : std::next(it);
  }
}

bool Broker::LearnRoute(const std::string& peer, const std::string& child, uint64_t now_ms) {
  if (table_.Learn(peer, child, now_ms)) return true;
  // Another child holds a fresh route to it: only a child that is gone gives it up.
  RoutingTable::Hop hop = table_.NextHop(peer, false);
  if (hop.kind != RoutingTable::Hop::kChild || hop.child == child) return false;
  auto held = pipes_.find(hop.child);
  if (held != pipes_.end() && PipeAlive(held->second)) return false;
  table_.ForgetChild(hop.child);
  if (held != pipes_.end()) Unclaim(held->second);
  return table_.Learn(peer, child, now_ms);
}

// ---------------------------------------------------------------------------
// Directed messages.

bool Broker::DeliverLocal(const std::string& destination, const std::string& source, zmq::message_t& payload,
                          const std::string& seal) {
  auto held = pipes_.find(destination);
  if (held == pipes_.end()) return false;
  const std::string pipe = held->second;
  try {
    if (!RetryEintr(
            [&] { return router_.send(zmq::buffer(pipe), zmq::send_flags::sndmore | zmq::send_flags::dontwait); })) {
      ++counters_.queue_full;
      ErrorTo(source, wire::ErrorCode::Unreachable,
              "peer \"" + destination + "\" is not accepting messages (queue full)", destination);
      return true;
    }
  } catch (const zmq::error_t& e) {
    if (e.num() != EHOSTUNREACH) throw;
    Unclaim(pipe);  // that connection is gone
    return false;
  }
  SendFrames(router_, {Buf(source), Buf(payload)}, seal);
  ++counters_.routed;
  Charge(pipe, source.size() + payload.size() + seal.size());
  return true;
}

std::string Broker::SealFor(const std::string& destination, const std::string& source, const zmq::message_t& payload) {
  if (!ChecksProofs()) return "";
  auto proven = proven_.find(destination);
  if (proven == proven_.end() || !proven->second.proof.seals) return "";
  Proven& p = proven->second;
  p.down_last = NextSealCounter(p.down_last);
  return MakeSeal(p.key, SealWay::kDown, p.down_last, destination, source,
                  std::string_view(static_cast<const char*>(payload.data()), payload.size()));
}

void Broker::Route(const std::string& destination, const std::string& source, zmq::message_t& payload, bool from_parent,
                   const std::string& seal) {
  // A node broker with CURVE: what a local peer or a child sent goes up, sealed by its
  // sender if it seals; only the root delivers it, sealed for its destination if that
  // one seals. So no node broker sends a peer behind it anything the root did not.
  const bool up_only = NeedsProof() && !from_parent;
  if (!up_only && DeliverLocal(destination, source, payload, seal)) return;
  RoutingTable::Hop hop =
      up_only ? RoutingTable::Hop{RoutingTable::Hop::kUp, ""} : table_.NextHop(destination, from_parent);
  if (hop.kind == RoutingTable::Hop::kChild) {
    auto child = pipes_.find(hop.child);
    try {
      if (child == pipes_.end()) throw zmq::error_t();
      // Never blocks: a child broker that stops reading only loses its own messages.
      if (!RetryEintr([&] {
            return router_.send(zmq::buffer(child->second), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
          })) {
        ++counters_.queue_full;
        if (source != kBrokerAddress) {
          ErrorTo(source, wire::ErrorCode::Unreachable,
                  "broker " + hop.child + " toward \"" + destination + "\" is not accepting messages (queue full)",
                  destination);
        }
        return;
      }
      const std::string down = ChecksProofs() ? SealFor(destination, source, payload) : seal;
      SendFrames(router_, {Buf(destination), Buf(payload), Buf(source)}, down);
      ++counters_.relayed_down;
      Charge(child->second, destination.size() + payload.size() + source.size() + down.size());
      return;
    } catch (const zmq::error_t&) {
      table_.ForgetChild(hop.child);  // that child is gone: on up, or unreachable
      hop = table_.NextHop(destination, from_parent);
    }
  }
  if (hop.kind == RoutingTable::Hop::kUp) {
    SendFrames(up_dealer_, {Buf(destination), Buf(payload), Buf(source)}, seal);
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
      auto child = pipes_.find(hop.child);
      if (child == pipes_.end()) return;
      if (!RetryEintr([&] {
            return router_.send(zmq::buffer(child->second), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
          })) {
        return;  // that child's queue is full: the error is dropped, not waited on
      }
      const std::string down = SealFor(source, kBrokerAddress, payload);
      SendFrames(router_, {Buf(source), Buf(payload), Buf(std::string(kBrokerAddress))}, down);
      Charge(child->second, source.size() + payload.size() + std::string_view(kBrokerAddress).size() + down.size());
    } else if (hop.kind == RoutingTable::Hop::kUp) {
      SendFrames(up_dealer_, {Buf(source), Buf(payload), Buf(std::string(kBrokerAddress))});
    }
  } catch (const zmq::error_t&) {
    // The sender left meanwhile; nobody to tell.
  }
}

void Broker::ErrorToPipe(const std::string& pipe, wire::ErrorCode code, const std::string& message,
                         const std::string& about) {
  SendToPipe(pipe, codec::EncodeError(code, message, about));
}

void Broker::SendToPipe(const std::string& pipe, const std::string& payload) {
  try {
    if (!RetryEintr(
            [&] { return router_.send(zmq::buffer(pipe), zmq::send_flags::sndmore | zmq::send_flags::dontwait); })) {
      return;
    }
    SendFrames(router_, {Buf(std::string(kBrokerAddress)), Buf(payload)});
  } catch (const zmq::error_t&) {
    return;  // That connection is gone; nobody to tell.
  }
  Charge(pipe, payload.size());
}

void Broker::HandleForBroker(const std::string& pipe, const std::string& source, const zmq::message_t& frame,
                             bool local_peer, const Peer& peer) {
  std::string storage;
  std::string_view payload =
      codec::AlignedBytes(std::string_view(static_cast<const char*>(frame.data()), frame.size()), &storage);
  auto envelope = codec::Decode(payload.data(), payload.size());
  const std::string who = source.empty() ? "an unclaimed connection" : source;
  if (!envelope.ok()) {
    ++counters_.malformed;
    rejected_log_->Warn(who, WallClockMs(),
                        "malformed message from " + who + " to the broker: " + envelope.status().message());
    if (local_peer) {
      ErrorToPipe(pipe, wire::ErrorCode::Malformed, envelope.status().message(), kBrokerAddress);
    } else {
      ErrorTo(source, wire::ErrorCode::Malformed, envelope.status().message(), kBrokerAddress);
    }
    return;
  }
  const wire::Envelope& env = **envelope;
  if (env.body_type() == wire::Body::BrokerHello) {
    if (!local_peer) return;
    const wire::BrokerHello* hello = env.body_as_BrokerHello();
    const std::string address = codec::Str(hello->address());
    auto before = claims_.find(pipe);
    const bool had = before != claims_.end() && before->second.address == address;
    HandleClaim(pipe, address, peer, hello->epoch());
    auto claim = claims_.find(pipe);
    if (!NeedsProof() || claim == claims_.end() || claim->second.address != address) return;
    if (!had) {
      // Every claimer learns the root's key (a node broker below us passes it on); a
      // peer proves its claim with it before anything it sends goes up.
      flatbuffers::FlatBufferBuilder fbb(128);
      SendToPipe(pipe, codec::Seal(fbb, wire::CreateProveClaim(fbb, fbb.CreateString(root_key_))));
    }
    if (hello->proof() && !IsBroker(address)) TakeProof(claim->second, FromWire(hello->proof()));
    return;
  }
  if (env.body_type() == wire::Body::Error) return;
  if (source.empty()) {
    return ErrorToPipe(pipe, wire::ErrorCode::Unclaimed, "this connection has claimed no address: send BrokerHello",
                       kBrokerAddress);
  }
  if (env.body_type() == wire::Body::RouteAnnouncement && IsBroker(source) && local_peer) {
    const uint64_t now = WallClockMs();
    table_.SeenChild(source, now);
    const wire::RouteAnnouncement* announcement = env.body_as_RouteAnnouncement();
    std::unordered_map<std::string, ClaimProof> proofs;
    if (announcement->proofs()) {
      for (const auto* p : *announcement->proofs()) {
        ClaimProof proof = FromWire(p);
        proofs[proof.address] = std::move(proof);
      }
    }
    bool proofs_came = false;
    if (const auto* peers = announcement->peers()) {
      size_t refused = 0;
      std::string why;
      for (const auto* p : *peers) {
        // A child never announces the scheduler (it attaches to the root), us, a peer
        // connected here, or one that lives behind another child. With CURVE the root
        // takes only peers whose holder proved the claim (runtime/claim_proof.h).
        const std::string announced = p->str();
        if (announced == kSchedulerAddress || announced == kBrokerAddress || !ValidAddress(announced) ||
            pipes_.count(announced)) {
          ++refused;
          continue;
        }
        if (ChecksProofs()) {
          auto proof = proofs.find(announced);
          Status proven = ProvenBehind(announced, source, proof == proofs.end() ? nullptr : &proof->second, now);
          if (!proven.ok()) {
            ++refused;
            if (why.empty()) why = "\"" + announced + "\": " + proven.message();
            continue;
          }
          table_.Assign(announced, source, now);
          continue;
        }
        if (!LearnRoute(announced, source, now)) ++refused;
      }
      if (refused > 0) {
        ++counters_.unauthorized;
        rejected_log_->Warn("announce " + source, now,
                            "broker " + source + " announced " + std::to_string(refused) +
                                " peers it may not route to (kept where they are)" + (why.empty() ? "" : "; " + why));
      }
    }
    if (NeedsProof()) {
      // A node broker between: the proofs go on up, before the messages that follow.
      for (auto& [address, proof] : proofs) {
        auto known = proofs_.find(address);
        if (known == proofs_.end() || known->second.time_ms < proof.time_ms) {
          proofs_[address] = std::move(proof);
          proofs_came = true;
        }
      }
      if (proofs_came) SendAnnouncement();
    }
    announce_now_ |= has_upstream_;  // our parent learns them through us
    return;
  }
  ErrorTo(source, wire::ErrorCode::Unsupported,
          std::string("the broker does not take ") + wire::EnumNameBody(env.body_type()) + " messages", kBrokerAddress);
}

size_t Broker::DrainRouter() {
  size_t n = 0;
  while (n < kBudget) {
    std::vector<zmq::message_t> frames;
    if (!TryReceive(router_, &frames)) break;
    ++n;
    const std::string pipe = frames[0].to_string();
    directed_backlog_.Saw(pipe, zmq_msg_get(frames[0].handle(), ZMQ_SRCFD));
    const Peer peer = secure_ ? PeerOf(frames.back()) : Peer{};
    if (!Trusted(peer)) {
      Refuse(pipe, peer, wire::ErrorCode::Unauthorized,
             "certificate \"" + peer.name + "\" is no longer in the broker's trust directory", "");
      Unclaim(pipe);
      continue;
    }
    auto claim = claims_.find(pipe);
    if (claim != claims_.end() && claim->second.peer.key != peer.key) {
      // A routing id can be chosen by the peer: a connection that presents a dead one's
      // id inherits nothing. The claim goes; this connection claims anew.
      Unclaim(pipe);
      claim = claims_.end();
    }
    const std::string source = claim == claims_.end() ? std::string() : claim->second.address;
    if (claim != claims_.end()) claim->second.seen_ms = WallClockMs();
    if (!source.empty() && IsBroker(source) && (frames.size() == 4 || frames.size() == 5)) {
      // Relayed up from a child broker: [child][destination][payload][source][seal?].
      std::string destination = frames[1].to_string(), from = frames[3].to_string();
      std::string seal = frames.size() == 5 ? frames[4].to_string() : std::string();
      if (!ValidAddress(from) || !ValidAddress(destination) || frames[2].size() > codec::kMaxMessageBytes ||
          (frames.size() == 5 && seal.size() != kSealBytes)) {
        ++counters_.malformed;
        rejected_log_->Warn(source, WallClockMs(), "malformed relay from " + source);
        continue;
      }
      if (from == kBrokerAddress) {
        // A child broker's own Error (unreachable, queue full) on its way to the sender.
        std::string storage;
        std::string_view bytes = codec::AlignedBytes(frames[2].to_string_view(), &storage);
        auto env = codec::Decode(bytes.data(), bytes.size());
        if (env.ok() && (*env)->body_type() == wire::Body::Error && destination != kBrokerAddress) {
          Route(destination, kBrokerAddress, frames[2], false);
        }
        continue;
      }
      table_.SeenChild(source, WallClockMs());
      Status behind = Status::Ok();
      if (from == kSchedulerAddress || pipes_.count(from)) {
        behind = Status::Invalid("it is not behind it");
      } else if (ChecksProofs()) {
        // Only a peer that proved its claim to us is behind a child (claim_proof.h).
        behind = ProvenBehind(from, source, nullptr, WallClockMs());
        if (behind.ok()) table_.Assign(from, source, WallClockMs());
      } else if (!LearnRoute(from, source, WallClockMs())) {
        behind = Status::Invalid("it is not behind it");
      }
      if (behind.ok() && ChecksProofs()) {
        // A peer that seals: only what it sealed itself, each seal once (runtime/seal.h).
        Proven& proven = proven_[from];
        uint64_t counter = 0;
        if (proven.proof.seals) {
          if (seal.empty()) {
            behind = Status::Invalid("it seals what it sends, and this came without its seal");
          } else if (!OpenSeal(proven.key, SealWay::kUp, seal, from, destination, frames[2].to_string_view(),
                               &counter)) {
            behind = Status::Invalid("its seal does not match the message: it was forged or altered on the way");
          } else if (counter <= proven.up_last) {
            behind = Status::Invalid("its seal was taken before: a replay");
          } else {
            proven.up_last = counter;
          }
        }
        seal.clear();  // checked here, at the root: nothing further needs it
      }
      if (!behind.ok()) {
        Refuse(pipe, peer, wire::ErrorCode::Unauthorized,
               "broker " + source + " relayed a message from \"" + from + "\": " + behind.message(), destination);
        continue;
      }
      if (destination == kBrokerAddress) {
        HandleForBroker(pipe, from, frames[2], false, peer);
      } else {
        Route(destination, from, frames[2], false, seal);
      }
      continue;
    }
    const std::string who = source.empty() ? "an unclaimed connection" : source;
    if ((frames.size() != 3 && frames.size() != 4) || (frames.size() == 4 && frames[3].size() != kSealBytes)) {
      ++counters_.malformed;
      rejected_log_->Warn(who, WallClockMs(),
                          "malformed message from " + who + ": " + std::to_string(frames.size() - 1) +
                              " frames, expected [destination][payload] or [destination][payload][seal]");
      ErrorToPipe(pipe, wire::ErrorCode::Malformed,
                  "expected 2 frames [destination][payload] (or 3, sealed), got " + std::to_string(frames.size() - 1),
                  "");
      continue;
    }
    // A sealed peer's seal goes up with its message; the root checks it (for a peer of
    // its own, CURVE already says who sent it).
    const std::string seal = frames.size() == 4 && NeedsProof() ? frames[3].to_string() : std::string();
    const std::string destination = frames[1].to_string();
    if (frames[2].size() > codec::kMaxMessageBytes) {
      ++counters_.oversized;
      rejected_log_->Warn(
          who, WallClockMs(),
          "oversized message from " + who + " to " + destination + ": " + std::to_string(frames[2].size()) + " bytes");
      ErrorToPipe(pipe, wire::ErrorCode::Oversized,
                  "message of " + std::to_string(frames[2].size()) + " bytes exceeds the limit of " +
                      std::to_string(codec::kMaxMessageBytes),
                  destination);
      continue;
    }
    if (destination == kBrokerAddress) {
      HandleForBroker(pipe, source, frames[2], true, peer);
      continue;
    }
    if (source.empty()) {
      ErrorToPipe(
          pipe, wire::ErrorCode::Unclaimed,
          "this connection has claimed no address: send BrokerHello first (message for " + destination + " dropped)",
          destination);
      continue;
    }
    if (!IsBroker(source)) table_.SeenLocal(source, WallClockMs());
    if (NeedsProof() && !IsBroker(source) && !claim->second.proof && !pipes_.count(destination)) {
      // Not proven to the root yet (ProveClaim asked for it): it waits here, bounded, and
      // goes up right behind the proof.
      Claim& waiting = claim->second;
      if (waiting.held.size() >= kMaxHeldMessages || waiting.held_bytes + frames[2].size() > kMaxHeldBytes) {
        ErrorToPipe(pipe, wire::ErrorCode::Unauthorized,
                    "address \"" + source +
                        "\" is not proven to the root broker yet (send BrokerHello with a proof, "
                        "as ProveClaim asked); message for " +
                        destination + " dropped",
                    destination);
        continue;
      }
      waiting.held_bytes += frames[2].size();
      waiting.held.push_back({destination, std::move(frames[2]), seal});
      continue;
    }
    Route(destination, source, frames[2], false, seal);
  }
  return n;
}

size_t Broker::DrainUpstream() {
  size_t n = 0;
  while (n < kBudget) {
    std::vector<zmq::message_t> frames;
    if (!TryReceive(up_dealer_, &frames)) break;
    ++n;
    if (frames.size() == 2 && frames[0].to_string() == kBrokerAddress) {
      // The parent itself: a probe of our claim, or an Error about it.
      zmq::message_t body = Aligned(std::move(frames[1]));
      auto env = codec::Decode(body.data(), body.size());
      if (env.ok() && (*env)->body_type() == wire::Body::ProveClaim) {
        // The parent is a node broker too: the root is who it says.
        root_key_ = codec::Str((*env)->body_as_ProveClaim()->root_key());
      } else if (env.ok() && (*env)->body_type() == wire::Body::Error) {
        const wire::Error* e = (*env)->body_as_Error();
        if (ParseErrorCode(codec::Str(e->code())) == wire::ErrorCode::Unclaimed) {
          SendUpHello();
        } else {
          rejected_log_->Warn("parent", WallClockMs(), "the parent broker refused us: " + codec::Str(e->message()));
        }
      }
      continue;
    }
    if ((frames.size() != 3 && frames.size() != 4) || (frames.size() == 4 && frames[3].size() != kSealBytes)) {
      ++counters_.malformed;
      options_.logger->warn("malformed message from the parent broker: {} frames", frames.size());
      continue;
    }
    if (frames[0].to_string() == kBrokerAddress) continue;  // a probe of our claim
    // From the parent: [destination][payload][source][seal?] (the root's seal, for a peer
    // that seals: passed on as it is).
    Route(frames[0].to_string(), frames[2].to_string(), frames[1], true,
          frames.size() == 4 ? frames[3].to_string() : std::string());
  }
  return n;
}

void Broker::Announce() {
  announce_now_ = false;
  if (!has_upstream_) return;
  SendUpHello();  // claims again after a reconnect; cheap otherwise
  SendAnnouncement();
}

void Broker::SendAnnouncement() {
  flatbuffers::FlatBufferBuilder fbb(1024);
  std::vector<std::string> peers = table_.Reachable();
  std::vector<flatbuffers::Offset<wire::ClaimProof>> proofs;
  if (NeedsProof()) {
    std::unordered_map<std::string, ClaimProof> kept;
    for (const auto& peer : peers) {
      auto it = proofs_.find(peer);
      if (it == proofs_.end()) continue;
      proofs.push_back(ToWire(fbb, it->second));
      kept.insert(std::move(*it));
    }
    proofs_ = std::move(kept);  // of peers no longer reachable through us: gone
  }
  auto announced = codec::ToWire(fbb, peers);
  auto proven = proofs.empty() ? 0 : fbb.CreateVector(proofs);
  std::string payload = codec::Seal(fbb, wire::CreateRouteAnnouncement(fbb, announced, proven));
  SendFrames(up_dealer_, {Buf(std::string(kBrokerAddress)), Buf(payload)});
}

void Broker::TakeProof(Claim& claim, ClaimProof proof) {
  // Checked as far as a node broker can (it cannot open it): its own claim, its own key.
  if (proof.address != claim.address || proof.key != claim.peer.key) return;
  if (claim.proof && proof.time_ms <= claim.proof->time_ms) return;
  const bool first = !claim.proof;
  claim.proof = proof;
  proofs_[claim.address] = std::move(proof);
  if (!first) return;
  // On one connection to the parent, in order: the proof, then what waited for it.
  table_.SeenLocal(claim.address, WallClockMs());
  SendAnnouncement();
  auto held = std::move(claim.held);
  claim.held.clear();
  claim.held_bytes = 0;
  const std::string source = claim.address;
  for (auto& h : held) Route(h.destination, source, h.payload, false, h.seal);
}

Status Broker::ProvenBehind(const std::string& address, const std::string& child, const ClaimProof* proof,
                            uint64_t now_ms) {
  auto it = proven_.find(address);
  if (proof && (it == proven_.end() || !(it->second.proof == *proof))) {
    if (proof->address != address) return Status::Invalid("its proof is for another address");
    if (Status s = CheckClaimProof(*proof, own_.secret_key, now_ms); !s.ok()) return s;
    const Certificate* cert = trust_->Find(proof->key);
    if (!cert) return Status::Invalid("the key that proved it is not in the trust directory");
    auto role = ParseRole(cert->role);
    if (Status s = MayClaim(role ? *role : Role::kNone, cert->name, address); !s.ok()) return s;
    if (it != proven_.end() && it->second.child != child && it->second.proof.time_ms >= proof->time_ms) {
      return Status::Invalid("a newer proof has it behind " + it->second.child);
    }
    Proven next{child, *proof};
    if (proof->seals) {
      auto key = SharedSealKey(own_.secret_key, proof->key);
      if (!key.ok()) return Status::Invalid("no seal key: " + key.status().message());
      next.key = *key;
      if (it != proven_.end() && it->second.proof.key == proof->key) {
        // A renewed proof of the same peer: its seals go on counting.
        next.up_last = it->second.up_last;
        next.down_last = it->second.down_last;
        next.events_last = it->second.events_last;
      } else {
        // New here (or this broker restarted): nothing sealed before the proof counts.
        next.up_last = next.events_last = FirstSealFloor(proof->time_ms);
      }
    }
    proven_[address] = std::move(next);
    return Status::Ok();
  }
  if (it == proven_.end()) return Status::Invalid("no proof of it came from its holder");
  if (it->second.child != child) return Status::Invalid("it was proven behind " + it->second.child);
  if (now_ms > it->second.proof.time_ms + kClaimProofValidMs) return Status::Invalid("its proof is too old");
  return Status::Ok();
}

// ---------------------------------------------------------------------------
// Events.

namespace {
// Moves whole multipart messages from one socket to another.
size_t Forward(zmq::socket_t& from, zmq::socket_t& to, uint64_t* counted, uint64_t* bytes) {
  size_t n = 0;
  while (n < kBudget) {
    zmq::message_t frame;
    if (!RetryEintr([&] { return from.recv(frame, zmq::recv_flags::dontwait); })) break;
    bool more = frame.more();
    *bytes += frame.size();
    RetryEintr([&] { return to.send(frame, more ? zmq::send_flags::sndmore : zmq::send_flags::none); });
    if (!more) {
      ++n;
      if (counted) ++*counted;
    }
  }
  return n;
}
}  // namespace

void Broker::Published(uint64_t bytes) {
  for (int fd : subscriber_backlog_.Published(bytes)) {
    ++counters_.slow_cut;
    Cut(fd, "subscriber",
        "it read nothing while over " + std::to_string(options_.max_queued_bytes >> 10) +
            " KiB of events were published (--max-queued)");
  }
}

size_t Broker::DrainEvents() {
  // Local publishers: at the root straight to local subscribers; at a node up the tree,
  // from where they come back down once, to everyone.
  zmq::socket_t& to = has_upstream_ ? up_xpub_ : xpub_;
  uint64_t bytes = 0;
  if (!secure_) {
    size_t n = Forward(xsub_, to, &counters_.events, &bytes);
    if (!has_upstream_) Published(bytes);
    return n;
  }
  size_t n = 0;
  while (n < kBudget) {
    std::vector<zmq::message_t> frames;
    if (!TryReceive(xsub_, &frames)) break;
    ++n;
    const Peer peer = PeerOf(frames.back());
    Status allowed = Status::Ok();
    if (!Trusted(peer)) {
      allowed = Status::Invalid("certificate \"" + peer.name + "\" is no longer in the broker's trust directory");
    } else if (frames.size() != 2 && (frames.size() != 3 || frames[2].size() != kSealBytes)) {
      allowed = Status::Invalid("a published message is [topic][payload] (or [topic][payload][seal]), not " +
                                std::to_string(frames.size()) + " frames");
    } else {
      allowed = MayPublish(peer.role, peer.name, frames[0].to_string_view(), frames[1].to_string_view());
      if (allowed.ok() && peer.role == Role::kBroker && ChecksProofs()) {
        // A child broker passes on its subtree's workers' announcements: only of a worker
        // that proved its address behind that very child.
        auto worker = AnnouncedWorker(frames[0].to_string_view(), frames[1].to_string_view());
        auto proven = worker.ok() ? proven_.find(worker->second) : proven_.end();
        if (!worker.ok()) {
          allowed = worker.status();
        } else if (proven == proven_.end() || PrincipalOf(proven->second.child).name != peer.name) {
          allowed =
              Status::Invalid("broker \"" + peer.name + "\" passed on an announcement of worker \"" + worker->first +
                              "\" at " + worker->second + ", which did not prove that address behind it");
        } else if (proven->second.proof.seals) {
          // A sealing worker's own words only (runtime/seal.h), each once.
          uint64_t counter = 0;
          if (frames.size() != 3 ||
              !OpenSeal(proven->second.key, SealWay::kEvent, frames[2].to_string_view(), worker->second,
                        frames[0].to_string_view(), frames[1].to_string_view(), &counter) ||
              counter <= proven->second.events_last) {
            allowed = Status::Invalid("broker \"" + peer.name + "\" passed on an announcement of worker \"" +
                                      worker->first + "\" without its valid seal (forged, altered or replayed)");
          } else {
            proven->second.events_last = counter;
          }
        }
      }
    }
    if (!allowed.ok()) {
      ++counters_.unauthorized;
      rejected_log_->Warn("publish " + peer.name, WallClockMs(), "dropped a published message: " + allowed.message());
      continue;
    }
    bytes += frames[0].size() + frames[1].size();
    // Up the tree a seal goes along for the root; the root's subscribers get 2 frames.
    const bool seal_on = frames.size() == 3 && has_upstream_;
    RetryEintr([&] { return to.send(frames[0], zmq::send_flags::sndmore); });
    RetryEintr([&] { return to.send(frames[1], seal_on ? zmq::send_flags::sndmore : zmq::send_flags::none); });
    if (seal_on) RetryEintr([&] { return to.send(frames[2], zmq::send_flags::none); });
    ++counters_.events;
  }
  if (!has_upstream_) Published(bytes);
  return n;
}

size_t Broker::ForwardSubscriptions(zmq::socket_t& from, zmq::socket_t& to, bool local) {
  // Local subscribers (events-out, XPUB in manual mode): every subscription comes here
  // with its subscriber's role and name, and applies only if policy.h allows it
  // (a client follows its own tasks alone). Each distinct allowed one goes on up once;
  // unsubscriptions do not (ZeroMQ's own, for a connection that closed, carry no
  // subscriber, so no count could say when a topic has none left): the union only grows,
  // and stays within the few allowed topics. From the parent (not manual): what the
  // tree's subscribers asked, checked as a broker's. A revoked subscriber is cut off by
  // closing its connection (ReopenEventsOut), not here.
  size_t n = 0;
  while (n < kBudget) {
    zmq::message_t frame;
    if (!RetryEintr([&] { return from.recv(frame, zmq::recv_flags::dontwait); })) break;
    ++n;
    const auto* bytes = static_cast<const char*>(frame.data());
    if (frame.size() < 1 || (bytes[0] != 0 && bytes[0] != 1) || frame.more()) continue;
    const bool subscribe = bytes[0] == 1;
    const std::string topic(bytes + 1, frame.size() - 1);
    const Peer peer = local ? PeerOf(frame) : Peer{Role::kBroker, "parent", ""};
    if (local) {
      // ZeroMQ keeps every distinct subscription of a connection, allowed or not, until
      // it closes: a connection that sends too many is cut.
      const int fd = zmq_msg_get(frame.handle(), ZMQ_SRCFD);
      const auto held = subscriber_backlog_.Subscription(fd, subscribe, topic.size());
      const size_t scale = peer.role == Role::kBroker ? 64 : 1;
      const size_t most = options_.max_subscriptions * scale, most_bytes = options_.max_subscription_bytes * scale;
      std::string over;
      if (options_.max_subscriptions > 0 && held.count > most) {
        over = "over " + std::to_string(most) + " subscriptions on one connection (--max-subscriptions)";
      } else if (options_.max_subscription_bytes > 0 && held.bytes > most_bytes) {
        over = "over " + std::to_string(most_bytes) + " bytes of subscriptions on one connection (--max-subscriptions)";
      }
      if (!over.empty()) {
        ++counters_.subscriptions_cut;
        Cut(fd, peer.name.empty() ? std::string("subscriber") : "subscriber \"" + peer.name + "\"", over);
        Bar(peer.key);
        continue;
      }
    }
    if (!subscribe) {
      if (local) {
        xpub_.set(zmq::sockopt::unsubscribe, topic);  // a live subscriber's; else a no-op
      } else {
        RetryEintr([&] { return to.send(frame, zmq::send_flags::none); });
      }
      continue;
    }
    // Keyless: no role on the connection; it may follow everything, as before.
    Status allowed = MaySubscribe(peer.role == Role::kNone ? Role::kOperator : peer.role, peer.name, topic);
    if (!allowed.ok()) {
      ++counters_.subscriptions_refused;
      rejected_log_->Warn("subscribe " + peer.name, WallClockMs(),
                          "refused a subscription" + (peer.name.empty() ? std::string() : " of \"" + peer.name + "\"") +
                              ": " + allowed.message());
      continue;
    }
    if (local) xpub_.set(zmq::sockopt::subscribe, topic);  // for the subscriber that asked
    if (local && !passed_on_.insert(topic).second) continue;
    RetryEintr([&] { return to.send(frame, zmq::send_flags::none); });
  }
  return n;
}

size_t Broker::DrainSubscriptions() { return ForwardSubscriptions(xpub_, has_upstream_ ? up_xsub_ : xsub_, true); }

size_t Broker::DrainUpstreamEvents() {
  uint64_t bytes = 0;
  size_t n = Forward(up_xsub_, xpub_, &counters_.events, &bytes);
  Published(bytes);
  return n;
}

size_t Broker::DrainUpstreamSubscriptions() { return ForwardSubscriptions(up_xpub_, xsub_, false); }

}  // namespace fm::bus

namespace fm::bus {

void Broker::Metrics(ops::Sheet& sheet) const {
  const Counters& c = counters_;
  sheet.Counter("broker_messages_routed_total", "directed messages delivered to a peer of this broker", c.routed);
  sheet.Counter("broker_messages_relayed_total", "directed messages passed to the parent or a child broker",
                c.relayed_up, {{"direction", "up"}});
  sheet.Counter("broker_messages_relayed_total", "", c.relayed_down, {{"direction", "down"}});
  const char* help = "messages refused, by cause";
  for (auto [cause, n] : {std::pair{"unreachable", c.unreachable}, std::pair{"queue_full", c.queue_full},
                          std::pair{"malformed", c.malformed}, std::pair{"oversized", c.oversized},
                          std::pair{"unauthorized", c.unauthorized}, std::pair{"socket_error", c.socket_errors},
                          std::pair{"subscription", c.subscriptions_refused}}) {
    sheet.Counter("broker_messages_refused_total", help, static_cast<double>(n), {{"cause", cause}});
  }
  sheet.Counter("broker_events_total", "events taken in and published", c.events);
  sheet.Gauge("broker_connections", "connections open (directed and bus)", connections_);
  sheet.Gauge("broker_connections_admitted", "connections through their handshake (what --max-connections bounds)",
              admitted_);
  sheet.Counter("broker_unauthenticated_closed_total",
                "connections closed at once: too many still in their handshake from their address",
                c.unauthenticated_closed);
  sheet.Counter("broker_connections_cut_total", "connections cut by the broker, by cause", c.slow_cut,
                {{"cause", "not_reading"}});
  sheet.Counter("broker_connections_cut_total", "", c.subscriptions_cut, {{"cause", "subscriptions"}});
  sheet.Gauge("broker_addresses", "addresses claimed by peers connected to this broker", pipes_.size());
  sheet.Gauge("broker_routes", "routes learnt to peers behind child brokers", table_.routes());
}

}  // namespace fm::bus
