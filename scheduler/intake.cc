#include "scheduler/intake.h"

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

std::vector<FairIntake::Message> FairIntake::Take(size_t most) {
  std::vector<Message> out;
  while (out.size() < most && !order_.empty()) {
    std::string from = std::move(order_.front());
    order_.pop_front();
    auto it = queues_.find(from);
    Queue& q = it->second;
    q.bytes -= q.messages.front().size();
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
