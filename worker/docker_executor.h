// The docker executor: an attempt in a container of the task's image through the Docker
// Engine API (create, start, follow the logs, wait, read the logs once more for what a
// follow that ended at the exit did not send, remove), the blocking calls on a thread of
// the attempt's own, so that no attempt waits behind another's; output streamed to the
// loop as it comes (at most 1 MiB held between them). The container gets what placement
// reserved (cpus, memory, GPUs), a pids limit and labels naming its task and worker.
//
// A kind of container with more to it (a session: session_executor.h) derives and fills
// in the hooks; the run state it needs beside this one's is its own (Run::extra).
//
// An attempt ends (RunSink::OnRunEnded) only once its handles are closed and its thread
// joined: nothing of it is touched after.
//
// Thread: the loop thread, except each attempt's docker calls (a thread per attempt,
// guarded by the run's mutex).
#pragma once

#include <uv.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "worker/attempt_env.h"
#include "worker/docker_client.h"
#include "worker/executor.h"
#include "worker/off_loop.h"

namespace fm::worker {

struct DockerOptions {
  std::string docker_socket;
  std::string worker_id;    // FM_WORKER_ID, and the fm.worker label
  std::string probe_image;  // what Probe runs when told no image
};

class DockerExecutor : public Executor {
 public:
  // `on_activity` is called after each report to `sink` from a libuv callback.
  DockerExecutor(uv_loop_t* loop, RunSink* sink, DockerOptions options, std::function<void()> on_activity);
  ~DockerExecutor() override;

  void Start(const Ref& ref, const TaskSpec& spec, const Grant& grant) override;
  void Cancel(const Ref& ref) override;
  void PauseOutput(bool paused) override;
  // Creates and starts a container of `image` running `true` (a command missing from the
  // image still proves the runtime ran), then removes it. Off the loop.
  void Probe(const std::string& capability, const std::string& image) override;

 protected:
  // What a kind of container keeps of one attempt beside the run (guarded by its mutex).
  struct Extra {
    virtual ~Extra() = default;
  };

  // One attempt in flight. Owned by runs_; libuv handles point back to it.
  struct Run {
    DockerExecutor* executor = nullptr;
    Ref ref;
    TaskSpec spec;
    Grant grant;
    uv_timer_t timer{};
    bool timer_started = false;
    int open_handles = 0;
    std::atomic<bool> timed_out{false};
    std::atomic<bool> cancelled{false};
    // The attempt's Engine API calls run on `thread` (never the loop's or libuv's pool,
    // which other attempts need); its output is passed to the loop through `wake` as it
    // comes, at most kHeldBytes at a time (then the thread waits, the output in the daemon).
    std::thread thread;
    uv_async_t wake{};
    std::mutex mutex;
    std::condition_variable drained;
    std::string container;                                     // guarded by mutex
    std::vector<std::pair<const char*, std::string>> pending;  // guarded by mutex
    size_t pending_bytes = 0;                                  // guarded by mutex
    bool finished = false;                                     // guarded by mutex: the thread is done
    bool stopping = false;                                     // guarded by mutex: the executor is going away
    bool closing = false;  // the loop closed wake (and the timer): the run ends in their close callbacks
    // Written by the thread before `finished`:
    std::string prepare_error;       // the kind could not prepare it: nothing was asked of the daemon
    std::string docker_error;        // what the daemon said
    bool image_missing = false;      // the daemon does not have the image
    bool memory_killed = false;      // the kernel killed it for its memory limit
    bool command_missing = false;    // the runtime works, the command is not in the image
    bool task_refused = false;       // the daemon refused what the task asked (HTTP 4xx)
    std::string start_failure;       // the daemon could not create or start it ("docker start")
    int64_t docker_status = -1;      // the container's exit status
    bool container_started = false;  // guarded by mutex: the container started (told to the sink once)
    bool started_told = false;
    std::unique_ptr<Extra> extra;  // the kind's (session_executor.h)

    // Ended by a cancel, a timeout or the executor going away. REQUIRES: mutex held.
    bool ended_locked() const { return cancelled || timed_out || stopping; }
  };

  // The hooks of a kind of container; the defaults run the task's image as it is.
  // A new run's state of the kind's own.
  virtual std::unique_ptr<Extra> MakeExtra() { return nullptr; }
  // On the attempt's thread, before create: the image, env and ports. A non-empty return
  // says why it cannot run (nothing is asked of the daemon); KindResult words the end.
  virtual std::string Prepare(Run& run, std::string* image, EnvBuilder* vars, DockerClient::ContainerSpec* spec) {
    (void)run, (void)image, (void)vars, (void)spec;
    return {};
  }
  // Whether Watch runs beside each container.
  virtual bool Watches() const { return false; }
  // On a thread of its own once the container started, until Exited or the run ended
  // (Run::ended_locked: looked at at least once a second).
  virtual void Watch(Run& run, const std::string& container) { (void)run, (void)container; }
  // The container exited: what Watch waits on ends.
  virtual void Exited(Run& run) { (void)run; }
  // On the loop at each wake of the run (e.g. a session's endpoint to tell once).
  virtual void OnWake(Run& run) { (void)run; }
  // The end as the kind words it, when it does (else the container's own); after a
  // cancel nothing is asked.
  virtual std::optional<RunResult> KindResult(const Run& run) {
    (void)run;
    return std::nullopt;
  }
  // Wakes the loop for `run` (from the attempt's threads).
  static void Wake(Run& run) { uv_async_send(&run.wake); }

  // Stops and joins every attempt's threads (they call the hooks: a derived executor calls
  // it from its own destructor, while its hooks and state are still there).
  void StopThreads();
  RunSink* sink() { return sink_; }
  void Activity() { on_activity_(); }
  const DockerOptions& options() const { return options_; }

 private:
  // On the attempt's own thread: create, start, follow the output, wait, remove.
  void RunContainer(Run* run);
  void OnWakeLoop(Run* run);
  static void OnHandleClosed(uv_handle_t* handle);
  void StartTimeout(Run* run);
  void Kill(Run* run);
  // Reports the end and frees the run. REQUIRES: none of its handles is open.
  void End(Run* run, RunResult result);

  uv_loop_t* loop_;
  RunSink* sink_;
  DockerOptions options_;
  std::function<void()> on_activity_;
  std::map<Ref, std::unique_ptr<Run>> runs_;
  bool output_paused_ = false;  // PauseOutput
  OffLoop off_loop_;            // re-probes
};

}  // namespace fm::worker
