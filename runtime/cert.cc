#include "runtime/cert.h"

#include <czmq.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>

#include "runtime/policy.h"

namespace fm::bus {
namespace {

struct CertDeleter {
  void operator()(zcert_t* c) const { zcert_destroy(&c); }
};
using CertPtr = std::unique_ptr<zcert_t, CertDeleter>;

bool AllZero(const std::string& z85) {
  return std::all_of(z85.begin(), z85.end(), [](char c) { return c == '0'; });
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

Result<Certificate> FromZcert(zcert_t* c, const std::string& path, bool need_secret) {
  Certificate cert;
  cert.path = path;
  cert.public_key = zcert_public_txt(c);
  std::string secret = zcert_secret_txt(c);
  if (!AllZero(secret)) cert.secret_key = secret;
  const char* name = zcert_meta(c, "name");
  const char* role = zcert_meta(c, "role");
  cert.name = name ? name : "";
  cert.role = role ? role : "";
  if (cert.public_key.size() != 40 || AllZero(cert.public_key)) {
    return Status::Invalid("certificate " + path + " has no curve public-key");
  }
  if (need_secret && cert.secret_key.empty()) {
    return Status::Invalid("certificate " + path +
                           " has no secret key: give the NAME.cert_secret file fm-keygen wrote (mode 0600)");
  }
  if (Status s = ValidateName(cert.name); !s.ok()) {
    return Status::Invalid("certificate " + path + ": metadata name: " + s.message());
  }
  if (!ParseRole(cert.role)) {
    return Status::Invalid("certificate " + path + ": metadata role \"" + cert.role +
                           "\" is not one of broker, scheduler, worker, client, operator");
  }
  return cert;
}

}  // namespace

Result<Certificate> LoadCertificate(const std::string& path, bool need_secret) {
  if (path.empty()) return Status::Invalid("no certificate file given");
  if (!Exists(path)) return Status::NotFound("certificate " + path + ": no such file");
  // zcert_load(P) reads P_secret when it exists, else P: given NAME.cert_secret itself,
  // it finds no NAME.cert_secret_secret and reads the file as given.
  CertPtr c(zcert_load(path.c_str()));
  if (!c) return Status::Invalid("certificate " + path + " is not a ZPL certificate CZMQ can read");
  auto loaded = FromZcert(c.get(), path, need_secret);
  if (!loaded.ok() || !need_secret) return loaded;
  // As ssh refuses such keys: a secret key that others can read is no one's secret.
  const std::string secret = Exists(path + "_secret") ? path + "_secret" : path;
  struct stat st {};
  if (::stat(secret.c_str(), &st) != 0) return Status::NotFound("certificate " + secret + ": cannot read it");
  if ((st.st_mode & 077) == 0 && (st.st_uid == geteuid() || st.st_uid == 0)) return loaded;
  char mode[8];
  snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
  return Status::Invalid("certificate " + secret + " holds a secret key and is " +
                         ((st.st_mode & 077) != 0 ? std::string("readable by others (mode ") + mode + ")"
                                                  : "another user's (uid " + std::to_string(st.st_uid) + ")") +
                         ": it must be its user's alone (chmod 600 " + secret + ")");
}

Result<Certificate> WriteCertificate(const std::string& dir, const std::string& name, const std::string& role) {
  if (Status s = ValidateName(name); !s.ok()) return s;
  if (!ParseRole(role)) {
    return Status::Invalid("role \"" + role + "\" is not one of broker, scheduler, worker, client, operator");
  }
  std::error_code ec;
  if (!dir.empty()) std::filesystem::create_directories(dir, ec);
  if (ec) return Status::Unavailable("cannot make directory " + dir + ": " + ec.message());
  std::string path = (dir.empty() ? "." : dir) + "/" + name + ".cert";
  for (const std::string& p : {path, path + "_secret"}) {
    if (Exists(p)) return Status::Invalid(p + " exists; fm-keygen never overwrites a certificate");
  }
  CertPtr c(zcert_new());
  if (!c) return Status::Unavailable("cannot make a key pair (is libzmq built with CURVE?)");
  zcert_set_meta(c.get(), "name", "%s", name.c_str());
  zcert_set_meta(c.get(), "role", "%s", role.c_str());
  if (zcert_save(c.get(), path.c_str()) != 0) return Status::Unavailable("cannot write " + path);
  // zcert writes the secret file with the private file mode; make sure of it.
  if (::chmod((path + "_secret").c_str(), 0600) != 0) {
    return Status::Unavailable("cannot set mode 0600 on " + path + "_secret");
  }
  return FromZcert(c.get(), path, true);
}

Result<bool> TrustStore::Refresh(std::vector<std::string>* removed, std::vector<std::string>* problems) {
  DIR* d = ::opendir(dir_.c_str());
  if (!d) return Status::Unavailable("trust directory " + dir_ + ": " + std::strerror(errno));
  std::vector<std::string> files;
  std::string signature;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name.size() < 6 || name.compare(name.size() - 5, 5, ".cert") != 0) continue;
    std::string path = dir_ + "/" + name;
    struct stat st;
    if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
    files.push_back(path);
    signature += path + ":" + std::to_string(st.st_size) + ":" + std::to_string(st.st_mtim.tv_sec) + "." +
                 std::to_string(st.st_mtim.tv_nsec) + ":" + std::to_string(st.st_ino) + "\n";
  }
  ::closedir(d);
  std::sort(files.begin(), files.end());
  if (signature == signature_) return false;
  signature_ = signature;
  std::unordered_map<std::string, Certificate> next;
  for (const auto& path : files) {
    // Only the public file: a secret file that happens to lie next to it is not read.
    zconfig_t* root = zconfig_load(path.c_str());
    if (!root) {
      problems->push_back(path + ": not a ZPL certificate");
      continue;
    }
    Certificate cert;
    cert.path = path;
    const char* pub = zconfig_get(root, "curve/public-key", "");
    cert.public_key = pub ? pub : "";
    cert.name = zconfig_get(root, "metadata/name", "");
    cert.role = zconfig_get(root, "metadata/role", "");
    zconfig_destroy(&root);
    if (cert.public_key.size() != 40) {
      problems->push_back(path + ": no curve public-key of 40 Z85 characters");
      continue;
    }
    if (Status s = ValidateName(cert.name); !s.ok()) {
      problems->push_back(path + ": " + s.message());
      continue;
    }
    if (!ParseRole(cert.role)) {
      problems->push_back(path + ": role \"" + cert.role +
                          "\" is not one of broker, scheduler, worker, client, operator");
      continue;
    }
    if (next.count(cert.public_key)) {
      problems->push_back(path + ": the same key as " + next[cert.public_key].path + " (ignored)");
      continue;
    }
    next.emplace(cert.public_key, std::move(cert));
  }
  bool changed = next.size() != by_key_.size();
  for (const auto& [key, cert] : by_key_) {
    auto it = next.find(key);
    if (it == next.end() || it->second.name != cert.name || it->second.role != cert.role) {
      removed->push_back(key);
      changed = true;
    }
  }
  if (!changed) {
    for (const auto& [key, cert] : next) changed |= !by_key_.count(key);
  }
  by_key_ = std::move(next);
  return changed;
}

const Certificate* TrustStore::Find(const std::string& public_key) const {
  auto it = by_key_.find(public_key);
  return it == by_key_.end() ? nullptr : &it->second;
}

}  // namespace fm::bus
