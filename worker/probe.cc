#include "worker/probe.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <sstream>
#include <thread>

#include "worker/docker_client.h"

namespace fm::worker {

bool ProbeDocker(const std::string& socket_path, int timeout_ms, std::string* note) {
  if (socket_path.empty()) {
    *note = "no docker socket configured";
    return false;
  }
  DockerClient client(socket_path);
  Status s = client.Ping(timeout_ms);
  *note = s.ok() ? "docker API at " + socket_path + " answered /_ping"
                 : "docker API at " + socket_path + " did not answer: " + s.message();
  return s.ok();
}

int FreePort(const std::string& host) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = 0;
  int port = 0;
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) == 1 &&
      bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    socklen_t len = sizeof addr;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

int EstablishedTo(int64_t pid, int port) {
  if (pid <= 0) return -1;
  int found = 0;
  bool read_any = false;
  char local_port[8];
  std::snprintf(local_port, sizeof local_port, ":%04X", static_cast<unsigned>(port));
  for (const char* table : {"tcp", "tcp6"}) {
    std::string text = ReadFile("/proc/" + std::to_string(pid) + "/net/" + table);
    if (text.empty()) continue;
    read_any = true;
    std::istringstream in(text);
    std::string line;
    std::getline(in, line);  // the header
    while (std::getline(in, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state;
      fields >> slot >> local >> remote >> state;
      // 01: ESTABLISHED, on the listening port's side.
      if (state == "01" && local.size() > 5 && local.compare(local.size() - 5, 5, local_port) == 0) ++found;
    }
  }
  return read_any ? found : -1;
}

bool ReadSshBanner(const std::string& host, int port, int timeout_ms, std::string* banner,
                   const std::function<bool()>& stop) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) return false;
  while (std::chrono::steady_clock::now() < deadline) {
    if (stop && stop()) return false;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    timeval tv{1, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    std::string got;
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
      char buf[256];
      ssize_t n;
      // The identification line comes first: at most 255 bytes (RFC 4253).
      while (got.size() < 255 && got.find('\n') == std::string::npos && (n = recv(fd, buf, sizeof buf, 0)) > 0) {
        got.append(buf, static_cast<size_t>(n));
      }
    }
    close(fd);
    if (got.rfind("SSH-", 0) == 0) {
      *banner = got.substr(0, got.find_first_of("\r\n"));
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return false;
}

bool ProbeSession(const std::string& socket_path, const std::string& image, const std::string& worker_id,
                  const std::string& bind, int timeout_ms, std::string* note) {
  DockerClient docker(socket_path);
  const int port = FreePort(bind);
  const std::string local = bind == "0.0.0.0" ? "127.0.0.1" : bind;
  if (port == 0) {
    *note = "session probe: no free port on " + bind;
    return false;
  }
  DockerClient::ContainerSpec spec;
  // A key nobody holds: the probe only needs sshd to answer.
  spec.env = {"FM_SSH_KEYS=ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFmProbeKeyNobodyHoldsThisKeyFmProbeKeyNobod fm-probe"};
  spec.labels = {{"fm.probe", "session"}, {"fm.worker", worker_id}};
  spec.pids_limit = 64;
  spec.memory = 64ull << 20;
  spec.ports = {{22, bind, port}};
  auto id = docker.Create(image, {}, spec);
  if (!id.ok()) {
    *note = "session image " + image + " did not start: " + id.status().message();
    return false;
  }
  std::string banner;
  Status started = docker.Start(*id);
  bool ok = started.ok() && ReadSshBanner(local, port, timeout_ms, &banner);
  if (!started.ok()) {
    *note = "session image " + image + " did not start: " + started.message();
  } else if (!ok) {
    *note = "session image " + image + " started, but no sshd answered on its port 22 within " +
            std::to_string(timeout_ms) + " ms";
  } else {
    *note = "session image " + image + " started and sshd answered (" + banner + ")";
  }
  (void)docker.Kill(*id);
  (void)docker.Remove(*id);
  return ok;
}

Probe ProbeAll(const std::string& docker_socket) {
  Probe p;
  p.hardware.cpus_milli = ProbeCpusMilli();
  p.hardware.memory = ProbeMemoryBytes();
  std::string note;
  p.hardware.gpus = ProbeNvidiaGpus(&note);
  p.notes.push_back(note);
  if (!p.hardware.gpus.empty()) p.capabilities.push_back("gpu");
  if (ProbeDocker(docker_socket, 1000, &note)) p.capabilities.push_back("docker");
  p.notes.push_back(note);
  Normalize(&p.capabilities);
  return p;
}

}  // namespace fm::worker
