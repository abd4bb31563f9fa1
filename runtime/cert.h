// CURVE certificates and the trust directory.
//
// A certificate is a pair of files in the ZPL format CZMQ's zcert reads and writes:
// NAME.cert (public key, name, role: safe to copy around) and NAME.cert_secret (adds the
// secret key; mode 0600). fm reads and writes them through CZMQ's zcert, so existing
// ZeroMQ tooling reads what fm-keygen writes and fm reads what zcert wrote.
//
// A broker admits a peer when the peer's public key is in a certificate of its trust
// directory; the certificate's name and role are who the peer is (runtime/policy.h).
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "schemas/status.h"

namespace fm::bus {

struct Certificate {
  std::string name;
  std::string role;        // broker, scheduler, worker, client, operator
  std::string public_key;  // Z85, 40 characters
  std::string secret_key;  // Z85; empty in a public certificate
  std::string path;        // where it was read from
};

// Reads a certificate. With `need_secret`, `path` must hold the secret key (the
// .cert_secret file; given NAME.cert, NAME.cert_secret next to it is read). Errors name
// the file and what is wrong with it (unreadable, no key, a bad role or name).
Result<Certificate> LoadCertificate(const std::string& path, bool need_secret);

// Makes a new key pair and writes DIR/NAME.cert and DIR/NAME.cert_secret (0600).
// Error: a bad name or role, an existing file (never overwritten), a write failure.
Result<Certificate> WriteCertificate(const std::string& dir, const std::string& name, const std::string& role);

// The public certificates in a directory, re-read when the directory changes.
class TrustStore {
 public:
  explicit TrustStore(std::string dir) : dir_(std::move(dir)) {}

  // Re-reads the directory if any file in it changed (names, sizes, mtimes). Returns
  // whether the set of trusted keys changed; keys no longer trusted are appended to
  // *removed. Files that cannot be read are skipped with a note in *problems.
  // Error: the directory itself cannot be read (the previous set stays in force).
  Result<bool> Refresh(std::vector<std::string>* removed, std::vector<std::string>* problems);

  // The certificate holding `public_key` (Z85), or nullptr.
  const Certificate* Find(const std::string& public_key) const;
  size_t size() const { return by_key_.size(); }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::string signature_;  // what the directory looked like when last read
  std::unordered_map<std::string, Certificate> by_key_;
};

}  // namespace fm::bus
