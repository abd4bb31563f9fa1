#include "runtime/bus.h"

#include <arpa/inet.h>
#include <malloc.h>
#include <netinet/in.h>
#include <unistd.h>

#include <charconv>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "runtime/loop.h"
#include "schemas/codec.h"
#include "schemas/vocabulary.h"

// gperftools' C interface (gperftools/malloc_extension_c.h), declared weak: set in a
// daemon that links tcmalloc (fm-scheduler), null in the others.
extern "C" {
__attribute__((weak)) void MallocExtension_ReleaseFreeMemory(void);
__attribute__((weak)) int MallocExtension_GetNumericProperty(const char* property, size_t* value);
__attribute__((weak)) int MallocExtension_SetNumericProperty(const char* property, size_t value);
}

namespace fm::bus {

Result<Endpoints> ParseBrokerUrl(const std::string& url) {
  const std::string ipc = "ipc://";
  if (url.rfind(ipc, 0) == 0) {
    if (url.size() == ipc.size()) return Status::Invalid("broker URL \"" + url + "\" has no path (ipc://PATH)");
    return Endpoints{url, url + ".events-in", url + ".events-out", true};
  }
  const std::string scheme = "tcp://";
  if (url.rfind(scheme, 0) != 0) {
    return Status::Invalid("broker URL \"" + url + "\" must look like tcp://HOST:PORT or ipc://PATH");
  }
  size_t colon = url.rfind(':');
  if (colon == std::string::npos || colon < scheme.size()) {
    return Status::Invalid("broker URL \"" + url + "\" has no port (tcp://HOST:PORT)");
  }
  std::string host = url.substr(scheme.size(), colon - scheme.size());
  // ZeroMQ reads "SOURCE;HOST" and "IFACE" forms as well; a broker URL is a host and a port.
  if (host.find_first_of(";/ ") != std::string::npos) {
    return Status::Invalid("broker URL \"" + url + "\": the host must be a name or an address (no ';', '/' or space)");
  }
  std::string port_text = url.substr(colon + 1);
  unsigned port = 0;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (host.empty() || ec != std::errc() || end != port_text.data() + port_text.size() || port == 0 ||
      port + 2 > 65535) {
    return Status::Invalid("broker URL \"" + url +
                           "\": need a host and a port from 1 to 65533 (PORT+1 and "
                           "PORT+2 carry the event bus)");
  }
  std::string base = scheme + host + ":";
  bool loopback = host.rfind("127.", 0) == 0 || host == "localhost" || host == "[::1]" || host == "::1" || host == "lo";
  return Endpoints{url, base + std::to_string(port + 1), base + std::to_string(port + 2), loopback};
}

bool IsLoopbackEndpoint(const std::string& bound) {
  if (bound.rfind("ipc://", 0) == 0 || bound.rfind("inproc://", 0) == 0) return true;
  const std::string scheme = "tcp://";
  if (bound.rfind(scheme, 0) != 0) return false;
  size_t colon = bound.rfind(':');
  if (colon == std::string::npos || colon <= scheme.size()) return false;
  std::string host = bound.substr(scheme.size(), colon - scheme.size());
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  in_addr v4{};
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  if (inet_pton(AF_INET6, host.c_str(), &v6) == 1) {
    if (IN6_IS_ADDR_LOOPBACK(&v6)) return true;
    return IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127;
  }
  return false;  // not an address: never taken for loopback
}

Result<Security> LoadSecurity(const std::string& cert, const std::string& broker_cert, const char* own_role,
                              const std::string& root_cert) {
  Security security;
  if (cert.empty() && broker_cert.empty()) {
    if (!root_cert.empty()) return Status::Invalid("--root-cert needs --cert and --broker-cert");
    return security;
  }
  if (cert.empty()) return Status::Invalid("--broker-cert needs --cert (this process's own certificate)");
  if (broker_cert.empty()) return Status::Invalid("--cert needs --broker-cert (the broker's public certificate)");
  auto own = LoadCertificate(cert, true);
  if (!own.ok()) return Status::Invalid("--cert: " + own.status().message());
  if (own_role && own->role != own_role) {
    return Status::Invalid("--cert: certificate " + cert + " has role " + own->role + "; this program needs role " +
                           own_role);
  }
  auto broker = LoadCertificate(broker_cert, false);
  if (!broker.ok()) return Status::Invalid("--broker-cert: " + broker.status().message());
  security.own = std::move(*own);
  security.broker_key = broker->public_key;
  if (!root_cert.empty()) {
    auto root = LoadCertificate(root_cert, false);
    if (!root.ok()) return Status::Invalid("--root-cert: " + root.status().message());
    if (root->role != "broker") return Status::Invalid("--root-cert: " + root_cert + " is no broker's certificate");
    security.root_key = root->public_key;
  }
  return security;
}

void SecureClientSocket(zmq::socket_t& socket, const Security& security) {
  if (!security.on()) return;
  socket.set(zmq::sockopt::curve_serverkey, security.broker_key);
  socket.set(zmq::sockopt::curve_publickey, security.own.public_key);
  socket.set(zmq::sockopt::curve_secretkey, security.own.secret_key);
}

std::string DefaultBrokerUrl() {
  const char* env = std::getenv("FM_BROKER");
  return env && *env ? env : kDefaultBroker;
}

std::string UniqueAddress(const std::string& prefix) {
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  std::random_device rd;
  char suffix[17];
  snprintf(suffix, sizeof suffix, "%08x", rd());
  return prefix + "/" + host + "/" + std::to_string(getpid()) + "/" + suffix;
}

Client::Client(zmq::context_t& context, const Endpoints& endpoints, const std::string& address, bool publish,
               bool subscribe, const Security& security, uint64_t epoch)
    : address_(address),
      epoch_(epoch),
      broker_url_(endpoints.router),
      security_(security),
      dealer_(context, zmq::socket_type::dealer),
      endpoints_(endpoints) {
  if (security_.sealed()) {
    // Behind node brokers, with the root pinned: every claim proof is for it, and what
    // goes to or comes from anyone but the local broker is sealed (runtime/seal.h).
    root_key_ = security_.root_key;
    if (auto key = SharedSealKey(security_.own.secret_key, root_key_); key.ok()) seal_key_ = *key;
  }
  // No routing id: the broker's ROUTER gives every connection a fresh one, and the
  // address is claimed on it (a stale or hostile connection can never inherit it).
  dealer_.set(zmq::sockopt::linger, 1000);
  dealer_.set(zmq::sockopt::sndhwm, kDirectedQueue);
  dealer_.set(zmq::sockopt::rcvhwm, kDirectedQueue);
  dealer_.set(zmq::sockopt::reconnect_ivl, 100);
  dealer_.set(zmq::sockopt::reconnect_ivl_max, 2000);
  dealer_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(codec::kMaxMessageBytes * 2));
  dealer_.set(zmq::sockopt::heartbeat_ivl, 2000);
  dealer_.set(zmq::sockopt::heartbeat_timeout, 15000);
  SecureClientSocket(dealer_, security_);
  constexpr int kHandshakeEvents = ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                                   ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                                   ZMQ_EVENT_DISCONNECTED;
  MonitorSocket(context, dealer_, kHandshakeEvents, &monitor_);
  dealer_.connect(endpoints.router);
  Hello();  // the claim goes first on the connection
  if (publish) {
    pub_ = zmq::socket_t(context, zmq::socket_type::pub);
    pub_.set(zmq::sockopt::linger, 1000);
    pub_.set(zmq::sockopt::sndhwm, kEventQueue);
    SecureClientSocket(pub_, security_);
    pub_.connect(endpoints.events_in);
  }
  if (subscribe) {
    sub_ = zmq::socket_t(context, zmq::socket_type::sub);
    sub_.set(zmq::sockopt::rcvhwm, kEventQueue);
    sub_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(codec::kMaxMessageBytes * 2));
    SecureClientSocket(sub_, security_);
    MonitorSocket(context, sub_, kHandshakeEvents, &sub_monitor_);
    sub_.connect(endpoints.events_out);
  }
}

