// The store's key layout (docs/ARCHITECTURE.md, "Store"). Integers are big-endian so
// that byte order is numeric order. Never change an existing prefix.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace fm::store::keys {

inline constexpr std::string_view kActivePrefix = "a/";           // a/<id:u64be> -> wire.TaskRecord, not yet ended
inline constexpr std::string_view kTaskPrefix = "t/";             // t/<id:u64be> -> wire.TaskRecord, ended
inline constexpr std::string_view kEventPrefix = "e/";            // e/<last seq:u64be> -> wire.Envelope(EventBlock)
inline constexpr std::string_view kWorkerPrefix = "w/";           // w/<worker id> -> wire.WorkerRecord
inline constexpr std::string_view kClientKeyPrefix = "k/";        // k/<client key> -> <id:u64be>
inline constexpr std::string_view kMetaNextTask = "m/next_task";  // <u64be>
inline constexpr std::string_view kMetaNextSeq = "m/next_seq";    // <u64be>
// <u64be>, random, written when the store is created: tells this store's task ids from
// those of a store that replaced it (workers drop their memory of the old ones).
inline constexpr std::string_view kMetaEpoch = "m/epoch";

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
inline std::string Task(uint64_t id) { return std::string(kTaskPrefix) + EncodeU64(id); }
inline std::string Event(uint64_t seq) { return std::string(kEventPrefix) + EncodeU64(seq); }
inline std::string Worker(std::string_view id) { return std::string(kWorkerPrefix) + std::string(id); }
inline std::string ClientKey(std::string_view key) { return std::string(kClientKeyPrefix) + std::string(key); }
// The first key after every key that starts with `prefix`.
inline std::string PrefixEnd(std::string_view prefix) {
  std::string end(prefix);
  end.back() = static_cast<char>(end.back() + 1);
  return end;
}

}  // namespace fm::store::keys
