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

// An ordered list of mutations applied all-or-nothing by Store::Write. Keys and values
// are copied into one buffer (like RocksDB's own WriteBatch): no allocation per op.
class WriteBatch {
 public:
  enum class Kind : uint8_t { kPut, kDelete, kDeleteRange };
  // A view into the batch: valid until the batch changes.
  struct Op {
    Kind kind;
    std::string_view key;    // begin for kDeleteRange
    std::string_view value;  // end (exclusive) for kDeleteRange
  };
  class Ops {
   public:
    class Iterator {
     public:
      Iterator(const WriteBatch* batch, size_t i) : batch_(batch), i_(i) {}
      Op operator*() const { return batch_->op(i_); }
      Iterator& operator++() {
        ++i_;
        return *this;
      }
      bool operator!=(const Iterator& other) const { return i_ != other.i_; }

     private:
      const WriteBatch* batch_;
      size_t i_;
    };
    explicit Ops(const WriteBatch* batch) : batch_(batch) {}
    Op operator[](size_t i) const { return batch_->op(i); }
    size_t size() const { return batch_->size(); }
    Iterator begin() const { return {batch_, 0}; }
    Iterator end() const { return {batch_, batch_->size()}; }

   private:
    const WriteBatch* batch_;
  };

  void Put(std::string_view key, std::string_view value) { Add(Kind::kPut, key, value); }
  void Delete(std::string_view key) { Add(Kind::kDelete, key, {}); }
  void DeleteRange(std::string_view begin, std::string_view end) { Add(Kind::kDeleteRange, begin, end); }
  // Appends `other`'s ops after these, leaving `other` empty.
  void Append(WriteBatch&& other) {
    if (entries_.empty()) {
      data_.swap(other.data_);
      entries_.swap(other.entries_);
    } else {
      auto shift = static_cast<uint32_t>(data_.size());
      data_.append(other.data_);
      entries_.reserve(entries_.size() + other.entries_.size());
      for (Entry e : other.entries_) {
        e.key += shift;
        e.value += shift;
        entries_.push_back(e);
      }
    }
    other.Clear();
  }
  bool empty() const { return entries_.empty(); }
  size_t size() const { return entries_.size(); }
  // Bytes of keys and values.
  size_t bytes() const { return data_.size(); }
  Op op(size_t i) const {
    const Entry& e = entries_[i];
    return {e.kind, std::string_view(data_).substr(e.key, e.key_size),
            std::string_view(data_).substr(e.value, e.value_size)};
  }
  Ops ops() const { return Ops(this); }
  // The batch as bytes another process can Parse (a standby scheduler applies the
  // leader's batches as they were written): the op count, then each op's kind and sizes
  // (little-endian u32) before its key and value.
  std::string Serialize() const;
  // A batch from Serialize's bytes. Every size is checked against what is there, so that
  // bytes from a peer cannot make it read out of bounds. Error says what is wrong.
  static Result<WriteBatch> Parse(std::string_view bytes);
  void Clear() {
    data_.clear();
    entries_.clear();
  }

 private:
  struct Entry {
    Kind kind;
    uint32_t key, key_size, value, value_size;  // offsets and sizes in data_
  };
  void Add(Kind kind, std::string_view key, std::string_view value) {
    Entry e{kind, static_cast<uint32_t>(data_.size()), static_cast<uint32_t>(key.size()), 0,
            static_cast<uint32_t>(value.size())};
    data_.append(key);
    e.value = static_cast<uint32_t>(data_.size());
    data_.append(value);
    entries_.push_back(e);
  }

  std::string data_;
  std::vector<Entry> entries_;
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
  // Writes a consistent copy of everything written so far into the new directory
  // `dir`, which a store can be opened from. Error: `dir` exists, cannot be made, or
  // this store cannot copy itself.
  virtual Status Checkpoint(const std::string& dir) const {
    return Status::Unavailable("this store cannot write a copy of itself");
  }
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