Client::~Client() {
  if (monitor_.handle()) zmq_socket_monitor(dealer_.handle(), nullptr, 0);
  if (sub_monitor_.handle()) zmq_socket_monitor(sub_.handle(), nullptr, 0);
}

bool Client::TakeResubscribed() {
  if (std::string problem = LinkEvents(sub_monitor_, true); !problem.empty()) sub_problem_ = problem;
  return std::exchange(resubscribed_, false);
}

std::string Client::LinkProblem() {
  if (reconnect_) {
    reconnect_ = false;
    for (auto [socket, endpoint] : {std::pair{&dealer_, endpoints_.router}, std::pair{&pub_, endpoints_.events_in},
                                    std::pair{&sub_, endpoints_.events_out}}) {
      if (!socket->handle()) continue;
      try {
        socket->disconnect(endpoint);
      } catch (const zmq::error_t&) {
        // Already given up by ZeroMQ.
      }
      socket->connect(endpoint);
    }
    Hello();
  }
  std::string problem = LinkEvents(monitor_, false);
  if (std::string sub = LinkEvents(sub_monitor_, true); !sub.empty()) sub_problem_ = sub;
  if (!sub_problem_.empty()) problem = std::exchange(sub_problem_, "");
  if (!problem.empty()) reconnect_ = true;
  return problem;
}

