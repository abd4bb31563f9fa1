// A standby scheduler: who leads is decided by etcd (Debian's etcd-server,
// spoken to through its v3 JSON gateway), never by fm itself (DESIGN.md "A standby
// scheduler", docs/ARCHITECTURE.md "Leadership").
//
// Every fm-scheduler given the same --etcd and --ha-name competes for one leader key
// held under a lease; the winner's epoch is the key's create revision, greater than
// every earlier leadership's. The in-sync set (who holds everything the leader
// acknowledged) lives in etcd next to it, written only by a leader, guarded by its key:
// a scheduler outside it is never made leader on its own, since its store may lack what
// was acknowledged (an operator may force it: --ha-force-promotion). Without
// --ha-listen the in-sync set is the leader alone: a standby waits, and the scheduler
// that led comes back as leader once its old lease is gone; with it, standbys follow the
// leader and join the set (scheduler/replication.h).
//
// A leader releases nothing (no reply, dispatch or event) once it cannot show that its
// lease is alive: the last keepalive etcd answered was sent less than the lease minus a
// margin ago (etcd expires a lease no earlier than its TTL after that renewal). Past
// that it exits at once, before anyone else can lead.
//
// Thread: EtcdClient is used by one thread at a time. Leadership's keepalive runs on a
// thread of its own; Valid() and Fence() may be called from any thread.
#pragma once

#include <spdlog/logger.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "schemas/status.h"

namespace fm::ha {

// etcd's v3 API over its JSON gateway (keys and values base64, int64 as strings).
class EtcdClient {
 public:
  struct KeyValue {
    std::string key, value;
    int64_t create_revision = 0, mod_revision = 0, lease = 0;
  };
  // `endpoints`: http://HOST:PORT each, tried in turn; `timeout_ms` per request.
  EtcdClient(std::vector<std::string> endpoints, uint64_t timeout_ms);
  ~EtcdClient();
  EtcdClient(const EtcdClient&) = delete;
  EtcdClient& operator=(const EtcdClient&) = delete;

  Result<int64_t> GrantLease(int64_t ttl_seconds);
  // The lease's remaining TTL in seconds; 0 when etcd no longer has it (it expired).
  Result<int64_t> KeepAlive(int64_t lease);
  Status Revoke(int64_t lease);
  Result<std::optional<KeyValue>> Get(const std::string& key);
  // Puts `key` under `lease` when no such key exists. Returns whether it did, and the key
  // as it is now (ours with its create revision, or the holder's).
  Result<std::pair<bool, KeyValue>> CreateIfAbsent(const std::string& key, const std::string& value, int64_t lease);
  // Puts `key` only while `guard` was created at revision `guard_created` (still the same
  // leadership) and `key` was last modified at `key_modified` (0: `key` absent). Returns
  // `key`'s new mod revision, 0 when the guards did not hold (nothing written).
  Result<int64_t> PutIf(const std::string& key, const std::string& value, const std::string& guard,
                        int64_t guard_created, int64_t key_modified);

  // The budget of each call from now on (all endpoints tried within it).
  void set_timeout_ms(uint64_t timeout_ms) { timeout_ms_ = timeout_ms; }

