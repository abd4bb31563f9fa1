// Seals: how a directed message between a peer behind node brokers and the root broker
// is authenticated end to end, so that a node broker on the way can delay or drop it but
// not forge or alter it (issue #22).
//
// The peer and the root share a key without ever sending it: crypto_box_beforenm of the
// peer's secret key and the root's public key (or the root's secret and the peer's
// public), the keys of their CURVE certificates. A seal is 8 bytes of a counter and an
// HMAC-SHA-256 under that key of the direction, the counter, the peer's address, the
// other end's address and the payload. Each side takes a seal only with a counter above
// the last it took (no replay), and a node broker that holds neither secret key can make
// none. A peer asks for seals by pinning the root's certificate (--root-cert); the root
// learns it from the peer's claim proof (ClaimProof.seals, inside the box).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "schemas/status.h"

namespace fm::bus {

using SealKey = std::array<unsigned char, 32>;

// The key a peer holding `own_secret` shares with the holder of `other_public` (Z85 each).
Result<SealKey> SharedSealKey(const std::string& own_secret, const std::string& other_public);

// Peer to root (up), root to peer (down), or a peer's published event on its way up to
// the root (counted apart: events travel another path than directed messages).
enum class SealWay : char { kUp = 'u', kDown = 'd', kEvent = 'e' };

constexpr size_t kSealBytes = 8 + 32;

// The counter of the next seal after `last`: above it, and never below the wall clock in
// microseconds. So counters go on rising across a restart of the end that makes them (a
// root broker restarted has no memory of its last), as long as it made fewer than one
// seal per microsecond for the peer and its clock did not step back.
uint64_t NextSealCounter(uint64_t last);

// What the root takes as the last counter of a peer it has no record of (it just
// started, or the peer is new): the time its claim proof was made, in microseconds. The
// peer makes its first proof before its first seal and renews it every minute, so
// nothing it seals after the proof is refused, and whatever it sealed before the proof
// is refused. After a root restart a node broker could present an older proof it kept
// (one is valid 5 minutes): then what the peer sealed since that proof and the old root
// already took could be replayed to the new root once (submissions carry idempotency
// keys; results are deduplicated by task and attempt).
uint64_t FirstSealFloor(uint64_t proof_time_ms);

// A seal of `payload` going `way` between `peer` (the address behind node brokers) and
// `other` (the destination of an up message, the source of a down one).
std::string MakeSeal(const SealKey& key, SealWay way, uint64_t counter, std::string_view peer, std::string_view other,
                     std::string_view payload);

// Whether `seal` is one of MakeSeal's for these; its counter in *counter.
bool OpenSeal(const SealKey& key, SealWay way, std::string_view seal, std::string_view peer, std::string_view other,
              std::string_view payload, uint64_t* counter);

}  // namespace fm::bus
