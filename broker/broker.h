// fm-broker: routes directed messages by destination identity and carries the event
// bus. Brokers form a tree: a node broker started with an upstream joins its parent.
//
// Frames. A client's DEALER sends [destination][payload] and receives [source][payload].
// Between brokers a relayed message is [destination][payload][source]: a child's DEALER
// sends it up, a parent's ROUTER sends it down prefixed with the child's connection.
//
// Addresses are claimed, not chosen: the ROUTER gives every connection a fresh routing
// id, and the first message on it is a BrokerHello claiming an address. The claim is
// checked against the connection's certificate (runtime/policy.h); an address held by
// another connection that is still there is refused (and logged), one whose holder is
// gone is taken over. A connection that never claimed gets an Error "unclaimed". So a
// stale or hostile connection never inherits an address, and nobody but the scheduler's
// key holds fm-scheduler.
//
// Security (with --cert): all three sockets serve CURVE with the broker's key, and a ZAP
// handler (broker/zap.h) admits the keys in the trust directory, which is re-read every
// second. Every message is checked again against it (a removed certificate is refused
// on connections already open; subscribers are cut off by closing the events-out
// listener and its connections, which then reconnect through ZAP). Relays come only from
// broker keys; events only as runtime/policy.h allows.
//
// Routing of a message for D: to D if D is connected here; else to the child broker D
// was last seen behind (announced, or the source of a relayed message); else up to the
// parent; else an Error "unreachable" goes back to the source, wherever it is.
//
// Events. Locally published events go up only (XSUB -> upstream XPUB); the parent's
// stream comes down to local subscribers (upstream XSUB -> XPUB). The root sees every
// event once and every subscriber in the tree gets each event once. Subscriptions flow
// the other way along the same sockets.
//
// A malformed frame, an oversized payload or an unreachable destination gets an Error
// back to its sender and a log line; nothing else is disturbed.
#pragma once

#include <spdlog/spdlog.h>

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "broker/outbound.h"
#include "broker/routing.h"
#include "broker/zap.h"
#include "runtime/bus.h"
#include "runtime/cert.h"
#include "runtime/claim_proof.h"
#include "runtime/loop.h"
#include "runtime/ops.h"
#include "runtime/rate_limited_log.h"
#include "runtime/seal.h"
#include "schemas/fm_generated.h"
#include "schemas/status.h"

namespace fm::bus {

struct BrokerOptions {
  std::string bind = kDefaultBroker;     // ROUTER; PORT+1 events in, PORT+2 events out
  std::vector<std::string> extra_binds;  // more URLs served by the same sockets (e.g. ipc://PATH)
  std::string upstream;                  // parent broker (tcp://ROOT:PORT); empty for the root
  std::string cert;                      // own certificate (secret); empty: no CURVE
  std::string trust_dir;                 // public certificates admitted (required with cert)
  std::string upstream_cert;             // the parent's public certificate (node broker with cert)
  // Without a certificate: refuse (Bind's error, kInvalid) to listen anywhere but on this
  // host, judged by the address each socket actually bound (not the --bind text).
  bool loopback_only = true;
  uint64_t trust_reload_ms = 1000;
  // Admitted connections (on all three sockets together) past which new ones are refused
  // at the handshake, with a log line; the open ones keep being served. 0: no limit.
  // Only connections that passed the handshake (ZAP) count: outsiders never fill it.
  size_t max_connections = 0;
  // A connection not yet through its handshake is closed after handshake_ms; at most
  // max_unauthenticated such connections per source address (ipc: all local ones
  // together) are kept, a newer one past that is closed at once. 0: no limit.
  uint64_t handshake_ms = 5000;
  size_t max_unauthenticated = 64;
  // Bytes queued for one peer (directed messages, or events for a subscriber) that it has
  // not read, past which its connection is cut (broker/outbound.h). 0: no limit.
  uint64_t max_queued_bytes = 64ull << 20;
  // Subscriptions one connection may send, in number and in bytes of topic (a broker's:
  // 64 times as many, its subtree's union); past either the connection is cut. ZeroMQ
  // keeps each in a table costing tens of bytes per byte of topic. 0: no limit.
  size_t max_subscriptions = 1024;
  size_t max_subscription_bytes = 64u << 10;
  uint64_t announce_ms = 1000;    // how often a node broker announces its peers
  uint64_t route_ttl_ms = 10000;  // a route not refreshed for this long is dropped
  std::shared_ptr<spdlog::logger> logger;
};

class Broker {
 public:
  Broker(zmq::context_t& context, BrokerOptions options);
  // Binds the three sockets and, for a node broker, connects upstream. Error names the
  // endpoint that could not be bound or parsed.
  Status Bind();
  // What Bind checks before it binds: the addresses, the certificates and the trust
  // directory (--check-config). Error names the option.
  Status Configure();
  // Registers the sockets and timers on `loop`. REQUIRES: Bind() succeeded.
  void Attach(Loop& loop);

