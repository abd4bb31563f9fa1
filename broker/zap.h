// The broker's ZAP handler (ZeroMQ RFC 27): admits a CURVE peer when its public key is
// in the trust directory, and gives its connection the certificate's name (User-Id) and
// the properties Role and Key, which every message received on that connection carries
// (PeerOf). Without a trust directory (a keyless broker) it admits NULL peers. Either
// way it refuses, with status 500 and a log line, a peer it would admit beyond the
// broker's limit of admitted connections, so that the ones it has keep being served. It runs on the broker's
// loop: the handshake waits in ZeroMQ's I/O thread for our reply, nothing blocks.
#pragma once

#include <spdlog/spdlog.h>

#include <functional>
#include <memory>
#include <string>
#include <zmq.hpp>

#include "runtime/cert.h"
#include "runtime/policy.h"
#include "runtime/rate_limited_log.h"

namespace fm::bus {

// Who sent a message, as its connection's ZAP metadata says. role kNone on a connection
// without CURVE.
struct Peer {
  Role role = Role::kNone;
  std::string name;
  std::string key;  // Z85
};
Peer PeerOf(const zmq::message_t& frame);

// A handshake the ZAP handler would admit: the socket's ZAP domain, the peer's IP ("" for
// ipc) and its key (Z85, "" without CURVE).
struct ZapRequest {
  std::string domain, address, key;
};

class ZapHandler {
 public:
  // `trust` null: a keyless broker. `admit` is asked once a connection would be admitted
  // (its key trusted, or NULL on a keyless broker): a non-empty answer refuses it and
  // says why (the connection limit is reached, the key is barred for a while). Untrusted
  // keys are refused before it is asked.
  using Admit = std::function<std::string(const ZapRequest&)>;
  ZapHandler(zmq::context_t& context, const TrustStore* trust, std::shared_ptr<spdlog::logger> logger, Admit admit);
  // Binds inproc://zeromq.zap.01 (before any CURVE socket of the context binds).
  Status Bind();
  zmq::socket_t& socket() { return socket_; }
  // Answers every waiting request. Returns how many.
  size_t Drain(uint64_t now_ms);
  uint64_t refused() const { return refused_; }
  void FlushLog(uint64_t now_ms) { log_.Flush(now_ms); }

 private:
  zmq::socket_t socket_;
  const TrustStore* trust_;
  Admit admit_;
  std::shared_ptr<spdlog::logger> logger_;
  RateLimitedLog log_;
  uint64_t refused_ = 0;
};

}  // namespace fm::bus
