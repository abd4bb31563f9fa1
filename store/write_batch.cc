// WriteBatch's bytes for other processes (store.h).
#include <cstring>

#include "store/store.h"

namespace fm::store {
namespace {

void PutU32(std::string* out, uint32_t v) {
  char b[4] = {static_cast<char>(v), static_cast<char>(v >> 8), static_cast<char>(v >> 16), static_cast<char>(v >> 24)};
  out->append(b, 4);
}

bool GetU32(std::string_view* in, uint32_t* v) {
  if (in->size() < 4) return false;
  const auto* b = reinterpret_cast<const unsigned char*>(in->data());
  *v = static_cast<uint32_t>(b[0]) | static_cast<uint32_t>(b[1]) << 8 | static_cast<uint32_t>(b[2]) << 16 |
       static_cast<uint32_t>(b[3]) << 24;
  in->remove_prefix(4);
  return true;
}

}  // namespace

std::string WriteBatch::Serialize() const {
  std::string out;
  out.reserve(4 + entries_.size() * 9 + data_.size());
  PutU32(&out, static_cast<uint32_t>(entries_.size()));
  for (const Entry& e : entries_) {
    out.push_back(static_cast<char>(e.kind));
    PutU32(&out, e.key_size);
    PutU32(&out, e.value_size);
    out.append(data_, e.key, e.key_size);
    out.append(data_, e.value, e.value_size);
  }
  return out;
}

Result<WriteBatch> WriteBatch::Parse(std::string_view bytes) {
  WriteBatch batch;
  uint32_t count = 0;
  if (!GetU32(&bytes, &count)) return Status::Invalid("write batch: shorter than its op count");
  // Each op takes at least 9 bytes: a count beyond what is there is a lie, not a reason
  // to reserve memory.
  if (count > bytes.size() / 9)
    return Status::Invalid("write batch: " + std::to_string(count) + " ops in " + std::to_string(bytes.size()) +
                           " bytes");
  batch.entries_.reserve(count);
  batch.data_.reserve(bytes.size());
  for (uint32_t i = 0; i < count; ++i) {
    if (bytes.empty()) return Status::Invalid("write batch: op " + std::to_string(i) + " is cut");
    const auto kind = static_cast<uint8_t>(bytes[0]);
    bytes.remove_prefix(1);
    if (kind > static_cast<uint8_t>(Kind::kDeleteRange)) {
      return Status::Invalid("write batch: op " + std::to_string(i) + " has unknown kind " + std::to_string(kind));
    }
    uint32_t key_size = 0, value_size = 0;
    if (!GetU32(&bytes, &key_size) || !GetU32(&bytes, &value_size) ||
        bytes.size() < static_cast<uint64_t>(key_size) + value_size) {
      return Status::Invalid("write batch: op " + std::to_string(i) + " is cut");
    }
    const std::string_view key = bytes.substr(0, key_size), value = bytes.substr(key_size, value_size);
    if (static_cast<Kind>(kind) == Kind::kDeleteRange && !(key < value)) {
      return Status::Invalid("write batch: op " + std::to_string(i) + " deletes a range that ends where it begins");
    }
    batch.Add(static_cast<Kind>(kind), key, value);
    bytes.remove_prefix(static_cast<size_t>(key_size) + value_size);
  }
  if (!bytes.empty()) return Status::Invalid("write batch: " + std::to_string(bytes.size()) + " bytes after its ops");
  return batch;
}

}  // namespace fm::store
