// What a broker has queued for each of its peers and not yet seen them take, in bytes.
//
// ZeroMQ keeps a peer's unsent messages in its pipe, bounded only by a count (the high-
// water mark), whatever their size: a peer that stops reading can hold ten thousand
// replies of a megabyte each at its broker. The kernel knows how far a TCP peer has
// read (TCP_INFO's bytes_acked) and what waits for it (SIOCOUTQ); with the bytes the
// broker handed ZeroMQ for that connection, that says what is queued for it. Past a
// limit the connection is cut (its descriptor shut down under ZeroMQ, which then drops
// the pipe and everything queued in it); the peer reconnects and claims again.
//
// Descriptors come with the messages a connection sends (ZMQ_SRCFD) and go with the
// monitor's "disconnected". ipc:// peers have no such count: not tracked, and the broker
// lets only its own user (and root) connect there (its ipc socket files are 0700).
// Plain code over an injected probe: unit-tested without sockets (tests/unit).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace fm::bus {

// The sending side of a TCP connection, as the kernel sees it.
struct SendState {
  uint64_t acked = 0;    // bytes the peer acknowledged since the connection opened
  uint64_t waiting = 0;  // bytes in the kernel's queue, not acknowledged yet
};
// nullopt: not a TCP socket (ipc), or gone.
std::optional<SendState> ReadSendState(int fd);

using SendProbe = std::function<std::optional<SendState>(int fd)>;

// Directed messages (ROUTER): exact per connection. Queued = bytes handed to ZeroMQ for
// it minus bytes its peer acknowledged (ZeroMQ's framing and CURVE only make the peer's
// count larger, so queued is never overstated; it is never let below zero either, so a
// long-lived connection banks no credit).
class DirectedBacklog {
 public:
  // limit: bytes queued for one connection past which it is cut; 0: no limit.
  explicit DirectedBacklog(uint64_t limit, SendProbe probe = ReadSendState);
  // A message came from connection `pipe` on descriptor `fd`.
  void Saw(const std::string& pipe, int fd);
  // `bytes` were handed to ZeroMQ for `pipe`. Returns the descriptor to cut when what
  // is queued for it is past the limit, else -1.
  int Charge(const std::string& pipe, size_t bytes);
  // The connection on `fd` closed.
  void Forget(int fd);
  // Bytes queued for `pipe` at its last check (0 when not tracked).
  uint64_t Queued(const std::string& pipe) const;
  size_t tracked() const { return by_pipe_.size(); }

  // How often the kernel is asked, per connection, in bytes handed to it.
  static constexpr uint64_t kCheckEvery = 64u << 10;

 private:
  struct Entry {
    int fd = -1;
    bool tcp = true;
    uint64_t sent = 0;       // bytes handed to ZeroMQ since tracking began
    uint64_t offset = 0;     // the peer's acked count when `sent` was 0 (re-based, never below)
    uint64_t unchecked = 0;  // bytes handed since the last check
    uint64_t queued = 0;     // at the last check
  };
  uint64_t limit_;
  SendProbe probe_;
  std::unordered_map<std::string, Entry> by_pipe_;
  std::unordered_map<int, std::string> by_fd_;
};

// Events (XPUB): ZeroMQ fans a message out to every subscriber whose subscription
// matches, which the broker does not see, so what was published stands in for what was
// sent. A subscriber is cut when the kernel still holds bytes for it and it has
// acknowledged nothing while more than `limit` bytes were published (a subscriber that
// matches nothing has nothing waiting; one that reads moves its count). Also counts the
// subscriptions each connection sent (ZeroMQ keeps every distinct one of a connection,
// even those the broker refuses, until it closes).
class SubscriberBacklog {
 public:
  SubscriberBacklog(uint64_t limit, SendProbe probe = ReadSendState);
  // A subscription (or unsubscription) of `topic_bytes` came from `fd`. Returns what it
  // now holds: how many, and their bytes (never below 0).
  struct Held {
    size_t count = 0, bytes = 0;
  };
  Held Subscription(int fd, bool subscribe, size_t topic_bytes);
  // `bytes` were published to the subscribers. Returns the descriptors to cut.
  std::vector<int> Published(size_t bytes);
  void Forget(int fd);
  size_t tracked() const { return by_fd_.size(); }

 private:
  struct Entry {
    bool tcp = true;
    Held held;
    uint64_t acked = 0;         // the peer's count when it last moved
    uint64_t published_at = 0;  // what had been published then
  };
  uint64_t limit_;
  SendProbe probe_;
  uint64_t published_ = 0, unchecked_ = 0;
  std::unordered_map<int, Entry> by_fd_;
};

}  // namespace fm::bus
