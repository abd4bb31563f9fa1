// The executors that really run attempts, on the worker's libuv loop:
//  - exec: the command as a process in its own process group, with a clean environment
//    (never the worker's: PATH, HOME, USER, LANG and FM_TASK_ID, FM_ATTEMPT,
//    FM_WORKER_ID, FM_RUN_ID), as the --run-as user when given; stdout and stderr streamed
//    as they come. Timeout and cancel kill every process the attempt started: its process
//    group, and any process that left it (setsid) found by its FM_RUN_ID in /proc. When the
//    command exits, its group is killed; if its output is still held 100 ms later, the
//    marked processes too, and the output is closed at most 2 s after: nothing an
//    attempt started holds its slot.
//  - docker: the task's image through the Docker Engine API (create, start, follow
//    the logs, wait, read the logs once more for what a follow that ended at the exit
//    did not send, remove), the blocking calls on a thread of the attempt's own, so
//    that no attempt waits behind another's; output streamed to the loop as it comes
//    (at most 1 MiB held between them).
// Each attempt is keyed by its Ref, and ends (RunSink::OnRunEnded) only once all its
// handles are closed: nothing of it is touched after.
//
// Thread: the loop thread, except the docker calls (a thread per attempt, guarded per run).
#pragma once

#include <uv.h>

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "schemas/status.h"
#include "worker/cgroup.h"
#include "worker/executor.h"
#include "worker/off_loop.h"
#include "worker/probe.h"
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
  struct Sessions {
    std::string image = "localhost/fm-session:latest";
    std::string bind = "0.0.0.0";
    std::string advertise = "127.0.0.1";
    std::string user = "fm";
    uint64_t max_ttl_ms = 8 * 3600 * 1000;  // a session's ttl is at most this
  } sessions;
};

class UvExecutor final : public Executor {
 public:
  // `on_activity` is called after each report to `sink` from a libuv callback (so the
  // loop ends its turn and sends what the report caused).
  UvExecutor(uv_loop_t* loop, RunSink* sink, UvExecutorOptions options, std::function<void()> on_activity);
  ~UvExecutor() override;

  void Start(const Ref& ref, const TaskSpec& spec, const Grant& grant) override;
  void Cancel(const Ref& ref) override;
  void PauseOutput(bool paused) override;
  // docker: creates and starts a container of `image` running `true` (a command missing
  // from the image still proves the runtime ran), then removes it. Off the loop.
  void Probe(const std::string& capability, const std::string& image) override;

 private:
  struct Run;
  void StartExec(Run* run);
  void StartDocker(Run* run);
  static void RunContainer(Run* run, std::string socket, std::string worker_id, UvExecutorOptions::Sessions sessions);
  // A session's own thread, beside its container: waits for sshd's banner (then the
  // endpoint goes to the loop), then ends the session after its idle timeout with no
  // established connection. Returns when the container has exited.
  static void WatchSession(Run* run, const std::string& socket, const std::string& id, int port,
                           const UvExecutorOptions::Sessions& sessions);
  void OnDockerWake(Run* run);
  static void OnDockerHandleClosed(uv_handle_t* handle);
  void StartTimeout(Run* run);
  // Starts or stops reading an exec attempt's open output pipes.
  void ReadOutput(Run* run, bool on);
  void Kill(Run* run);
  // Kills every process of the exec attempt: its process group, then whatever carries its
  // FM_* variables. Returns how many processes outside the group it found.
  int KillTree(Run* run);
  // Reports the end and frees the run. REQUIRES: none of its handles is open.
  void End(Run* run, RunResult result);
  static void OnExecHandleClosed(uv_handle_t* handle);
  static void CloseTimer(Run* run);

  uv_loop_t* loop_;
  RunSink* sink_;
  UvExecutorOptions options_;
  std::function<void()> on_activity_;
  std::map<Ref, std::unique_ptr<Run>> runs_;
  bool output_paused_ = false;  // PauseOutput
  OffLoop off_loop_;            // re-probes
  uint64_t leaves_made_ = 0;    // cgroup leaves, numbered: each name used once
};

}  // namespace fm::worker
