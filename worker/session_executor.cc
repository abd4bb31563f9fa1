#include "worker/session_executor.h"

#include <algorithm>
#include <chrono>

#include "worker/probe.h"

namespace fm::worker {

// A session's state beside its run (guarded by the run's mutex, but for what only the
// loop touches).
struct SessionExecutor::Session : DockerExecutor::Extra {
  int port = 0;             // on the host, published to the container's 22
  bool ready = false;       // sshd answered
  bool ready_told = false;  // the loop's: told to the sink
  Endpoint endpoint;
  std::string error;        // it never answered, or no port was free
  bool idle_ended = false;  // ended for having no connection
  bool container_exited = false;
  std::condition_variable cv;  // wakes the watcher when the container exited
};

SessionExecutor::SessionExecutor(uv_loop_t* loop, RunSink* sink, DockerOptions docker, SessionOptions sessions,
                                 std::function<void()> on_activity)
    : DockerExecutor(loop, sink, std::move(docker), std::move(on_activity)), sessions_(std::move(sessions)) {}

void SessionExecutor::Start(const Ref& ref, const TaskSpec& spec, const Grant& grant) {
  TaskSpec session = spec;
  // Its ttl is its timeout (then it ends as a session does, not as a failure).
  const uint64_t ttl = spec.session && spec.session->ttl_ms ? spec.session->ttl_ms : kDefaultSessionTtlMs;
  session.timeout_ms = std::min(ttl, sessions_.max_ttl_ms);
  DockerExecutor::Start(ref, session, grant);
}

std::unique_ptr<DockerExecutor::Extra> SessionExecutor::MakeExtra() { return std::make_unique<Session>(); }

std::string SessionExecutor::Prepare(Run& run, std::string* image, EnvBuilder* vars,
                                     DockerClient::ContainerSpec* spec) {
  Session& s = static_cast<Session&>(*run.extra);
  // The session image reads its keys from FM_SSH_KEYS (one per line) and runs sshd on
  // port 22, published here on a port of the host's.
  if (image->empty()) *image = sessions_.image;
  std::string keys;
  for (const auto& key : run.spec.session->ssh_keys) keys += (keys.empty() ? "" : "\n") + key;
  vars->Set("FM_SSH_KEYS", keys);
  s.port = FreePort(sessions_.bind);
  spec->ports = {{22, sessions_.bind, s.port}};
  if (s.port == 0) {  // said as the daemon's would be: the worker cannot publish the port
    std::lock_guard<std::mutex> lock(run.mutex);
    s.error = "session: no free port on " + sessions_.bind;
    return s.error;
  }
  return {};
}

void SessionExecutor::Watch(Run& run, const std::string& container) {
  Session& s = static_cast<Session&>(*run.extra);
  DockerClient docker(options().docker_socket);
  auto over = [&] {
    std::lock_guard<std::mutex> lock(run.mutex);
    return s.container_exited || run.ended_locked();
  };
  const std::string local = sessions_.bind == "0.0.0.0" ? "127.0.0.1" : sessions_.bind;
  std::string banner;
  if (!ReadSshBanner(local, s.port, 30000, &banner, over)) {
    if (over()) return;
    {
      std::lock_guard<std::mutex> lock(run.mutex);
      s.error = "session: no sshd answered on port 22 of the container within 30 s";
    }
    (void)docker.Stop(container, 1);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(run.mutex);
    s.endpoint = {sessions_.advertise, static_cast<uint32_t>(s.port), sessions_.user};
    s.ready = true;
  }
  Wake(run);
  // Idle: time with no established connection to sshd, seen from inside the container's
  // network namespace. A connected user is never reaped; a count that cannot be read
  // counts as connected.
  const uint64_t idle_ms =
      run.spec.session->idle_timeout_ms ? run.spec.session->idle_timeout_ms : kDefaultSessionIdleMs;
  auto state = docker.Inspect(container);
  auto last_open = std::chrono::steady_clock::now();
  while (true) {
    {
      std::unique_lock<std::mutex> lock(run.mutex);
      if (s.cv.wait_for(lock, std::chrono::seconds(1), [&] { return s.container_exited || run.ended_locked(); })) {
        return;
      }
    }
    const int open = state.ok() ? EstablishedTo(state->pid, 22) : -1;
    const auto now = std::chrono::steady_clock::now();
    if (open != 0) {
      last_open = now;
    } else if (now - last_open >= std::chrono::milliseconds(idle_ms)) {
      {
        std::lock_guard<std::mutex> lock(run.mutex);
        s.idle_ended = true;
      }
      const uint64_t grace = run.spec.kill_timeout_ms != 0 ? run.spec.kill_timeout_ms : kDefaultKillTimeoutMs;
      (void)docker.Stop(container, std::max<uint64_t>(1, (grace + 999) / 1000));
      return;
    }
  }
}

void SessionExecutor::Exited(Run& run) {
  Session& s = static_cast<Session&>(*run.extra);
  {
    std::lock_guard<std::mutex> lock(run.mutex);
    s.container_exited = true;
  }
  s.cv.notify_all();
}

void SessionExecutor::OnWake(Run& run) {
  Session& s = static_cast<Session&>(*run.extra);
  Endpoint endpoint;
  {
    std::lock_guard<std::mutex> lock(run.mutex);
    if (!s.ready || s.ready_told) return;
    endpoint = s.endpoint;
  }
  s.ready_told = true;
  sink()->OnRunReady(run.ref, endpoint);
  Activity();
}

std::optional<RunResult> SessionExecutor::KindResult(const Run& run) {
  const Session& s = static_cast<const Session&>(*run.extra);
  const int32_t status = static_cast<int32_t>(run.docker_status);
  const uint64_t ttl_s = run.spec.timeout_ms / 1000;
  if (run.timed_out && !s.ready) {
    return RunResult{wire::Outcome::Failed, status,
                     "session never answered before its ttl of " + std::to_string(ttl_s) + " s passed"};
  }
  if (run.timed_out) {
    return RunResult{wire::Outcome::Succeeded, status,
                     "session ended: its ttl of " + std::to_string(ttl_s) + " s passed", wire::Reason::SessionTtl};
  }
  if (s.idle_ended) {
    const uint64_t idle = run.spec.session->idle_timeout_ms ? run.spec.session->idle_timeout_ms : kDefaultSessionIdleMs;
    return RunResult{wire::Outcome::Succeeded, status,
                     "session ended: no connection for " + std::to_string(idle / 1000) + " s (its idle timeout)",
                     wire::Reason::SessionIdle};
  }
  if (!s.error.empty()) {
    // The container started (docker works: nothing counts toward quarantine). With the
    // task's own image or command, sshd not answering is the task's; with the worker's
    // image, another worker may do better.
    const bool own = !run.spec.image.empty() || !run.spec.command.empty();
    return RunResult{own ? wire::Outcome::Failed : wire::Outcome::Retryable, status, s.error};
  }
  return std::nullopt;
}

}  // namespace fm::worker
