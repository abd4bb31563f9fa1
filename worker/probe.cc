#include "worker/probe.h"

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
