#include "scheduler/event_log.h"

#include <algorithm>

#include "runtime/policy.h"
#include "schemas/codec.h"
#include "schemas/units.h"
#include "schemas/vocabulary.h"
#include "store/keys.h"

namespace fm::sched {

namespace keys = store::keys;
using codec::Str;

namespace {

// A turn's events are stored as one e/ block, split at about this size so that a block
// stays far under the decoder's limit.
constexpr size_t kEventBlockBytes = 1 << 20;
// Published blocks are kept smaller: a subscriber gets its events in pieces it can
// take without a long pause.
constexpr size_t kPublishedBlockBytes = 64 << 10;  // what a subscriber's queue holds: runtime/bus.h

// Calls `visit(event, its envelope bytes)` for each event stored in an e/ or l/ value (an
// EventBlock, or one Event as stores written before blocks hold), in seq order, until it
// returns false (codec::ForEachEvent). Returns
// false when the value is not a well-formed event record (or `visit` stopped).
template <typename Visit>
bool ForEachStoredEvent(std::string_view stored, Visit visit) {
  std::string storage;
  std::string_view value = codec::AlignedBytes(stored, &storage);
  auto env = codec::Decode(value.data(), value.size());
  if (!env.ok()) return false;
  return codec::ForEachEvent(**env, value, visit);
}

}  // namespace

Status EventLog::Recover(const store::Store* store) {
  store_ = store;
  auto next = store->Get(keys::kMetaNextSeq);
  if (!next.ok()) return next.status();
  if (next->has_value() && (*next)->size() == 8) next_seq_ = keys::DecodeU64(**next);
  persisted_seq_ = next_seq_;
  auto first = RecoverSpace(&events_);
  if (!first.ok()) return first.status();
  oldest_seq_ = *first ? *first : next_seq_;
  auto removed = store->Get(keys::kMetaLogRemovedThrough);
  if (!removed.ok()) return removed.status();
  if (removed->has_value() && (*removed)->size() == 8) log_removed_through_ = keys::DecodeU64(**removed);
  return RecoverSpace(&logs_).status();
}

Result<uint64_t> EventLog::RecoverSpace(Space* space) {
  const std::string data_end = keys::PrefixEnd(space->data), index_end = keys::PrefixEnd(space->index);
  // The first block's key and first event (a block is keyed by its last one).
  std::string first_key;
  uint64_t first_seq = 0;
  Status s = store_->Scan(space->data, data_end, [&](std::string_view key, std::string_view value) {
    first_key = key.substr(space->data.size());
    first_seq = keys::DecodeU64(first_key);
    ForEachStoredEvent(value, [&](const wire::Event& e, std::string_view) {
      first_seq = e.seq();
      return false;
    });
    return false;
  });
  if (!s.ok()) return s;
  space->events = space->bytes = 0;
  std::string first_indexed;
  bool well_formed = true;
  s = store_->Scan(space->index, index_end, [&](std::string_view key, std::string_view value) {
    if (first_indexed.empty()) first_indexed = key.substr(space->index.size());
    keys::BlockIndex b;
    well_formed = keys::DecodeBlockIndex(value, &b);
    space->events += b.events;
    space->bytes += b.bytes;
    return well_formed;
  });
  if (!s.ok()) return s;
  if (first_indexed == first_key && well_formed) return first_seq;
  // A store from before the index (or one whose index does not match): index every block.
  space->events = space->bytes = 0;
  // Up to the last block there is now only: this turn's own index entries come after.
  recovered_.DeleteRange(space->index, keys::Block(space->index, next_seq_));
  s = store_->Scan(space->data, data_end, [&](std::string_view key, std::string_view value) {
    keys::BlockIndex b;
    b.bytes = static_cast<uint32_t>(value.size());
    ForEachStoredEvent(value, [&](const wire::Event& e, std::string_view) {
      ++b.events;
      b.newest_ms = e.time_ms();
      return true;
    });
    recovered_.Put(keys::Block(space->index, keys::DecodeU64(key.substr(space->data.size()))),
                   keys::EncodeBlockIndex(b));
    space->events += b.events;
    space->bytes += b.bytes;
    return true;
  });
  if (!s.ok()) return s;
  return first_seq;
}

uint64_t EventLog::Append(const EventFields& f, uint64_t now_ms, Effects* effects) {
  flatbuffers::FlatBufferBuilder& fbb = scratch_;
  fbb.Clear();
  auto opt = [&](const std::string& s) { return s.empty() ? 0 : fbb.CreateString(s); };
  flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<wire::PredicateCount>>> breakdown = 0;
  uint32_t eligible = 0, fleet = 0;
  if (f.explanation) {
    std::vector<flatbuffers::Offset<wire::PredicateCount>> counts;
    for (const auto& pc : f.explanation->breakdown) {
      counts.push_back(wire::CreatePredicateCountDirect(fbb, pc.predicate.c_str(), pc.workers, pc.detail.c_str()));
    }
    breakdown = fbb.CreateVector(counts);
    eligible = f.explanation->eligible;
    fleet = f.explanation->fleet;
  }
  flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<flatbuffers::String>>> caps = 0;
  flatbuffers::Offset<wire::Hardware> hw = 0;
  flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<wire::KeyValue>>> labels = 0;
  if (f.worker_info) {
    caps = codec::ToWire(fbb, f.worker_info->capabilities);
    hw = codec::ToWire(fbb, f.worker_info->hardware);
    labels = codec::ToWire(fbb, f.worker_info->labels);
  }
  const uint64_t seq = next_seq_++;
  const std::string_view type_name = Name(f.type), reason_name = Name(f.reason);
  auto type = fbb.CreateString(type_name.data(), type_name.size());
  auto time = fbb.CreateString(EventTime(now_ms));
  auto task = f.task ? fbb.CreateString(TaskName(f.task)) : 0;
  auto reason = reason_name.empty() ? 0 : fbb.CreateString(reason_name.data(), reason_name.size());
  auto worker = opt(f.worker), message = opt(f.message), stream = opt(f.stream), data = opt(f.data);
  auto owner = opt(f.owner);
  auto gpus = f.gpus && !f.gpus->empty() ? codec::ToWire(fbb, *f.gpus) : 0;
  auto endpoint = f.endpoint ? codec::ToWire(fbb, *f.endpoint) : 0;
  auto event =
      wire::CreateEvent(fbb, seq, type, time, task, worker, reason, message, f.attempt, f.exit_code, stream, data,
                        eligible, fleet, breakdown, caps, hw, labels, now_ms, owner, gpus, endpoint, options_.epoch);
  codec::FinishEnvelope(fbb, event);
  if (!effects->event_bytes) {
    // Sized like the last turn's, so that a busy turn does not grow it step by step.
    effects->event_bytes = std::make_shared<std::string>();
    effects->event_bytes->reserve(std::max<size_t>(64 << 10, last_event_bytes_));
    effects->events.reserve(last_event_count_);
  }
  std::string& bytes = *effects->event_bytes;
  auto offset = static_cast<uint32_t>(bytes.size());
  auto size = static_cast<uint32_t>(fbb.GetSize());
  bytes.append(reinterpret_cast<const char*>(fbb.GetBufferPointer()), size);
  effects->events.push_back({std::string(type_name), effects->event_bytes, offset, size, f.owner});
  const bool log = f.type == wire::EventType::TaskLog;
  Effects::Unstored& unstored = log ? effects->unstored_logs : effects->unstored;
  unstored.events.push_back({offset, size});
  unstored.last_seq = seq;
  unstored.newest_ms = now_ms;
  unstored.bytes += size;
  if (unstored.bytes >= kEventBlockBytes) StoreBlock(effects, log);
  return seq;
}

void EventLog::FinishTurn(Effects* effects) {
  StoreBlock(effects, false);
  StoreBlock(effects, true);
  if (!recovered_.empty()) effects->writes.Append(std::move(recovered_));
  if (effects->event_bytes) {
    last_event_bytes_ = effects->event_bytes->size();
    last_event_count_ = effects->events.size();
  }
  if (next_seq_ != persisted_seq_) {
    effects->writes.Put(std::string(keys::kMetaNextSeq), keys::EncodeU64(next_seq_));
    persisted_seq_ = next_seq_;
  }
}

std::vector<std::pair<std::string, std::string>> EventLog::Messages(const std::vector<Publication>& events) {
  std::vector<std::pair<std::string, std::string>> out;
  flatbuffers::FlatBufferBuilder fbb(64 << 10);
  std::vector<flatbuffers::Offset<wire::EventBytes>> block;
  std::string topic;
  size_t bytes = 0;
  auto flush = [&] {
    if (block.empty()) return;
    out.emplace_back(topic, codec::Seal(fbb, wire::CreateEventBlock(fbb, fbb.CreateVector(block))));
    fbb.Clear();
    block.clear();
    bytes = 0;
  };
  for (const auto& e : events) {
    std::string_view type = e.topic;
    std::string cls(type.substr(0, type.find('.') + 1));  // "task.", "worker.", "scheduler."
    if (cls == "scheduler.") {
      flush();
      out.emplace_back(e.topic, std::string(e.payload()));  // one by one: subscribers name the type
      continue;
    }
    if (cls == "task.") {
      // Each owner's task events on a topic of their own (bus::TaskTopic), which a
      // broker lets only that owner (and operators) follow.
      cls = bus::TaskTopic(e.owner);
    }
    if (cls != topic || bytes + e.size > kPublishedBlockBytes) flush();
    topic = cls;
    block.push_back(wire::CreateEventBytes(
        fbb, fbb.CreateVector(reinterpret_cast<const uint8_t*>(e.payload().data()), e.payload().size())));
    bytes += e.size;
  }
  flush();
  return out;
}

void EventLog::StoreBlock(Effects* effects, bool logs) {
  Effects::Unstored& unstored = logs ? effects->unstored_logs : effects->unstored;
  if (unstored.events.empty()) return;
  Space& space = logs ? logs_ : events_;
  flatbuffers::FlatBufferBuilder& fbb = scratch_;
  fbb.Clear();
  const std::string& bytes = *effects->event_bytes;
  std::vector<flatbuffers::Offset<wire::EventBytes>> events;
  events.reserve(unstored.events.size());
  for (auto [offset, size] : unstored.events) {
    auto envelope = fbb.CreateVector(reinterpret_cast<const uint8_t*>(bytes.data()) + offset, size);
    events.push_back(wire::CreateEventBytes(fbb, envelope));
  }
  std::string block = codec::Seal(fbb, wire::CreateEventBlock(fbb, fbb.CreateVector(events)));
  keys::BlockIndex index{static_cast<uint32_t>(events.size()), static_cast<uint32_t>(block.size()), unstored.newest_ms};
  effects->writes.Put(keys::Block(space.data, unstored.last_seq), block);
  effects->writes.Put(keys::Block(space.index, unstored.last_seq), keys::EncodeBlockIndex(index));
  space.events += index.events;
  space.bytes += index.bytes;
  unstored.Clear();
}

const std::string& EventLog::EventTime(uint64_t now_ms) {
  if (now_ms == formatted_ms_) return formatted_time_;
  // "YYYY-MM-DDTHH:MM:SS.mmmZ": the calendar part changes once a second.
  if (formatted_time_.size() != 24 || now_ms / 1000 != formatted_ms_ / 1000) {
    formatted_time_ = FormatTimeMs(now_ms);
  } else {
    unsigned ms = now_ms % 1000;
    formatted_time_[20] = static_cast<char>('0' + ms / 100);
    formatted_time_[21] = static_cast<char>('0' + ms / 10 % 10);
    formatted_time_[22] = static_cast<char>('0' + ms % 10);
  }
  formatted_ms_ = now_ms;
  return formatted_time_;
}

void EventLog::ApplyRetention(uint64_t now_ms, store::WriteBatch* writes) {
  uint64_t cutoff_ms = 0;
  if (store_ && now_ms >= next_age_check_ms_ && now_ms > options_.retention_age_ms) {
    next_age_check_ms_ = now_ms + 1000;
    cutoff_ms = now_ms - options_.retention_age_ms;
  }
  if (uint64_t cut = Trim(&events_, options_.retention_count, UINT64_MAX, cutoff_ms, writes)) {
    oldest_seq_ = std::max(oldest_seq_, cut + 1);
  }
  if (uint64_t cut = Trim(&logs_, UINT64_MAX, options_.log_retention_bytes, cutoff_ms, writes)) {
    log_removed_through_ = std::max(log_removed_through_, cut);
    writes->Put(keys::kMetaLogRemovedThrough, keys::EncodeU64(log_removed_through_));
  }
}

uint64_t EventLog::Trim(Space* space, uint64_t max_events, uint64_t max_bytes, uint64_t cutoff_ms,
                        store::WriteBatch* writes) {
  if (!store_ || (space->events <= max_events && space->bytes <= max_bytes && cutoff_ms == 0)) return 0;
  uint64_t cut = 0, events = space->events, bytes = space->bytes;
  size_t looked = 0;
  // From the first block not already dropped: a drop of an earlier turn may still be
  // on its way to the store.
  Status s = store_->Scan(keys::Block(space->index, space->trimmed_through + 1), keys::PrefixEnd(space->index),
                          [&](std::string_view key, std::string_view value) {
                            keys::BlockIndex b;
                            if (!keys::DecodeBlockIndex(value, &b)) return false;
                            if (events <= max_events && bytes <= max_bytes && b.newest_ms >= cutoff_ms) return false;
                            cut = keys::DecodeU64(key.substr(space->index.size()));
                            events -= std::min<uint64_t>(events, b.events);
                            bytes -= std::min<uint64_t>(bytes, b.bytes);
                            return ++looked < 10000;
                          });
  (void)s;  // a failed scan only delays retention
  if (cut == 0) return 0;
  writes->DeleteRange(keys::Block(space->data, space->trimmed_through), keys::Block(space->data, cut + 1));
  writes->DeleteRange(keys::Block(space->index, space->trimmed_through), keys::Block(space->index, cut + 1));
  space->events = events;
  space->bytes = bytes;
  space->trimmed_through = cut;
  return cut;
}

namespace {

// The events of one space (e/ or l/) from a seq on, read a block at a time: what
// EventLog::ForEach merges.
class StoredEvents {
 public:
  StoredEvents(const store::Store* store, std::string_view prefix, uint64_t since)
      : store_(store), prefix_(prefix), next_key_(keys::Block(prefix, since)), since_(since) {}

