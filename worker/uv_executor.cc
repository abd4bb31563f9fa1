#include "worker/uv_executor.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "schemas/units.h"
#include "worker/docker_client.h"

namespace fm::worker {

// One attempt in flight. Owned by runs_; libuv handles point back to it.
struct UvExecutor::Run {
  UvExecutor* executor = nullptr;
  Ref ref;
  TaskSpec spec;
  Grant grant;
  // exec
  uv_process_t process{};
  uv_pipe_t out{}, err{};
  uv_timer_t timer{};
  int open_handles = 0;
  bool exited = false;
  int64_t exit_status = 0;
  int term_signal = 0;
  std::atomic<bool> timed_out{false};
  std::atomic<bool> cancelled{false};
  bool term_sent = false;  // exec: SIGTERM sent, SIGKILL follows after the kill timeout
  bool timer_started = false;
  bool out_closed = false, err_closed = false, timer_closed = false;
  std::string spawn_error;
  bool spawn_retryable = false;           // the worker's fault (its cgroup), not the task's
  std::string leaf;                       // the attempt's cgroup leaf (limits on)
  std::vector<std::string> cgroup_procs;  // its cgroup.procs files, for the shim
  int input_fd = -1;                      // the shim's: the attempt's command, env and cwd (a memfd)
  // docker: the attempt's Engine API calls on a thread of its own (never the loop's
  // or libuv's pool, which other attempts need), its output passed to the loop through
  // `wake` as it comes, at most kDockerHeldBytes at a time (then the thread waits, and
  // the output waits in the daemon).
  std::thread thread;
  uv_async_t wake{};
  std::mutex mutex;
  std::condition_variable drained;
  std::string container;                                     // guarded by mutex
  std::vector<std::pair<const char*, std::string>> pending;  // guarded by mutex
  size_t pending_bytes = 0;                                  // guarded by mutex
  bool finished = false;                                     // guarded by mutex: the thread is done
  bool stopping = false;                                     // guarded by mutex: the executor is going away
  bool closing = false;          // the loop closed wake (and the timer): the run ends in their close callbacks
  std::string docker_error;      // written by the thread before `finished`
  bool image_missing = false;    // likewise: the daemon does not have the image
  bool memory_killed = false;    // likewise: the kernel killed it for its memory limit
  bool command_missing = false;  // likewise: the runtime works, the command is not in the image
  bool task_refused = false;     // likewise: the daemon refused what the task asked (HTTP 4xx)
  // A session: sshd answered (guarded by mutex; told to the sink once), or never did, or
  // it was ended for having no connection; `container_exited` wakes its watcher.
  bool session_ready = false;
  bool ready_told = false;
  Endpoint endpoint;
  std::string session_error;
  bool idle_ended = false;
  bool container_exited = false;
  std::condition_variable session_cv;
  std::string start_failure;       // likewise: the daemon could not create or start it ("docker start")
  bool container_started = false;  // guarded by mutex: the container started (told to the sink once)
  bool started_told = false;
  int64_t docker_status = -1;  // ditto
};

namespace {

// After the command exits: how long its output may take to close by itself before the
// attempt's other processes are looked for, and how much longer it is read at most.
constexpr uint64_t kOutputSettleMs = 100;
constexpr uint64_t kOutputLingerMs = 2000;
// A docker attempt's output read from the daemon and not yet taken by the loop.
constexpr size_t kDockerHeldBytes = 1u << 20;
// Output pieces of one stream are joined up to this size before the loop takes them.
constexpr size_t kDockerPieceBytes = 64u << 10;
// Processes a container may hold (a fork bomb stops there, not at the host's limit).
constexpr int64_t kContainerPidsLimit = 4096;

std::string TaskVar(uint64_t task) { return "FM_TASK_ID=t" + std::to_string(task); }
std::string AttemptVar(uint32_t attempt) { return "FM_ATTEMPT=" + std::to_string(attempt); }
std::string WorkerVar(const std::string& id) { return "FM_WORKER_ID=" + id; }
// This worker process's mark on one attempt's processes.
std::string RunVar(const std::string& instance, const Ref& ref) {
  return "FM_RUN_ID=" + instance + "-t" + std::to_string(ref.task) + "-" + std::to_string(ref.attempt);
}

// Image tasks and sessions run in containers; the rest as processes.
bool InContainer(const TaskSpec& spec) { return !spec.image.empty() || spec.session.has_value(); }

// An environment with each name once; a later Set replaces the value.
class EnvBuilder {
 public:
  void Set(const std::string& name, const std::string& value) {
    for (auto& [n, v] : vars_) {
      if (n == name) {
        v = value;
        return;
      }
    }
    vars_.emplace_back(name, value);
  }
  std::string Get(const std::string& name) const {
    for (const auto& [n, v] : vars_) {
      if (n == name) return v;
    }
    return {};
  }
  std::vector<std::string> Lines() const {
    std::vector<std::string> out;
    for (const auto& [n, v] : vars_) out.push_back(n + "=" + v);
    return out;
  }

