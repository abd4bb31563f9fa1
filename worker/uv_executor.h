// The executors that really run attempts, on the worker's libuv loop:
//  - exec: the command as a process in its own process group, stdout and stderr
//    streamed as they come; timeout and cancel kill the whole group;
//  - docker: the task's image through the Docker Engine API (create, start, wait,
//    logs, remove), the blocking calls on libuv's thread pool.
// Each attempt is keyed by its Ref, and ends (RunSink::OnRunEnded) only once all its
// handles are closed: nothing of it is touched after.
//
// Thread: the loop thread, except the docker calls (thread pool, guarded per run).
#pragma once

#include <uv.h>

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "worker/executor.h"

namespace fm::worker {

class UvExecutor final : public Executor {
 public:
  // `on_activity` is called after each report to `sink` from a libuv callback (so the
  // loop ends its turn and sends what the report caused).
  UvExecutor(uv_loop_t* loop, RunSink* sink, std::string docker_socket, std::function<void()> on_activity);
  ~UvExecutor() override;

  void Start(const Ref& ref, const TaskSpec& spec) override;
  void Cancel(const Ref& ref) override;

 private:
  struct Run;
  void StartExec(Run* run);
  void StartDocker(Run* run);
  void StartTimeout(Run* run);
  void Kill(Run* run);
  // Reports the end and frees the run. REQUIRES: none of its handles is open.
  void End(Run* run, RunResult result);
  static void OnExecHandleClosed(uv_handle_t* handle);

  uv_loop_t* loop_;
  RunSink* sink_;
  std::string docker_socket_;
  std::function<void()> on_activity_;
  std::map<Ref, std::unique_ptr<Run>> runs_;
};

}  // namespace fm::worker
