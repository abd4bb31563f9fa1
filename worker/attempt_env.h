// What every executor gives an attempt's environment: the FM_* variables that name it
// (and mark its processes), the GPUs chosen for it, each name once.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "worker/executor.h"

namespace fm::worker {

// Processes an attempt may hold, in a container or its exec cgroup (a fork bomb stops
// there, not at the host's limit).
inline constexpr int64_t kAttemptPidsLimit = 4096;

// An environment with each name once; a later Set replaces the value.
class EnvBuilder {
 public:
  void Set(const std::string& name, const std::string& value);
  // "NAME=VALUE": the part before the first '=' is the name.
  void SetLine(const std::string& line);
  std::vector<std::string> Lines() const;

 private:
  std::vector<std::pair<std::string, std::string>> vars_;
};

// FM_TASK_ID=tN, FM_ATTEMPT=N, FM_WORKER_ID=ID, and for an array element
// FM_ARRAY_INDEX=I and FM_ARRAY_COUNT=N: what an attempt is told of itself.
std::vector<std::string> AttemptVars(const Ref& ref, const std::string& worker_id, const TaskSpec& spec);
// FM_RUN_ID: this worker process's mark on one attempt's processes (never another
// worker's, on any cluster: `instance` is unique to the worker process).
std::string RunVar(const std::string& instance, const Ref& ref);
// The GPUs chosen for an attempt, and only those (none: none visible), over whatever the
// task or its image says.
void SetGpuVars(EnvBuilder* vars, const std::vector<std::string>& gpus);

}  // namespace fm::worker
