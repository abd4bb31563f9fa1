// What one turn of the engine produces: store writes, directed messages and events.
// The writes must be durable before anything else leaves the process (group commit).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "store/store.h"

namespace fm::sched {

// A reply (a replay batch, a page of fm-ctl) stops growing past this many bytes: well
// under the directed message limit (8 MiB); the rest comes in the next one.
inline constexpr size_t kReplyBytes = 1 << 20;

struct Directed {
  std::string to;
  std::string payload;
};

// fm-ctl snapshot: the daemon writes a checkpoint of the store into `dir` once the
// turn that asked is committed, and answers `from` (a ControlReply) itself.
struct SnapshotRequest {
  std::string from;
  uint64_t correlation = 0;
  std::string dir;
};

// An event to publish. Its bytes (an Envelope(Event)) live in one buffer shared by the
// events of a turn: no allocation per event.
struct Publication {
  std::string topic;
  std::shared_ptr<const std::string> buffer;
  uint32_t offset = 0, size = 0;
  std::string owner;  // task events: who submitted the task (the topic they go out on)
  std::string_view payload() const { return std::string_view(*buffer).substr(offset, size); }
};

struct Effects {
  store::WriteBatch writes;
  std::vector<Directed> directed;
  std::vector<Publication> events;
  // Messages refused for their sender this turn: (sender, why), for the rate-limited log.
  std::vector<std::pair<std::string, std::string>> refused;
  // The bytes of this turn's events, and those not yet put in a stored block: task
  // output (task.log) apart from the other events, since the two are retained apart.
  std::shared_ptr<std::string> event_bytes;
  struct Unstored {
    std::vector<std::pair<uint32_t, uint32_t>> events;  // offset, size in event_bytes
    uint64_t last_seq = 0, newest_ms = 0;
    size_t bytes = 0;
    void Clear() {
      events.clear();
      bytes = 0;
    }
  };
  Unstored unstored, unstored_logs;
  std::vector<SnapshotRequest> snapshots;
  bool empty() const { return writes.empty() && directed.empty() && events.empty() && snapshots.empty(); }
  void Clear() {
    writes.Clear();
    directed.clear();
    snapshots.clear();
    events.clear();
    refused.clear();
    event_bytes.reset();
    unstored.Clear();
    unstored_logs.Clear();
  }
};

}  // namespace fm::sched
