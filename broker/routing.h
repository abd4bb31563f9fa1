// The broker's routing table, as plain code: which peers are connected here, which are
// behind which child broker, and where a message for a destination goes next. No
// sockets and no clock: time is passed in. The broker (broker.h) asks it and sends.
//
// Routing of a message for D once local delivery failed (D is not connected here): to
// the child broker D was last seen behind (announced, or the source of a relayed
// message); else up to the parent unless it came from there; else D is unreachable.
// Routes and local peers not refreshed within the ttl are forgotten.
//
// Thread: one.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

namespace fm::bus {

class RoutingTable {
 public:
  explicit RoutingTable(uint64_t ttl_ms, bool has_upstream) : ttl_ms_(ttl_ms), has_upstream_(has_upstream) {}

  struct Hop {
    enum Kind { kChild, kUp, kUnreachable } kind = kUnreachable;
    std::string child;  // kChild: the child broker's identity
  };
  // Where a message for `destination` goes when it is not connected here.
  Hop NextHop(const std::string& destination, bool from_parent) const;

  // A local peer said hello (or sent anything). Returns true when it is new here (the
  // parent should hear of it soon).
  bool SeenLocal(const std::string& peer, uint64_t now_ms);
  // `peer` is behind child broker `child` (announced, or the source of a relayed message).
  // False, and nothing learned, when a fresh route puts `peer` behind another child: one
  // subtree cannot take over an address that lives in another.
  bool Learn(const std::string& peer, const std::string& child, uint64_t now_ms);
  void SeenChild(const std::string& child, uint64_t now_ms) { children_[child] = now_ms; }
  // `peer` is behind `child` now, whatever route it had (the root, once the peer proved it).
  void Assign(const std::string& peer, const std::string& child, uint64_t now_ms) { routes_[peer] = {child, now_ms}; }
  // A send to `child` failed: it is gone, and so are its routes.
  void ForgetChild(const std::string& child);
  // Drops routes and local peers older than the ttl.
  void Expire(uint64_t now_ms);
  // What a node broker announces to its parent: every peer reachable through it.
  std::vector<std::string> Reachable() const;

  size_t routes() const { return routes_.size(); }
  size_t local_peers() const { return local_peers_.size(); }

 private:
  struct Route {
    std::string child;
    uint64_t seen_ms = 0;
  };
  uint64_t ttl_ms_;
  bool has_upstream_;
  std::unordered_map<std::string, uint64_t> local_peers_;  // identity -> last seen
  std::unordered_map<std::string, Route> routes_;          // peer behind a child broker
  std::unordered_map<std::string, uint64_t> children_;     // child broker -> last seen
};

}  // namespace fm::bus
