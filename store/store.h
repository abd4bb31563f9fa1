// The state store behind a narrow interface: atomic batches, point reads, ordered
// scans. RocksStore is the real one; MemStore serves unit tests. The scheduler library
// only fills WriteBatch values and reads through Store; it never sees RocksDB.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "schemas/status.h"

namespace fm::store {

// An ordered list of mutations applied all-or-nothing by Store::Write.
class WriteBatch {
 public:
  enum class Kind { kPut, kDelete, kDeleteRange };
  struct Op {
    Kind kind;
    std::string key;    // begin for kDeleteRange
    std::string value;  // end (exclusive) for kDeleteRange
  };

  void Put(std::string key, std::string value) { ops_.push_back({Kind::kPut, std::move(key), std::move(value)}); }
  void Delete(std::string key) { ops_.push_back({Kind::kDelete, std::move(key), {}}); }
  void DeleteRange(std::string begin, std::string end) {
    ops_.push_back({Kind::kDeleteRange, std::move(begin), std::move(end)});
  }
  // Appends `other`'s ops after these, leaving `other` empty.
  void Append(WriteBatch&& other) {
    if (ops_.empty()) {
      ops_.swap(other.ops_);
    } else {
      ops_.reserve(ops_.size() + other.ops_.size());
      for (auto& op : other.ops_) ops_.push_back(std::move(op));
    }
    other.ops_.clear();
  }
  bool empty() const { return ops_.empty(); }
  size_t size() const { return ops_.size(); }
  const std::vector<Op>& ops() const { return ops_; }
  void Clear() { ops_.clear(); }

 private:
  std::vector<Op> ops_;
};

using ScanVisitor = std::function<bool(std::string_view key, std::string_view value)>;

// Threads: Write is called from one thread at a time, and may run while other threads
// call Get and Scan (the scheduler commits on its own thread while its loop reads).
class Store {
 public:
  virtual ~Store() = default;
  // Applies every op of `batch` atomically. With `sync`, the batch is on stable storage
  // (WAL fsynced) when this returns Ok. On error nothing of the batch is applied.
  virtual Status Write(const WriteBatch& batch, bool sync) = 0;
  // The value at `key`, nullopt when absent.
  virtual Result<std::optional<std::string>> Get(std::string_view key) const = 0;
  // Visits keys in [begin, end) in ascending byte order until `visit` returns false.
  virtual Status Scan(std::string_view begin, std::string_view end, const ScanVisitor& visit) const = 0;
};

std::unique_ptr<Store> NewMemStore();

struct RocksOptions {
  bool create_if_missing = true;
  // RocksDB's memtable size. Also the free space RocksDB wants before it resumes
  // writing after the disk was full.
  uint64_t write_buffer_size = 64ull << 20;
};
// Opens (creating if allowed) a RocksDB database in `dir`.
Result<std::unique_ptr<Store>> OpenRocksStore(const std::string& dir, const RocksOptions& options = {});

}  // namespace fm::store
