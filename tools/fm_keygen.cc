// fm-keygen NAME --role ROLE [--out DIR]: writes DIR/NAME.cert (public: name, role, key)
// and DIR/NAME.cert_secret (adds the secret key, mode 0600) in CZMQ's zcert format.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "runtime/cert.h"
#include "runtime/logging.h"

int main(int argc, char** argv) {
  std::string name, role, out = ".";
  CLI::App app{"fm-keygen: makes a CURVE certificate for one fm peer"};
  app.add_option("NAME", name, "the peer's name: a worker's id, a user's or a host's name")->required();
  app.add_option("--role", role, "broker, scheduler, worker, client or operator")->required();
  app.add_option("--out", out, "directory to write NAME.cert and NAME.cert_secret into")->capture_default_str();
  if (int rc = fm::bus::ParseCommandLine(app, "fm-keygen", argc, argv); rc >= 0) return rc;
  auto cert = fm::bus::WriteCertificate(out, name, role);
  if (!cert.ok()) {
    std::fprintf(stderr, "fm-keygen: %s\n", cert.status().message().c_str());
    return cert.status().code() == fm::Status::Code::kInvalid ? 2 : 1;
  }
  std::printf("%s/%s.cert\n%s/%s.cert_secret\n", out.c_str(), name.c_str(), out.c_str(), name.c_str());
  std::fprintf(stderr, "fm-keygen: %s (role %s) public key %s\n", name.c_str(), role.c_str(), cert->public_key.c_str());
  return 0;
}
