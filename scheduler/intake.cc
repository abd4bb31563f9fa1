#include "scheduler/intake.h"

#include <algorithm>

namespace fm::sched {

bool FairIntake::Add(const std::string& from, std::string payload) {
  auto [it, fresh] = queues_.try_emplace(from);
  Queue& q = it->second;
  // Past the total, only a sender holding less than an equal share of it is taken: many
  // senders cannot make the intake hold senders x per_sender_bytes, and one that floods
  // cannot keep out one that sends a little.
  const bool over_total = bytes_ + payload.size() > options_.total_bytes &&
                          q.bytes + payload.size() > options_.total_bytes / std::max<size_t>(queues_.size(), 1);
  if (q.messages.size() >= options_.per_sender_messages || q.bytes + payload.size() > options_.per_sender_bytes ||
      over_total) {
    if (fresh) queues_.erase(it);
    return false;
  }
  if (fresh) order_.push_back(from);
  q.bytes += payload.size();
  bytes_ += payload.size();
  q.messages.push_back(std::move(payload));
  ++queued_;
  return true;
}

std::vector<FairIntake::Message> FairIntake::Take(size_t most) {
  std::vector<Message> out;
  while (out.size() < most && !order_.empty()) {
    std::string from = std::move(order_.front());
    order_.pop_front();
    auto it = queues_.find(from);
    Queue& q = it->second;
    q.bytes -= q.messages.front().size();
    bytes_ -= q.messages.front().size();
    out.push_back({from, std::move(q.messages.front())});
    q.messages.pop_front();
    --queued_;
    if (q.messages.empty()) {
      queues_.erase(it);
    } else {
      order_.push_back(std::move(from));
    }
  }
  return out;
}

}  // namespace fm::sched
