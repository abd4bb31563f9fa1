#include "worker/gpus.h"

#include <algorithm>

namespace fm::worker {

std::optional<std::vector<size_t>> ChooseGpus(const std::vector<Gpu>& gpus, const std::vector<bool>& busy,
                                              const Resources& need) {
  std::vector<size_t> free;
  for (size_t i = 0; i < gpus.size(); ++i) {
    if ((i >= busy.size() || !busy[i]) && GpuServes(gpus[i], need)) free.push_back(i);
  }
  if (free.size() < need.gpus) return std::nullopt;
  // Best fit: the least memory that serves, then the lowest index (a stable choice).
  std::stable_sort(free.begin(), free.end(), [&](size_t a, size_t b) { return gpus[a].memory < gpus[b].memory; });
  free.resize(need.gpus);
  std::sort(free.begin(), free.end());
  return free;
}

}  // namespace fm::worker
