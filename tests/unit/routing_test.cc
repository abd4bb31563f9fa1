// The broker's routing table without sockets: next hops, learning, forgetting, expiry.
#include "broker/routing.h"

#include <algorithm>
#include <catch2/catch.hpp>

using fm::bus::RoutingTable;

TEST_CASE(
    "a destination behind a child broker goes down to that child, unknown ones go up, or are unreachable at the root",
    "[unit]") {
  RoutingTable node(10'000, /*has_upstream=*/true);
  node.Learn("w/a/1", "broker/x", 0);
  RoutingTable::Hop hop = node.NextHop("w/a/1", false);
  CHECK(hop.kind == RoutingTable::Hop::kChild);
  CHECK(hop.child == "broker/x");
  CHECK(node.NextHop("w/b/1", false).kind == RoutingTable::Hop::kUp);
  // What came down from the parent never goes back up: no loops in the tree.
  CHECK(node.NextHop("w/b/1", true).kind == RoutingTable::Hop::kUnreachable);

  RoutingTable root(10'000, /*has_upstream=*/false);
  CHECK(root.NextHop("w/b/1", false).kind == RoutingTable::Hop::kUnreachable);
}

TEST_CASE("a peer that moves to another child broker is routed there once its old route is gone", "[unit]") {
  RoutingTable t(10'000, false);
  t.SeenChild("broker/x", 0);
  t.SeenChild("broker/y", 0);
  CHECK(t.Learn("w/a/1", "broker/x", 0));
  // While broker/x is there and its route fresh, broker/y cannot take the address over.
  CHECK_FALSE(t.Learn("w/a/1", "broker/y", 5));
  CHECK(t.NextHop("w/a/1", false).child == "broker/x");
  // Gone (a send to it failed) or stale: the new route wins.
  t.ForgetChild("broker/x");
  CHECK(t.Learn("w/a/1", "broker/y", 6));
  CHECK(t.NextHop("w/a/1", false).child == "broker/y");
  CHECK(t.Learn("w/b/1", "broker/y", 6));
  t.SeenChild("broker/x", 7);
  CHECK(t.Learn("w/b/1", "broker/x", 6 + 10'000));
  CHECK(t.NextHop("w/b/1", false).child == "broker/x");
}

TEST_CASE("a child broker that is gone takes its routes with it, routes and peers expire after the ttl", "[unit]") {
  RoutingTable t(1000, false);
  t.Learn("w/a/1", "broker/x", 0);
  t.Learn("w/b/1", "broker/x", 0);
  t.Learn("w/c/1", "broker/y", 0);
  t.ForgetChild("broker/x");
  CHECK(t.NextHop("w/a/1", false).kind == RoutingTable::Hop::kUnreachable);
  CHECK(t.NextHop("w/c/1", false).child == "broker/y");

  CHECK(t.SeenLocal("c/tool/1", 0));
  CHECK_FALSE(t.SeenLocal("c/tool/1", 500));  // not new: no announcement needed
  t.Expire(1200);
  CHECK(t.routes() == 0);       // learned at 0
  CHECK(t.local_peers() == 1);  // refreshed at 500
  t.Expire(1600);
  CHECK(t.local_peers() == 0);
}

TEST_CASE("a node broker announces every peer reachable through it, never the broker's own name", "[unit]") {
  RoutingTable t(10'000, true);
  t.SeenLocal("w/a/1", 0);
  t.Learn("w/b/1", "broker/x", 0);
  t.Learn("fm-broker", "broker/x", 0);
  std::vector<std::string> peers = t.Reachable();
  std::sort(peers.begin(), peers.end());
  CHECK(peers == std::vector<std::string>{"w/a/1", "w/b/1"});
}
