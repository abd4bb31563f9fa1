// Which concrete GPUs an attempt gets. The scheduler counts GPUs per worker (a task fits
// when the GPUs in use plus its own are at most those that match it); the worker keeps
// that promise by choosing devices: free ones that match the task's model and memory,
// the smallest that serve first, so that the large GPUs stay free for tasks that need
// them. Two attempts never share one.
//
// Pure: no NVML, no process; tested with a list of GPUs (tests/unit/worker_core_test.cc).
#pragma once

#include <cstddef>
#include <optional>
#include <vector>

#include "schemas/model.h"

namespace fm::worker {

// Indexes into `gpus` of need.gpus free devices serving `need` (GpuServes), or nullopt
// when there are not enough free ones. `busy[i]`: device i is held by another attempt.
// need.gpus == 0: an empty choice.
std::optional<std::vector<size_t>> ChooseGpus(const std::vector<Gpu>& gpus, const std::vector<bool>& busy,
                                              const Resources& need);

}  // namespace fm::worker
