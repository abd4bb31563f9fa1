// Prints what fm-worker's hardware probe finds, one line per GPU, and the devices the
// worker would give one-GPU tasks, for checking the NVML probe and GPU assignment
// against nvidia-smi on a machine with an NVIDIA GPU (scripts/gpu-probe-check.sh).
// Builds with nothing but a C++ compiler: g++ -std=c++20 -I. worker/hardware_probe.cc
// worker/gpus.cc schemas/model.cc tests/gpu/probe_main.cc -ldl
#include <cstdio>

#include "worker/gpus.h"
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
  // As many one-GPU tasks as there are GPUs, then one more: each gets a device of its
  // own, the last none.
  std::vector<bool> busy(gpus.size(), false);
  fm::Resources one;
  one.gpus = 1;
  for (size_t task = 0; task <= gpus.size(); ++task) {
    auto chosen = fm::worker::ChooseGpus(gpus, busy, one);
    if (!chosen) {
      std::printf("assign: task %zu none\n", task);
      continue;
    }
    size_t i = chosen->front();
    busy[i] = true;
    std::printf("assign: task %zu %s\n", task, fm::GpuDeviceId(gpus[i], i).c_str());
  }
  return gpus.empty() ? 1 : 0;
}
