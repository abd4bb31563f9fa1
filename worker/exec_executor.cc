#include "worker/exec_executor.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <vector>

#include "schemas/units.h"
#include "worker/attempt_env.h"

namespace fm::worker {

// One attempt in flight. Owned by runs_; libuv handles point back to it.
struct ExecExecutor::Run {
  ExecExecutor* executor = nullptr;
  Ref ref;
  TaskSpec spec;
  Grant grant;
  uv_process_t process{};
  uv_pipe_t out{}, err{};
  uv_timer_t timer{};
  int open_handles = 0;
  bool exited = false;
  int64_t exit_status = 0;
  int term_signal = 0;
  bool timed_out = false;
  bool cancelled = false;
  bool term_sent = false;  // SIGTERM sent, SIGKILL follows after the kill timeout
  bool out_closed = false, err_closed = false, timer_closed = false;
  std::string spawn_error;
  bool spawn_retryable = false;           // the worker's fault (its cgroup), not the task's
  std::string leaf;                       // the attempt's cgroup leaf (limits on)
  std::vector<std::string> cgroup_procs;  // its cgroup.procs files, for the shim
  int input_fd = -1;                      // the shim's: the attempt's command, env and cwd (a memfd)
};

namespace {

// After the command exits: how long its output may take to close by itself before the
// attempt's other processes are looked for, and how much longer it is read at most.
constexpr uint64_t kOutputSettleMs = 100;
constexpr uint64_t kOutputLingerMs = 2000;

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

ExecExecutor::ExecExecutor(uv_loop_t* loop, RunSink* sink, ExecOptions options, std::function<void()> on_activity)
    : loop_(loop), sink_(sink), options_(std::move(options)), on_activity_(std::move(on_activity)) {}

ExecExecutor::~ExecExecutor() = default;

void ExecExecutor::Start(const Ref& ref, const TaskSpec& spec, const Grant& grant) {
  auto owned = std::make_unique<Run>();
  Run* run = owned.get();
  run->executor = this;
  run->ref = ref;
  run->spec = spec;
  run->grant = grant;
  runs_[ref] = std::move(owned);

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
  for (const std::string& v : AttemptVars(run->ref, options_.worker_id, run->spec)) vars.SetLine(v);
  vars.SetLine(RunVar(options_.instance, run->ref));
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
    limits.pids = kAttemptPidsLimit;
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
    uv_close(reinterpret_cast<uv_handle_t*>(p), OnHandleClosed);
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
                  uv_close(reinterpret_cast<uv_handle_t*>(pipe), OnHandleClosed);
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
      uv_close(h, OnHandleClosed);
    }
    return;
  }
  if (run->spec.timeout_ms > 0) StartTimeout(run);
  if (!output_paused_) ReadOutput(run, true);
}

void ExecExecutor::Cancel(const Ref& ref) {
  auto it = runs_.find(ref);
  if (it == runs_.end()) return;
  it->second->cancelled = true;
  Kill(it->second.get());
}

void ExecExecutor::End(Run* run, RunResult result) {
  if (!run->leaf.empty()) options_.cgroups->RemoveLeaf(run->leaf);
  if (run->input_fd >= 0) ::close(run->input_fd);
  Ref ref = run->ref;
  runs_.erase(ref);  // frees run
  sink_->OnRunEnded(ref, std::move(result));
  on_activity_();
}

// The run ends once its four handles (process, stdout, stderr, timer) are closed:
// then all output has been sent and the exit status is known.
void ExecExecutor::OnHandleClosed(uv_handle_t* handle) {
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

void ExecExecutor::ReadOutput(Run* run, bool on) {
  auto alloc = [](uv_handle_t*, size_t suggested, uv_buf_t* buf) {
    buf->base = new char[suggested];
    buf->len = suggested;
  };
  auto on_read = [](uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
    auto* r = static_cast<Run*>(s->data);
    const char* name = s == reinterpret_cast<uv_stream_t*>(&r->out) ? "stdout" : "stderr";
    if (n > 0) r->executor->sink_->OnRunOutput(r->ref, name, std::string_view(buf->base, static_cast<size_t>(n)));
    delete[] buf->base;
    ExecExecutor* self = r->executor;
    if (n < 0) {
      (s == reinterpret_cast<uv_stream_t*>(&r->out) ? r->out_closed : r->err_closed) = true;
      uv_close(reinterpret_cast<uv_handle_t*>(s), OnHandleClosed);
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

void ExecExecutor::PauseOutput(bool paused) {
  if (paused == output_paused_) return;
  output_paused_ = paused;
  for (auto& [ref, run] : runs_) {
    if (!run->spawn_error.empty()) continue;
    ReadOutput(run.get(), !paused);
    // An exited attempt's output gets its full linger time again, read this time.
    if (!paused && run->exited && !run->timer_closed && uv_timer_get_repeat(&run->timer) > 0) {
      uv_timer_again(&run->timer);
    }
  }
}

void ExecExecutor::CloseTimer(Run* run) {
  if (run->timer_closed) return;
  run->timer_closed = true;
  uv_timer_stop(&run->timer);
  uv_close(reinterpret_cast<uv_handle_t*>(&run->timer), OnHandleClosed);
}

void ExecExecutor::StartTimeout(Run* run) {
  uv_timer_start(
      &run->timer,
      [](uv_timer_t* t) {
        auto* r = static_cast<Run*>(t->data);
        r->timed_out = true;
        r->executor->Kill(r);
      },
      run->spec.timeout_ms, 0);
}

int ExecExecutor::KillTree(Run* run) {
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

void ExecExecutor::Kill(Run* run) {
  const uint64_t grace = run->spec.kill_timeout_ms != 0 ? run->spec.kill_timeout_ms : kDefaultKillTimeoutMs;
  if (run->exited || run->process.pid <= 0) return;
  if (run->term_sent) {  // asked again (a cancel after the timeout): no more waiting
    KillTree(run);
    return;
  }
  // Graceful: the process group gets SIGTERM; whatever of the attempt is left after the
  // kill timeout gets SIGKILL (the group and every process carrying its mark).
  run->term_sent = true;
  kill(-run->process.pid, SIGTERM);
  uv_timer_start(
      &run->timer,
      [](uv_timer_t* t) {
        auto* r = static_cast<Run*>(t->data);
        if (!r->exited) r->executor->KillTree(r);
      },
      grace, 0);
}

}  // namespace fm::worker
