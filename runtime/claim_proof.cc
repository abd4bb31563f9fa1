#include "runtime/claim_proof.h"

#include <sodium.h>
#include <zmq.h>

#include "schemas/codec.h"

namespace fm::bus {
namespace {

std::string Statement(const std::string& address, uint64_t time_ms, bool seals) {
  return "fm-claim 1\n" + address + "\n" + std::to_string(time_ms) + (seals ? "\nseals" : "");
}

}  // namespace

bool DecodeCurveKey(const std::string& z85, unsigned char out[32]) {
  return z85.size() == 40 && zmq_z85_decode(out, z85.c_str()) != nullptr;
}

Result<ClaimProof> MakeClaimProof(const std::string& address, const std::string& own_public,
                                  const std::string& own_secret, const std::string& root_public, uint64_t now_ms,
                                  bool seals) {
  if (sodium_init() < 0) return Status::Unavailable("libsodium could not start");
  unsigned char secret[32], root[32];
  if (!DecodeCurveKey(own_secret, secret)) return Status::Invalid("no secret key to prove a claim with");
  if (!DecodeCurveKey(root_public, root))
    return Status::Invalid("the root broker's key \"" + root_public + "\" is no key");
  ClaimProof proof;
  proof.address = address;
  proof.key = own_public;
  proof.time_ms = now_ms;
  proof.seals = seals;
  proof.nonce.resize(crypto_box_NONCEBYTES);
  randombytes_buf(proof.nonce.data(), proof.nonce.size());
  const std::string statement = Statement(address, now_ms, seals);
  proof.box.resize(statement.size() + crypto_box_MACBYTES);
  if (crypto_box_easy(reinterpret_cast<unsigned char*>(proof.box.data()),
                      reinterpret_cast<const unsigned char*>(statement.data()), statement.size(),
                      reinterpret_cast<const unsigned char*>(proof.nonce.data()), root, secret) != 0) {
    return Status::Unavailable("cannot make a claim proof");
  }
  sodium_memzero(secret, sizeof secret);
  return proof;
}

Status CheckClaimProof(const ClaimProof& proof, const std::string& root_secret, uint64_t now_ms) {
  if (sodium_init() < 0) return Status::Unavailable("libsodium could not start");
  unsigned char secret[32], claimer[32];
  if (!DecodeCurveKey(root_secret, secret)) return Status::Invalid("the root has no secret key");
  if (!DecodeCurveKey(proof.key, claimer)) return Status::Invalid("the proof names no key");
  if (proof.nonce.size() != crypto_box_NONCEBYTES || proof.box.size() < crypto_box_MACBYTES ||
      proof.box.size() > 1024) {
    return Status::Invalid("the proof is malformed");
  }
  std::string opened(proof.box.size() - crypto_box_MACBYTES, '\0');
  const bool ok =
      crypto_box_open_easy(reinterpret_cast<unsigned char*>(opened.data()),
                           reinterpret_cast<const unsigned char*>(proof.box.data()), proof.box.size(),
                           reinterpret_cast<const unsigned char*>(proof.nonce.data()), claimer, secret) == 0;
  sodium_memzero(secret, sizeof secret);
  if (!ok) return Status::Invalid("the proof does not open with the key it names: it was not made by that key");
  if (opened != Statement(proof.address, proof.time_ms, proof.seals)) {
    return Status::Invalid("the proof says something else than the claim it came with");
  }
  const uint64_t age = now_ms > proof.time_ms ? now_ms - proof.time_ms : proof.time_ms - now_ms;
  if (age > kClaimProofValidMs) {
    return Status::Invalid("the proof was made " + std::to_string(age / 1000) + " s from now (at most " +
                           std::to_string(kClaimProofValidMs / 1000) + " s)");
  }
  return Status::Ok();
}

flatbuffers::Offset<wire::ClaimProof> ToWire(flatbuffers::FlatBufferBuilder& fbb, const ClaimProof& proof) {
  auto bytes = [&](const std::string& s) {
    return fbb.CreateVector(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  };
  auto address = fbb.CreateString(proof.address), key = fbb.CreateString(proof.key);
  auto nonce = bytes(proof.nonce), box = bytes(proof.box);
  return wire::CreateClaimProof(fbb, address, key, proof.time_ms, nonce, box, proof.seals);
}

ClaimProof FromWire(const wire::ClaimProof* proof) {
  ClaimProof out;
  if (!proof) return out;
  out.address = codec::Str(proof->address());
  out.key = codec::Str(proof->key());
  out.time_ms = proof->time_ms();
  out.seals = proof->seals();
  if (proof->nonce()) out.nonce.assign(reinterpret_cast<const char*>(proof->nonce()->data()), proof->nonce()->size());
  if (proof->box()) out.box.assign(reinterpret_cast<const char*>(proof->box()->data()), proof->box()->size());
  return out;
}

}  // namespace fm::bus
