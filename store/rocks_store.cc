// The RocksDB-backed Store. Every Write is one rocksdb::WriteBatch; with sync the WAL
// is fsynced before Write returns, which is what makes group commit durable.
#include <rocksdb/db.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/options.h>
#include <rocksdb/table.h>
#include <rocksdb/utilities/checkpoint.h>
#include <rocksdb/write_batch.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <mutex>
#include <shared_mutex>
#include <vector>

#include "store/store.h"

namespace fm::store {
namespace {

// Task specs (their env) are in a store: a store directory is its owner's alone.
Status OwnerOnly(const std::string& dir) {
  if (::chmod(dir.c_str(), 0700) != 0) {
    return Status::Io("cannot make " + dir + " its owner's alone (mode 0700): " + std::strerror(errno));
  }
  return Status::Ok();
}

Status FromRocks(const rocksdb::Status& s, const char* what) {
  if (s.ok()) return Status::Ok();
  return Status::Io(std::string(what) + ": " + s.ToString());
}

// RocksDB's own log goes to spdlog rather than a LOG file in the data directory: that
// file fails with the disk, and RocksDB 7.8 (built with assertions) aborts when it
// writes to it again after an error.
class SpdlogRocksLogger final : public rocksdb::Logger {
 public:
  SpdlogRocksLogger() : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL) {}
  using rocksdb::Logger::Logv;
  void Logv(const rocksdb::InfoLogLevel level, const char* format, va_list ap) override {
    if (level < GetInfoLogLevel()) return;
    char buf[1024];
    int n = vsnprintf(buf, sizeof buf, format, ap);
    for (int end = std::min<int>(n, sizeof buf - 1); end > 0 && buf[end - 1] == '\n'; --end) buf[end - 1] = '\0';
    if (level >= rocksdb::InfoLogLevel::ERROR_LEVEL) {
      spdlog::error("rocksdb: {}", buf);
    } else {
      spdlog::warn("rocksdb: {}", buf);
    }
  }
  void Logv(const char* format, va_list ap) override { Logv(rocksdb::InfoLogLevel::INFO_LEVEL, format, ap); }
};

// After a failed write RocksDB 7.8's own error recovery is not safe to rely on (the
// Debian build aborts on an assertion while recovering a failed WAL). So the store
// closes the database at the first failed write, serves reads from a read-only instance
// meanwhile, and reopens the database for writing at the next write: opening replays
// the WAL into a fresh writer, and fails, leaving the store read-only, while the disk
// is still full. RocksDB itself takes concurrent reads and a writer; `mu_` only guards
// swapping the database handle (readers hold it shared, the swap exclusive).
class RocksStore final : public Store {
 public:
  RocksStore(std::string dir, rocksdb::Options options, std::unique_ptr<rocksdb::DB> db)
      : dir_(std::move(dir)), options_(std::move(options)), db_(std::move(db)) {}

  Status Write(const WriteBatch& batch, bool sync) override {
    if (batch.empty()) return Status::Ok();
    if (!writable_) {
      std::unique_lock lock(mu_);
      if (Status s = Reopen(); !s.ok()) return s;
    }
    rocksdb::WriteBatch rb(batch.bytes() + 24 * batch.size() + 64);  // reserved: no regrowth
    // Applied in key order: RocksDB inserts a batch into the memtable's skip list one key
    // after another from where the last one went, so keys in order cost a short step each
    // where keys in turn order (a/, e/, k/, t/ interleaved) cost a search from the top.
    // The outcome is the same: ops on one key keep their order (a stable sort), and a
    // DeleteRange stays where it was, the ops before and after it sorted apart.
    std::vector<uint32_t> order(batch.size());
    for (uint32_t i = 0; i < order.size(); ++i) order[i] = i;
    auto by_key = [&](uint32_t a, uint32_t b) { return batch.op(a).key < batch.op(b).key; };
    for (size_t begin = 0; begin < order.size();) {
      size_t end = begin;
      while (end < order.size() && batch.op(end).kind != WriteBatch::Kind::kDeleteRange) ++end;
      std::stable_sort(order.begin() + static_cast<long>(begin), order.begin() + static_cast<long>(end), by_key);
      begin = end + 1;
    }
    for (uint32_t i : order) {
      const WriteBatch::Op op = batch.op(i);
      rocksdb::Status s;
      switch (op.kind) {
        case WriteBatch::Kind::kPut:
          s = rb.Put(op.key, op.value);
          break;
        case WriteBatch::Kind::kDelete:
          s = rb.Delete(op.key);
          break;
        case WriteBatch::Kind::kDeleteRange:
          s = rb.DeleteRange(op.key, op.value);
          break;
      }
      if (!s.ok()) return FromRocks(s, "building write batch");
    }
    rocksdb::WriteOptions wo;
    wo.sync = sync;
    Status s;
    {
      std::shared_lock lock(mu_);
      s = FromRocks(db_->Write(wo, &rb), "writing to the store");
    }
    if (!s.ok()) {
      std::unique_lock lock(mu_);
      FallBackToReadOnly();
    }
    return s;
  }

