// Claim proofs: how a peer behind a node broker proves to the root broker that it holds
// its address, so that no node broker can speak for a peer whose secret key it does not
// hold (issue #22).
//
// The proof is a crypto_box (libsodium: Curve25519, XSalsa20-Poly1305) of
//   "fm-claim 1\n" ADDRESS "\n" TIME_MS
// made with the peer's secret key for the root's public key, the keys of their CURVE
// certificates. Whoever holds neither secret can neither make one nor alter one: a node
// broker passes proofs up, the root opens them with its secret key and the public key the
// proof names, which must be a trusted certificate that may claim the address.
#pragma once

#include <cstdint>
#include <string>

#include "schemas/fm_generated.h"
#include "schemas/status.h"

namespace fm::bus {

// A CURVE key in Z85 (40 characters) as its 32 bytes. False when it is none.
bool DecodeCurveKey(const std::string& z85, unsigned char out[32]);

struct ClaimProof {
  std::string address;
  std::string key;  // the claimer's public key, Z85
  uint64_t time_ms = 0;
  std::string nonce;  // 24 bytes
  std::string box;
  bool seals = false;  // the peer seals its messages and wants sealed ones (runtime/seal.h); inside the box
  bool operator==(const ClaimProof&) const = default;
};

// How long the root takes a proof after it was made (clock skew between hosts, and the
// time a peer may go without making a new one).
constexpr uint64_t kClaimProofValidMs = 5 * 60 * 1000;
// A peer makes a new proof when its last one is this old.
constexpr uint64_t kClaimProofRenewMs = 60 * 1000;

// Makes a proof that the holder of `own_secret` (Z85; its public key `own_public`)
// claims `address` at `now_ms`, for the root whose public key is `root_public` (Z85).
Result<ClaimProof> MakeClaimProof(const std::string& address, const std::string& own_public,
                                  const std::string& own_secret, const std::string& root_public, uint64_t now_ms,
                                  bool seals = false);

// Opens `proof` with the root's secret key (Z85). Error: it does not open with the key it
// names, says another address or time than it carries, or is older (or newer) than
// kClaimProofValidMs from `now_ms`.
Status CheckClaimProof(const ClaimProof& proof, const std::string& root_secret, uint64_t now_ms);

flatbuffers::Offset<wire::ClaimProof> ToWire(flatbuffers::FlatBufferBuilder& fbb, const ClaimProof& proof);
ClaimProof FromWire(const wire::ClaimProof* proof);

}  // namespace fm::bus
