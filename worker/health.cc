#include "worker/health.h"

#include <algorithm>

namespace fm::worker {

void Health::OnStarted(const std::string& capability, const std::string& image) {
  failures_.erase(capability);
  proven_.insert(capability);
  if (!image.empty()) started_image_[capability] = image;
}

bool Health::OnStartFailed(const std::string& capability, const std::string& step, const std::string& message,
                           const std::string& image, uint64_t now_ms) {
  proven_.erase(capability);
  if (quarantined_.count(capability)) return false;
  uint32_t& n = failures_[capability];
  if (++n < options_.quarantine_after) return false;
  Quarantine q;
  std::string why = message.size() > 300 ? message.substr(0, 300) + "..." : message;
  q.reason = step + " failed " + std::to_string(n) + "x in a row: " + why;
  auto started = started_image_.find(capability);
  q.probe_image = started != started_image_.end() ? started->second : image;
  q.delay_ms = options_.probe_initial_ms;
  q.next_probe_ms = now_ms + q.delay_ms;
  quarantined_[capability] = std::move(q);
  failures_.erase(capability);
  return true;
}

std::vector<std::pair<std::string, std::string>> Health::DueProbes(uint64_t now_ms) {
  std::vector<std::pair<std::string, std::string>> due;
  for (auto& [capability, q] : quarantined_) {
    if (q.probing || now_ms < q.next_probe_ms) continue;
    q.probing = true;
    due.emplace_back(capability, q.probe_image);
  }
  return due;
}

bool Health::OnProbe(const std::string& capability, bool ok, const std::string& message, uint64_t now_ms) {
  auto it = quarantined_.find(capability);
  if (it == quarantined_.end()) return false;
  Quarantine& q = it->second;
  q.probing = false;
  if (ok) {
    quarantined_.erase(it);
    return true;
  }
  ++q.probes_failed;
  q.delay_ms = std::min(q.delay_ms * 2, options_.probe_max_ms);
  q.next_probe_ms = now_ms + q.delay_ms;
  q.last_probe_error = message;
  return false;
}

std::vector<std::string> Health::Announced(const std::vector<std::string>& capabilities) const {
  std::vector<std::string> out;
  for (const auto& c : capabilities) {
    if (quarantined_.count(c)) continue;
    if (c == "session" && quarantined_.count("docker")) continue;  // sessions run in containers
    out.push_back(c);
  }
  return out;
}

}  // namespace fm::worker