  // Reads blocks until an event is at hand or the space has no more.
  Status Fill() {
    while (pos_ >= events_.size() && !ended_) {
      events_.clear();
      pos_ = 0;
      ended_ = true;
      Status s = store_->Scan(next_key_, keys::PrefixEnd(prefix_), [&](std::string_view key, std::string_view value) {
        ended_ = false;
        next_key_ = keys::Block(prefix_, keys::DecodeU64(key.substr(prefix_.size())) + 1);
        // A malformed block is passed over.
        ForEachStoredEvent(value, [&](const wire::Event& e, std::string_view bytes) {
          if (e.seq() >= since_) events_.emplace_back(e.seq(), std::string(bytes));
          return true;
        });
        return false;
      });
      if (!s.ok()) return s;
    }
    return Status::Ok();
  }
  bool empty() const { return pos_ >= events_.size(); }
  uint64_t seq() const { return events_[pos_].first; }
  // The event at hand (its bytes were verified when read).
  const wire::Event& event() const { return *wire::GetEnvelope(events_[pos_].second.data())->body_as_Event(); }
  void Pop() { ++pos_; }

 private:
  const store::Store* store_;
  std::string_view prefix_;
  std::string next_key_;
  uint64_t since_;
  std::vector<std::pair<uint64_t, std::string>> events_;
  size_t pos_ = 0;
  bool ended_ = false;
};

}  // namespace

Status EventLog::ForEach(uint64_t since, const std::function<bool(const wire::Event&)>& visit) const {
  if (!store_) return Status::Ok();
  since = std::max(since, oldest_seq_);
  StoredEvents events(store_, keys::kEventPrefix, since), logs(store_, keys::kLogPrefix, since);
  for (;;) {
    if (Status s = events.Fill(); !s.ok()) return s;
    if (Status s = logs.Fill(); !s.ok()) return s;
    StoredEvents* next = nullptr;
    if (!events.empty() && (logs.empty() || events.seq() < logs.seq())) {
      next = &events;
    } else if (!logs.empty()) {
      next = &logs;
    } else {
      return Status::Ok();
    }
    if (!visit(next->event())) return Status::Ok();
    next->Pop();
  }
}

std::string EventLog::Replay(uint64_t since, uint64_t correlation, const std::optional<std::string>& only_owner) const {
  flatbuffers::FlatBufferBuilder fbb(4096);
  since = std::max<uint64_t>(since, 1);
  if (since < oldest_seq_) {
    std::string error = "sequence " + std::to_string(since) + " is older than retention: the oldest available is " +
                        std::to_string(oldest_seq_);
    return codec::Seal(fbb, wire::CreateReplayBatchDirect(fbb, correlation, nullptr, true, oldest_seq_, error.c_str()));
  }
  std::vector<flatbuffers::Offset<wire::Event>> events;
  bool full = false;
  uint64_t next = since;
  size_t scanned = 0;
  const size_t scan_limit = 64 * options_.replay_batch;  // a client's filtered replay pays per event looked at
  Status s = ForEach(since, [&](const wire::Event& e) {
    if (events.size() >= options_.replay_batch || fbb.GetSize() >= kReplyBytes || scanned >= scan_limit) {
      full = true;
      return false;
    }
    ++scanned;
    next = e.seq() + 1;
    if (only_owner && codec::Str(e.type()).rfind("task.", 0) == 0 && codec::Str(e.owner()) != *only_owner) {
      return true;  // another owner's task
    }
    events.push_back(codec::CopyEvent(fbb, e));
    return true;
  });
  if (!s.ok()) {
    fbb.Clear();
    return codec::Seal(
        fbb, wire::CreateReplayBatchDirect(fbb, correlation, nullptr, true, oldest_seq_, s.message().c_str()));
  }
  auto list = fbb.CreateVector(events);
  return codec::Seal(fbb, wire::CreateReplayBatch(fbb, correlation, list, !full, oldest_seq_, 0, next));
}

}  // namespace fm::sched
