// The exec executor: an attempt's command as a process on the worker's libuv loop, in its
// own process group, with a clean environment (never the worker's: PATH, HOME, USER,
// LANG and FM_TASK_ID, FM_ATTEMPT, FM_WORKER_ID, FM_RUN_ID), as the task's user (its
// owner's uid, or the --run-as user), in its cgroup leaf when limits are on; stdout and
// stderr streamed as they come. Timeout and cancel kill every process the attempt
// started: its process group, and any process that left it (setsid) found by its
// FM_RUN_ID in /proc (and its cgroup). When the command exits, its group is killed; if
// its output is still held 100 ms later, the marked processes too, and the output is
// closed at most 2 s after: nothing an attempt started holds its slot.
//
// Whatever runs privileged gets nothing of the task: a worker that switches users or
// limits attempts starts the exec shim (fm-cgexec) with an empty environment and its own
// arguments; the task's command, env and cwd travel in a memfd the shim reads only after
// it joined the cgroup and dropped to the task's user.
//
// An attempt ends (RunSink::OnRunEnded) only once its four handles (process, stdout,
// stderr, timer) are closed: then all output was sent and the exit status is known.
//
// Thread: the loop thread.
#pragma once

#include <uv.h>

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "worker/cgroup.h"
#include "worker/executor.h"
#include "worker/task_users.h"

namespace fm::worker {

struct ExecOptions {
  std::string worker_id;  // FM_WORKER_ID
  // Unique to this worker process: with the task and attempt, FM_RUN_ID, the mark by
  // which an attempt's processes are found.
  std::string instance;
  TaskUsers* users = nullptr;  // whom each attempt runs as (its Grant's owner); not null
  // Limits: a cgroup leaf each (nullptr or off: none), joined through `exec_shim`.
  Cgroups* cgroups = nullptr;
  std::string exec_shim;
};

class ExecExecutor final : public Executor {
 public:
  // `on_activity` is called after each report to `sink` from a libuv callback.
  ExecExecutor(uv_loop_t* loop, RunSink* sink, ExecOptions options, std::function<void()> on_activity);
  ~ExecExecutor() override;

  void Start(const Ref& ref, const TaskSpec& spec, const Grant& grant) override;
  void Cancel(const Ref& ref) override;
  void PauseOutput(bool paused) override;

 private:
  struct Run;
  // Starts or stops reading an attempt's open output pipes.
  void ReadOutput(Run* run, bool on);
  void StartTimeout(Run* run);
  void Kill(Run* run);
  // Kills every process of the attempt: its process group, its cgroup, then whatever
  // carries its FM_RUN_ID. Returns how many processes outside the group it found.
  int KillTree(Run* run);
  // Reports the end and frees the run. REQUIRES: none of its handles is open.
  void End(Run* run, RunResult result);
  static void OnHandleClosed(uv_handle_t* handle);
  static void CloseTimer(Run* run);

  uv_loop_t* loop_;
  RunSink* sink_;
  ExecOptions options_;
  std::function<void()> on_activity_;
  std::map<Ref, std::unique_ptr<Run>> runs_;
  bool output_paused_ = false;  // PauseOutput
  uint64_t leaves_made_ = 0;    // cgroup leaves, numbered: each name used once
};

}  // namespace fm::worker
