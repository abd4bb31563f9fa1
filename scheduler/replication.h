// A standby scheduler, second part: the leader ships every batch it writes to its
// standbys, and nothing it acknowledged can be missing from a standby that may lead
// (DESIGN.md "A standby scheduler", docs/ARCHITECTURE.md "Replication").
//
// The leader binds --ha-listen and says where in its leader key; a standby reads the key,
// connects (DEALER to the leader's ROUTER) and asks to join. It is sent a copy of the
// leader's whole store taken at a batch boundary (a RocksDB checkpoint, read in chunks of
// at most 1 MiB, at most 4 unacknowledged), then every batch written after it, each
// numbered (epoch, index); it applies each with the same Store::Write, synced, and
// acknowledges it. Once it has acknowledged the newest batch the leader adds it to the
// in-sync set in etcd (after it has begun to wait for its acknowledgements, so that the
// set never names a standby that may lack a released batch).
//
// Release: Replicator::Write returns only when the batch is synced here and acknowledged
// by every standby of the in-sync set; the scheduler sends the batch's replies,
// dispatches and events after that, as it does after a local write. A member silent for
// --ha-lag-max is removed from the set in etcd first (guarded by the leader key), then
// no longer waited for; if etcd cannot be written the leader stops (exit 3): it can
// neither wait for ever nor release what a member of the set may lack.
//
// A standby refuses a batch of another epoch than the leader key it follows, or out of
// order; the bytes from the link are parsed with every size checked. A standby's store
// is marked incomplete (DATA/ha-incomplete) from the first chunk of a copy until the
// last: such a store never leads, even by force.
//
// Threads: the leader's socket has a thread of its own; Write runs on the scheduler's
// commit thread (or its loop's, one at a time). A Follower's socket has its own thread.
#pragma once

#include <spdlog/logger.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "broker/zap.h"
#include "runtime/cert.h"
#include "scheduler/ha.h"
#include "store/store.h"

namespace fm::ha {

struct ReplicationOptions {
  std::string listen;             // tcp://HOST:PORT (PORT may be *)
  std::string name = "fm";        // the cluster's name in etcd
  std::vector<std::string> etcd;  // endpoints
  uint64_t lease_ms = 3000;
  uint64_t lag_max_ms = 2000;  // a member of the set silent this long is dropped from it
  Member self;
  std::string data_dir;  // where store copies for joining standbys are made
  // CURVE (with --cert): this scheduler's certificate, and the directory of the public
  // certificates of the cluster's schedulers (--ha-peers). The leader admits only those
  // keys, of role scheduler; a standby follows only a leader whose key is among them.
  bus::Certificate own;
  std::string peers_dir;
};

// A standby as the leader sees it (fm-ctl ha, metrics).
struct StandbyView {
  std::string node;
  std::string state;  // "copying", "catching up", "joining", "in sync"
  uint64_t acked = 0;
  uint64_t behind = 0;   // batches written here that it has not acknowledged
  bool in_sync = false;  // in the in-sync set
};

class Replicator {
 public:
  Replicator(ReplicationOptions options, spdlog::logger& log);
  ~Replicator();
  // Binds --ha-listen (before leading: the endpoint goes into the leader key).
  Status Bind();
  // What the leader key says: the endpoint, and the public key with CURVE.
  std::string endpoint() const;
  // Stops the thread (a Write then returns an error, nothing is released); the store
  // given to Wrap is no longer read. Called by the wrapped store before it goes.
  void Stop();
  // This scheduler leads: `leadership` (its epoch, the set's revision, and its Fence).
  void Lead(const Leadership* leadership);
  // Wraps the scheduler's store: every Write goes through Write below, the rest to it.
  std::unique_ptr<store::Store> Wrap(std::unique_ptr<store::Store> local);
  // Ships the batch, writes it here, and returns once every member of the in-sync set
  // has it (or was removed from the set).
  Status Write(const store::WriteBatch& batch, bool sync);
  std::vector<StandbyView> Standbys() const;
  // What happened to the in-sync set since the last call (a standby joined or left it),
  // for scheduler.standby events.
  std::vector<std::string> TakeNotices();
  uint64_t index() const;

  // Bounds: the chunk of a copy, the chunks in flight, and the bytes a standby may owe.
  static constexpr size_t kChunkBytes = 1 << 20;
  static constexpr int kChunksInFlight = 4;
  static constexpr size_t kMaxOwedBytes = 256u << 20;
  static constexpr size_t kMaxStandbys = 16;
  static constexpr uint64_t kCopyEveryMs = 5000;  // one copy per node this often at most

