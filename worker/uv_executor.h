// The executors that really run attempts, on the worker's libuv loop, each in its own
// file with its own run state (as Nomad's drivers): exec (exec_executor.h: a process),
// docker (docker_executor.h: a container of the task's image) and session
// (session_executor.h: a container running sshd). This one hands each attempt to the
// one its spec asks for (an image: docker; a session: session; else exec) and passes
// cancels, pauses and re-probes on.
//
// Thread: the loop thread (each executor says what it runs elsewhere).
#pragma once

#include <uv.h>

#include <functional>
#include <string>

#include "worker/cgroup.h"
#include "worker/docker_executor.h"
#include "worker/exec_executor.h"
#include "worker/executor.h"
#include "worker/session_executor.h"
#include "worker/task_users.h"

namespace fm::worker {

struct UvExecutorOptions {
  std::string docker_socket;
  std::string worker_id;  // FM_WORKER_ID
  // Unique to this worker process: with the task and attempt, FM_RUN_ID, the mark by
  // which an attempt's processes are found (never another worker's, on any cluster).
  std::string instance;
  // Whom each attempt runs as (its Grant's owner). REQUIRES: not null for exec tasks.
  TaskUsers* users = nullptr;
  // Limits for exec attempts: a cgroup leaf each (nullptr or off: none). The attempt's
  // process joins it, and switches to its user, through `exec_shim` (fm-cgexec) before
  // it reads and runs the task's command.
  Cgroups* cgroups = nullptr;
  std::string exec_shim;
  // Sessions (TaskSpec::session): a container of `image` (or the task's) with port 22
  // published on `bind`, told to users as `advertise`:PORT as `user`.
  SessionOptions sessions;
};

class UvExecutor final : public Executor {
 public:
  // `on_activity` is called after each report to `sink` from a libuv callback (so the
  // loop ends its turn and sends what the report caused).
  UvExecutor(uv_loop_t* loop, RunSink* sink, UvExecutorOptions options, std::function<void()> on_activity);

  void Start(const Ref& ref, const TaskSpec& spec, const Grant& grant) override;
  void Cancel(const Ref& ref) override;
  void PauseOutput(bool paused) override;
  // docker and session: a real container of `image` (the session image when none).
  void Probe(const std::string& capability, const std::string& image) override;

 private:
  Executor& For(const TaskSpec& spec);

  ExecExecutor exec_;
  DockerExecutor docker_;
  SessionExecutor session_;
};

}  // namespace fm::worker
