// Ground truth about the machine a worker runs on. Nothing here is taken from a flag:
// flags may only lower what was found (worker/main.cc).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "schemas/model.h"
#include "schemas/status.h"

namespace fm::worker {

// cpus usable by this process: the CPU affinity mask, capped by the cgroup cpu quota
// (v2 cpu.max or v1 cfs_quota_us / cfs_period_us), in thousandths.
uint32_t ProbeCpusMilli();

// Memory usable: MemTotal from /proc/meminfo, capped by the cgroup limit (v2 memory.max
// up the hierarchy, v1 memory.limit_in_bytes).
uint64_t ProbeMemoryBytes();

// NVIDIA GPUs through NVML (libnvidia-ml.so.1, loaded at run time): model and memory
// of each. Empty when there is no driver or no GPU; *note says why.
std::vector<Gpu> ProbeNvidiaGpus(std::string* note);

// True when the Docker Engine API at `socket_path` answers GET /_ping with 200 "OK".
bool ProbeDocker(const std::string& socket_path, int timeout_ms, std::string* note);

// Capability `session` by doing: a container of `image` (the session image) started with
// a throwaway key and its port 22 published on 127.0.0.1, an "SSH-" banner read from it
// within `timeout_ms`, the container removed. True only when sshd answered inside.
// `bind`: the host address sessions' ports are published on (as the sessions will be).
bool ProbeSession(const std::string& socket_path, const std::string& image, const std::string& worker_id,
                  const std::string& bind, int timeout_ms, std::string* note);

// Connects to HOST:PORT until the server's first line starts with "SSH-" (it is put in
// *banner) or `timeout_ms` passes (a port forward may accept before sshd listens).
// `stop`, when given, ends the wait early (returns false).
bool ReadSshBanner(const std::string& host, int port, int timeout_ms, std::string* banner,
                   const std::function<bool()>& stop = {});

// Established TCP connections to local port `port` in the network namespace of process
// `pid` (/proc/PID/net/tcp and tcp6); -1 when they cannot be read.
int EstablishedTo(int64_t pid, int port);

// A TCP port free on `host` now (bound and released), 0 when none could be had.
int FreePort(const std::string& host);

// Everything above, as a worker announces it. Capabilities: "docker" when the ping
// answered, "gpu" when at least one GPU was found.
struct Probe {
  Hardware hardware;
  std::vector<std::string> capabilities;  // sorted
  std::vector<std::string> notes;         // what was found and how, for the log
};
Probe ProbeAll(const std::string& docker_socket);

// The whole of a small file (/proc, /sys); empty when it cannot be read.
std::string ReadFile(const std::string& path);

// Exposed for tests: cgroup file parsers.
// cpu.max "150000 100000" -> 1500; "max 100000" -> 0 (no limit).
uint32_t ParseCgroupCpuMax(const std::string& text);
// /proc/self/cgroup -> the v2 path ("0::/x/y") or empty.
std::string ParseCgroupV2Path(const std::string& text);

}  // namespace fm::worker