 private:
  std::vector<std::pair<std::string, std::string>> vars_;
};

// The GPUs chosen for an attempt, and only those (none: none visible), over whatever the
// task or its image says.
void SetGpuVars(EnvBuilder* vars, const std::vector<std::string>& gpus) {
  std::string list;
  for (const auto& g : gpus) list += (list.empty() ? "" : ",") + g;
  vars->Set("CUDA_VISIBLE_DEVICES", list);
  vars->Set("NVIDIA_VISIBLE_DEVICES", list.empty() ? std::string("void") : list);
}

// The environment of /proc/PID, as its NUL-separated strings; empty if unreadable.
std::vector<std::string> EnvironOf(const char* pid) {
  std::string path = std::string("/proc/") + pid + "/environ";
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  std::string data;
  char buf[8192];
  ssize_t n;
  // Bounded: the mark is a variable we put there; a process with a huge environment
  // costs one read, not a megabyte.
  while (data.size() < (64u << 10) && (n = ::read(fd, buf, sizeof buf)) > 0) data.append(buf, static_cast<size_t>(n));
  ::close(fd);
  std::vector<std::string> vars;
  size_t start = 0;
  for (size_t i = 0; i < data.size(); ++i) {
    if (data[i] != '\0') continue;
    vars.emplace_back(data, start, i - start);
    start = i + 1;
  }
  return vars;
}

}  // namespace

UvExecutor::UvExecutor(uv_loop_t* loop, RunSink* sink, UvExecutorOptions options, std::function<void()> on_activity)
    : loop_(loop), sink_(sink), options_(std::move(options)), on_activity_(std::move(on_activity)), off_loop_(loop) {}

UvExecutor::~UvExecutor() {
  // The loop ran until every attempt ended; a docker thread still here (the loop was
  // not run to its end) is told to drop its output, its container killed, and joined.
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

void UvExecutor::Start(const Ref& ref, const TaskSpec& spec, const Grant& grant) {
  auto run = std::make_unique<Run>();
  run->executor = this;
  run->ref = ref;
  run->spec = spec;
  run->grant = grant;
  if (run->spec.session) {
    // Its ttl is its timeout (then it ends as a session does, not as a failure).
    uint64_t ttl = run->spec.session->ttl_ms ? run->spec.session->ttl_ms : kDefaultSessionTtlMs;
    run->spec.timeout_ms = std::min(ttl, options_.sessions.max_ttl_ms);
  }
  Run* raw = run.get();
  runs_[ref] = std::move(run);
  if (!InContainer(raw->spec)) {
    StartExec(raw);
  } else {
    StartDocker(raw);
  }
}

void UvExecutor::Probe(const std::string& capability, const std::string& image) {
  struct Answer {
    bool ok = false;
    std::string message;
  };
  auto answer = std::make_shared<Answer>();
  off_loop_.Run(
      [answer, image = image.empty() ? options_.sessions.image : image, socket = options_.docker_socket,
       worker = options_.worker_id] {
        DockerClient docker(socket);
        DockerClient::ContainerSpec spec;
        spec.labels = {{"fm.probe", "1"}, {"fm.worker", worker}};
        spec.pids_limit = kContainerPidsLimit;
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

void UvExecutor::Cancel(const Ref& ref) {
  auto it = runs_.find(ref);
  if (it == runs_.end()) return;
  it->second->cancelled = true;
  Kill(it->second.get());
}

void UvExecutor::End(Run* run, RunResult result) {
  if (!run->leaf.empty()) options_.cgroups->RemoveLeaf(run->leaf);
  if (run->input_fd >= 0) ::close(run->input_fd);
  Ref ref = run->ref;
  runs_.erase(ref);  // frees run
  sink_->OnRunEnded(ref, std::move(result));
  on_activity_();
}

// The exec run ends once its four handles (process, stdout, stderr, timer) are closed:
// then all output has been sent and the exit status is known.
void UvExecutor::OnExecHandleClosed(uv_handle_t* handle) {
  auto* r = static_cast<Run*>(handle->data);
  if (--r->open_handles > 0) return;
  RunResult result;
  result.exit_code = static_cast<int32_t>(r->exit_status);
  const bool memory_killed = !r->leaf.empty() && (r->term_signal != 0 || r->exit_status != 0) && !r->cancelled &&
                             !r->timed_out && r->executor->options_.cgroups->OomKilled(r->leaf);
  // The shim could not run the command (its cwd, its command, the switch): it said why
  // over the start of its input.
  if (r->spawn_error.empty() && r->input_fd >= 0 && r->term_signal == 0 &&
      (r->exit_status == 126 || r->exit_status == 127)) {
    char said[1024];
    ssize_t n = pread(r->input_fd, said, sizeof said, 0);
    if (n > 2 && said[0] == '!') {
      r->spawn_error = std::string(said + 2, static_cast<size_t>(n) - 2);
      r->spawn_error =
          r->spawn_error.substr(0, r->spawn_error.find('\0')) + " on worker " + r->executor->options_.worker_id;
      r->spawn_retryable = said[1] == 'W';
    }
  }
  if (!r->spawn_error.empty()) {
    result = {r->spawn_retryable ? wire::Outcome::Retryable : wire::Outcome::Failed, r->exit_status == 126 ? 126 : 127,
              r->spawn_error};
  } else if (memory_killed) {
    result = {wire::Outcome::Failed, r->term_signal != 0 ? 128 + r->term_signal : result.exit_code,
              "memory_limit: killed for using more than its " + FormatSize(r->spec.resources.memory) + " of memory",
              wire::Reason::MemoryLimit};
  } else if (r->cancelled) {
    result = {wire::Outcome::Cancelled, result.exit_code, "cancelled"};
  } else if (r->timed_out) {
    std::string how = r->term_signal == SIGKILL ? "killed (SIGKILL: SIGTERM did not end it in time)"
                      : r->term_signal != 0     ? std::string("ended by ") + strsignal(r->term_signal)
                                            : "exited with status " + std::to_string(r->exit_status) + " on SIGTERM";
    result = {wire::Outcome::TimedOut, r->term_signal != 0 ? 128 + r->term_signal : result.exit_code,
              "timed out after " + std::to_string(r->spec.timeout_ms) + " ms; " + how};
  } else if (r->term_signal != 0) {
    result = {wire::Outcome::Failed, 128 + r->term_signal,
              std::string("killed by signal ") + strsignal(r->term_signal)};
  } else if (r->exit_status != 0) {
    result = {wire::Outcome::Failed, result.exit_code, "exit status " + std::to_string(r->exit_status)};
  }
  r->executor->End(r, std::move(result));
}

void UvExecutor::StartExec(Run* run) {
  uv_pipe_init(loop_, &run->out, 0);
  uv_pipe_init(loop_, &run->err, 0);
  uv_timer_init(loop_, &run->timer);
  run->out.data = run->err.data = run->timer.data = run->process.data = run;
  run->open_handles = 4;

  uv_stdio_container_t stdio[4];
  stdio[0].flags = UV_IGNORE;
  stdio[1].flags = static_cast<uv_stdio_flags>(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
  stdio[1].data.stream = reinterpret_cast<uv_stream_t*>(&run->out);
  stdio[2].flags = static_cast<uv_stdio_flags>(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
  stdio[2].data.stream = reinterpret_cast<uv_stream_t*>(&run->err);
  uv_process_options_t po{};
  po.stdio = stdio;
  po.stdio_count = 3;
  po.flags = UV_PROCESS_DETACHED;  // own process group: a timeout kills the whole tree
  // Whom it runs as: a fault of the worker's (a range used up) sends it elsewhere.
  auto user = options_.users->For(run->grant.owner);
  if (!user.ok()) {
    run->spawn_error = "cannot run the attempt on worker " + options_.worker_id + ": " + user.status().message();
    run->spawn_retryable = true;
  }
  const TaskUser as = user.ok() ? *user : TaskUser{};
  // A clean environment: nothing of the worker's (its secrets, its key paths) reaches
  // the task; the FM_* variables also mark the attempt's processes (KillTree).
  // Each name once (getenv takes the first of two): the defaults, the task's own
  // variables over them (PATH, HOME, LANG may change; FM_ names are refused), then what
  // the worker decides over everything: the FM_ marks and the GPUs chosen.
  EnvBuilder vars;
  vars.Set("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
  vars.Set("HOME", as.home);
  vars.Set("USER", as.name);
  vars.Set("LOGNAME", as.name);
  vars.Set("LANG", "C.UTF-8");
  for (const auto& [name, value] : run->spec.env) vars.Set(name, value);
  for (const std::string& v : {TaskVar(run->ref.task), AttemptVar(run->ref.attempt), WorkerVar(options_.worker_id),
                               RunVar(options_.instance, run->ref)}) {
    vars.Set(v.substr(0, v.find('=')), v.substr(v.find('=') + 1));
  }
  SetGpuVars(&vars, run->grant.gpus);
  std::vector<std::string> env = vars.Lines();
  std::vector<char*> envp;
  const bool limited = options_.cgroups && options_.cgroups->on();
  // Through the shim whenever the attempt's process starts privileged or must join its
  // cgroup: the shim joins the leaf, drops to the task's user, and only then reads the
  // task's command, env and cwd (from a memfd on descriptor 3) and runs the command. What
  // runs as root here gets the shim's path, numbers of ours and no environment at all.
  const bool shim = run->spawn_error.empty() && (limited || options_.users->privileged());
  std::vector<std::string> argv = run->spec.command;
  if (run->spawn_error.empty() && limited) {
    // Unique in this process (a new store's task ids start again): never a leaf still being removed.
    run->leaf = "fm-t" + std::to_string(run->ref.task) + "-" + std::to_string(run->ref.attempt) + "-" +
                std::to_string(++leaves_made_);
    CgroupLimits limits;
    limits.cpus_milli = run->spec.resources.cpus_milli;
    limits.memory = run->spec.resources.memory;
    limits.pids = kContainerPidsLimit;
    auto procs = options_.cgroups->MakeLeaf(run->leaf, limits);
    if (!procs.ok()) {
      run->spawn_error =
          "cannot make the attempt's cgroup on worker " + options_.worker_id + ": " + procs.status().message();
      run->spawn_retryable = true;
      run->leaf.clear();
    } else {
      run->cgroup_procs = std::move(*procs);
    }
  }
  if (shim && run->spawn_error.empty()) {
    std::string input = run->spec.cwd + '\0' + std::to_string(argv.size()) + '\0';
    for (const auto& a : argv) input += a + '\0';
    for (const auto& e : env) input += e + '\0';
    run->input_fd = memfd_create("fm-attempt", MFD_CLOEXEC);
    if (run->input_fd < 0 || write(run->input_fd, input.data(), input.size()) != static_cast<ssize_t>(input.size())) {
      run->spawn_error =
          "cannot hand the attempt to the exec shim on worker " + options_.worker_id + ": " + strerror(errno);
      run->spawn_retryable = true;
    }
    argv = {options_.exec_shim, as.switch_user ? std::to_string(as.uid) : "-",
            as.switch_user ? std::to_string(as.gid) : "-"};
    argv.insert(argv.end(), run->cgroup_procs.begin(), run->cgroup_procs.end());
  } else {
    for (auto& e : env) envp.push_back(e.data());
  }
  envp.push_back(nullptr);
  po.env = envp.data();
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  po.file = args[0];
  po.args = args.data();
  if (shim) {
    stdio[3].flags = UV_INHERIT_FD;
    stdio[3].data.fd = run->input_fd;
    po.stdio_count = 4;
    po.cwd = "/";
  }
  std::string cwd_error = run->spawn_error;
  if (!shim && cwd_error.empty() && !run->spec.cwd.empty()) {
    // Unprivileged, unlimited: the worker's own user runs it, libuv applies the cwd.
    struct stat st {};
    if (stat(run->spec.cwd.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      cwd_error = "cwd \"" + run->spec.cwd + "\" is not a directory on worker " + options_.worker_id;
    }
    po.cwd = run->spec.cwd.c_str();
  } else if (!shim) {
    po.cwd = access(as.home.c_str(), X_OK) == 0 ? as.home.c_str() : "/";
  }
  po.exit_cb = [](uv_process_t* p, int64_t status, int signal) {
    auto* r = static_cast<Run*>(p->data);
    r->exited = true;
    r->exit_status = status;
    r->term_signal = signal;
    // What the command left in its process group, or in its cgroup, ends with it.
    if (p->pid > 0) kill(-p->pid, SIGKILL);
    if (!r->leaf.empty()) r->executor->options_.cgroups->KillLeaf(r->leaf);
    uv_timer_stop(&r->timer);
    uv_close(reinterpret_cast<uv_handle_t*>(p), OnExecHandleClosed);
    if (r->out_closed && r->err_closed) return CloseTimer(r);
    // The output is still open a moment later only when something else holds it (a
    // child that left the group): then find the attempt's processes by their mark and
    // kill them, and close the output at most 2 s later anyway, so that nothing (not even
    // a process that also dropped its mark) holds the slot. The common case, an output
    // that closes with the command, costs no look at /proc.
    uv_timer_start(
        &r->timer,
        [](uv_timer_t* t) {
          auto* run = static_cast<Run*>(t->data);
          run->executor->KillTree(run);
          uv_timer_start(
              t,
              [](uv_timer_t* t2) {
                auto* later = static_cast<Run*>(t2->data);
                // Paused output is unread, not held: it waits for the window (this timer repeats).
                if (later->executor->output_paused_) return;
                for (uv_pipe_t* pipe : {&later->out, &later->err}) {
                  bool& closed = pipe == &later->out ? later->out_closed : later->err_closed;
                  if (closed) continue;
                  closed = true;
                  uv_read_stop(reinterpret_cast<uv_stream_t*>(pipe));
                  uv_close(reinterpret_cast<uv_handle_t*>(pipe), OnExecHandleClosed);
                }
                CloseTimer(later);
              },
              kOutputLingerMs, kOutputLingerMs);
        },
        kOutputSettleMs, 0);
  };
  int rc = cwd_error.empty() ? uv_spawn(loop_, &run->process, &po) : UV_ENOENT;
  if (rc != 0) {
    run->spawn_error =
        !cwd_error.empty() ? cwd_error : "cannot run \"" + run->spec.command[0] + "\": " + uv_strerror(rc);
    if (cwd_error.empty() && shim) {  // the shim, not the task's command
      run->spawn_error = "cannot start the exec shim " + options_.exec_shim + ": " + uv_strerror(rc);
      run->spawn_retryable = true;
    }
    run->exited = true;
    run->out_closed = run->err_closed = run->timer_closed = true;
    // uv_spawn initializes the process handle even when it fails; when it was not
    // called (a bad cwd) there is no handle to close.
    if (!cwd_error.empty()) --run->open_handles;
    for (uv_handle_t* h : {reinterpret_cast<uv_handle_t*>(&run->process), reinterpret_cast<uv_handle_t*>(&run->out),
                           reinterpret_cast<uv_handle_t*>(&run->err), reinterpret_cast<uv_handle_t*>(&run->timer)}) {
      if (h == reinterpret_cast<uv_handle_t*>(&run->process) && !cwd_error.empty()) continue;
      uv_close(h, OnExecHandleClosed);
    }
    return;
  }
  if (run->spec.timeout_ms > 0) StartTimeout(run);
  if (!output_paused_) ReadOutput(run, true);
}

void UvExecutor::ReadOutput(Run* run, bool on) {
  auto alloc = [](uv_handle_t*, size_t suggested, uv_buf_t* buf) {
    buf->base = new char[suggested];
    buf->len = suggested;
  };
  auto on_read = [](uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
    auto* r = static_cast<Run*>(s->data);
    const char* name = s == reinterpret_cast<uv_stream_t*>(&r->out) ? "stdout" : "stderr";
    if (n > 0) r->executor->sink_->OnRunOutput(r->ref, name, std::string_view(buf->base, static_cast<size_t>(n)));
    delete[] buf->base;
    UvExecutor* self = r->executor;
    if (n < 0) {
      (s == reinterpret_cast<uv_stream_t*>(&r->out) ? r->out_closed : r->err_closed) = true;
      uv_close(reinterpret_cast<uv_handle_t*>(s), OnExecHandleClosed);
      if (r->exited && r->out_closed && r->err_closed) CloseTimer(r);  // no need to linger
    }
    self->on_activity_();
  };
  for (uv_pipe_t* pipe : {&run->out, &run->err}) {
    if (pipe == &run->out ? run->out_closed : run->err_closed) continue;
    auto* stream = reinterpret_cast<uv_stream_t*>(pipe);
    if (on) {
      uv_read_start(stream, alloc, on_read);
    } else {
      uv_read_stop(stream);
    }
  }
}

void UvExecutor::PauseOutput(bool paused) {
  if (paused == output_paused_) return;
  output_paused_ = paused;
  std::vector<Run*> docker;
  for (auto& [ref, run] : runs_) {
    if (!InContainer(run->spec)) {
      if (!run->spawn_error.empty()) continue;
      ReadOutput(run.get(), !paused);
      // An exited attempt's output gets its full linger time again, read this time.
      if (!paused && run->exited && !run->timer_closed && uv_timer_get_repeat(&run->timer) > 0) {
        uv_timer_again(&run->timer);
      }
    } else if (!paused) {
      docker.push_back(run.get());
    }
  }
  // What the docker threads hold is taken now (a wake may end a run: not while iterating).
  for (Run* run : docker) OnDockerWake(run);
}

void UvExecutor::CloseTimer(Run* run) {
  if (run->timer_closed) return;
  run->timer_closed = true;
  uv_timer_stop(&run->timer);
  uv_close(reinterpret_cast<uv_handle_t*>(&run->timer), OnExecHandleClosed);
}

void UvExecutor::StartDocker(Run* run) {
  uv_async_init(loop_, &run->wake, [](uv_async_t* a) {
    auto* r = static_cast<Run*>(a->data);
    r->executor->OnDockerWake(r);
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
  run->thread = std::thread(RunContainer, run, options_.docker_socket, options_.worker_id, options_.sessions);
}

// On the attempt's own thread: create, start, follow the output, wait, remove.
void UvExecutor::RunContainer(Run* r, std::string socket, std::string worker_id, UvExecutorOptions::Sessions sessions) {
  auto deliver = [r](const char* stream, std::string_view data) {
    std::unique_lock<std::mutex> lock(r->mutex);
    r->drained.wait(lock, [r] { return r->pending_bytes < kDockerHeldBytes || r->stopping; });
    if (r->stopping) return;
    if (!r->pending.empty() && r->pending.back().first == stream &&
        r->pending.back().second.size() + data.size() <= kDockerPieceBytes) {
      r->pending.back().second.append(data);
    } else {
      r->pending.emplace_back(stream, std::string(data));
    }
    r->pending_bytes += data.size();
    lock.unlock();
    uv_async_send(&r->wake);
  };
  DockerClient docker(socket);
  DockerClient::ContainerSpec spec;
  EnvBuilder vars;
  for (const auto& [name, value] : r->spec.env) vars.Set(name, value);
  for (const std::string& v : {TaskVar(r->ref.task), AttemptVar(r->ref.attempt), WorkerVar(worker_id)}) {
    vars.Set(v.substr(0, v.find('=')), v.substr(v.find('=') + 1));
  }
  SetGpuVars(&vars, r->grant.gpus);  // also over an image's ENV NVIDIA_VISIBLE_DEVICES=all
  std::string image = r->spec.image;
  int port = 0;
  if (r->spec.session) {
    // The session image reads its keys from FM_SSH_KEYS (one per line) and runs sshd on
    // port 22, published here on a port of the host's.
    if (image.empty()) image = sessions.image;
    std::string keys;
    for (const auto& key : r->spec.session->ssh_keys) keys += (keys.empty() ? "" : "\n") + key;
    vars.Set("FM_SSH_KEYS", keys);
    port = FreePort(sessions.bind);
    if (port == 0) {  // said as the daemon's would be: the worker cannot publish the port
      std::lock_guard<std::mutex> lock(r->mutex);
      r->session_error = "session: no free port on " + sessions.bind;
    }
    spec.ports = {{22, sessions.bind, port}};
  }
  spec.env = vars.Lines();
  spec.cwd = r->spec.cwd;
  // Marks that say whose it is (a restarted worker removes its orphans by them).
  spec.labels = {{"fm.task", "t" + std::to_string(r->ref.task)},
                 {"fm.attempt", std::to_string(r->ref.attempt)},
                 {"fm.worker", worker_id}};
  // What placement reserved is what the container may use.
  spec.cpus_milli = r->spec.resources.cpus_milli;
  spec.memory = r->spec.resources.memory;
  spec.pids_limit = kContainerPidsLimit;
  spec.gpus = r->grant.gpus;
  auto id = r->session_error.empty() ? docker.Create(image, r->spec.command, spec)
                                     : Result<std::string>(Status::Unavailable(r->session_error));
  if (!id.ok() && !r->session_error.empty()) {
    // Nothing was asked of the daemon (no port to publish): said as the session's.
  } else if (!id.ok()) {
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
      return r->cancelled || r->timed_out || r->stopping;
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
      // The output is followed on a thread of its own while this one waits for the exit:
      // podman 4.3 sometimes never ends a follow of a container that exited at once, so
      // a follow still open 2 s after the exit is shut down, and what it missed is read
      // below.
      std::thread watcher;
      if (r->spec.session) watcher = std::thread(WatchSession, r, socket, *id, port, sessions);
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
        {
          std::lock_guard<std::mutex> lock(r->mutex);
          r->container_exited = true;
        }
        r->session_cv.notify_all();
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
      // Some daemons end a follow when the container exits before all of its output was
      // sent (podman 4.3 does, under load), or never (above): read the logs once more,
      // now complete, and pass on what the follow did not.
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
  {
    std::lock_guard<std::mutex> lock(r->mutex);
    r->finished = true;
  }
  uv_async_send(&r->wake);
}

void UvExecutor::WatchSession(Run* r, const std::string& socket, const std::string& id, int port,
                              const UvExecutorOptions::Sessions& sessions) {
  DockerClient docker(socket);
  auto over = [r] {
    std::lock_guard<std::mutex> lock(r->mutex);
    return r->container_exited || r->cancelled || r->timed_out || r->stopping;
  };
  const std::string local = sessions.bind == "0.0.0.0" ? "127.0.0.1" : sessions.bind;
  std::string banner;
  if (!ReadSshBanner(local, port, 30000, &banner, over)) {
    if (over()) return;
    {
      std::lock_guard<std::mutex> lock(r->mutex);
      r->session_error = "session: no sshd answered on port 22 of the container within 30 s";
    }
    (void)docker.Stop(id, 1);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(r->mutex);
    r->endpoint = {sessions.advertise, static_cast<uint32_t>(port), sessions.user};
    r->session_ready = true;
  }
  uv_async_send(&r->wake);
  // Idle: time with no established connection to sshd, seen from inside the container's
  // network namespace. A connected user is never reaped; a count that cannot be read
  // counts as connected.
  const uint64_t idle_ms = r->spec.session->idle_timeout_ms ? r->spec.session->idle_timeout_ms : kDefaultSessionIdleMs;
  auto state = docker.Inspect(id);
  auto last_open = std::chrono::steady_clock::now();
  while (true) {
    {
      std::unique_lock<std::mutex> lock(r->mutex);
      if (r->session_cv.wait_for(lock, std::chrono::seconds(1),
                                 [r] { return r->container_exited || r->cancelled || r->timed_out || r->stopping; })) {
        return;
      }
    }
    const int open = state.ok() ? EstablishedTo(state->pid, 22) : -1;
    const auto now = std::chrono::steady_clock::now();
    if (open != 0) {
      last_open = now;
    } else if (now - last_open >= std::chrono::milliseconds(idle_ms)) {
      {
        std::lock_guard<std::mutex> lock(r->mutex);
        r->idle_ended = true;
      }
      const uint64_t grace = r->spec.kill_timeout_ms != 0 ? r->spec.kill_timeout_ms : kDefaultKillTimeoutMs;
      (void)docker.Stop(id, std::max<uint64_t>(1, (grace + 999) / 1000));
      return;
    }
  }
}

void UvExecutor::OnDockerWake(Run* r) {
  if (r->closing) return;  // taken whole already (a resume may come before the close callbacks)
  std::vector<std::pair<const char*, std::string>> output;
  bool finished = false, started = false, take = false, ready = false;
  Endpoint endpoint;
  {
    std::lock_guard<std::mutex> lock(r->mutex);
    started = r->container_started;
    ready = r->session_ready;
    if (ready) endpoint = r->endpoint;
    // Paused: the output stays with the thread (which waits past 1 MiB), but an
    // attempt that finished is taken whole, so that its end is never held up.
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
  if (ready && !r->ready_told) {
    r->ready_told = true;
    sink_->OnRunReady(r->ref, endpoint);
    on_activity_();
  }
  if (!take) return;
  r->drained.notify_all();
  for (const auto& [stream, data] : output) sink_->OnRunOutput(r->ref, stream, data);
  if (!output.empty()) on_activity_();
  if (!finished) return;
  r->thread.join();
  r->closing = true;
  uv_close(reinterpret_cast<uv_handle_t*>(&r->wake), OnDockerHandleClosed);
  if (r->timer_started) {
    uv_timer_stop(&r->timer);
    uv_close(reinterpret_cast<uv_handle_t*>(&r->timer), OnDockerHandleClosed);
  }
}

void UvExecutor::OnDockerHandleClosed(uv_handle_t* handle) {
  auto* r = static_cast<Run*>(handle->data);
  if (--r->open_handles > 0) return;
  RunResult result;
  result.exit_code = static_cast<int32_t>(r->docker_status);
  const bool session = r->spec.session.has_value();
  if (r->cancelled) {
    result = {wire::Outcome::Cancelled, result.exit_code, "cancelled"};
  } else if (session && r->timed_out && !r->session_ready) {
    result = {wire::Outcome::Failed, result.exit_code,
              "session never answered before its ttl of " + std::to_string(r->spec.timeout_ms / 1000) + " s passed"};
  } else if (session && r->timed_out) {
    result = {wire::Outcome::Succeeded, result.exit_code,
              "session ended: its ttl of " + std::to_string(r->spec.timeout_ms / 1000) + " s passed",
              wire::Reason::SessionTtl};
  } else if (session && r->idle_ended) {
    const uint64_t idle = r->spec.session->idle_timeout_ms ? r->spec.session->idle_timeout_ms : kDefaultSessionIdleMs;
    result = {wire::Outcome::Succeeded, result.exit_code,
              "session ended: no connection for " + std::to_string(idle / 1000) + " s (its idle timeout)",
              wire::Reason::SessionIdle};
  } else if (session && !r->session_error.empty()) {
    // The container started (docker works: nothing counts toward quarantine). With the
    // task's own image or command, sshd not answering is the task's; with the worker's
    // image, another worker may do better.
    const bool own = !r->spec.image.empty() || !r->spec.command.empty();
    result = {own ? wire::Outcome::Failed : wire::Outcome::Retryable, result.exit_code, r->session_error};
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

void UvExecutor::StartTimeout(Run* run) {
  uv_timer_start(
      &run->timer,
      [](uv_timer_t* t) {
        auto* r = static_cast<Run*>(t->data);
        r->timed_out = true;
        r->executor->Kill(r);
      },
      run->spec.timeout_ms, 0);
}

int UvExecutor::KillTree(Run* run) {
  if (run->process.pid > 0) kill(-run->process.pid, SIGKILL);
  // Every process of the attempt is in its cgroup, whatever it did to its group or marks.
  if (!run->leaf.empty()) options_.cgroups->KillLeaf(run->leaf);
  // A process that left the group (setsid, setpgid) still carries the attempt's mark:
  // find it in /proc. A few rounds, for processes forked meanwhile.
  const std::string mark = RunVar(options_.instance, run->ref);
  int found = 0;
  for (int round = 0; round < 3; ++round) {
    int this_round = 0;
    DIR* proc = opendir("/proc");
    if (!proc) break;
    while (dirent* e = readdir(proc)) {
      if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
      pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
      if (pid == getpid()) continue;
      bool marked = false;
      for (const auto& v : EnvironOf(e->d_name)) marked |= v == mark;
      if (marked && kill(pid, SIGKILL) == 0) ++this_round;
    }
    closedir(proc);
    found += this_round;
    if (this_round == 0) break;
  }
  return found;
}

void UvExecutor::Kill(Run* run) {
  const uint64_t grace = run->spec.kill_timeout_ms != 0 ? run->spec.kill_timeout_ms : kDefaultKillTimeoutMs;
  if (!InContainer(run->spec)) {
    if (run->exited || run->process.pid <= 0) return;
    if (run->term_sent) {  // asked again (a cancel after the timeout): no more waiting
      KillTree(run);
      return;
    }
    // Graceful: the process group gets SIGTERM; whatever of the attempt is left after
    // the kill timeout gets SIGKILL (the group and every process carrying its mark).
    run->term_sent = true;
    kill(-run->process.pid, SIGTERM);
    uv_timer_start(
        &run->timer,
        [](uv_timer_t* t) {
          auto* r = static_cast<Run*>(t->data);
          if (!r->exited) r->executor->KillTree(r);
        },
        grace, 0);
    return;
  }
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
