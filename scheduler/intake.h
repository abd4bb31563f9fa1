// The scheduler's directed messages, queued per sender and taken fairly: one client's
// flood never holds up another peer (an operator's fm-ctl ping, a worker's result).
//
// The daemon reads its socket into Add as fast as messages come (cheap: no decoding),
// so the broker's queue to the scheduler never fills behind a flooder; then it Takes a
// few at a time, one message per sender in turn, until its turn's budget (in messages
// and in time) is spent, and reads its socket again. A sender whose queue holds
// `per_sender_messages` or `per_sender_bytes` is refused more (Add says so) until it has
// been served, and so is one past an equal share once all senders together hold
// `total_bytes`. Pure: no sockets, no clock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <unordered_map>
#include <vector>

namespace fm::sched {

struct IntakeOptions {
  size_t per_sender_messages = 8192;
  size_t per_sender_bytes = 16u << 20;
  // All senders together: past it a sender is refused unless it holds less than an
  // equal share.
  size_t total_bytes = 64u << 20;
};

class FairIntake {
 public:
  struct Message {
    std::string from;
    std::string payload;
  };

  explicit FairIntake(IntakeOptions options = {}) : options_(options) {}

  // Queues a message from `from`. False (nothing queued) when that sender's queue is
  // full: the caller tells it so.
  [[nodiscard]] bool Add(const std::string& from, std::string payload);

  // Up to `most` messages, one per sender in turn (a sender served goes to the back),
  // FIFO within a sender.
  std::vector<Message> Take(size_t most);

  bool empty() const { return queued_ == 0; }
  size_t queued() const { return queued_; }
  size_t bytes() const { return bytes_; }
  size_t senders() const { return queues_.size(); }

 private:
  struct Queue {
    std::deque<std::string> messages;
    size_t bytes = 0;
  };
  IntakeOptions options_;
  std::unordered_map<std::string, Queue> queues_;
  std::deque<std::string> order_;  // senders with something queued, next to serve first
  size_t queued_ = 0;
  size_t bytes_ = 0;
};

}  // namespace fm::sched
