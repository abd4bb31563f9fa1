#include "scheduler/groups.h"

#include <algorithm>

#include "store/keys.h"

namespace fm::sched {

namespace keys = store::keys;

namespace {

std::string EncodeEnded(const Groups::Ended& e) {
  return keys::EncodeU64(e.succeeded) + keys::EncodeU64(e.failed) + keys::EncodeU64(e.cancelled) +
         keys::EncodeU64(e.last_ms);
}

}  // namespace

Status Groups::Recover(const store::Store& store) {
  Status bad = Status::Ok();
  Status s = store.Scan(keys::kGroupPrefix, keys::PrefixEnd(keys::kGroupPrefix),
                        [&](std::string_view key, std::string_view value) {
                          if (value.size() != 32) {
                            bad = Status::Internal("group record " + std::string(key.substr(2)) + " is " +
                                                   std::to_string(value.size()) + " bytes, not 32");
                            return false;
                          }
                          Group& g = groups_[std::string(key.substr(keys::kGroupPrefix.size()))];
                          g.ended = {keys::DecodeU64(value), keys::DecodeU64(value.substr(8)),
                                     keys::DecodeU64(value.substr(16)), keys::DecodeU64(value.substr(24))};
                          return true;
                        });
  return s.ok() ? bad : s;
}

void Groups::Open(const std::string& owner, const std::string& group, uint64_t id) {
  Group& g = groups_[Key(owner, group)];
  if (!g.open.empty() && g.open.back() > id) g.sorted = false;  // read at a start: a/ then q/
  g.open.push_back(id);
  g.gone.push_back(false);
  ++g.live;
}

void Groups::Compact(Group* g) {
  size_t kept = 0;
  for (size_t j = 0; j < g->open.size(); ++j) {
    if (!g->gone[j]) g->open[kept++] = g->open[j];
  }
  g->open.resize(kept);
  g->gone.assign(kept, false);
}

Groups::Group* Groups::Lookup(const std::string& key) {
  auto it = groups_.find(key);
  if (it == groups_.end()) return nullptr;
  Group& g = it->second;
  if (!g.sorted) {
    Compact(&g);
    std::sort(g.open.begin(), g.open.end());
    g.sorted = true;
  }
  return &g;
}

void Groups::Close(const std::string& owner, const std::string& group, uint64_t id, wire::TaskState state,
                   uint64_t now_ms) {
  const std::string key = Key(owner, group);
  Group* g = Lookup(key);
  if (g == nullptr) return;
  auto at = std::lower_bound(g->open.begin(), g->open.end(), id);
  const size_t i = static_cast<size_t>(at - g->open.begin());
  if (at != g->open.end() && *at == id && !g->gone[i]) {
    g->gone[i] = true;
    --g->live;
  }
  switch (state) {
    case wire::TaskState::Succeeded:
      ++g->ended.succeeded;
      break;
    case wire::TaskState::Failed:
      ++g->ended.failed;
      break;
    default:
      ++g->ended.cancelled;
      break;
  }
  g->ended.last_ms = now_ms;
  dirty_.insert(key);
  if (g->cap > 0) {
    if (g->held.erase(id) > 0) {
      --held_;
    } else if (g->flying.erase(id) > 0 && !g->held.empty()) {
      releasable_.insert(key);  // it was in flight: room for a held one
    }
  }
  if (g->live < g->open.size() / 2) Compact(g);
}

void Groups::SetCap(const std::string& owner, const std::string& group, uint32_t cap) {
  Group& g = groups_[Key(owner, group)];
  if (g.cap == 0) g.cap = cap;
}

uint32_t Groups::Cap(const std::string& owner, const std::string& group) const {
  auto it = groups_.find(Key(owner, group));
  return it == groups_.end() ? 0 : it->second.cap;
}

bool Groups::Admit(const std::string& owner, const std::string& group, uint64_t id) {
  auto it = groups_.find(Key(owner, group));
  if (it == groups_.end() || it->second.cap == 0) return true;
  Group& g = it->second;
  // Held ones before it go first: a new task joins behind them.
  if (g.flying.size() < g.cap && g.held.empty()) {
    g.flying.insert(id);
    return true;
  }
  held_ += g.held.insert(id).second;
  if (g.flying.size() < g.cap) releasable_.insert(it->first);
  return false;
}

void Groups::CountInFlight(const std::string& owner, const std::string& group, uint64_t id) {
  groups_[Key(owner, group)].flying.insert(id);
}

void Groups::Hold(const std::string& owner, const std::string& group, uint64_t id) {
  const std::string key = Key(owner, group);
  held_ += groups_[key].held.insert(id).second;
  releasable_.insert(key);
}

bool Groups::Held(const std::string& owner, const std::string& group, uint64_t id) const {
  auto it = groups_.find(Key(owner, group));
  return it != groups_.end() && it->second.held.count(id) > 0;
}

std::vector<Groups::Released> Groups::TakeReleased() {
  std::vector<Released> out;
  for (const std::string& key : releasable_) {
    auto it = groups_.find(key);
    if (it == groups_.end()) continue;
    Group& g = it->second;
    while (!g.held.empty() && (g.cap == 0 || g.flying.size() < g.cap)) {
      const uint64_t id = *g.held.begin();
      out.push_back({key, id});
      g.held.erase(g.held.begin());
      --held_;
      g.flying.insert(id);
    }
  }
  releasable_.clear();
  return out;
}

void Groups::Unrelease(const Released& r, bool hold) {
  auto it = groups_.find(r.key);
  if (it == groups_.end()) return;
  it->second.flying.erase(r.id);
  if (hold) held_ += it->second.held.insert(r.id).second;
}

std::vector<uint64_t> Groups::OpenTasks(const std::string& owner, const std::string& group) {
  std::vector<uint64_t> ids;
  const Group* g = Lookup(Key(owner, group));
  if (g == nullptr) return ids;
  ids.reserve(g->live);
  for (size_t i = 0; i < g->open.size(); ++i) {
    if (!g->gone[i]) ids.push_back(g->open[i]);
  }
  return ids;
}

bool Groups::Find(const std::string& owner, const std::string& group, Ended* ended) const {
  auto it = groups_.find(Key(owner, group));
  if (it == groups_.end()) return false;
  *ended = it->second.ended;
  return true;
}

void Groups::FinishTurn(store::WriteBatch* writes) {
  for (const std::string& key : dirty_) {
    auto it = groups_.find(key);
    if (it != groups_.end()) writes->Put(keys::Group(key), EncodeEnded(it->second.ended));
  }
  dirty_.clear();
}

void Groups::Trim(uint64_t before_ms, size_t max_groups, size_t most, uint64_t now_ms, store::WriteBatch* writes) {
  if (trim_at_ >= trim_order_.size()) {
    if (now_ms < next_round_ms_) return;
    next_round_ms_ = now_ms + 10000;
    trim_order_.clear();
    trim_at_ = 0;
    for (const auto& [key, g] : groups_) {
      if (g.live == 0) trim_order_.push_back(key);
    }
  }
  for (size_t looked = 0; looked < most && trim_at_ < trim_order_.size(); ++looked, ++trim_at_) {
    auto it = groups_.find(trim_order_[trim_at_]);
    if (it == groups_.end() || it->second.live != 0) continue;
    if (it->second.ended.last_ms >= before_ms && groups_.size() <= max_groups) continue;
    writes->Delete(keys::Group(it->first));
    dirty_.erase(it->first);
    groups_.erase(it);
  }
}

}  // namespace fm::sched
