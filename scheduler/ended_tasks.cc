#include "scheduler/ended_tasks.h"

#include <algorithm>
#include <iterator>

#include "scheduler/records.h"
#include "store/keys.h"

namespace fm::sched {

namespace keys = store::keys;

EndedTasks::EndedTasks(EndedTaskOptions options) : options_(options) { recent_.reserve(options_.recent); }

Status EndedTasks::Recover(const store::Store* store, uint64_t next_task_id) {
  store_ = store;
  if (Status s = RecoverCount(store); !s.ok()) return s;
  return RecoverRecent(store, next_task_id);
}

Status EndedTasks::RecoverCount(const store::Store* store) {
  // The first t/ key: ids below it were deleted.
  std::string begin = keys::Task(0), end = keys::PrefixEnd(keys::kTaskPrefix);
  Status s = store->Scan(begin, end, [&](std::string_view key, std::string_view) {
    trim_from_ = keys::DecodeU64(key.substr(keys::kTaskPrefix.size()));
    return false;
  });
  if (!s.ok()) return s;
  auto counted = records::ReadMeta(*store, keys::kMetaEndedTasks, UINT64_MAX);
  if (!counted.ok()) return counted.status();
  if (*counted != UINT64_MAX) {
    stored_ = *counted;
    stored_persisted_ = true;
    return Status::Ok();
  }
  // A store from before the count: count once, and write it with the next turn.
  stored_ = 0;
  stored_persisted_ = false;
  return store->Scan(begin, end, [&](std::string_view, std::string_view) {
    ++stored_;
    return true;
  });
}

Status EndedTasks::RecoverRecent(const store::Store* store, uint64_t next_task_id) {
  // What fm-ctl tasks lists of ended tasks: the newest ones stored (t/ keys, in id
  // order), found from the ids given last. Tasks end out of id order, so the window
  // scanned is a few times the list.
  const size_t keep = options_.recent;
  if (keep == 0) return Status::Ok();
  const uint64_t window = 4 * static_cast<uint64_t>(keep);
  const uint64_t first = std::max<uint64_t>(trim_from_, next_task_id > window ? next_task_id - window : 0);
  std::vector<Task> found;
  Status failed = Status::Ok();
  Status s = store->Scan(keys::Task(first), keys::PrefixEnd(keys::kTaskPrefix),
                         [&](std::string_view key, std::string_view value) {
                           auto t = records::DecodeTask(value, key);
                           if (!t.ok()) {
                             failed = t.status();
                             return false;
                           }
                           found.push_back(std::move(*t));
                           return true;
                         });
  if (!s.ok()) return s;
  if (!failed.ok()) return failed;
  const size_t skip = found.size() > keep ? found.size() - keep : 0;
  recent_.assign(std::make_move_iterator(found.begin() + static_cast<long>(skip)),
                 std::make_move_iterator(found.end()));
  recent_next_ = 0;  // in id order: the oldest (first) is replaced first once the ring is full
  return Status::Ok();
}

void EndedTasks::Add(Task t, store::WriteBatch* writes, flatbuffers::FlatBufferBuilder& scratch) {
  if (t.record == Task::Record::kWaiting) writes->Delete(keys::WaitingTask(t.id));
  if (t.record == Task::Record::kActive) writes->Delete(keys::ActiveTask(t.id));
  t.record = Task::Record::kNone;
  records::PutTask(writes, keys::Task(t.id), t, scratch);
  ++stored_;
  stored_persisted_ = false;
  // Ended below the trim cursor (it ran long), or in the turn of a trim that cannot see
  // it yet: the scan would pass it by, so the trim visits it apart.
  if (t.id < trim_from_) {
    stragglers_.insert(t.id);
  } else {
    ended_this_turn_.push_back(t.id);
  }
  if (options_.recent == 0) return;
  if (recent_.size() < options_.recent) {
    recent_.push_back(std::move(t));
  } else {
    recent_[recent_next_] = std::move(t);
    recent_next_ = (recent_next_ + 1) % options_.recent;
  }
}

Status EndedTasks::Trim(uint64_t now_ms, store::WriteBatch* writes, const Forget& forget) {
  if (store_ == nullptr || stored_ == 0) return Status::Ok();
  const uint64_t cutoff = now_ms > options_.retention_age_ms ? now_ms - options_.retention_age_ms : 0;
  size_t budget = options_.trim_per_tick;
  // Only what retention needs of each record: decoding whole tasks (their specs) here
  // was a sixth of the loop thread's time in the backlog bench.
  std::vector<records::RecordSummary> expired;
  uint64_t over = stored_ > options_.retention_count ? stored_ - options_.retention_count : 0;
  // The record at `key`: expired (by count, then age), or false to stop there.
  auto consider = [&](std::string_view key, std::string_view value) {
    auto t = records::DecodeSummary(value, key);
    if (!t.ok()) {
      // An unreadable record is dropped with its count, never kept forever.
      records::RecordSummary gone;
      gone.id = keys::DecodeU64(key.substr(keys::kTaskPrefix.size()));
      expired.push_back(std::move(gone));
      return true;
    }
    uint64_t ended = t->ended_ms != 0 ? t->ended_ms : t->submitted_ms;
    if (expired.size() >= over && ended >= cutoff) return false;
    expired.push_back(std::move(*t));
    return true;
  };
  // Stragglers first: they hold the lowest ids.
  for (auto it = stragglers_.begin(); it != stragglers_.end() && budget > 0;) {
    std::string key = keys::Task(*it);
    auto value = store_->Get(key);
    if (!value.ok()) return value.status();
    if (!value->has_value()) {  // written this turn: not visible yet
      ++it;
      continue;
    }
    if (!consider(key, **value)) break;
    --budget;
    it = stragglers_.erase(it);
  }
  uint64_t cursor = trim_from_;
  Status s = store_->Scan(keys::Task(trim_from_), keys::PrefixEnd(keys::kTaskPrefix),
                          [&](std::string_view key, std::string_view value) {
                            if (budget == 0) return false;
                            if (!consider(key, value)) return false;
                            cursor = expired.back().id + 1;
                            --budget;
                            return true;
                          });
  if (!s.ok()) return s;
  trim_from_ = cursor;
  for (uint64_t id : ended_this_turn_) {
    if (id < trim_from_) stragglers_.insert(id);
  }
  for (const records::RecordSummary& t : expired) {
    writes->Delete(keys::Task(t.id));
    forget(t.id, t.owner, t.key);
    --stored_;
    ++trimmed_;
    stored_persisted_ = false;
  }
  return Status::Ok();
}

void EndedTasks::FinishTurn(store::WriteBatch* writes) {
  if (!stored_persisted_) {
    writes->Put(std::string(keys::kMetaEndedTasks), keys::EncodeU64(stored_));
    stored_persisted_ = true;
  }
  ended_this_turn_.clear();
}

const Task* EndedTasks::FindRecent(uint64_t id) const {
  for (const Task& t : recent_) {
    if (t.id == id) return &t;
  }
  return nullptr;
}

Result<std::optional<Task>> EndedTasks::Find(uint64_t id) const {
  if (const Task* t = FindRecent(id)) return std::optional<Task>(*t);
  if (!store_) return std::optional<Task>();
  return records::ReadEndedTask(*store_, id);
}

}  // namespace fm::sched
