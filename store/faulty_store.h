// A Store wrapper that fails writes or reads on demand, for tests of storage faults
// (leveldb's ErrorEnv in spirit).
#pragma once

#include "store/store.h"

namespace fm::store {

class FaultyStore final : public Store {
 public:
  explicit FaultyStore(Store* base) : base_(base) {}

  // While set, every Write fails with this Io error and applies nothing.
  void FailWrites(std::string message) { failure_ = std::move(message); }
  void HealWrites() { failure_.clear(); }
  uint64_t failed_writes() const { return failed_writes_; }
  // While set, every Get and Scan fails with this Io error.
  void FailReads(std::string message) { read_failure_ = std::move(message); }
  // While set, every Get of a key starting with `prefix` fails with this Io error (scans
  // and other keys read fine).
  void FailGetsOf(std::string prefix, std::string message) {
    get_prefix_ = std::move(prefix);
    get_failure_ = std::move(message);
  }
  void HealReads() {
    read_failure_.clear();
    get_failure_.clear();
  }

  Status Write(const WriteBatch& batch, bool sync) override {
    if (!failure_.empty()) {
      ++failed_writes_;
      return Status::Io(failure_);
    }
    return base_->Write(batch, sync);
  }
  Result<std::optional<std::string>> Get(std::string_view key) const override {
    if (!read_failure_.empty()) return Status::Io(read_failure_);
    if (!get_failure_.empty() && key.substr(0, get_prefix_.size()) == get_prefix_) return Status::Io(get_failure_);
    return base_->Get(key);
  }
  Status Scan(std::string_view begin, std::string_view end, const ScanVisitor& visit) const override {
    if (!read_failure_.empty()) return Status::Io(read_failure_);
    return base_->Scan(begin, end, visit);
  }

 private:
  Store* base_;
  std::string failure_, read_failure_, get_prefix_, get_failure_;
  uint64_t failed_writes_ = 0;
};

}  // namespace fm::store
