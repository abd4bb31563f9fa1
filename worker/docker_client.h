// A small blocking client for the Docker Engine API over its unix socket (HTTP/1.1,
// one connection per call). Request and response bodies go through FlatBuffers' JSON
// parser and printer against schemas/docker.fbs. Safe to call from any thread; each
// call is independent.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "schemas/status.h"

namespace fm::worker {

struct HttpResponse {
  int status = 0;
  std::string body;
};

// One HTTP/1.1 request over a unix socket. timeout_ms 0: wait as long as it takes.
Result<HttpResponse> UnixHttp(const std::string& socket_path, const std::string& method, const std::string& path,
                              const std::string& body, int timeout_ms);

// Splits Docker's multiplexed log stream (8-byte frame headers) into stdout and stderr.
void DemuxDockerLogs(const std::string& raw, std::string* out, std::string* err);

class DockerClient {
 public:
  explicit DockerClient(std::string socket_path) : socket_(std::move(socket_path)) {}

  Status Ping(int timeout_ms);
  // Creates a container running `cmd` in `image`; returns its id.
  Result<std::string> Create(const std::string& image, const std::vector<std::string>& cmd);
  Status Start(const std::string& id);
  // Blocks until the container exits; returns its exit status.
  Result<int64_t> Wait(const std::string& id);
  Status Logs(const std::string& id, std::string* out, std::string* err);
  Status Kill(const std::string& id);
  Status Remove(const std::string& id);

 private:
  std::string socket_;
};

}  // namespace fm::worker