std::string Client::LinkEvents(zmq::socket_t& monitor, bool subscriber) {
  std::string problem;
  while (auto next = NextMonitorEvent(monitor)) {
    const uint16_t event = next->event;
    const uint32_t value = next->value;
    const std::string who = "the broker at " + broker_url_;
    switch (event) {
      case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
        if (subscriber) {
          // A subscription made anew: what was published meanwhile never came.
          resubscribed_ |= sub_linked_;
          sub_linked_ = true;
          break;
        }
        linked_ = true;
        failed_handshakes_ = 0;
        Hello();  // a new connection: claim the address on it
        break;
      case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
        if (value == 500) {
          problem = who + " refused this connection: it is at its connection limit (status 500)";
          break;
        }
        problem = who + " refused this process's certificate" +
                  (security_.on() ? " (" + security_.own.path + ", key " + security_.own.public_key + ")" : "") +
                  ": it is not in the broker's trust directory (status " + std::to_string(value) + ")";
        break;
      case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
      case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
        if (!security_.on()) {
          // A keyless broker never fails a keyless handshake: this one wants CURVE.
          problem = who + " requires CURVE: give --cert and --broker-cert (or FM_CERT and FM_BROKER_CERT)";
        } else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL &&
                   value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) {
          problem = who + " does not speak CURVE (was it started without --cert?)";
        } else {
          problem = who + " failed the CURVE handshake: is --broker-cert (key " + security_.broker_key +
                    ") the broker's certificate?";
        }
        break;
      case ZMQ_EVENT_DISCONNECTED:
        // CURVE with a wrong broker key: the broker cannot read our hello and hangs up.
        if (!subscriber && !linked_ && security_.on() && ++failed_handshakes_ >= 2) {
          problem = who + " closed the connection during the CURVE handshake: is --broker-cert (key " +
                    security_.broker_key + ") the broker's certificate?";
        }
        break;
      default:
        break;
    }
  }
  return problem;
}

bool Client::Send(const std::string& to, const std::string& payload) {
  try {
    if (seal_key_ && to != kBrokerAddress && !proof_) Hello();  // the proof comes before the first seal
    if (!RetryEintr(
            [&] { return dealer_.send(zmq::buffer(to), zmq::send_flags::sndmore | zmq::send_flags::dontwait); })) {
      return false;
    }
    if (seal_key_ && to != kBrokerAddress) {
      sealed_out_ = NextSealCounter(sealed_out_);
      const std::string seal = MakeSeal(*seal_key_, SealWay::kUp, sealed_out_, address_, to, payload);
      RetryEintr(
          [&] { return dealer_.send(zmq::buffer(payload), zmq::send_flags::sndmore | zmq::send_flags::dontwait); });
      RetryEintr([&] { return dealer_.send(zmq::buffer(seal), zmq::send_flags::dontwait); });
      return true;
    }
    RetryEintr([&] { return dealer_.send(zmq::buffer(payload), zmq::send_flags::dontwait); });
    return true;
  } catch (const zmq::error_t&) {
    return false;
  }
}

zmq::message_t Aligned(zmq::message_t message) {
  if (reinterpret_cast<uintptr_t>(message.data()) % codec::kAlignment == 0) return message;
  // ZeroMQ keeps small messages inside the message object, at an odd offset; FlatBuffers
  // reads scalars in place and needs them aligned.
  void* copy = std::malloc(std::max<size_t>(message.size(), 1));
  if (!copy) throw std::bad_alloc();
  std::memcpy(copy, message.data(), message.size());
  return zmq::message_t(copy, message.size(), [](void* data, void*) { std::free(data); });
}

