// Hardware probes: no dependency beyond libc and libdl, so the GPU probe can be built
// and checked on its own on a machine with an NVIDIA GPU (tests/gpu/probe_main.cc).
#include <dlfcn.h>
#include <sched.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "worker/probe.h"

namespace fm::worker {
namespace {

uint64_t ParseU64(const std::string& text, bool* ok) {
  try {
    size_t used = 0;
    uint64_t v = std::stoull(text, &used);
    *ok = used > 0;
    return v;
  } catch (...) {
    *ok = false;
    return 0;
  }
}

}  // namespace

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return {};
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

uint32_t ParseCgroupCpuMax(const std::string& text) {
  std::istringstream in(text);
  std::string quota, period;
  in >> quota >> period;
  if (quota.empty() || quota == "max") return 0;
  bool ok_q = false, ok_p = false;
  uint64_t q = ParseU64(quota, &ok_q);
  uint64_t p = period.empty() ? 100000 : ParseU64(period, &ok_p);
  if (!ok_q || p == 0) return 0;
  return static_cast<uint32_t>(q * 1000 / p);
}

std::string ParseCgroupV2Path(const std::string& text) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("0::", 0) == 0) return line.substr(3);
  }
  return {};
}

uint32_t ProbeCpusMilli() {
  cpu_set_t set;
  CPU_ZERO(&set);
  uint32_t cpus = 0;
  if (sched_getaffinity(0, sizeof set, &set) == 0) cpus = static_cast<uint32_t>(CPU_COUNT(&set)) * 1000;
  if (cpus == 0) cpus = 1000;
  // cgroup v2: the quota of our cgroup and each ancestor.
  std::string path = ParseCgroupV2Path(ReadFile("/proc/self/cgroup"));
  if (!path.empty()) {
    for (std::string dir = path;; dir = dir.substr(0, dir.rfind('/'))) {
      uint32_t quota = ParseCgroupCpuMax(ReadFile("/sys/fs/cgroup" + dir + "/cpu.max"));
      if (quota > 0) cpus = std::min(cpus, quota);
      if (dir.empty() || dir == "/") break;
    }
  }
  // cgroup v1.
  bool ok_q = false, ok_p = false;
  std::string q = ReadFile("/sys/fs/cgroup/cpu/cpu.cfs_quota_us");
  std::string p = ReadFile("/sys/fs/cgroup/cpu/cpu.cfs_period_us");
  if (!q.empty() && q[0] != '-') {
    uint64_t quota = ParseU64(q, &ok_q), period = ParseU64(p, &ok_p);
    if (ok_q && ok_p && period > 0 && quota > 0) cpus = std::min<uint32_t>(cpus, quota * 1000 / period);
  }
  return std::max<uint32_t>(cpus, 1);
}

uint64_t ProbeMemoryBytes() {
  uint64_t total = 0;
  std::istringstream meminfo(ReadFile("/proc/meminfo"));
  std::string key, unit;
  uint64_t value = 0;
  while (meminfo >> key >> value >> unit) {
    if (key == "MemTotal:") {
      total = value * 1024;
      break;
    }
  }
  bool ok = false;
  std::string path = ParseCgroupV2Path(ReadFile("/proc/self/cgroup"));
  if (!path.empty()) {
    for (std::string dir = path;; dir = dir.substr(0, dir.rfind('/'))) {
      std::string text = ReadFile("/sys/fs/cgroup" + dir + "/memory.max");
      uint64_t limit = ParseU64(text, &ok);
      if (ok && limit > 0) total = total ? std::min(total, limit) : limit;
      if (dir.empty() || dir == "/") break;
    }
  }
  uint64_t v1 = ParseU64(ReadFile("/sys/fs/cgroup/memory/memory.limit_in_bytes"), &ok);
  if (ok && v1 > 0 && v1 < total) total = v1;
  return total;
}

std::vector<Gpu> ProbeNvidiaGpus(std::string* note) {
  std::vector<Gpu> gpus;
  void* lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    *note = "no NVIDIA driver (libnvidia-ml.so.1 not loadable)";
    return gpus;
  }
  // NVML's C ABI, declared here so no CUDA headers are needed at build time.
  using nvmlDevice_t = void*;
  struct nvmlMemory_t {
    unsigned long long total, free, used;
  };
  auto init = reinterpret_cast<int (*)()>(dlsym(lib, "nvmlInit_v2"));
  auto shutdown = reinterpret_cast<int (*)()>(dlsym(lib, "nvmlShutdown"));
  auto count_fn = reinterpret_cast<int (*)(unsigned*)>(dlsym(lib, "nvmlDeviceGetCount_v2"));
  auto handle_fn = reinterpret_cast<int (*)(unsigned, nvmlDevice_t*)>(dlsym(lib, "nvmlDeviceGetHandleByIndex_v2"));
  auto name_fn = reinterpret_cast<int (*)(nvmlDevice_t, char*, unsigned)>(dlsym(lib, "nvmlDeviceGetName"));
  auto memory_fn = reinterpret_cast<int (*)(nvmlDevice_t, nvmlMemory_t*)>(dlsym(lib, "nvmlDeviceGetMemoryInfo"));
  // Optional: without it a GPU is given to tasks by its index.
  auto uuid_fn = reinterpret_cast<int (*)(nvmlDevice_t, char*, unsigned)>(dlsym(lib, "nvmlDeviceGetUUID"));
  if (!init || !shutdown || !count_fn || !handle_fn || !name_fn || !memory_fn) {
    *note = "libnvidia-ml.so.1 lacks the NVML functions fm needs";
    dlclose(lib);
    return gpus;
  }
  if (int rc = init(); rc != 0) {
    *note = "nvmlInit failed with NVML error " + std::to_string(rc);
    dlclose(lib);
    return gpus;
  }
  unsigned count = 0;
  if (count_fn(&count) == 0) {
    for (unsigned i = 0; i < count; ++i) {
      nvmlDevice_t device = nullptr;
      if (handle_fn(i, &device) != 0) continue;
      char name[96] = {0};
      nvmlMemory_t memory{};
      if (name_fn(device, name, sizeof name) != 0 || memory_fn(device, &memory) != 0) continue;
      char uuid[96] = {0};
      if (!uuid_fn || uuid_fn(device, uuid, sizeof uuid) != 0) uuid[0] = '\0';
      gpus.push_back({name, memory.total, uuid});
    }
  }
  *note = "NVML found " + std::to_string(gpus.size()) + " GPU(s)";
  shutdown();
  dlclose(lib);
  return gpus;
}

}  // namespace fm::worker
