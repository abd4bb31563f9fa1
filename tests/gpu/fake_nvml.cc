// A stand-in for NVIDIA's libnvidia-ml.so.1, built by the tests: fm-worker's probe loads
// NVML with dlopen, so a worker started with LD_LIBRARY_PATH naming this library's
// directory finds the GPUs that $FM_FAKE_NVML lists, as "MODEL=MiB" separated by ';'
// (e.g. "NVIDIA A100-SXM4-80GB=81920;Tesla T4=15360"). Device i has UUID
// "GPU-fake-000i". Only the functions the probe calls exist; each returns NVML's
// success (0) or NVML_ERROR_INVALID_ARGUMENT (2).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct FakeGpu {
  std::string model;
  unsigned long long bytes = 0;
};

std::vector<FakeGpu>& Gpus() {
  static std::vector<FakeGpu> gpus = [] {
    std::vector<FakeGpu> out;
    const char* spec = std::getenv("FM_FAKE_NVML");
    std::string text = spec ? spec : "";
    size_t start = 0;
    while (start < text.size()) {
      size_t end = text.find(';', start);
      if (end == std::string::npos) end = text.size();
      std::string item = text.substr(start, end - start);
      size_t eq = item.rfind('=');
      if (eq != std::string::npos) out.push_back({item.substr(0, eq), std::stoull(item.substr(eq + 1)) << 20});
      start = end + 1;
    }
    return out;
  }();
  return gpus;
}

struct Memory {
  unsigned long long total, free, used;
};

}  // namespace

extern "C" {

int nvmlInit_v2() { return 0; }
int nvmlShutdown() { return 0; }

int nvmlDeviceGetCount_v2(unsigned* count) {
  *count = static_cast<unsigned>(Gpus().size());
  return 0;
}

int nvmlDeviceGetHandleByIndex_v2(unsigned index, void** device) {
  if (index >= Gpus().size()) return 2;
  *device = reinterpret_cast<void*>(static_cast<uintptr_t>(index + 1));
  return 0;
}

static long IndexOf(void* device) {
  long i = static_cast<long>(reinterpret_cast<uintptr_t>(device)) - 1;
  return i >= 0 && static_cast<size_t>(i) < Gpus().size() ? i : -1;
}

int nvmlDeviceGetName(void* device, char* name, unsigned length) {
  long i = IndexOf(device);
  if (i < 0 || length == 0) return 2;
  std::snprintf(name, length, "%s", Gpus()[i].model.c_str());
  return 0;
}

int nvmlDeviceGetMemoryInfo(void* device, Memory* memory) {
  long i = IndexOf(device);
  if (i < 0) return 2;
  memory->total = Gpus()[i].bytes;
  memory->free = Gpus()[i].bytes;
  memory->used = 0;
  return 0;
}

int nvmlDeviceGetUUID(void* device, char* uuid, unsigned length) {
  long i = IndexOf(device);
  if (i < 0 || length == 0) return 2;
  std::snprintf(uuid, length, "GPU-fake-%04ld", i);
  return 0;
}

}  // extern "C"