std::optional<Received> Client::Receive() {
  for (;;) {
    std::vector<zmq::message_t> frames;
    if (!TryReceive(dealer_, &frames)) return std::nullopt;
    if (!unpinned_root_.empty()) continue;  // nothing more is taken from a node broker trusted as the root
    if (frames.size() != 2 && frames.size() != 3) {
      ++malformed_;
      continue;
    }
    const bool sealed_for_us = frames.size() == 3;
    std::string seal = sealed_for_us ? frames[2].to_string() : std::string();
    Received msg{frames[0].to_string(), Aligned(std::move(frames[1]))};
    const std::string_view payload(static_cast<const char*>(msg.payload.data()), msg.payload.size());
    wire::Body from_broker = wire::Body::NONE;  // the body of what the local broker itself said
    const wire::Envelope* env = nullptr;
    if (msg.from == kBrokerAddress) {
      if (auto decoded = codec::Decode(payload.data(), payload.size()); decoded.ok()) {
        env = *decoded;
        from_broker = env->body_type();
      }
    }
    if (seal_key_) {
      // From the root, sealed for us; unsealed only what the local broker says itself:
      // a probe of our claim, ProveClaim, an Error (which can only delay or drop).
      uint64_t counter = 0;
      bool taken = false;
      if (sealed_for_us) {
        taken =
            OpenSeal(*seal_key_, SealWay::kDown, seal, address_, msg.from, payload, &counter) && counter > sealed_in_;
        if (taken) sealed_in_ = counter;
      } else {
        taken = from_broker == wire::Body::BrokerHello || from_broker == wire::Body::ProveClaim ||
                from_broker == wire::Body::Error;
      }
      if (!taken) {
        ++forged_;
        continue;
      }
    }
    if (from_broker == wire::Body::BrokerHello) continue;  // the broker's probe of our claim
    if (from_broker == wire::Body::ProveClaim) {
      // A node broker holds what we send up until the root has our proof (for the pinned
      // root, whatever the node broker names).
      if (!seal_key_) {
        // Not pinned: this process took its broker for the root, and it is a node broker,
        // which could forge every message to and from it. Refused, not adopted.
        unpinned_root_ = "the broker at " + broker_url_ +
                         " is a node broker (it asked for a claim proof for the root broker with key " +
                         codec::Str(env->body_as_ProveClaim()->root_key()) +
                         "): behind a node broker a process must pin the root broker with --root-cert ROOT.cert "
                         "(or FM_ROOT_CERT), so that its messages are sealed end to end and no node broker can forge "
                         "them; without it, --broker-cert must be the root broker's";
        continue;
      }
      proof_.reset();
      Hello();
      continue;
    }
    if (from_broker == wire::Body::Error &&
        ParseErrorCode(codec::Str(env->body_as_Error()->code())) == wire::ErrorCode::Unclaimed) {
      Hello();
    }
    return msg;
  }
}

bool TryReceive(zmq::socket_t& socket, std::vector<zmq::message_t>* frames) {
  frames->clear();
  return RetryEintr([&] { return zmq::recv_multipart(socket, std::back_inserter(*frames), zmq::recv_flags::dontwait); })
      .has_value();
}

bool MonitorSocket(zmq::context_t& context, zmq::socket_t& socket, int events, zmq::socket_t* pair) {
  char endpoint[64];
  snprintf(endpoint, sizeof endpoint, "inproc://fm-monitor-%p", socket.handle());
  *pair = zmq::socket_t(context, zmq::socket_type::pair);
  if (zmq_socket_monitor(socket.handle(), endpoint, events) != 0) return false;
  pair->connect(endpoint);
  return true;
}

std::optional<MonitorEvent> NextMonitorEvent(zmq::socket_t& pair) {
  if (!pair.handle()) return std::nullopt;
  for (;;) {
    std::vector<zmq::message_t> frames;
    try {
      if (!TryReceive(pair, &frames)) return std::nullopt;
    } catch (const zmq::error_t&) {
      return std::nullopt;  // not connected: nothing is monitored
    }
    if (frames.empty() || frames[0].size() < 6) continue;
    MonitorEvent e;
    std::memcpy(&e.event, frames[0].data(), 2);
    std::memcpy(&e.value, static_cast<const char*>(frames[0].data()) + 2, 4);
    return e;
  }
}

void TendLink(Client& client, RateLimitedLog& log, uint64_t now_ms) {
  client.Hello();
  if (std::string problem = client.LinkProblem(); !problem.empty()) log.Warn("link", now_ms, problem + "; retrying");
  if (uint64_t forged = client.TakeForged(); forged > 0) {
    log.Warn("forged", now_ms,
             "dropped " + std::to_string(forged) +
                 " directed message(s) without the root broker's seal (missing, wrong or replayed): a node broker on "
                 "the way forged or altered them");
  }
  if (uint64_t malformed = client.TakeMalformed(); malformed > 0) {
    log.Warn(
        "malformed", now_ms,
        "dropped " + std::to_string(malformed) +
            " malformed message(s) from the broker (directed ones not [source][payload], events not [topic][payload])");
  }
  log.Flush(now_ms);
}

