// Prints what fm-worker's hardware probe finds, one line per GPU, for checking the NVML
// probe against nvidia-smi on a machine with an NVIDIA GPU (scripts/gpu-probe-check.sh).
// Builds with nothing but a C++ compiler: g++ -std=c++20 -I. worker/hardware_probe.cc
// tests/gpu/probe_main.cc -ldl
#include <cstdio>

#include "worker/probe.h"

int main() {
  std::string note;
  auto gpus = fm::worker::ProbeNvidiaGpus(&note);
  std::printf("note: %s\n", note.c_str());
  std::printf("cpus_milli: %u\nmemory: %llu\n", fm::worker::ProbeCpusMilli(),
              static_cast<unsigned long long>(fm::worker::ProbeMemoryBytes()));
  for (const auto& g : gpus) {
    std::printf("gpu: %s, %llu MiB\n", g.model.c_str(), static_cast<unsigned long long>(g.memory >> 20));
  }
  return gpus.empty() ? 1 : 0;
}
