#include "broker/outbound.h"

#include <linux/sockios.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <algorithm>

namespace fm::bus {

std::optional<SendState> ReadSendState(int fd) {
  tcp_info info{};
  socklen_t len = sizeof info;
  if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) return std::nullopt;
  if (len < offsetof(tcp_info, tcpi_bytes_acked) + sizeof info.tcpi_bytes_acked) return std::nullopt;
  int waiting = 0;
  if (ioctl(fd, SIOCOUTQ, &waiting) != 0) waiting = 0;
  return SendState{info.tcpi_bytes_acked, static_cast<uint64_t>(std::max(waiting, 0))};
}

DirectedBacklog::DirectedBacklog(uint64_t limit, SendProbe probe) : limit_(limit), probe_(std::move(probe)) {}

void DirectedBacklog::Saw(const std::string& pipe, int fd) {
  if (limit_ == 0 || fd < 0) return;
  auto it = by_pipe_.find(pipe);
  if (it != by_pipe_.end() && it->second.fd == fd) return;
  if (it != by_pipe_.end()) by_fd_.erase(it->second.fd);
  if (auto old = by_fd_.find(fd); old != by_fd_.end()) by_pipe_.erase(old->second);  // the descriptor was reused
  Entry entry;
  entry.fd = fd;
  auto state = probe_(fd);
  entry.tcp = state.has_value();
  if (state) entry.offset = state->acked;
  by_pipe_[pipe] = entry;
  by_fd_[fd] = pipe;
}

int DirectedBacklog::Charge(const std::string& pipe, size_t bytes) {
  if (limit_ == 0) return -1;
  auto it = by_pipe_.find(pipe);
  if (it == by_pipe_.end() || !it->second.tcp) return -1;
  Entry& e = it->second;
  e.sent += bytes;
  e.unchecked += bytes;
  if (e.unchecked < kCheckEvery && e.queued + e.unchecked <= limit_) return -1;
  e.unchecked = 0;
  auto state = probe_(e.fd);
  if (!state) return -1;  // closing: the monitor says so soon
  const uint64_t taken = state->acked >= e.offset ? state->acked - e.offset : 0;
  if (taken > e.sent) {
    e.offset += taken - e.sent;  // framing and heartbeats: no credit for them
    e.queued = 0;
  } else {
    e.queued = e.sent - taken;
  }
  return e.queued > limit_ ? e.fd : -1;
}

void DirectedBacklog::Forget(int fd) {
  auto it = by_fd_.find(fd);
  if (it == by_fd_.end()) return;
  by_pipe_.erase(it->second);
  by_fd_.erase(it);
}

uint64_t DirectedBacklog::Queued(const std::string& pipe) const {
  auto it = by_pipe_.find(pipe);
  return it == by_pipe_.end() ? 0 : it->second.queued;
}

SubscriberBacklog::SubscriberBacklog(uint64_t limit, SendProbe probe) : limit_(limit), probe_(std::move(probe)) {}

SubscriberBacklog::Held SubscriberBacklog::Subscription(int fd, bool subscribe, size_t topic_bytes) {
  if (fd < 0) return {};
  auto [it, fresh] = by_fd_.try_emplace(fd);
  Entry& e = it->second;
  if (fresh) {
    auto state = probe_(fd);
    e.tcp = state.has_value();
    if (state) e.acked = state->acked;
    e.published_at = published_;
  }
  if (subscribe) {
    ++e.held.count;
    e.held.bytes += topic_bytes;
  } else if (e.held.count > 0) {
    --e.held.count;
    e.held.bytes -= std::min(e.held.bytes, topic_bytes);
  }
  return e.held;
}

std::vector<int> SubscriberBacklog::Published(size_t bytes) {
  std::vector<int> cut;
  if (limit_ == 0) return cut;
  published_ += bytes;
  unchecked_ += bytes;
  // Asked at most every 1/8 of the limit (and never more than once per 4 KiB per
  // subscriber): a subscriber is cut within 1.125 limits of its last progress.
  const uint64_t every = std::max<uint64_t>(limit_ / 8, 4096 * by_fd_.size());
  if (unchecked_ < every) return cut;
  unchecked_ = 0;
  for (auto& [fd, e] : by_fd_) {
    if (!e.tcp) continue;
    auto state = probe_(fd);
    if (!state) continue;
    if (state->acked != e.acked || state->waiting == 0) {
      e.acked = state->acked;
      e.published_at = published_;
    } else if (published_ - e.published_at > limit_) {
      cut.push_back(fd);
    }
  }
  return cut;
}

void SubscriberBacklog::Forget(int fd) { by_fd_.erase(fd); }

}  // namespace fm::bus
