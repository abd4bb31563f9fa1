// A small blocking client for the Docker Engine API over its unix socket (HTTP/1.1,
// one connection per call). Request and response bodies go through FlatBuffers' JSON
// parser and printer against schemas/docker.fbs. Safe to call from any thread; each
// call is independent.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "schemas/status.h"

namespace fm::worker {

struct HttpResponse {
  int status = 0;
  std::string body;
};

// One HTTP/1.1 request over a unix socket. timeout_ms 0: wait as long as it takes.
// Bodies over 64 MiB are refused (Docker's answers are small; logs are streamed).
Result<HttpResponse> UnixHttp(const std::string& socket_path, const std::string& method, const std::string& path,
                              const std::string& body, int timeout_ms);

// Decodes a chunked HTTP body as it arrives, in pieces of any size.
class ChunkedDecoder {
 public:
  // Passes the body bytes in `in` to `out`. False: not a chunked body.
  bool Feed(std::string_view in, const std::function<void(std::string_view)>& out);
  bool done() const { return state_ == State::kDone; }

 private:
  enum class State { kSize, kData, kDataEnd, kTrailer, kDone };
  State state_ = State::kSize;
  std::string line_;
  uint64_t left_ = 0;
};

// Splits Docker's multiplexed log stream (8-byte frame headers: stream, 0, 0, 0, size)
// into stdout and stderr as it arrives, in pieces of any size.
class LogDemuxer {
 public:
  using Sink = std::function<void(const char* stream, std::string_view data)>;
  // False: not a log stream (an unknown stream number).
  bool Feed(std::string_view in, const Sink& out);

 private:
  std::string header_;
  uint32_t left_ = 0;
  const char* stream_ = "stdout";
};

// Ends a Logs call in flight from another thread (its connection is shut down).
class LogsStop {
 public:
  void Stop();
  bool stopped() const;
  // For the client: the call's connection (-1 once it closes it).
  void Attach(int fd);

 private:
  mutable std::mutex mutex_;
  int fd_ = -1;
  bool stopped_ = false;
};

class DockerClient {
 public:
  explicit DockerClient(std::string socket_path) : socket_(std::move(socket_path)) {}

  Status Ping(int timeout_ms);
  // Creates a container running `cmd` in `image` (empty: the image's own command);
  // returns its id. Error kNotFound: no such image; kInvalid: the daemon refused the
  // request (HTTP 4xx: the task's fault); otherwise the daemon's.
  // What a container is made with besides its image and command.
  struct ContainerSpec {
    std::vector<std::string> env;  // NAME=VALUE
    std::string cwd;               // empty: the image's
    std::vector<std::pair<std::string, std::string>> labels;
    uint32_t cpus_milli = 0;  // limits; 0: none
    uint64_t memory = 0;
    int64_t pids_limit = 0;
    std::vector<std::string> gpus;  // device ids: an NVIDIA DeviceRequest for exactly these
    // Published ports: container port (tcp) -> host address and port.
    struct Port {
      int container = 0;
      std::string host_ip;
      int host_port = 0;
    };
    std::vector<Port> ports;
  };
  // Error kNotFound: the image is not there.
  Result<std::string> Create(const std::string& image, const std::vector<std::string>& cmd, const ContainerSpec& spec);
  // What the daemon says of a container: whether the kernel killed it for its memory
  // limit (once stopped), and the host pid of its first process (0 when not running).
  struct State {
    bool oom_killed = false;
    int64_t pid = 0;
  };
  Result<State> Inspect(const std::string& id);
  // Ids of the containers, running or not, that carry label KEY=VALUE.
  Result<std::vector<std::string>> ListLabeled(const std::string& key, const std::string& value);
  // Error kInvalid: the daemon refused it (HTTP 4xx other than 404).
  Status Start(const std::string& id);
  // Blocks until the container exits; returns its exit status.
  Result<int64_t> Wait(const std::string& id);
  // Streams the container's stdout and stderr to `out` from its start: with `follow`,
  // as they come until it exits (blocking meanwhile, on a thread of its own); without,
  // what the daemon has now.
  // `stop`: lets another thread end the call (then it returns an error, and
  // stop->stopped() says why).
  Status Logs(const std::string& id, bool follow, const LogDemuxer::Sink& out, LogsStop* stop = nullptr);
  Status Kill(const std::string& id);
  // POST /containers/ID/stop?t=SECONDS: SIGTERM (the image's stop signal), SIGKILL after
  // `seconds`. Blocks until the container stopped.
  Status Stop(const std::string& id, uint64_t seconds);
  Status Remove(const std::string& id);

  // The body of POST /containers/create (exposed for tests).
  static Result<std::string> CreateBody(const std::string& image, const std::vector<std::string>& cmd,
                                        const ContainerSpec& spec);

 private:
  std::string socket_;
};

// Whether a failed container start says the runtime ran but the command could not be
// executed (not in the image, not executable): the task's fault, not the daemon's.
bool IsCommandMissing(const std::string& start_error);

}  // namespace fm::worker