  struct Counters {
    uint64_t routed = 0, relayed_up = 0, relayed_down = 0, unreachable = 0, malformed = 0, oversized = 0, events = 0;
    uint64_t socket_errors = 0;           // ZeroMQ errors caught at the loop's edge
    uint64_t unauthorized = 0;            // claims, relays and publications refused
    uint64_t queue_full = 0;              // directed messages refused: the peer's queue was full
    uint64_t unauthenticated_closed = 0;  // connections closed: too many unauthenticated from their address
    uint64_t subscriptions_refused = 0;   // subscriptions that match no published topic: not passed on
    uint64_t slow_cut = 0;                // connections cut: too much queued for a peer that did not read
    uint64_t subscriptions_cut = 0;       // connections cut: too many subscriptions
  };
  const Counters& counters() const { return counters_; }
  // Counters and gauges for GET /metrics.
  void Metrics(ops::Sheet& sheet) const;
  size_t connections() const { return connections_; }
  bool secure() const { return secure_; }

 private:
  struct Claim {
    std::string address;
    Peer peer;
    uint64_t seen_ms = 0;
    uint64_t epoch = 0;  // fm-scheduler: the leadership it claimed with
    // A node broker with CURVE: the claimer's proof for the root, and what it sent up
    // before the proof came (destination, payload), sent on when it comes.
    std::optional<ClaimProof> proof;
    struct Held {
      std::string destination;
      zmq::message_t payload;
      std::string seal;  // the claimer's, if it seals
    };
    std::vector<Held> held;
    size_t held_bytes = 0;
  };
  // The root with CURVE: an address a child broker proved a peer holds behind it.
  struct Proven {
    std::string child;  // the child broker's address
    ClaimProof proof;
    // The peer seals (proof.seals): the key it shares with us, the counter of the last
    // seal taken from it and of the last one made for it (runtime/seal.h).
    SealKey key{};
    uint64_t up_last = 0, down_last = 0, events_last = 0;
  };
  // A node broker with CURVE asks every claimer for a proof; the root checks them.
  bool NeedsProof() const { return secure_ && has_upstream_; }
  bool ChecksProofs() const { return secure_ && !has_upstream_; }
  // Node broker: a proof in a claimer's BrokerHello; the first one is announced up at once
  // and what the claimer sent meanwhile follows it.
  void TakeProof(Claim& claim, ClaimProof proof);
  // Root: whether `address` is proven behind `child` (checking `proof` when one came).
  // Error says why not.
  Status ProvenBehind(const std::string& address, const std::string& child, const ClaimProof* proof, uint64_t now_ms);
  // Sends the announcement of every peer reachable through this broker (with proofs).
  void SendAnnouncement();
  // The connection `pipe` claims `address` (BrokerHello).
  // `epoch`: fm-scheduler's leadership epoch (0: a scheduler on its own).
  void HandleClaim(const std::string& pipe, const std::string& address, const Peer& peer, uint64_t epoch = 0);
  void Unclaim(const std::string& pipe);
  // Learns that `peer` is behind `child`, unless a child that is still connected has a
  // fresh route to it (one subtree cannot take over another's addresses).
  bool LearnRoute(const std::string& peer, const std::string& child, uint64_t now_ms);
  // Whether the connection `pipe` is still there (a probe it ignores is queued to it).
  bool PipeAlive(const std::string& pipe);
  // The peer's certificate is (still) in the trust directory with the same name and role.
  bool Trusted(const Peer& peer) const;
  void Refuse(const std::string& pipe, const Peer& peer, wire::ErrorCode code, const std::string& why,
              const std::string& about);
  void ErrorToPipe(const std::string& pipe, wire::ErrorCode code, const std::string& message, const std::string& about);
  // Sends `payload` to the connection `pipe` from the broker; dropped when it is gone or full.
  void SendToPipe(const std::string& pipe, const std::string& payload);
  void ReloadTrust();
  void Sweep();
  // Closes the events-out listener and its connections and listens again: every
  // subscriber reconnects through ZAP (how a revoked subscriber is cut off).
  void ReopenEventsOut();
  void RebindEventsOut();
  size_t DrainMonitor(zmq::socket_t& monitor);
  // Shuts the connection on `fd` down under ZeroMQ (which then drops its pipe and what is
  // queued in it), saying why once a second per peer.
  void Cut(int fd, const std::string& who, const std::string& why);
  // `bytes` were queued for the connection `pipe`: cut it if that is too much.
  void Charge(const std::string& pipe, size_t bytes);
  // `bytes` of events went to the local subscribers: cut those that read none of it.
  void Published(uint64_t bytes);
  // The handshake of a connection from `address` (ZAP's: the peer's IP, "" for ipc)
  // passed: counts it as admitted unless max_connections are. False: refuse it.
  // Also refuses a key barred from events-out (Bar). Empty: admitted; else why not.
  std::string Admit(const ZapRequest& request);
  // A key whose events-out connection was cut for too many subscriptions may not
  // subscribe again for a while: 1 s, doubled at each cut in a row up to 5 minutes (each
  // reconnection would send them all again).
  void Bar(const std::string& key);
  // Where a message came from: a local peer, a child broker (relayed), or the parent.
  // `seal`: the source's seal (up) or the root's (down), passed on as it is; empty for
  // none. A node broker with CURVE sends everything that did not come from its parent up:
  // the root seals what goes down to a peer that seals (and checks what comes up).
  void Route(const std::string& destination, const std::string& source, zmq::message_t& payload, bool from_parent,
             const std::string& seal = "");
  bool DeliverLocal(const std::string& destination, const std::string& source, zmq::message_t& payload,
                    const std::string& seal = "");
  // Root: the seal for a message from `source` to `destination` behind a child, if that
  // peer seals; else empty.
  std::string SealFor(const std::string& destination, const std::string& source, const zmq::message_t& payload);
  void HandleForBroker(const std::string& pipe, const std::string& source, const zmq::message_t& payload,
                       bool local_peer, const Peer& peer);
  void ErrorTo(const std::string& source, wire::ErrorCode code, const std::string& message, const std::string& about);
  void Announce();
  void SendUpHello();
  // Runs `work` (a drain call or a timer); a ZeroMQ error is counted and logged (at
  // most once a second), never ends the broker.
  template <typename F>
  size_t Guarded(const char* what, F&& work) {
    try {
      return work();
    } catch (const zmq::error_t& e) {
      OnSocketError(what, e);
      return 0;
    }
  }
  void OnSocketError(const char* what, const zmq::error_t& e);