 private:
  enum class State { kCopying, kCatchingUp, kJoining, kInSync };
  struct Standby {
    std::string node, store;
    uint64_t session = 0;  // the standby's number for this join, in every message to it
    State state = State::kCopying;
    uint64_t acked = 0;       // last batch index it acknowledged
    uint64_t copy_index = 0;  // the batch its copy was taken after
    uint64_t chunks_sent = 0, chunks_acked = 0;
    bool copy_done = false;  // every chunk sent
    std::string next_key;    // where the copy goes on
    std::unique_ptr<store::Store> copy;
    std::string copy_dir;
    std::deque<std::pair<uint64_t, std::shared_ptr<const std::string>>> held;  // batches after the copy
    size_t owed_bytes = 0;                                                     // sent or held, not acknowledged
    std::map<uint64_t, size_t> sizes;                                          // index -> bytes, for owed_bytes
    uint64_t heard_ms = 0;
    uint64_t retry_ms = 0;    // when to try the set again after a failed write
    uint64_t join_floor = 0;  // released_ when it began to be waited for
    bool named = false;       // in the set in etcd (or maybe: a write's outcome unknown)
  };
  struct Outgoing {
    std::string to;
    std::vector<std::string> frames;
    std::shared_ptr<const std::string> batch;  // the last frame, when a batch
  };

  void Run();
  void OnMessage(const std::string& from, std::vector<zmq::message_t>& frames, uint64_t now_ms);
  void StartCopy(const std::string& from, Standby& s, uint64_t now_ms);
  void SendChunks(const std::string& from, Standby& s);
  void Release(Standby& s, uint64_t index);
  void EndCopy(Standby& s);
  // The set in etcd: written (a failed guard means another leads: the process ends), and
  // read back (after a write whose outcome is unknown). Under isr_mu_.
  Status WriteSet(const std::vector<Member>& members);
  Result<std::vector<Member>> ReadSet();
  void AddToSet(const std::string& id, uint64_t now_ms);
  void Forget(const std::string& from, const std::string& why);  // under mu_
  void Queue(Outgoing out);                                      // under mu_
  void Notice(std::string what);                                 // under mu_
  void Wake();
  // Self and every standby named in etcd, less `without`, plus `with`. Under mu_.
  std::vector<Member> NamedMembers(const std::vector<std::string>& without, const std::string& with) const;

  ReplicationOptions options_;
  spdlog::logger& log_;
  zmq::context_t context_{1};
  std::unique_ptr<bus::TrustStore> trust_;
  std::unique_ptr<bus::ZapHandler> zap_;  // bound before the socket (same context)
  zmq::socket_t socket_;
  std::string endpoint_;
  int wake_fd_ = -1;
  const Leadership* leadership_ = nullptr;
  store::Store* local_ = nullptr;

  std::mutex write_mu_;  // a copy is taken between two batches
  mutable std::mutex mu_;
  std::condition_variable acked_;
  uint64_t index_ = 0;                       // the last batch written
  uint64_t released_ = 0;                    // the last batch Write returned
  std::map<std::string, Standby> standbys_;  // by routing id
  std::set<std::string> waited_;             // routing ids whose acks release batches
  std::deque<Outgoing> outbox_;
  std::vector<std::string> notices_;  // bounded: kept to the last 64
  uint64_t copies_ = 0;
  bool stop_ = false;

  std::map<std::string, uint64_t> last_copy_ms_;  // node -> when it was last sent a copy

  std::mutex isr_mu_;  // one write of the set at a time; every standby named is waited for
  std::unique_ptr<EtcdClient> etcd_;
  int64_t isr_revision_ = 0;
  bool stale_revision_ = false;
  std::thread thread_;
};

// A standby's side: applies what the leader it follows ships, into its own store.
class Follower {
 public:
  // With `options.peers_dir`, the link is CURVE (the leader's key must be in it).
  Follower(store::Store* store, const ReplicationOptions& options, spdlog::logger& log);
  ~Follower();
  // Follows the leader whose key says `leader_value` (epoch `epoch`); a change of leader
  // starts over (a copy of the new leader's store).
  void Follow(const std::string& leader_value, uint64_t epoch);
  // Stops applying; nothing more is written once it returns.
  void Stop();
  // Whether the store holds a whole copy (not marked incomplete).
  bool Complete() const;
  uint64_t applied() const { return applied_.load(); }

 private:
  void Run(std::string endpoint, std::string key, uint64_t epoch);
  Status MarkIncomplete();
  Status MarkComplete();

  store::Store* store_;
  std::string data_dir_;
  Member self_;
  bus::Certificate own_;
  std::unique_ptr<bus::TrustStore> trust_;
  spdlog::logger& log_;
  std::string endpoint_, key_;
  std::string refused_;  // why the leader is not followed, said once
  uint64_t epoch_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> applied_{0};
  std::thread thread_;
};

}  // namespace fm::ha
