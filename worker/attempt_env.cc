#include "worker/attempt_env.h"

namespace fm::worker {

void EnvBuilder::Set(const std::string& name, const std::string& value) {
  for (auto& [n, v] : vars_) {
    if (n == name) {
      v = value;
      return;
    }
  }
  vars_.emplace_back(name, value);
}

void EnvBuilder::SetLine(const std::string& line) {
  const size_t eq = line.find('=');
  Set(line.substr(0, eq), eq == std::string::npos ? std::string() : line.substr(eq + 1));
}

std::vector<std::string> EnvBuilder::Lines() const {
  std::vector<std::string> out;
  for (const auto& [n, v] : vars_) out.push_back(n + "=" + v);
  return out;
}

std::vector<std::string> AttemptVars(const Ref& ref, const std::string& worker_id, const TaskSpec& spec) {
  std::vector<std::string> vars{"FM_TASK_ID=t" + std::to_string(ref.task), "FM_ATTEMPT=" + std::to_string(ref.attempt),
                                "FM_WORKER_ID=" + worker_id};
  if (spec.array) {
    vars.push_back("FM_ARRAY_INDEX=" + std::to_string(spec.array->index));
    vars.push_back("FM_ARRAY_COUNT=" + std::to_string(spec.array->count));
  }
  return vars;
}

std::string RunVar(const std::string& instance, const Ref& ref) {
  return "FM_RUN_ID=" + instance + "-t" + std::to_string(ref.task) + "-" + std::to_string(ref.attempt);
}

void SetGpuVars(EnvBuilder* vars, const std::vector<std::string>& gpus) {
  std::string list;
  for (const auto& g : gpus) list += (list.empty() ? "" : ",") + g;
  vars->Set("CUDA_VISIBLE_DEVICES", list);
  vars->Set("NVIDIA_VISIBLE_DEVICES", list.empty() ? std::string("void") : list);
}

}  // namespace fm::worker
