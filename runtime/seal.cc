#include "runtime/seal.h"

#include <sodium.h>

#include <algorithm>
#include <chrono>

#include "runtime/claim_proof.h"

namespace fm::bus {

uint64_t NextSealCounter(uint64_t last) {
  const auto now =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch());
  return std::max<uint64_t>(last + 1, static_cast<uint64_t>(now.count()));
}

uint64_t FirstSealFloor(uint64_t proof_time_ms) { return proof_time_ms == 0 ? 0 : proof_time_ms * 1000 - 1; }

namespace {

void Mac(const SealKey& key, SealWay way, uint64_t counter, std::string_view peer, std::string_view other,
         std::string_view payload, unsigned char out[crypto_auth_hmacsha256_BYTES]) {
  crypto_auth_hmacsha256_state state;
  crypto_auth_hmacsha256_init(&state, key.data(), key.size());
  auto add = [&](const void* data, size_t size) {
    crypto_auth_hmacsha256_update(&state, static_cast<const unsigned char*>(data), size);
  };
  // Every variable-length part is preceded by its length: no two inputs read alike.
  auto add_text = [&](std::string_view text) {
    unsigned char size[8];
    for (int i = 0; i < 8; ++i) size[i] = static_cast<unsigned char>(static_cast<uint64_t>(text.size()) >> (8 * i));
    add(size, sizeof size);
    add(text.data(), text.size());
  };
  add_text("fm-seal 1");
  const char w = static_cast<char>(way);
  add(&w, 1);
  unsigned char count[8];
  for (int i = 0; i < 8; ++i) count[i] = static_cast<unsigned char>(counter >> (8 * i));
  add(count, sizeof count);
  add_text(peer);
  add_text(other);
  add_text(payload);
  crypto_auth_hmacsha256_final(&state, out);
}

}  // namespace

Result<SealKey> SharedSealKey(const std::string& own_secret, const std::string& other_public) {
  if (sodium_init() < 0) return Status::Unavailable("libsodium could not start");
  unsigned char secret[32], other[32];
  if (!DecodeCurveKey(own_secret, secret)) return Status::Invalid("no secret key to seal with");
  if (!DecodeCurveKey(other_public, other)) return Status::Invalid("\"" + other_public + "\" is no key");
  SealKey key;
  const bool ok = crypto_box_beforenm(key.data(), other, secret) == 0;
  sodium_memzero(secret, sizeof secret);
  if (!ok) return Status::Invalid("no key can be shared with \"" + other_public + "\"");
  return key;
}

std::string MakeSeal(const SealKey& key, SealWay way, uint64_t counter, std::string_view peer, std::string_view other,
                     std::string_view payload) {
  std::string seal(kSealBytes, '\0');
  for (int i = 0; i < 8; ++i) seal[i] = static_cast<char>(counter >> (8 * i));
  Mac(key, way, counter, peer, other, payload, reinterpret_cast<unsigned char*>(seal.data() + 8));
  return seal;
}

bool OpenSeal(const SealKey& key, SealWay way, std::string_view seal, std::string_view peer, std::string_view other,
              std::string_view payload, uint64_t* counter) {
  if (seal.size() != kSealBytes) return false;
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(seal[i])) << (8 * i);
  unsigned char mac[crypto_auth_hmacsha256_BYTES];
  Mac(key, way, n, peer, other, payload, mac);
  if (sodium_memcmp(mac, seal.data() + 8, sizeof mac) != 0) return false;
  *counter = n;
  return true;
}

}  // namespace fm::bus
