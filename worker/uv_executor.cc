#include "worker/uv_executor.h"

namespace fm::worker {

UvExecutor::UvExecutor(uv_loop_t* loop, RunSink* sink, UvExecutorOptions options, std::function<void()> on_activity)
    : exec_(loop, sink, {options.worker_id, options.instance, options.users, options.cgroups, options.exec_shim},
            on_activity),
      docker_(loop, sink, {options.docker_socket, options.worker_id, options.sessions.image}, on_activity),
      session_(loop, sink, {options.docker_socket, options.worker_id, options.sessions.image}, options.sessions,
               on_activity) {}

Executor& UvExecutor::For(const TaskSpec& spec) {
  if (spec.session) return session_;
  if (!spec.image.empty()) return docker_;
  return exec_;
}

void UvExecutor::Start(const Ref& ref, const TaskSpec& spec, const Grant& grant) { For(spec).Start(ref, spec, grant); }

void UvExecutor::Cancel(const Ref& ref) {
  // Each executor ignores an attempt it does not hold.
  exec_.Cancel(ref);
  docker_.Cancel(ref);
  session_.Cancel(ref);
}

void UvExecutor::PauseOutput(bool paused) {
  exec_.PauseOutput(paused);
  docker_.PauseOutput(paused);
  session_.PauseOutput(paused);
}

void UvExecutor::Probe(const std::string& capability, const std::string& image) { docker_.Probe(capability, image); }

}  // namespace fm::worker
