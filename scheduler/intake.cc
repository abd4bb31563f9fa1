#include "scheduler/intake.h"

#include <algorithm>

namespace fm::sched {

bool FairIntake::Add(const std::string& from, std::string payload) {
  auto [it, fresh] = queues_.try_emplace(from);
  Queue& q = it->second;
  if (q.messages.size() >= options_.per_sender_messages || q.bytes + payload.size() > options_.per_sender_bytes) {
    return false;
  }
  if (fresh) order_.push_back(from);
  q.bytes += payload.size();
  q.messages.push_back(std::move(payload));
  ++queued_;
  return true;
}

std::vector<FairIntake::Message> FairIntake::TakeTurn() {
  std::vector<Message> out;
  // One pass over the senders waiting now: each gives up to per_sender_turn; a sender
  // with more left goes to the back, behind those that were waiting.
  size_t senders = order_.size();
  for (size_t i = 0; i < senders && out.size() < options_.turn; ++i) {
    std::string from = std::move(order_.front());
    order_.pop_front();
    auto it = queues_.find(from);
    Queue& q = it->second;
    const size_t take = std::min({q.messages.size(), options_.per_sender_turn, options_.turn - out.size()});
    for (size_t n = 0; n < take; ++n) {
      q.bytes -= q.messages.front().size();
      out.push_back({from, std::move(q.messages.front())});
      q.messages.pop_front();
    }
    queued_ -= take;
    if (q.messages.empty()) {
      queues_.erase(it);
    } else {
      order_.push_back(std::move(from));
    }
  }
  return out;
}

}  // namespace fm::sched
