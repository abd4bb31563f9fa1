// The store's key layout (docs/ARCHITECTURE.md, "Store"). Integers are big-endian so
// that byte order is numeric order. Never change an existing prefix.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace fm::store::keys {

inline constexpr std::string_view kActivePrefix = "a/";  // a/<id:u64be> -> wire.TaskRecord, not yet ended
inline constexpr std::string_view kTaskPrefix = "t/";    // t/<id:u64be> -> wire.TaskRecord, ended
// q/<id:u64be> -> wire.TaskRecord of a task waiting for its first placement (pending,
// never placed): the backlog, read lazily after a start; a/ holds every other task not
// ended. A task leaves q/ for a/ when it is first placed, for t/ when it ends unplaced.
inline constexpr std::string_view kWaitingPrefix = "q/";
inline constexpr std::string_view kEventPrefix = "e/";  // e/<last seq:u64be> -> wire.Envelope(EventBlock)
inline constexpr std::string_view kLogPrefix = "l/";    // l/<last seq:u64be> -> ditto, task.log events only
// E/ and L/<last seq:u64be> -> BlockIndex(events, bytes, newest time) of the e/ or l/
// block with that key: what retention counts, without reading the blocks.
inline constexpr std::string_view kEventIndexPrefix = "E/";
inline constexpr std::string_view kLogIndexPrefix = "L/";
inline constexpr std::string_view kWorkerPrefix = "w/";     // w/<worker id> -> wire.WorkerRecord
inline constexpr std::string_view kClientKeyPrefix = "k/";  // k/<client key> -> <id:u64be>
// g/<owner>\0<group> (g/<group> in a keyless cluster) -> <succeeded:u64be><failed:u64be><cancelled:u64be><last end ms:u64be>:
// how many tasks of a group ended, per state (scheduler/groups.h).
inline constexpr std::string_view kGroupPrefix = "g/";
inline constexpr std::string_view kMetaNextTask = "m/next_task";  // <u64be>
inline constexpr std::string_view kMetaNextSeq = "m/next_seq";    // <u64be>
// <u64be>, random, written when the store is created: tells this store's task ids from
// those of a store that replaced it (workers drop their memory of the old ones).
inline constexpr std::string_view kMetaEpoch = "m/epoch";
// <u64be>: how many ended tasks (t/) the store holds, for their retention; absent in a
// store from before it (counted at start, then written).
inline constexpr std::string_view kMetaEndedTasks = "m/ended_tasks";
// <u64be>: the last seq whose task output (l/) the log retention removed; absent when
// it removed none (or in a store from before it).
inline constexpr std::string_view kMetaLogRemovedThrough = "m/log_removed_through";

inline std::string EncodeU64(uint64_t v) {
  std::string out(8, '\0');
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
  return out;
}

// REQUIRES: bytes.size() >= 8. Reads the first 8 bytes.
inline uint64_t DecodeU64(std::string_view bytes) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(bytes[i]);
  return v;
}

inline std::string ActiveTask(uint64_t id) { return std::string(kActivePrefix) + EncodeU64(id); }
inline std::string WaitingTask(uint64_t id) { return std::string(kWaitingPrefix) + EncodeU64(id); }
inline std::string Task(uint64_t id) { return std::string(kTaskPrefix) + EncodeU64(id); }
inline std::string Event(uint64_t seq) { return std::string(kEventPrefix) + EncodeU64(seq); }
// The key of a block (e/, l/) or of its index entry (E/, L/) keyed by `seq`.
inline std::string Block(std::string_view prefix, uint64_t seq) { return std::string(prefix) + EncodeU64(seq); }

// An index entry: <events:u32be><bytes:u32be><newest time ms:u64be>.
struct BlockIndex {
  uint32_t events = 0, bytes = 0;
  uint64_t newest_ms = 0;
};
inline std::string EncodeBlockIndex(const BlockIndex& b) {
  std::string out = EncodeU64((static_cast<uint64_t>(b.events) << 32) | b.bytes);
  return out + EncodeU64(b.newest_ms);
}
// False when `bytes` is not an index entry.
inline bool DecodeBlockIndex(std::string_view bytes, BlockIndex* b) {
  if (bytes.size() != 16) return false;
  uint64_t counts = DecodeU64(bytes);
  b->events = static_cast<uint32_t>(counts >> 32);
  b->bytes = static_cast<uint32_t>(counts);
  b->newest_ms = DecodeU64(bytes.substr(8));
  return true;
}
inline std::string Worker(std::string_view id) { return std::string(kWorkerPrefix) + std::string(id); }
inline std::string ClientKey(std::string_view key) { return std::string(kClientKeyPrefix) + std::string(key); }
inline std::string Group(std::string_view scoped) { return std::string(kGroupPrefix) + std::string(scoped); }
// The first key after every key that starts with `prefix`.
inline std::string PrefixEnd(std::string_view prefix) {
  std::string end(prefix);
  end.back() = static_cast<char>(end.back() + 1);
  return end;
}

}  // namespace fm::store::keys