  Result<std::optional<std::string>> Get(std::string_view key) const override {
    std::shared_lock lock(mu_);
    if (!db_) return Status::Io("the store is closed after a write error and could not be reopened");
    std::string value;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), rocksdb::Slice(key.data(), key.size()), &value);
    if (s.IsNotFound()) return std::optional<std::string>();
    if (!s.ok()) return FromRocks(s, "reading from the store");
    return std::optional<std::string>(std::move(value));
  }

  Status Scan(std::string_view begin, std::string_view end, const ScanVisitor& visit) const override {
    std::shared_lock lock(mu_);
    if (!db_) return Status::Io("the store is closed after a write error and could not be reopened");
    rocksdb::ReadOptions ro;
    rocksdb::Slice upper(end.data(), end.size());
    ro.iterate_upper_bound = &upper;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
    for (it->Seek(rocksdb::Slice(begin.data(), begin.size())); it->Valid(); it->Next()) {
      auto k = it->key();
      auto v = it->value();
      if (!visit(std::string_view(k.data(), k.size()), std::string_view(v.data(), v.size()))) break;
    }
    return FromRocks(it->status(), "scanning the store");
  }

  Status Checkpoint(const std::string& dir) const override {
    std::shared_lock lock(mu_);
    if (!db_) return Status::Io("the store is closed after a write error and could not be reopened");
    std::error_code ec;
    if (std::filesystem::exists(dir, ec)) return Status::Invalid(dir + " exists already: name a new directory");
    rocksdb::Checkpoint* raw = nullptr;
    if (Status s = FromRocks(rocksdb::Checkpoint::Create(db_.get(), &raw), "preparing a checkpoint"); !s.ok()) return s;
    std::unique_ptr<rocksdb::Checkpoint> checkpoint(raw);
    // Hard links to the table files where the file system allows, copies elsewhere; the
    // WAL is copied (never flushed first), so every synced write is in the copy.
    Status made = FromRocks(checkpoint->CreateCheckpoint(dir, std::numeric_limits<uint64_t>::max()),
                            ("writing a checkpoint to " + dir).c_str());
    if (made.ok()) return OwnerOnly(dir);
    return made;
  }

 private:
  void FallBackToReadOnly() {
    writable_ = false;
    db_.reset();
    rocksdb::DB* raw = nullptr;
    rocksdb::Status s = rocksdb::DB::OpenForReadOnly(options_, dir_, &raw);
    if (s.ok()) db_.reset(raw);
  }

  Status Reopen() {
    db_.reset();
    rocksdb::DB* raw = nullptr;
    rocksdb::Status s = rocksdb::DB::Open(options_, dir_, &raw);
    if (!s.ok()) {
      FallBackToReadOnly();
      return Status::Io("reopening the store at " + dir_ + " for writing: " + s.ToString());
    }
    db_.reset(raw);
    writable_ = true;
    return Status::Ok();
  }

  std::string dir_;
  rocksdb::Options options_;
  mutable std::shared_mutex mu_;
  std::unique_ptr<rocksdb::DB> db_;
  bool writable_ = true;  // touched by the writing thread only
};

}  // namespace

Result<std::unique_ptr<Store>> OpenRocksStore(const std::string& dir, const RocksOptions& options) {
  rocksdb::Options ro;
  ro.create_if_missing = options.create_if_missing;
  ro.IncreaseParallelism(2);
  ro.max_background_jobs = 2;
  ro.manual_wal_flush = false;
  ro.info_log = std::make_shared<SpdlogRocksLogger>();
  ro.write_buffer_size = options.write_buffer_size;
  // A Bloom filter per table file (10 bits a key, ~1% false positives): a point read of a
  // key that is not there — every keyed submission's k/ lookup — skips the files instead
  // of searching each one's index and blocks.
  rocksdb::BlockBasedTableOptions table;
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  ro.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  // Opening replays the WAL into the memtable; keep it there rather than writing it out as
  // an L0 file before the scheduler may start (it is flushed in the background later).
  ro.avoid_flush_during_recovery = true;
  // No memtable insert hints (memtable_insert_with_hint_prefix_extractor): with a backlog
  // of a few hundred thousand tasks RocksDB 7.8 aborted on a skip-list assertion
  // (inlineskiplist.h, splice) in Insert; bench/ANALYSIS.md has what they were worth.
  if (options.create_if_missing) {
    // Created here: RocksDB would log an error about the missing directory first.
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) return Status::Io("creating store directory " + dir + ": " + ec.message());
  }
  // However it was made.
  if (std::filesystem::exists(dir)) {
    if (Status s = OwnerOnly(dir); !s.ok()) return s;
  }
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(ro, dir, &raw);
  if (!s.ok()) return Status::Io("opening store at " + dir + ": " + s.ToString());
  return std::unique_ptr<Store>(std::make_unique<RocksStore>(dir, ro, std::unique_ptr<rocksdb::DB>(raw)));
}

}  // namespace fm::store
