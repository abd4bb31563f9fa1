// An in-memory Store for unit tests: same contract as RocksStore, no disk.
#include <map>
#include <mutex>

#include "store/store.h"

namespace fm::store {
namespace {

class MemStore final : public Store {
 public:
  Status Write(const WriteBatch& batch, bool /*sync*/) override {
    std::lock_guard lock(mu_);
    for (const auto& op : batch.ops()) {
      switch (op.kind) {
        case WriteBatch::Kind::kPut:
          data_[std::string(op.key)] = std::string(op.value);
          break;
        case WriteBatch::Kind::kDelete:
          data_.erase(std::string(op.key));
          break;
        case WriteBatch::Kind::kDeleteRange:
          // An empty or reversed range deletes nothing (as in RocksDB).
          if (op.key < op.value) {
            data_.erase(data_.lower_bound(std::string(op.key)), data_.lower_bound(std::string(op.value)));
          }
          break;
      }
    }
    return Status::Ok();
  }

  Result<std::optional<std::string>> Get(std::string_view key) const override {
    std::lock_guard lock(mu_);
    auto it = data_.find(std::string(key));
    if (it == data_.end()) return std::optional<std::string>();
    return std::optional<std::string>(it->second);
  }

  Status Scan(std::string_view begin, std::string_view end, const ScanVisitor& visit) const override {
    std::lock_guard lock(mu_);
    for (auto it = data_.lower_bound(std::string(begin)); it != data_.end() && it->first < end; ++it) {
      if (!visit(it->first, it->second)) break;
    }
    return Status::Ok();
  }

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::string> data_;
};

}  // namespace

std::unique_ptr<Store> NewMemStore() { return std::make_unique<MemStore>(); }

}  // namespace fm::store
