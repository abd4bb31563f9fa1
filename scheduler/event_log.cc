#include "scheduler/event_log.h"

#include <algorithm>

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
constexpr size_t kPublishedBlockBytes = 256 << 10;

// Calls `visit(event)` for each event stored in an e/ value (an EventBlock, or one Event
// as stores written before blocks hold), in seq order, until it returns false. Returns
// false when the value is not a well-formed event record (or `visit` stopped).
template <typename Visit>
bool ForEachStoredEvent(std::string_view stored, Visit visit) {
  std::string storage;
  std::string_view value = codec::AlignedBytes(stored, &storage);
  auto env = codec::Decode(value.data(), value.size());
  if (!env.ok()) return false;
  return codec::ForEachEvent(**env, value, [&](const wire::Event& e, std::string_view) { return visit(e); });
}

}  // namespace

Status EventLog::Recover(const store::Store* store) {
  store_ = store;
  auto next = store->Get(keys::kMetaNextSeq);
  if (!next.ok()) return next.status();
  if (next->has_value() && (*next)->size() == 8) next_seq_ = keys::DecodeU64(**next);
  persisted_seq_ = next_seq_;
  oldest_seq_ = next_seq_;
  // The first stored record's first event (a block is keyed by its last one).
  return store->Scan(keys::kEventPrefix, keys::PrefixEnd(keys::kEventPrefix),
                     [&](std::string_view key, std::string_view value) {
                       oldest_seq_ = keys::DecodeU64(key.substr(2));
                       ForEachStoredEvent(value, [&](const wire::Event& e) {
                         oldest_seq_ = e.seq();
                         return false;
                       });
                       return false;
                     });
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
  auto event = wire::CreateEvent(fbb, seq, type, time, task, worker, reason, message, f.attempt, f.exit_code, stream,
                                 data, eligible, fleet, breakdown, caps, hw, labels, now_ms, owner);
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
  effects->events.push_back({std::string(type_name), effects->event_bytes, offset, size});
  effects->unstored.push_back({offset, size});
  effects->unstored_last_seq = seq;
  effects->unstored_size += size;
  if (effects->unstored_size >= kEventBlockBytes) StoreBlock(effects);
  return seq;
}

void EventLog::FinishTurn(Effects* effects) {
  StoreBlock(effects);
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
    std::string_view cls = type.substr(0, type.find('.') + 1);  // "task.", "worker.", "scheduler."
    if (cls == "scheduler.") {
      flush();
      out.emplace_back(e.topic, std::string(e.payload()));  // one by one: subscribers name the type
      continue;
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

void EventLog::StoreBlock(Effects* effects) {
  if (effects->unstored.empty()) return;
  flatbuffers::FlatBufferBuilder& fbb = scratch_;
  fbb.Clear();
  const std::string& bytes = *effects->event_bytes;
  std::vector<flatbuffers::Offset<wire::EventBytes>> events;
  events.reserve(effects->unstored.size());
  for (auto [offset, size] : effects->unstored) {
    auto envelope = fbb.CreateVector(reinterpret_cast<const uint8_t*>(bytes.data()) + offset, size);
    events.push_back(wire::CreateEventBytes(fbb, envelope));
  }
  effects->writes.Put(keys::Event(effects->unstored_last_seq),
                      codec::Seal(fbb, wire::CreateEventBlock(fbb, fbb.CreateVector(events))));
  effects->unstored.clear();
  effects->unstored_size = 0;
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
  uint64_t new_oldest = oldest_seq_;
  if (next_seq_ - oldest_seq_ > options_.retention_count) new_oldest = next_seq_ - options_.retention_count;
  // By age: at most once a second, look at the oldest stored events.
  if (store_ && now_ms >= next_age_check_ms_ && now_ms > options_.retention_age_ms) {
    next_age_check_ms_ = now_ms + 1000;
    uint64_t cutoff = now_ms - options_.retention_age_ms;
    size_t looked = 0;
    // A record goes when its newest (last) event is older than the cutoff.
    Status s = store_->Scan(keys::Event(new_oldest), keys::Event(persisted_seq_),
                            [&](std::string_view key, std::string_view value) {
                              uint64_t newest_ms = UINT64_MAX;
                              if (!ForEachStoredEvent(value, [&](const wire::Event& e) {
                                    newest_ms = e.time_ms();
                                    return true;
                                  })) {
                                return false;
                              }
                              if (newest_ms >= cutoff) return false;
                              new_oldest = keys::DecodeU64(key.substr(2)) + 1;
                              return ++looked < 10000;
                            });
    (void)s;  // a failed scan only delays retention
  }
  if (new_oldest > oldest_seq_) {
    writes->DeleteRange(keys::Event(oldest_seq_), keys::Event(new_oldest));
    oldest_seq_ = new_oldest;
  }
}

Status EventLog::ForEach(uint64_t since, const std::function<bool(const wire::Event&)>& visit) const {
  if (!store_) return Status::Ok();
  bool stopped = false;
  // Blocks are keyed by their last seq: the first one at or after `since` holds it.
  return store_->Scan(keys::Event(std::max(since, oldest_seq_)), keys::PrefixEnd(keys::kEventPrefix),
                      [&](std::string_view, std::string_view value) {
                        ForEachStoredEvent(value, [&](const wire::Event& e) {
                          if (e.seq() < since) return true;
                          stopped = !visit(e);
                          return !stopped;
                        });
                        return !stopped;
                      });
}

std::string EventLog::Replay(uint64_t since, uint64_t correlation) const {
  flatbuffers::FlatBufferBuilder fbb(4096);
  since = std::max<uint64_t>(since, 1);
  if (since < oldest_seq_) {
    std::string error = "sequence " + std::to_string(since) + " is older than retention: the oldest available is " +
                        std::to_string(oldest_seq_);
    return codec::Seal(fbb, wire::CreateReplayBatchDirect(fbb, correlation, nullptr, true, oldest_seq_, error.c_str()));
  }
  std::vector<flatbuffers::Offset<wire::Event>> events;
  bool full = false;
  Status s = ForEach(since, [&](const wire::Event& e) {
    if (events.size() >= options_.replay_batch || fbb.GetSize() >= kReplyBytes) {
      full = true;
      return false;
    }
    events.push_back(codec::CopyEvent(fbb, e));
    return true;
  });
  if (!s.ok()) {
    fbb.Clear();
    return codec::Seal(
        fbb, wire::CreateReplayBatchDirect(fbb, correlation, nullptr, true, oldest_seq_, s.message().c_str()));
  }
  return codec::Seal(fbb, wire::CreateReplayBatch(fbb, correlation, fbb.CreateVector(events), !full, oldest_seq_));
}

}  // namespace fm::sched
