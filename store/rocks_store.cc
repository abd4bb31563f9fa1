// The RocksDB-backed Store. Every Write is one rocksdb::WriteBatch; with sync the WAL
// is fsynced before Write returns, which is what makes group commit durable.
#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include "store/store.h"

namespace fm::store {
namespace {

Status FromRocks(const rocksdb::Status& s, const char* what) {
  if (s.ok()) return Status::Ok();
  return Status::Io(std::string(what) + ": " + s.ToString());
}

class RocksStore final : public Store {
 public:
  explicit RocksStore(std::unique_ptr<rocksdb::DB> db) : db_(std::move(db)) {}

  Status Write(const WriteBatch& batch, bool sync) override {
    if (batch.empty()) return Status::Ok();
    rocksdb::WriteBatch rb;
    for (const auto& op : batch.ops()) {
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
    return FromRocks(db_->Write(wo, &rb), "writing to the store");
  }

  Result<std::optional<std::string>> Get(std::string_view key) const override {
    std::string value;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), rocksdb::Slice(key.data(), key.size()), &value);
    if (s.IsNotFound()) return std::optional<std::string>();
    if (!s.ok()) return FromRocks(s, "reading from the store");
    return std::optional<std::string>(std::move(value));
  }

  Status Scan(std::string_view begin, std::string_view end, const ScanVisitor& visit) const override {
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

 private:
  std::unique_ptr<rocksdb::DB> db_;
};

}  // namespace

Result<std::unique_ptr<Store>> OpenRocksStore(const std::string& dir, const RocksOptions& options) {
  rocksdb::Options ro;
  ro.create_if_missing = options.create_if_missing;
  ro.IncreaseParallelism(2);
  ro.max_background_jobs = 2;
  ro.manual_wal_flush = false;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(ro, dir, &raw);
  if (!s.ok()) return Status::Io("opening store at " + dir + ": " + s.ToString());
  return std::unique_ptr<Store>(std::make_unique<RocksStore>(std::unique_ptr<rocksdb::DB>(raw)));
}

}  // namespace fm::store