 private:
  // POSTs `body` (JSON) to `path` on the first endpoint that answers; the reply's JSON.
  Result<std::string> Post(const std::string& path, const std::string& body);
  std::vector<std::string> endpoints_;
  size_t current_ = 0;
  uint64_t timeout_ms_;
  void* curl_ = nullptr;  // CURL*, kept for its connection
};

struct LeadershipOptions {
  std::vector<std::string> etcd;  // endpoints
  std::string name = "fm";        // the cluster's name: keys under /fm/NAME/
  uint64_t lease_ms = 3000;
  std::string node;              // this scheduler's name in the in-sync set
  std::string store;             // its store's id (DATA/ha-store-id), so that a replaced one is told apart
  bool fresh_store = false;      // the store holds nothing yet
  bool force_promotion = false;  // lead even when not in the in-sync set (an operator's act)
  std::string describe;          // what the leader key says of it (host, pid, data directory)
  // Called while waiting, at least every lease, with what the standby is waiting for
  // (for systemd's status and watchdog).
  std::function<void(const std::string&)> waiting;
  // Where this scheduler, leading, ships its batches to standbys (said in the leader key).
  std::string replication;
  // While another leads: its leader key's value and epoch (a standby follows it).
  std::function<void(const std::string& leader, uint64_t epoch)> follow;
  // Once the key is free, before competing: stops following and says why this store may
  // not lead ("" when it may).
  std::function<std::string()> ready;
};

// A member of the in-sync set: a scheduler (its node name) with one store (its id).
struct Member {
  std::string node, store;
};
// The in-sync set as kept in etcd (JSON: epoch and members), and back.
std::string IsrValue(uint64_t epoch, const std::vector<Member>& members);
std::vector<Member> IsrMembers(const std::string& value);
std::string Join(const std::vector<Member>& members);  // their nodes, for people

// The leader key's value: who leads, and where standbys fetch its batches.
constexpr std::string_view kReplicationMark = "; batches at ";
std::string LeaderValue(const std::string& node, const std::string& describe, const std::string& replication);
// The endpoint ("" when it names none) and, with CURVE, the leader's public key ("" without).
std::string ReplicationEndpoint(const std::string& leader_value);
std::string ReplicationKey(const std::string& leader_value);
constexpr std::string_view kReplicationKeyMark = " key ";

// Parses --etcd's comma-separated list (each http://HOST:PORT).
Result<std::vector<std::string>> ParseEtcdEndpoints(const std::string& list);

// The id of the store in `data_dir` (DATA/ha-store-id, made with the directory if
// missing) and whether that store holds nothing yet: the in-sync set names stores, so a
// directory replaced or emptied is never taken for the one that was in sync.
Status StoreIdentity(const std::string& data_dir, std::string* id, bool* fresh);

class Leadership {
 public:
  // Competes until this process leads (returns it, the lease kept alive from then on) or
  // `stop` becomes true (kUnavailable). Waits as a standby meanwhile, saying who leads;
  // etcd being unreachable is waited out.
  static Result<std::unique_ptr<Leadership>> Acquire(const LeadershipOptions& options, const std::atomic<bool>& stop,
                                                     spdlog::logger& log);
  ~Leadership();  // revokes the lease: a clean stop hands over at once

  uint64_t epoch() const { return epoch_; }
  // The in-sync set's mod revision in etcd as this leader wrote it on taking the lead.
  int64_t isr_revision() const { return isr_revision_; }
  uint64_t since_ms() const { return since_ms_; }  // wall clock
  bool forced() const { return forced_; }
  // True while the lease is known to be alive (checked against CLOCK_BOOTTIME, which
  // also counts a suspended host's time).
  bool Valid() const;
  // Logs why, then ends the process at once: a leader that may no longer lead sends
  // nothing more.
  [[noreturn]] void Fence(const std::string& why) const;
  // Keepalives etcd answered, and the time left on the lease as last known (for metrics).
  uint64_t renewals() const { return renewals_.load(); }
  double seconds_left() const;

  static constexpr int kFencedExitCode = 3;

 private:
  Leadership(const LeadershipOptions& options, spdlog::logger& log);
  void KeepAliveLoop();
  // The instant (CLOCK_BOOTTIME, ns) past which nothing may be released.
  std::atomic<int64_t> deadline_ns_{0};
  LeadershipOptions options_;
  spdlog::logger& log_;
  std::unique_ptr<EtcdClient> etcd_;
  std::string leader_key_;
  int64_t lease_ = 0;
  int64_t isr_revision_ = 0;
  uint64_t epoch_ = 0;
  uint64_t since_ms_ = 0;
  bool forced_ = false;
  std::atomic<uint64_t> renewals_{0};
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread keepalive_;
};

}  // namespace fm::ha
