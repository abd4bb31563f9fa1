// Claim proofs (runtime/claim_proof.h): only the claimer's secret key makes one that the
// root's secret key opens, for the address and time it says.
#include "runtime/claim_proof.h"

#include <zmq.h>

#include <catch2/catch.hpp>

using namespace fm;
using namespace fm::bus;
using Catch::Contains;

namespace {
struct Pair {
  std::string public_key, secret_key;
  Pair() {
    char pub[41], sec[41];
    REQUIRE(zmq_curve_keypair(pub, sec) == 0);
    public_key = pub;
    secret_key = sec;
  }
};
constexpr uint64_t kNow = 1'700'000'000'000;
}  // namespace

TEST_CASE("a claim proof made with the claimer's key opens at the root, and nothing else does", "[unit]") {
  Pair peer, root, other;
  auto proof = MakeClaimProof("w/w1/abc", peer.public_key, peer.secret_key, root.public_key, kNow);
  REQUIRE(proof.ok());
  CHECK(CheckClaimProof(*proof, root.secret_key, kNow + 1000).ok());
  // Another root's key does not open it.
  CHECK_THAT(CheckClaimProof(*proof, other.secret_key, kNow).message(), Contains("does not open"));
  // Claimed for another key: a node broker naming another peer's key with its own proof.
  ClaimProof forged = *proof;
  forged.key = other.public_key;
  CHECK_THAT(CheckClaimProof(forged, root.secret_key, kNow).message(), Contains("does not open"));
  // Moved to another address or time: the box says otherwise.
  ClaimProof moved = *proof;
  moved.address = "operator/ops/1";
  CHECK_THAT(CheckClaimProof(moved, root.secret_key, kNow).message(), Contains("something else"));
  moved = *proof;
  moved.time_ms += 1;
  CHECK_FALSE(CheckClaimProof(moved, root.secret_key, kNow).ok());
  // Whether the peer seals is in the box too: a node broker cannot say it does not (and
  // pass on its messages unsealed) or that it does.
  auto sealing = MakeClaimProof("w/w1/abc", peer.public_key, peer.secret_key, root.public_key, kNow, true);
  REQUIRE(sealing.ok());
  CHECK(CheckClaimProof(*sealing, root.secret_key, kNow).ok());
  moved = *sealing;
  moved.seals = false;
  CHECK_THAT(CheckClaimProof(moved, root.secret_key, kNow).message(), Contains("something else"));
  moved = *proof;
  moved.seals = true;
  CHECK_THAT(CheckClaimProof(moved, root.secret_key, kNow).message(), Contains("something else"));
  // Too old (or from too far ahead).
  CHECK_THAT(CheckClaimProof(*proof, root.secret_key, kNow + kClaimProofValidMs + 1).message(), Contains("made"));
  // Bytes that are no box.
  ClaimProof broken = *proof;
  broken.box[3] ^= 1;
  CHECK_FALSE(CheckClaimProof(broken, root.secret_key, kNow).ok());
  broken = *proof;
  broken.nonce.resize(3);
  CHECK_THAT(CheckClaimProof(broken, root.secret_key, kNow).message(), Contains("malformed"));
}

TEST_CASE("a claim proof travels on the wire unchanged", "[unit]") {
  Pair peer, root;
  auto proof = MakeClaimProof("client/alice/x", peer.public_key, peer.secret_key, root.public_key, kNow, true);
  REQUIRE(proof.ok());
  flatbuffers::FlatBufferBuilder fbb;
  fbb.Finish(ToWire(fbb, *proof));
  const auto* wire = flatbuffers::GetRoot<wire::ClaimProof>(fbb.GetBufferPointer());
  CHECK(FromWire(wire) == *proof);
  CHECK(CheckClaimProof(FromWire(wire), root.secret_key, kNow).ok());
}
