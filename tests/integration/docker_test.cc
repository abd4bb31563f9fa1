// Ground truth and the docker executor against a real Docker Engine API: podman's
// service on a socket this test starts (scripts/podman-setup.sh prepares podman and the
// localhost/fm-busybox image; .ci/run runs it).
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>

#include "harness.h"

using namespace fm::test;
using Catch::Contains;

namespace {

bool Pings(const std::string& socket_path) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket_path.c_str(), sizeof addr.sun_path - 1);
  bool ok = false;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    const char req[] = "GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n";
    if (write(fd, req, sizeof req - 1) > 0) {
      char buf[512] = {0};
      ok = read(fd, buf, sizeof buf - 1) > 0 && std::strstr(buf, " 200 ") != nullptr;
    }
  }
  close(fd);
  return ok;
}

// podman's Docker-API service on a socket of its own.
class Podman {
 public:
  explicit Podman(const std::string& socket_path) : socket_(socket_path) {
    process_ = Process::Start({"/usr/bin/podman", "system", "service", "--time=0", "unix://" + socket_});
    for (int i = 0; i < 300 && !Pings(socket_); ++i) {
      REQUIRE(process_->running());  // it exited: podman is missing or misconfigured
      usleep(50000);                 // no event tells when the service listens: poll its socket
    }
    REQUIRE(Pings(socket_));
  }
  void Stop() {
    process_->Signal(SIGTERM);
    process_->Wait(10000);
  }

 private:
  std::string socket_;
  std::unique_ptr<Process> process_;
};

}  // namespace

TEST_CASE("a worker announces docker only while the Docker API answers /_ping, and withdraws it when it stops",
          "[integration][docker]") {
  TempDir dir;
  std::string socket_path = dir.path() + "/docker.sock";
  Podman podman(socket_path);
  Cluster c;
  c.StartWorker("dockerized", {"--docker-socket", socket_path});
  c.StartWorker("nothing-behind", {"--docker-socket", dir.path() + "/nobody.sock"});
  ToolRun table = c.Ctl({"workers"});
  REQUIRE(table.lines.size() == 3);
  CHECK_THAT(table.lines[1], Contains("dockerized") && Contains("docker"));
  CHECK_THAT(table.lines[2], Contains("nothing-behind") && !Contains("docker "));

  ToolRun run = c.Submit(R"({"command": ["true"], "requires": ["docker"]})"
                         "\n",
                         {"--wait"});
  CHECK_THAT(run.lines.at(0), Contains(R"("status": "succeeded","worker": "dockerized")"));

  podman.Stop();
  REQUIRE(c.WaitEvent("worker.updated worker=dockerized: capabilities [docker] -> []", 15000));
  run = c.Submit(R"({"command": ["true"], "requires": ["docker"]})"
                 "\n");
  CHECK_THAT(run.lines.at(0), Contains("0/2 workers eligible: 2 lack capability docker"));
}

TEST_CASE("the docker executor runs the task's image in a real container and reports its output and exit status",
          "[integration][docker]") {
  TempDir dir;
  std::string socket_path = dir.path() + "/docker.sock";
  Podman podman(socket_path);
  Cluster c;
  c.StartWorker("d", {"--docker-socket", socket_path});
  ToolRun run =
      c.Submit(R"({"command": ["sh", "-c", "echo hello from a container"], "image": "localhost/fm-busybox:latest"})"
               "\n"
               R"({"command": ["sh", "-c", "exit 7"], "image": "localhost/fm-busybox:latest"})"
               "\n",
               {"--wait"});
  INFO(run.err);
  REQUIRE(run.lines.size() == 2);
  CHECK_THAT(run.lines[0], Contains(R"("status": "succeeded","worker": "d")"));
  CHECK_THAT(run.lines[1],
             Contains(R"("status": "failed","reason": "exit_status","message": "container exit status 7")"));
  CHECK(c.WaitEvent("task.log task=t1 worker=d stream=stdout | hello from a container"));
  CHECK(c.WaitEvent("task.failed task=t2 worker=d exit=7 reason=exit_status"));
}
