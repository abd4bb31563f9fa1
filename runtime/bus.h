// The client side of the bus: how every fm process talks to its local broker.
//
// A broker at tcp://HOST:PORT serves directed messages on PORT (ROUTER), takes events
// in on PORT+1 (XSUB) and gives them out on PORT+2 (XPUB); at ipc://PATH on PATH,
// PATH.events-in and PATH.events-out. A client holds a DEALER and claims its address
// with a BrokerHello as the first message on every connection (the broker checks the
// claim against its certificate: runtime/policy.h); it sends frames
// [destination][payload] and receives [source][payload]. Events are [topic][payload].
//
// With a certificate every socket speaks CURVE to the broker's key; a monitor watches
// the handshakes so that a refused certificate or a wrong broker key is said, not
// waited on (LinkProblem).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "runtime/addresses.h"
#include "runtime/cert.h"
#include "runtime/claim_proof.h"
#include "runtime/rate_limited_log.h"
#include "runtime/seal.h"
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

// Queue bounds, per connection, in messages (ZeroMQ counts messages, not bytes).
// Directed: a peer that never reads holds at most this many messages to itself in the
// broker (the errors a flood earns are ~200 B: ~2 MB); past it the broker answers the
// sender "queue full" and the sender's own retries take over (tasks are dispatched only
// to free slots, results re-sent until acknowledged).
inline constexpr int kDirectedQueue = 10'000;
// Events: published in blocks of at most 64 KiB, so a subscriber that stops reading
// costs the broker at most ~128 MiB; one that falls this far behind loses the rest,
// sees the gap by seq and fills it from the store (fm-tap), or hears the next
// heartbeat (the scheduler).
inline constexpr int kEventQueue = 2'048;
// A leadership epoch is an etcd revision: the root broker refuses claims at or above
// this, and a scheduler does not lead on one (no etcd reaches it).
inline constexpr uint64_t kMaxLeadershipEpoch = uint64_t{1} << 48;

// Hands memory freed after a burst (a flood, a big backlog) back to the system when
// more than 8 MiB of it is held free, from glibc or tcmalloc, whichever the daemon uses.
// Call now and then (the daemons: every 5 s).
void ReleaseFreeMemory();
// Bounds tcmalloc's thread caches where the daemon links it (fm-scheduler); else nothing.
void TuneAllocator();

struct Endpoints {
  std::string router;      // tcp://HOST:PORT
  std::string events_in;   // tcp://HOST:PORT+1
  std::string events_out;  // tcp://HOST:PORT+2
  bool loopback = false;   // 127.0.0.0/8, ::1, localhost or ipc://: reachable from this host only
};

// Parses "tcp://HOST:PORT" (PORT + 2 must be a port) or "ipc://PATH". Error names what
// is wrong.
Result<Endpoints> ParseBrokerUrl(const std::string& url);

// Whether a bound socket's actual address (ZMQ_LAST_ENDPOINT: "tcp://IP:PORT",
// "tcp://[IP6]:PORT", "ipc://PATH") is reachable from this host only: ipc, 127.0.0.0/8
// or ::1 (also v4-mapped). What the text of a --bind said does not count.
bool IsLoopbackEndpoint(const std::string& bound);

// How a process proves who it is to its broker: its own certificate (with the secret
// key) and the broker's public key. Off when `broker_key` is empty (no CURVE).
struct Security {
  Certificate own;
  std::string broker_key;  // Z85
  // The root broker's (Z85), when pinned (--root-cert) and not the broker's own: this
  // process is behind node brokers and seals its messages (runtime/seal.h). Without
  // --root-cert the broker itself is taken for the root; if it turns out to be a node
  // broker the process refuses to go on (Client::UnpinnedRoot).
  std::string root_key;
  bool on() const { return !broker_key.empty(); }
  bool sealed() const { return on() && !root_key.empty() && root_key != broker_key; }
};

// Reads --cert / --broker-cert (either may come from FM_CERT / FM_BROKER_CERT). Both or
// neither: one without the other is an error, as is an unreadable file. `own_role`,
// when set, is the role the process's certificate must have.
Result<Security> LoadSecurity(const std::string& cert, const std::string& broker_cert, const char* own_role,
                              const std::string& root_cert = "");

// Applies CURVE client options to `socket` (nothing when security is off).
void SecureClientSocket(zmq::socket_t& socket, const Security& security);

// $FM_BROKER if set, else tcp://127.0.0.1:5550.
std::string DefaultBrokerUrl();

// "<prefix>/<host>/<pid>/<random hex>": unique per process.
std::string UniqueAddress(const std::string& prefix);

// `message` with its bytes at an address aligned for any scalar (copied only when they
// are not): what FlatBuffers needs to read a payload in place.
zmq::message_t Aligned(zmq::message_t message);

// The next whole message waiting on `socket`, into *frames (never blocks). False when
// none is waiting.
bool TryReceive(zmq::socket_t& socket, std::vector<zmq::message_t>* frames);

// zmq_socket_monitor: `socket`'s `events` (ZMQ_EVENT_*) arrive on *pair, a PAIR socket
// made here. False when ZeroMQ cannot monitor it (*pair is then left unconnected).
bool MonitorSocket(zmq::context_t& context, zmq::socket_t& socket, int events, zmq::socket_t* pair);
struct MonitorEvent {
  uint16_t event = 0;  // ZMQ_EVENT_*
  uint32_t value = 0;  // e.g. the ZAP status of a refused handshake
};
// The next event waiting on a monitor's PAIR socket, if any.
std::optional<MonitorEvent> NextMonitorEvent(zmq::socket_t& pair);

