// A read view of a store as it will be once some batches not yet written are: Get
// answers from the newest batch that touches the key, then from the store. The
// scheduler reads through it while a commit is in flight on another thread, so that a
// task ended in a turn still being written is found (its t/ record) as if written.
//
// Scan sees the store only: the scheduler scans events (replay, retention), which are
// published once written and so reach a subscriber either way.
//
// Thread: Get/Scan and the batch setters from one thread; the batches must not change
// while set here except by appending (the gathered batch grows turn by turn).
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

#include "store/store.h"

namespace fm::store {

class PendingView final : public Store {
 public:
  explicit PendingView(const Store* base) : base_(base) {}

  // Batches to be written later come later in the list. A batch may grow by appending
  // while set; set the list again whenever a batch was written, moved or replaced.
  void SetPending(std::vector<const WriteBatch*> batches);

  // Not supported: the view reads. Returns Internal.
  Status Write(const WriteBatch& batch, bool sync) override;
  Result<std::optional<std::string>> Get(std::string_view key) const override;
  Status Scan(std::string_view begin, std::string_view end, const ScanVisitor& visit) const override;

 private:
  // Built on the first Get after a batch grew: the last op of each key, and the ranges.
  struct Index {
    const WriteBatch* batch = nullptr;
    size_t indexed = 0;
    std::unordered_map<std::string, size_t> last;  // key -> op position
    std::vector<size_t> ranges;                    // positions of DeleteRange ops
  };
  static void Extend(Index* index);

  const Store* base_;
  mutable std::vector<Index> pending_;
};

}  // namespace fm::store