namespace {

// The message of an Error with `code` the local broker sent, or "" for anything else.
std::string BrokerError(const Received& message, wire::ErrorCode code) {
  if (message.from != kBrokerAddress) return "";
  auto env = codec::Decode(message.payload.data(), message.payload.size());
  if (!env.ok() || (*env)->body_type() != wire::Body::Error) return "";
  const wire::Error* e = (*env)->body_as_Error();
  if (ParseErrorCode(codec::Str(e->code())) != code) return "";
  return codec::Str(e->message());
}

}  // namespace

std::string BrokerFencing(const Received& message) { return BrokerError(message, wire::ErrorCode::Fenced); }

std::string BrokerRefusal(const Received& message) { return BrokerError(message, wire::ErrorCode::Unauthorized); }

void Client::Hello() {
  flatbuffers::FlatBufferBuilder fbb(256);
  flatbuffers::Offset<wire::ClaimProof> proof;
  if (security_.on() && !root_key_.empty()) {
    const uint64_t now = WallClockMs();
    if (!proof_ || now > proof_->time_ms + kClaimProofRenewMs || now < proof_->time_ms) {
      auto made = MakeClaimProof(address_, security_.own.public_key, security_.own.secret_key, root_key_, now,
                                 seal_key_.has_value());
      if (made.ok()) proof_ = std::move(*made);
    }
    if (proof_) proof = ToWire(fbb, *proof_);
  }
  auto address = fbb.CreateString(address_);
  Send(kBrokerAddress, codec::Seal(fbb, wire::CreateBrokerHello(fbb, address, proof, epoch_)));
}

void Client::RenewProof() {
  if (proof_ && WallClockMs() > proof_->time_ms + kClaimProofRenewMs) Hello();
}

void Client::Publish(std::string_view topic, std::string_view payload) {
  try {
    RetryEintr([&] { return pub_.send(zmq::buffer(topic), zmq::send_flags::sndmore | zmq::send_flags::dontwait); });
    if (seal_key_) {
      // The root takes a sealing worker's announcements only with its seal: no node
      // broker on the way can alter what it says of itself.
      if (!proof_) Hello();
      sealed_events_ = NextSealCounter(sealed_events_);
      const std::string seal = MakeSeal(*seal_key_, SealWay::kEvent, sealed_events_, address_, topic, payload);
      RetryEintr([&] { return pub_.send(zmq::buffer(payload), zmq::send_flags::sndmore | zmq::send_flags::dontwait); });
      RetryEintr([&] { return pub_.send(zmq::buffer(seal), zmq::send_flags::dontwait); });
      return;
    }
    RetryEintr([&] { return pub_.send(zmq::buffer(payload), zmq::send_flags::dontwait); });
  } catch (const zmq::error_t&) {
    // PUB never blocks; at the high-water mark ZeroMQ drops, as it does for absent peers.
  }
}

void Client::Subscribe(const std::string& prefix) { sub_.set(zmq::sockopt::subscribe, prefix); }

std::optional<Event> Client::ReceiveEvent() {
  for (;;) {
    std::vector<zmq::message_t> frames;
    if (!TryReceive(sub_, &frames)) return std::nullopt;
    if (!unpinned_root_.empty()) continue;
    if (frames.size() != 2) {
      ++malformed_;
      continue;
    }
    return Event{frames[0].to_string(), Aligned(std::move(frames[1]))};
  }
}

void TuneAllocator() {
  // tcmalloc's per-thread caches may hold 32 MiB in all by default: a few idle threads'
  // caches were ~5 MiB of the scheduler's peak with 10,000 workers registering. 4 MiB
  // in all gave the base's peak back for ~2% of the backlog bench's rate.
  if (MallocExtension_SetNumericProperty != nullptr) {
    MallocExtension_SetNumericProperty("tcmalloc.max_total_thread_cache_bytes", 4u << 20);
  }
}

void ReleaseFreeMemory() {
  constexpr size_t kKept = 8u << 20;
  if (MallocExtension_ReleaseFreeMemory != nullptr && MallocExtension_GetNumericProperty != nullptr) {
    // tcmalloc (fm-scheduler links it): its free pages go back when asked.
    size_t free_bytes = 0;
    if (MallocExtension_GetNumericProperty("tcmalloc.pageheap_free_bytes", &free_bytes) != 0 && free_bytes > kKept) {
      MallocExtension_ReleaseFreeMemory();
    }
    return;
  }
  // glibc keeps what a burst freed (in every thread's arena: ZeroMQ's I/O threads
  // allocate the messages) unless asked; asking costs a walk of the arenas.
  struct mallinfo2 info = mallinfo2();
  if (info.fordblks > kKept) malloc_trim(0);
}

}  // namespace fm::bus
