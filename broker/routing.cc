#include "broker/routing.h"

#include "runtime/addresses.h"

namespace fm::bus {

RoutingTable::Hop RoutingTable::NextHop(const std::string& destination, bool from_parent) const {
  if (auto r = routes_.find(destination); r != routes_.end()) return {Hop::kChild, r->second.child};
  if (has_upstream_ && !from_parent) return {Hop::kUp, {}};
  return {Hop::kUnreachable, {}};
}

bool RoutingTable::SeenLocal(const std::string& peer, uint64_t now_ms) {
  auto [it, fresh] = local_peers_.emplace(peer, now_ms);
  it->second = now_ms;
  return fresh;
}

bool RoutingTable::Learn(const std::string& peer, const std::string& child, uint64_t now_ms) {
  if (peer == kBrokerAddress) return false;
  auto it = routes_.find(peer);
  if (it != routes_.end() && it->second.child != child && now_ms < it->second.seen_ms + ttl_ms_ &&
      children_.count(it->second.child)) {
    return false;
  }
  routes_[peer] = {child, now_ms};
  return true;
}

void RoutingTable::ForgetChild(const std::string& child) {
  children_.erase(child);
  for (auto it = routes_.begin(); it != routes_.end();) {
    it = it->second.child == child ? routes_.erase(it) : std::next(it);
  }
}

void RoutingTable::Expire(uint64_t now_ms) {
  for (auto it = routes_.begin(); it != routes_.end();) {
    it = now_ms > it->second.seen_ms + ttl_ms_ ? routes_.erase(it) : std::next(it);
  }
  for (auto it = local_peers_.begin(); it != local_peers_.end();) {
    it = now_ms > it->second + ttl_ms_ ? local_peers_.erase(it) : std::next(it);
  }
  for (auto it = children_.begin(); it != children_.end();) {
    it = now_ms > it->second + ttl_ms_ ? children_.erase(it) : std::next(it);
  }
}

std::vector<std::string> RoutingTable::Reachable() const {
  std::vector<std::string> peers;
  peers.reserve(local_peers_.size() + routes_.size());
  for (const auto& [peer, seen] : local_peers_) peers.push_back(peer);
  for (const auto& [peer, route] : routes_) peers.push_back(peer);
  return peers;
}

}  // namespace fm::bus
