// What the broker has queued for its peers (broker/outbound.h), over a kernel played by
// the test: a peer that reads is never cut, one that stops is cut past the limit.
#include "broker/outbound.h"

#include <catch2/catch.hpp>
#include <map>

using fm::bus::DirectedBacklog;
using fm::bus::SendState;
using fm::bus::SubscriberBacklog;

namespace {
// The kernel's view of each descriptor, set by the test; a missing one is not TCP.
struct Kernel {
  std::map<int, SendState> sockets;
  fm::bus::SendProbe probe() {
    return [this](int fd) -> std::optional<SendState> {
      auto it = sockets.find(fd);
      if (it == sockets.end()) return std::nullopt;
      return it->second;
    };
  }
};
}  // namespace

TEST_CASE("a directed peer that reads is never cut, one that stops reading is cut just past the limit", "[unit]") {
  Kernel kernel;
  kernel.sockets[7] = {1000, 0};  // the handshake was acknowledged before tracking began
  kernel.sockets[8] = {500, 0};
  DirectedBacklog backlog(1 << 20, kernel.probe());
  backlog.Saw("reader", 7);
  backlog.Saw("stuck", 8);
  // The reader takes everything as it comes (plus framing the broker never counted).
  for (int i = 0; i < 4096; ++i) {
    kernel.sockets[7].acked += 1024 + 512;
    REQUIRE(backlog.Charge("reader", 1024) == -1);
  }
  CHECK(backlog.Queued("reader") == 0);
  // The stuck peer takes the first 256 KiB it is sent and nothing after.
  int cut = -1;
  uint64_t sent = 0;
  while (cut < 0 && sent < (8u << 20)) {
    cut = backlog.Charge("stuck", 1024);
    sent += 1024;
    if (sent <= (256u << 10)) kernel.sockets[8].acked += 1024;
    kernel.sockets[8].waiting = sent <= (256u << 10) ? 0 : 2 << 20;
  }
  CHECK(cut == 8);
  CHECK(sent > (1u << 20) + (256u << 10));          // not before the limit
  CHECK(sent <= (1u << 20) + (256u << 10) + 1024);  // and at once past it
  CHECK(backlog.Queued("stuck") > (1u << 20));
  // The reader stops reading: the 2 MiB of framing it was acknowledged beyond what the
  // broker counted bank no credit, it is cut just past the limit too.
  cut = -1;
  uint64_t more = 0;
  while (cut < 0 && more < (8u << 20)) {
    cut = backlog.Charge("reader", 64 << 10);
    more += 64 << 10;
  }
  CHECK(cut == 7);
  CHECK(more > (1u << 20));
  CHECK(more <= (1u << 20) + (64u << 10));
}

TEST_CASE("directed backlogs follow descriptors: forgotten on close, rebound when a descriptor is reused", "[unit]") {
  Kernel kernel;
  kernel.sockets[5] = {0, 0};
  DirectedBacklog backlog(1 << 20, kernel.probe());
  backlog.Saw("a", 5);
  CHECK(backlog.tracked() == 1);
  backlog.Forget(5);
  CHECK(backlog.tracked() == 0);
  CHECK(backlog.Charge("a", 4 << 20) == -1);  // not tracked: never cut by a stale count
  backlog.Saw("a", 5);
  backlog.Saw("b", 5);  // the descriptor now serves another connection
  CHECK(backlog.tracked() == 1);
  CHECK(backlog.Charge("a", 4 << 20) == -1);
  CHECK(backlog.Charge("b", 4 << 20) == 5);
  // ipc (no TCP count): never tracked; no limit: nothing tracked.
  DirectedBacklog ipc(1 << 20, kernel.probe());
  ipc.Saw("local", 99);
  CHECK(ipc.Charge("local", 64 << 20) == -1);
  DirectedBacklog off(0, kernel.probe());
  off.Saw("b", 5);
  CHECK(off.Charge("b", 64 << 20) == -1);
}

TEST_CASE(
    "a subscriber that reads nothing while more than the limit is published is cut, readers and idle ones "
    "are not, subscriptions are counted per connection",
    "[unit]") {
  Kernel kernel;
  kernel.sockets[3] = {100, 0};  // reads everything
  kernel.sockets[4] = {100, 0};  // subscribed to a topic nobody publishes: nothing waits
  kernel.sockets[6] = {100, 0};  // stops reading
  SubscriberBacklog backlog(1 << 20, kernel.probe());
  for (int fd : {3, 4, 6}) CHECK(backlog.Subscription(fd, true, 10).count == 1);
  CHECK(backlog.Subscription(3, true, 5).count == 2);
  CHECK(backlog.Subscription(3, true, 5).bytes == 20);
  CHECK(backlog.Subscription(3, false, 5).count == 2);
  CHECK(backlog.Subscription(4, false, 10).count == 0);
  auto none = backlog.Subscription(4, false, 10);  // never below zero
  CHECK(none.count == 0);
  CHECK(none.bytes == 0);
  kernel.sockets[6].waiting = 200 << 10;
  std::vector<int> cut;
  uint64_t published = 0;
  while (cut.empty() && published < (8u << 20)) {
    published += 4096;
    kernel.sockets[3].acked += 4096;
    cut = backlog.Published(4096);
  }
  REQUIRE(cut == std::vector<int>{6});
  CHECK(published > (1u << 20));
  CHECK(published <= (1u << 20) + (1u << 20) / 8 + 4096);
  backlog.Forget(6);
  CHECK(backlog.tracked() == 2);
}
