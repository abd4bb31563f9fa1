// Warnings that a peer can cause, rate-limited so that no flood of bad input can flood
// the log: per key (usually the peer), the first line of each interval is logged, the
// rest are counted and summarised ("... 3728715 more like this from X in the last 10 s")
// when the interval ends. The keys held are bounded.
//
// Thread: one (the owner's loop thread).
#pragma once

#include <spdlog/spdlog.h>

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>

namespace fm::bus {

class RateLimitedLog {
 public:
  explicit RateLimitedLog(std::shared_ptr<spdlog::logger> logger, uint64_t interval_ms = 10'000, size_t max_keys = 4096)
      : logger_(std::move(logger)), interval_ms_(interval_ms), max_keys_(max_keys) {}

  // Logs `line` as a warning unless `key` already logged one in this interval.
  void Warn(const std::string& key, uint64_t now_ms, const std::string& line) {
    Flush(now_ms);
    if (entries_.size() >= max_keys_ && !entries_.count(key)) {
      ++overflow_;  // too many distinct sources at once: counted under one summary
      return;
    }
    Entry& e = entries_[key];
    if (e.logged_ms != 0) {
      ++e.suppressed;
      return;
    }
    e.logged_ms = now_ms;
    logger_->warn("{}", line);
  }

  // Ends the intervals that are over: one summary line for each key that was held back.
  // Call it now and then (a timer) so that the last summary of a flood is not lost.
  void Flush(uint64_t now_ms) {
    if (now_ms < next_flush_ms_) return;
    next_flush_ms_ = now_ms + 1000;
    for (auto it = entries_.begin(); it != entries_.end();) {
      if (now_ms < it->second.logged_ms + interval_ms_) {
        ++it;
        continue;
      }
      if (it->second.suppressed > 0) {
        logger_->warn("... {} more like this from {} in the last {} s", it->second.suppressed, it->first,
                      (now_ms - it->second.logged_ms) / 1000);
      }
      it = entries_.erase(it);
    }
    if (overflow_ > 0 && entries_.empty()) {
      logger_->warn("... {} more warnings from other sources (more than {} at once)", overflow_, max_keys_);
      overflow_ = 0;
    }
  }

 private:
  struct Entry {
    uint64_t logged_ms = 0;
    uint64_t suppressed = 0;
  };
  std::shared_ptr<spdlog::logger> logger_;
  uint64_t interval_ms_;
  size_t max_keys_;
  std::unordered_map<std::string, Entry> entries_;
  uint64_t overflow_ = 0;
  uint64_t next_flush_ms_ = 0;
};

}  // namespace fm::bus
