#include "worker/docker_executor.h"

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <future>

#include "schemas/units.h"
#include "worker/probe.h"

namespace fm::worker {

namespace {

// A docker attempt's output read from the daemon and not yet taken by the loop.
constexpr size_t kHeldBytes = 1u << 20;
// Output pieces of one stream are joined up to this size before the loop takes them.
constexpr size_t kPieceBytes = 64u << 10;

}  // namespace

DockerExecutor::DockerExecutor(uv_loop_t* loop, RunSink* sink, DockerOptions options, std::function<void()> on_activity)
    : loop_(loop), sink_(sink), options_(std::move(options)), on_activity_(std::move(on_activity)), off_loop_(loop) {}

DockerExecutor::~DockerExecutor() { StopThreads(); }

void DockerExecutor::StopThreads() {
  // The loop ran until every attempt ended; a thread still here (the loop was not run to
  // its end) is told to drop its output, its container killed, and joined.
  for (auto& [ref, run] : runs_) {
    if (!run->thread.joinable()) continue;
    std::string container;
    {
      std::lock_guard<std::mutex> lock(run->mutex);
      run->stopping = true;
      container = run->container;
    }
    run->drained.notify_all();
    if (!container.empty()) (void)DockerClient(options_.docker_socket).Kill(container);
    run->thread.join();
  }
}

void DockerExecutor::Start(const Ref& ref, const TaskSpec& spec, const Grant& grant) {
  auto owned = std::make_unique<Run>();
  Run* run = owned.get();
  run->executor = this;
  run->ref = ref;
  run->spec = spec;
  run->grant = grant;
  run->extra = MakeExtra();
  runs_[ref] = std::move(owned);
  uv_async_init(loop_, &run->wake, [](uv_async_t* a) {
    auto* r = static_cast<Run*>(a->data);
    r->executor->OnWakeLoop(r);
  });
  run->wake.data = run;
  run->open_handles = 1;
  if (run->spec.timeout_ms > 0) {
    uv_timer_init(loop_, &run->timer);
    run->timer.data = run;
    run->timer_started = true;
    run->open_handles = 2;
    StartTimeout(run);
  }
  run->thread = std::thread([this, run] { RunContainer(run); });
}

void DockerExecutor::Probe(const std::string& capability, const std::string& image) {
  struct Answer {
    bool ok = false;
    std::string message;
  };
  auto answer = std::make_shared<Answer>();
  off_loop_.Run(
      [answer, image = image.empty() ? options_.probe_image : image, socket = options_.docker_socket,
       worker = options_.worker_id] {
        DockerClient docker(socket);
        DockerClient::ContainerSpec spec;
        spec.labels = {{"fm.probe", "1"}, {"fm.worker", worker}};
        spec.pids_limit = kAttemptPidsLimit;
        auto id = docker.Create(image, {"true"}, spec);
        if (!id.ok()) {
          answer->message = "docker create: " + id.status().message();
          return;
        }
        Status s = docker.Start(*id);
        answer->ok = s.ok() || IsCommandMissing(s.message());
        if (!answer->ok) answer->message = "docker start: " + s.message();
        (void)docker.Kill(*id);
        (void)docker.Remove(*id);
      },
      [this, answer, capability] {
        sink_->OnProbeEnded(capability, answer->ok, answer->message);
        on_activity_();
      });
}

void DockerExecutor::Cancel(const Ref& ref) {
  auto it = runs_.find(ref);
  if (it == runs_.end()) return;
  it->second->cancelled = true;
  Kill(it->second.get());
}

void DockerExecutor::PauseOutput(bool paused) {
  if (paused == output_paused_) return;
  output_paused_ = paused;
  if (paused) return;
  // What the threads hold is taken now (a wake may end a run: not while iterating).
  std::vector<Run*> runs;
  for (auto& [ref, run] : runs_) runs.push_back(run.get());
  for (Run* run : runs) OnWakeLoop(run);
}

void DockerExecutor::End(Run* run, RunResult result) {
  Ref ref = run->ref;
  runs_.erase(ref);  // frees run
  sink_->OnRunEnded(ref, std::move(result));
  on_activity_();
}

void DockerExecutor::RunContainer(Run* r) {
  auto deliver = [r](const char* stream, std::string_view data) {
    std::unique_lock<std::mutex> lock(r->mutex);
    r->drained.wait(lock, [r] { return r->pending_bytes < kHeldBytes || r->stopping; });
    if (r->stopping) return;
    if (!r->pending.empty() && r->pending.back().first == stream &&
        r->pending.back().second.size() + data.size() <= kPieceBytes) {
      r->pending.back().second.append(data);
    } else {
      r->pending.emplace_back(stream, std::string(data));
    }
    r->pending_bytes += data.size();
    lock.unlock();
    uv_async_send(&r->wake);
  };
  DockerClient docker(options_.docker_socket);
  DockerClient::ContainerSpec spec;
  EnvBuilder vars;
  for (const auto& [name, value] : r->spec.env) vars.Set(name, value);
  for (const std::string& v : AttemptVars(r->ref, options_.worker_id, r->spec)) vars.SetLine(v);
  SetGpuVars(&vars, r->grant.gpus);  // also over an image's ENV NVIDIA_VISIBLE_DEVICES=all
  std::string image = r->spec.image;
  r->prepare_error = Prepare(*r, &image, &vars, &spec);
  spec.env = vars.Lines();
  spec.cwd = r->spec.cwd;
  // Marks that say whose it is (a restarted worker removes its orphans by them).
  spec.labels = {{"fm.task", "t" + std::to_string(r->ref.task)},
                 {"fm.attempt", std::to_string(r->ref.attempt)},
                 {"fm.worker", options_.worker_id}};
  // What placement reserved is what the container may use.
  spec.cpus_milli = r->spec.resources.cpus_milli;
  spec.memory = r->spec.resources.memory;
  spec.pids_limit = kAttemptPidsLimit;
  spec.gpus = r->grant.gpus;
  if (r->prepare_error.empty()) {
    auto id = docker.Create(image, r->spec.command, spec);
    if (!id.ok()) {
      r->docker_error = id.status().message();
      r->image_missing = id.status().code() == Status::Code::kNotFound;
      r->task_refused = id.status().code() == Status::Code::kInvalid;
      if (!r->image_missing && !r->task_refused) r->start_failure = "docker create";
    } else {
      {
        std::lock_guard<std::mutex> lock(r->mutex);
        r->container = *id;
      }
      auto ended = [r] {
        std::lock_guard<std::mutex> lock(r->mutex);
        return r->ended_locked();
      };
      if (ended()) {
        // Ended before the container started: nothing to wait for.
      } else if (Status s = docker.Start(*id); !s.ok()) {
        r->docker_error = s.message();
        // The runtime ran and the command is not there (or not executable): the task's
        // fault, not the daemon's. Anything else is the daemon failing to start it.
        r->command_missing = IsCommandMissing(s.message());
        r->task_refused = s.code() == Status::Code::kInvalid;
        if (!r->command_missing && !r->task_refused) r->start_failure = "docker start";
      } else {
        {
          std::lock_guard<std::mutex> lock(r->mutex);
          r->container_started = true;
        }
        uv_async_send(&r->wake);
        // A cancel or timeout between the look above and the start found nothing running
        // to kill: kill it now.
        if (ended()) (void)docker.Kill(*id);
        // The output is followed on a thread of its own while this one waits for the
        // exit: podman 4.3 sometimes never ends a follow of a container that exited at
        // once, so a follow still open 2 s after the exit is shut down, and what it
        // missed is read below. The kind's watcher (a session's) runs beside.
        std::thread watcher;
        if (Watches()) watcher = std::thread([this, r, container = *id] { Watch(*r, container); });
        uint64_t out_bytes = 0, err_bytes = 0;  // passed on, per stream
        LogsStop follow_stop;
        std::promise<Status> followed;
        std::future<Status> follow_done = followed.get_future();
        std::thread follower([&] {
          followed.set_value(docker.Logs(
              *id, true,
              [&](const char* stream, std::string_view data) {
                (std::strcmp(stream, "stderr") == 0 ? err_bytes : out_bytes) += data.size();
                deliver(stream, data);
              },
              &follow_stop));
        });
        auto status = docker.Wait(*id);
        if (watcher.joinable()) {
          Exited(*r);
          watcher.join();
        }
        if (follow_done.wait_for(std::chrono::seconds(2)) != std::future_status::ready) follow_stop.Stop();
        follower.join();
        Status logs = follow_done.get();
        if (follow_stop.stopped()) logs = Status::Ok();
        if (!status.ok()) {
          r->docker_error = status.status().message();
        } else {
          r->docker_status = *status;
          // Killed for its memory: the daemon says so, or (podman on cgroup v1 does not)
          // a SIGKILL we did not send to a container with a memory limit.
          auto inspected = docker.Inspect(*id);
          r->memory_killed = (inspected.ok() && inspected->oom_killed) ||
                             (*status == 128 + SIGKILL && r->spec.resources.memory > 0 && !ended());
        }
        // Some daemons end a follow when the container exits before all of its output
        // was sent (podman 4.3 does, under load), or never (above): read the logs once
        // more, now complete, and pass on what the follow did not.
        if (logs.ok()) {
          uint64_t skip_out = out_bytes, skip_err = err_bytes;
          logs = docker.Logs(*id, false, [&](const char* stream, std::string_view data) {
            uint64_t& skip = std::strcmp(stream, "stderr") == 0 ? skip_err : skip_out;
            size_t skipped = static_cast<size_t>(std::min<uint64_t>(skip, data.size()));
            skip -= skipped;
            if (skipped < data.size()) deliver(stream, data.substr(skipped));
          });
        }
        // Never silent: output that could not be read is said to be lost.
        if (!logs.ok()) deliver("fm", "output lost: " + logs.message());
      }
      (void)docker.Remove(*id);
    }
  }
  {
    std::lock_guard<std::mutex> lock(r->mutex);
    r->finished = true;
  }
  uv_async_send(&r->wake);
}

void DockerExecutor::OnWakeLoop(Run* r) {
  if (r->closing) return;  // taken whole already (a resume may come before the close callbacks)
  std::vector<std::pair<const char*, std::string>> output;
  bool finished = false, started = false, take = false;
  {
    std::lock_guard<std::mutex> lock(r->mutex);
    started = r->container_started;
    // Paused: the output stays with the thread (which waits past 1 MiB), but an attempt
    // that finished is taken whole, so that its end is never held up.
    take = !output_paused_ || r->finished;
    if (take) {
      output.swap(r->pending);
      r->pending_bytes = 0;
      finished = r->finished;
    }
  }
  if (started && !r->started_told) {  // told even while output is paused: it may let others start
    r->started_told = true;
    sink_->OnRunStarted(r->ref);
    on_activity_();
  }
  OnWake(*r);
  if (!take) return;
  r->drained.notify_all();
  for (const auto& [stream, data] : output) sink_->OnRunOutput(r->ref, stream, data);
  if (!output.empty()) on_activity_();
  if (!finished) return;
  r->thread.join();
  r->closing = true;
  uv_close(reinterpret_cast<uv_handle_t*>(&r->wake), OnHandleClosed);
  if (r->timer_started) {
    uv_timer_stop(&r->timer);
    uv_close(reinterpret_cast<uv_handle_t*>(&r->timer), OnHandleClosed);
  }
}

void DockerExecutor::OnHandleClosed(uv_handle_t* handle) {
  auto* r = static_cast<Run*>(handle->data);
  if (--r->open_handles > 0) return;
  RunResult result;
  result.exit_code = static_cast<int32_t>(r->docker_status);
  std::optional<RunResult> kind;
  if (r->cancelled) {
    result = {wire::Outcome::Cancelled, result.exit_code, "cancelled"};
  } else if (kind = r->executor->KindResult(*r); kind) {
    result = std::move(*kind);
  } else if (r->timed_out) {
    result = {wire::Outcome::TimedOut, result.exit_code,
              "timed out after " + std::to_string(r->spec.timeout_ms) + " ms; container stopped (exit status " +
                  std::to_string(result.exit_code) + ")"};
  } else if (r->memory_killed) {
    result = {wire::Outcome::Failed, result.exit_code,
              "memory_limit: killed for using more than its " + FormatSize(r->spec.resources.memory) + " of memory",
              wire::Reason::MemoryLimit};
  } else if (r->image_missing) {
    // No registry is asked: an image is there or it is not, and retrying will not bring it.
    result = {wire::Outcome::Failed, 0,
              "image_missing: " + r->docker_error + " on worker " + r->executor->options_.worker_id,
              wire::Reason::ImageMissing};
  } else if (r->task_refused && !r->command_missing) {
    // Another worker's daemon would refuse it too: failed, not retried, counts nothing.
    result = {wire::Outcome::Failed, 0, "docker refused the task: " + r->docker_error};
  } else if (r->command_missing) {
    result = {wire::Outcome::Failed, 127, "command not runnable in image " + r->spec.image + ": " + r->docker_error};
  } else if (!r->docker_error.empty()) {
    // The daemon could not run it here: another worker may.
    result = {wire::Outcome::Retryable, result.exit_code,
              r->start_failure.empty() ? "docker: " + r->docker_error : r->start_failure + ": " + r->docker_error};
    result.start_failure = r->start_failure;
  } else if (result.exit_code != 0) {
    result = {wire::Outcome::Failed, result.exit_code, "container exit status " + std::to_string(result.exit_code)};
  }
  r->executor->End(r, std::move(result));
}

void DockerExecutor::StartTimeout(Run* run) {
  uv_timer_start(
      &run->timer,
      [](uv_timer_t* t) {
        auto* r = static_cast<Run*>(t->data);
        r->timed_out = true;
        r->executor->Kill(r);
      },
      run->spec.timeout_ms, 0);
}

void DockerExecutor::Kill(Run* run) {
  const uint64_t grace = run->spec.kill_timeout_ms != 0 ? run->spec.kill_timeout_ms : kDefaultKillTimeoutMs;
  std::string container;
  {
    std::lock_guard<std::mutex> lock(run->mutex);
    container = run->container;
  }
  if (container.empty()) return;
  // docker stop: SIGTERM, SIGKILL after the kill timeout (whole seconds, at least one).
  // It blocks for as long: on a thread of its own, never libuv's pool (four threads that
  // every other attempt's timeout and cancel would wait behind). The container's end
  // reaches the attempt's thread through its wait.
  const uint64_t seconds = std::max<uint64_t>(1, (grace + 999) / 1000);
  std::thread([socket = options_.docker_socket, container, seconds] {
    (void)DockerClient(socket).Stop(container, seconds);
  }).detach();
}

}  // namespace fm::worker