struct Received {
  std::string from;
  zmq::message_t payload;
};

struct Event {
  std::string topic;
  zmq::message_t payload;
};

// The text of an Error "unauthorized" the local broker sent (a refused claim or action),
// or empty for any other message.
std::string BrokerRefusal(const Received& message);
// The broker's "fenced" error (a scheduler elected with a greater epoch leads): its
// message, or "" for anything else.
std::string BrokerFencing(const Received& message);

class Client;
// What a daemon does every second or so for its link: claims its address again and
// logs (rate-limited) what went wrong with the link since the last call, if anything.
void TendLink(Client& client, RateLimitedLog& log, uint64_t now_ms);

class Client {
 public:
  // Connects a DEALER that claims `address`; with `publish` a PUB to events in; with
  // `subscribe` a SUB to events out (subscribe to prefixes with Subscribe()).
  // `epoch`: fm-scheduler elected through etcd, its leadership's epoch, carried by every
  // BrokerHello (the first included).
  Client(zmq::context_t& context, const Endpoints& endpoints, const std::string& address, bool publish, bool subscribe,
         const Security& security = Security(), uint64_t epoch = 0);
  ~Client();

  const std::string& address() const { return address_; }
  zmq::socket_t& dealer() { return dealer_; }
  zmq::socket_t& sub() { return sub_; }
  zmq::socket_t& monitor() { return monitor_; }

  // Queues a directed message; false when it cannot be queued now (high-water mark).
  bool Send(const std::string& to, const std::string& payload);
  // Next directed message, if one is waiting. Frames not shaped [source][payload] are
  // dropped and counted (TakeMalformed); the broker's probes of a claim are dropped; an
  // "unclaimed" Error (the connection was made anew) claims again and is passed on.
  std::optional<Received> Receive();
  // Claims the address on the current connection and tells the local broker this client
  // is here (so a node broker announces it to its parent). Cheap; send it periodically.
  // Once a node broker asked for it (ProveClaim), with a proof of the claim for the root
  // broker (runtime/claim_proof.h), made anew every kClaimProofRenewMs.
  void Hello();
  // Claims again when the last proof is due for renewal (for tools, which send Hello only
  // at start). Cheap otherwise.
  void RenewProof();
  // What went wrong with the link to the broker since the last call, as a sentence
  // naming the likely cause (a refused certificate, a broker without CURVE, a wrong
  // broker key); empty if nothing did. Also claims the address again after a reconnect.
  // ZeroMQ gives up on a connection whose handshake failed: after one, the next call
  // connects all sockets anew (so a daemon called every second retries every second).
  std::string LinkProblem();
  // A handshake with the broker completed at least once.
  bool linked() const { return linked_; }
  // The subscriber's connection was made anew since the last call (the broker restarted
  // or cut it off): events published meanwhile were not received. Once per reconnect.
  bool TakeResubscribed();
  // Publishes on the bus; dropped by ZeroMQ when no subscriber is connected.
  void Publish(std::string_view topic, std::string_view payload);
  void Subscribe(const std::string& prefix);
  std::optional<Event> ReceiveEvent();
  // Messages dropped as malformed since the last call (TendLink logs them).
  uint64_t TakeMalformed() { return std::exchange(malformed_, 0); }
  // Sealed (Security::sealed()): directed messages dropped since the last call because
  // the root's seal was missing, wrong or replayed (TendLink logs them).
  uint64_t TakeForged() { return std::exchange(forged_, 0); }
  // Whether directed messages are sealed with the root (Security::sealed()).
  bool sealed() const { return seal_key_.has_value(); }
  // Set when the broker turned out to be a node broker (it asked for a claim proof for
  // the root) and this process did not pin the root (--root-cert): a sentence naming the
  // fix. From then on nothing directed is taken; the process must stop (exit 2), since a
  // node broker it trusts as the root could forge for it.
  const std::string& UnpinnedRoot() const { return unpinned_root_; }

 private:
  std::string address_;
  uint64_t epoch_ = 0;
  std::string broker_url_;
  Security security_;
  zmq::socket_t dealer_;
  std::string LinkEvents(zmq::socket_t& monitor, bool subscriber);
  zmq::socket_t monitor_;      // PAIR: the dealer's handshake events
  zmq::socket_t sub_monitor_;  // PAIR: the subscriber's
  Endpoints endpoints_;
  bool linked_ = false;
  bool reconnect_ = false;
  bool sub_linked_ = false, resubscribed_ = false;
  std::string sub_problem_;
  int failed_handshakes_ = 0;
  zmq::socket_t pub_;
  zmq::socket_t sub_;
  uint64_t malformed_ = 0;
  std::string root_key_;             // the root broker's when pinned (--root-cert) and not the broker itself
  std::optional<ClaimProof> proof_;  // the last one made for it
  std::optional<SealKey> seal_key_;  // shared with the root when sealed (runtime/seal.h)
  uint64_t sealed_out_ = 0;          // the counter of the last seal made
  uint64_t sealed_in_ = 0;           // the counter of the last seal taken
  uint64_t sealed_events_ = 0;       // the counter of the last seal made for a published event
  uint64_t forged_ = 0;
  std::string unpinned_root_;
};

}  // namespace fm::bus