  size_t DrainRouter();
  size_t DrainUpstream();
  size_t DrainEvents();
  size_t DrainSubscriptions();
  size_t ForwardSubscriptions(zmq::socket_t& from, zmq::socket_t& to, bool local);
  size_t DrainUpstreamEvents();
  size_t DrainUpstreamSubscriptions();

  BrokerOptions options_;
  zmq::context_t& context_;
  Endpoints endpoints_;
  std::string identity_;  // as seen by the parent
  zmq::socket_t router_, xsub_, xpub_;
  zmq::socket_t up_dealer_, up_xpub_, up_xsub_;  // node broker only
  bool has_upstream_ = false;
  RoutingTable table_;
  bool secure_ = false;
  Certificate own_;
  std::string upstream_key_;  // the parent broker's public key (CURVE)
  std::unique_ptr<TrustStore> trust_;
  std::unique_ptr<ZapHandler> zap_;
  zmq::socket_t monitors_[3];  // PAIR: the router's, events-in's and events-out's connection events
  size_t connections_ = 0;     // every open connection, admitted or not
  // Open connections by file descriptor (from the monitors' accepted/disconnected), and
  // those of each source address still in their handshake, oldest first.
  struct Connection {
    std::string address;
    bool admitted = false;
  };
  std::unordered_map<int, Connection> open_;
  std::unordered_map<std::string, std::deque<int>> unauthenticated_;
  size_t admitted_ = 0;
  std::unordered_map<std::string, Claim> claims_;  // connection (routing id) -> what it claimed
  // The greatest epoch that claimed fm-scheduler since this broker started: older ones
  // are fenced (a leader elected through etcd replaces a stale one at once, even while
  // the stale one's connection is still open).
  uint64_t scheduler_epoch_ = 0;
  uint64_t scheduler_epoch_seen_ms_ = 0;                // when its holder last said hello: remembered 10 s past it
  std::unordered_map<std::string, std::string> pipes_;  // address -> connection
  std::vector<std::string> events_out_bound_;           // what ReopenEventsOut binds again
  std::vector<std::string> rebind_events_out_;          // not bound again yet
  std::unordered_map<std::string, size_t> claims_per_key_;
  std::string root_key_;                                // node broker: the root's public key (Z85)
  std::unordered_map<std::string, ClaimProof> proofs_;  // node broker: proofs of the peers behind it
  std::unordered_map<std::string, Proven> proven_;      // root: addresses proven behind a child
  std::unordered_set<std::string> passed_on_;           // subscriptions sent on toward the publishers
  struct Barred {
    uint64_t until_ms = 0, next_ms = 0, last_ms = 0;
  };
  std::unordered_map<std::string, Barred> barred_;  // keys barred from events-out, by key
  DirectedBacklog directed_backlog_;                // what each ROUTER connection has not read
  SubscriberBacklog subscriber_backlog_;            // and each events-out subscriber
  uint64_t last_sweep_ms_ = 0;
  std::unique_ptr<RateLimitedLog> rejected_log_;  // bad input from peers, per peer
  bool announce_now_ = false;
  uint64_t last_error_log_ms_ = 0, errors_since_log_ = 0;
  Counters counters_;
};

}  // namespace fm::bus
