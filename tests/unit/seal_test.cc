// Seals between a peer and the root (runtime/seal.h): both ends derive one key from their
// own secret and the other's public key; a seal opens only for the same key, way, ends,
// payload and counter.
#include "runtime/seal.h"

#include <zmq.h>

#include <catch2/catch.hpp>
#include <chrono>

using fm::bus::MakeSeal;
using fm::bus::OpenSeal;
using fm::bus::SealWay;
using fm::bus::SharedSealKey;

namespace {
struct Pair {
  std::string public_key, secret_key;
};
Pair NewKeys() {
  char pub[41] = {0}, sec[41] = {0};
  REQUIRE(zmq_curve_keypair(pub, sec) == 0);
  return {pub, sec};
}
}  // namespace

TEST_CASE("a seal opens for the same key, way, ends, payload and counter, and for nothing else", "[unit]") {
  Pair peer = NewKeys(), root = NewKeys(), other = NewKeys();
  auto at_peer = SharedSealKey(peer.secret_key, root.public_key);
  auto at_root = SharedSealKey(root.secret_key, peer.public_key);
  REQUIRE(at_peer.ok());
  REQUIRE(at_root.ok());
  CHECK(*at_peer == *at_root);  // neither ever sent it
  auto elsewhere = SharedSealKey(other.secret_key, peer.public_key);
  REQUIRE(elsewhere.ok());
  CHECK(*elsewhere != *at_root);  // a node broker's own key makes another

  const std::string seal = MakeSeal(*at_peer, SealWay::kUp, 7, "w/a/1", "fm-scheduler", "payload");
  CHECK(seal.size() == fm::bus::kSealBytes);
  uint64_t counter = 0;
  CHECK(OpenSeal(*at_root, SealWay::kUp, seal, "w/a/1", "fm-scheduler", "payload", &counter));
  CHECK(counter == 7);
  CHECK_FALSE(OpenSeal(*elsewhere, SealWay::kUp, seal, "w/a/1", "fm-scheduler", "payload", &counter));
  CHECK_FALSE(OpenSeal(*at_root, SealWay::kDown, seal, "w/a/1", "fm-scheduler", "payload", &counter));
  CHECK_FALSE(OpenSeal(*at_root, SealWay::kUp, seal, "w/b/1", "fm-scheduler", "payload", &counter));
  CHECK_FALSE(OpenSeal(*at_root, SealWay::kUp, seal, "w/a/1", "client/x/1", "payload", &counter));
  CHECK_FALSE(OpenSeal(*at_root, SealWay::kUp, seal, "w/a/1", "fm-scheduler", "payloaD", &counter));
  // The ends and the payload cannot trade bytes: each is length-prefixed.
  CHECK_FALSE(OpenSeal(*at_root, SealWay::kUp, seal, "w/a/1f", "m-scheduler", "payload", &counter));
  std::string bumped = seal;
  bumped[0] = 8;  // another counter with the same MAC
  CHECK_FALSE(OpenSeal(*at_root, SealWay::kUp, bumped, "w/a/1", "fm-scheduler", "payload", &counter));
  CHECK_FALSE(OpenSeal(*at_root, SealWay::kUp, seal.substr(1), "w/a/1", "fm-scheduler", "payload", &counter));
  CHECK_FALSE(SharedSealKey("not a key", root.public_key).ok());
  CHECK_FALSE(SharedSealKey(peer.secret_key, "short").ok());
}

TEST_CASE("seal counters rise past a restart of their maker, and a new proof's floor lets through what follows it",
          "[unit]") {
  using fm::bus::FirstSealFloor;
  using fm::bus::NextSealCounter;
  const uint64_t now_ms = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
  // A maker that has sealed a few goes on rising; one restarted (from 0) starts at the clock,
  // above what the first made a moment before (no seal per microsecond for long).
  uint64_t last = 0;
  for (int i = 0; i < 1000; ++i) {
    const uint64_t next = NextSealCounter(last);
    REQUIRE(next > last);
    last = next;
  }
  CHECK(last >= now_ms * 1000);
  CHECK(NextSealCounter(0) > last - 1000);
  CHECK(NextSealCounter(~0ull - 5) == ~0ull - 4);  // never below last + 1
  // The root, new to a peer proven at now_ms, takes what the peer seals from then on, and
  // nothing sealed a millisecond before the proof.
  CHECK(NextSealCounter(0) > FirstSealFloor(now_ms));
  CHECK((now_ms - 1) * 1000 + 999 <= FirstSealFloor(now_ms));
  CHECK(FirstSealFloor(0) == 0);
}
