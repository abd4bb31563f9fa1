#include "store/pending_view.h"

namespace fm::store {

void PendingView::SetPending(std::vector<const WriteBatch*> batches) {
  pending_.clear();
  for (const WriteBatch* b : batches) pending_.push_back(Index{b});
}

Status PendingView::Write(const WriteBatch&, bool) {
  return Status::Internal("the pending view of the store is read-only");
}

void PendingView::Extend(Index* index) {
  const auto ops = index->batch->ops();
  for (size_t i = index->indexed; i < ops.size(); ++i) {
    if (ops[i].kind == WriteBatch::Kind::kDeleteRange) {
      index->ranges.push_back(i);
    } else {
      index->last[std::string(ops[i].key)] = i;
    }
  }
  index->indexed = ops.size();
}

Result<std::optional<std::string>> PendingView::Get(std::string_view key) const {
  for (auto it = pending_.rbegin(); it != pending_.rend(); ++it) {
    Index& index = *it;
    if (index.indexed < index.batch->size()) Extend(&index);
    const auto ops = index.batch->ops();
    // The latest op in this batch that touches the key decides.
    std::optional<size_t> decided;
    if (auto found = index.last.find(std::string(key)); found != index.last.end()) decided = found->second;
    for (auto r = index.ranges.rbegin(); r != index.ranges.rend(); ++r) {
      if (decided && *r < *decided) break;
      const auto op = ops[*r];
      if (op.key <= key && key < op.value) {
        decided = *r;
        break;
      }
    }
    if (!decided) continue;
    const auto op = ops[*decided];
    if (op.kind == WriteBatch::Kind::kPut) return std::optional<std::string>(std::string(op.value));
    return std::optional<std::string>();
  }
  return base_->Get(key);
}

Status PendingView::Scan(std::string_view begin, std::string_view end, const ScanVisitor& visit) const {
  return base_->Scan(begin, end, visit);
}

}  // namespace fm::store
