#include "worker/worker.h"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <random>

#include "schemas/codec.h"
#include "schemas/units.h"
#include "worker/docker_client.h"

namespace fm::worker {

using codec::Str;

namespace {
constexpr size_t kBudget = 4096;
constexpr size_t kDoneMemory = 100000;
constexpr const char* kVersion = "0.1.0";
}  // namespace

// One attempt in flight. Owned by Worker::running_; libuv handles point back to it.
struct Worker::Run {
  Worker* worker = nullptr;
  Ref ref;
  TaskSpec spec;
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
  bool timer_started = false;
  std::string spawn_error;
  // docker
  uv_work_t work{};
  std::mutex mutex;
  std::string container;  // guarded by mutex
  std::string docker_out, docker_err, docker_error;
  int64_t docker_status = -1;
};

Status ApplyLimits(const WorkerOptions& options, Hardware* hw) {
  if (options.cpus_milli) {
    if (*options.cpus_milli > hw->cpus_milli) {
      return Status::Invalid("--cpus " + FormatCpus(*options.cpus_milli) + " exceeds the " +
                             FormatCpus(hw->cpus_milli) +
                             " cpus found (affinity and cgroup quota); --cpus can only lower it");
    }
    if (*options.cpus_milli == 0) return Status::Invalid("--cpus must be above 0");
    hw->cpus_milli = *options.cpus_milli;
  }
  if (options.memory) {
    if (*options.memory > hw->memory) {
      return Status::Invalid("--memory " + FormatSize(*options.memory) + " exceeds the " + FormatSize(hw->memory) +
                             " found (cgroup limit or MemTotal); --memory can only lower it");
    }
    if (*options.memory == 0) return Status::Invalid("--memory must be above 0");
    hw->memory = *options.memory;
  }
  return Status::Ok();
}

Worker::Worker(zmq::context_t& context, WorkerOptions options, Probe probe)
    : options_(std::move(options)), probe_(std::move(probe)), context_(context) {
  if (!options_.logger) options_.logger = spdlog::default_logger();
  capabilities_ = probe_.capabilities;
  std::random_device rd;
  instance_ = (static_cast<uint64_t>(rd()) << 32) | rd();
}

Worker::~Worker() = default;

Status Worker::Open() {
  auto endpoints = bus::ParseBrokerUrl(options_.broker);
  if (!endpoints.ok()) return endpoints.status();
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  if (options_.id.empty()) options_.id = host;
  if (options_.node.empty()) options_.node = host;
  if (options_.id.find('/') != std::string::npos) return Status::Invalid("--id must not contain '/'");
  if (Status s = ApplyLimits(options_, &probe_.hardware); !s.ok()) return s;
  if (options_.slots == 0) options_.slots = std::max<uint32_t>(1, probe_.hardware.cpus_milli / 1000);
  Normalize(&options_.labels);
  char suffix[20];
  snprintf(suffix, sizeof suffix, "%016llx", static_cast<unsigned long long>(instance_));
  address_ = "w/" + options_.id + "/" + suffix;
  client_ = std::make_unique<bus::Client>(context_, *endpoints, address_, true, true);
  client_->Subscribe("scheduler.started");
  std::string gpus;
  for (const auto& g : probe_.hardware.gpus) gpus += " [" + g.model + " " + FormatSize(g.memory) + "]";
  std::string caps;
  for (const auto& c : capabilities_) caps += " " + c;
  options_.logger->info("worker {} on node {}: {} cpus, {} memory, {} GPUs{}, {} slots, capabilities:{}", options_.id,
                        options_.node, FormatCpus(probe_.hardware.cpus_milli), FormatSize(probe_.hardware.memory),
                        probe_.hardware.gpus.size(), gpus, options_.slots, caps.empty() ? " (none)" : caps);
  for (const auto& note : probe_.notes) options_.logger->info("probe: {}", note);
  return Status::Ok();
}

void Worker::Attach(bus::Loop& loop) {
  loop_ = &loop;
  loop.Watch(client_->dealer(), [this] { return DrainDirected(); });
  loop.Watch(client_->sub(), [this] { return DrainBus(); });
  loop.Every(
      options_.heartbeat_ms, [this] { Heartbeat(); }, 100);
  loop.Every(options_.resend_ms, [this] { ResendFinished(); });
  loop.OnTurnEnd([this] { FlushReport(); });
  loop.Every(options_.heartbeat_ms, [this] { Reprobe(); });
  Register();
}

// ---------------------------------------------------------------------------
// Announcements.

std::vector<flatbuffers::Offset<wire::TaskRef>> Worker::HeldRefs(flatbuffers::FlatBufferBuilder& fbb) const {
  std::vector<flatbuffers::Offset<wire::TaskRef>> refs;
  for (const auto& [task, run] : running_) refs.push_back(wire::CreateTaskRef(fbb, run->ref.first, run->ref.second));
  for (const auto& [ref, f] : finished_) refs.push_back(wire::CreateTaskRef(fbb, ref.first, ref.second));
  return refs;
}

void Worker::Register() {
  flatbuffers::FlatBufferBuilder fbb(1024);
  auto refs = HeldRefs(fbb);
  auto reg = wire::CreateWorkerRegistration(
      fbb, fbb.CreateString(options_.id), fbb.CreateString(address_), fbb.CreateString(options_.node), instance_,
      fbb.CreateString(kVersion), options_.slots, codec::ToWire(fbb, probe_.hardware),
      codec::ToWire(fbb, options_.labels), fbb.CreateVector(refs), codec::ToWire(fbb, capabilities_));
  client_->Publish("fleet.register", codec::Seal(fbb, reg));
}

void Worker::Heartbeat() {
  client_->Hello();
  flatbuffers::FlatBufferBuilder fbb(512);
  auto refs = HeldRefs(fbb);
  auto hb = wire::CreateWorkerHeartbeat(fbb, fbb.CreateString(options_.id), fbb.CreateString(address_), instance_,
                                        fbb.CreateVector(refs), codec::ToWire(fbb, capabilities_));
  client_->Publish("fleet.heartbeat", codec::Seal(fbb, hb));
}

void Worker::Reprobe() {
  if (options_.docker_socket.empty() || reprobe_in_flight_) return;
  reprobe_in_flight_ = true;
  struct Job {
    uv_work_t work;
    Worker* self;
    bool docker = false;
    std::string note;
  };
  auto* job = new Job{};
  job->self = this;
  job->work.data = job;
  uv_queue_work(
      loop_->uv(), &job->work,
      [](uv_work_t* w) {
        auto* j = static_cast<Job*>(w->data);
        j->docker = ProbeDocker(j->self->options_.docker_socket, 1000, &j->note);
      },
      [](uv_work_t* w, int) {
        std::unique_ptr<Job> j(static_cast<Job*>(w->data));
        Worker* self = j->self;
        self->reprobe_in_flight_ = false;
        bool had = std::binary_search(self->capabilities_.begin(), self->capabilities_.end(), "docker");
        if (had == j->docker) return;
        if (j->docker) {
          self->capabilities_.push_back("docker");
          Normalize(&self->capabilities_);
          self->options_.logger->info("capability docker announced again: {}", j->note);
        } else {
          self->capabilities_.erase(std::find(self->capabilities_.begin(), self->capabilities_.end(), "docker"));
          self->options_.logger->warn("capability docker withdrawn: {}", j->note);
        }
      });
}

// ---------------------------------------------------------------------------
// Inbound.

size_t Worker::DrainDirected() {
  size_t n = 0;
  while (n < kBudget) {
    auto msg = client_->Receive();
    if (!msg) break;
    ++n;
    auto envelope = codec::Decode(msg->payload.data(), msg->payload.size());
    if (!envelope.ok()) {
      options_.logger->warn("rejected message from {}: {}", msg->from, envelope.status().message());
      if (msg->from != bus::kBrokerAddress)
        client_->Send(msg->from, codec::EncodeError("malformed", envelope.status().message()));
      continue;
    }
    const wire::Envelope& env = **envelope;
    switch (env.body_type()) {
      case wire::Body::Dispatch:
        OnDispatch(*env.body_as_Dispatch());
        break;
      case wire::Body::CancelTask:
        OnCancel(*env.body_as_CancelTask());
        break;
      case wire::Body::TaskFinishedAck:
        OnAck(*env.body_as_TaskFinishedAck());
        break;
      case wire::Body::ReRegister:
        Register();
        break;
      case wire::Body::WorkerRejected: {
        options_.logger->error("the scheduler refused this worker: {}", Str(env.body_as_WorkerRejected()->message()));
        exit_code_ = 3;
        loop_->Stop();
        return n;
      }
      case wire::Body::Error: {
        const auto* e = env.body_as_Error();
        options_.logger->debug("error from {}: {} {}", msg->from, Str(e->code()), Str(e->message()));
        break;
      }
      default:
        client_->Send(msg->from, codec::EncodeError("unsupported", std::string("a worker does not take ") +
                                                                       wire::EnumNameBody(env.body_type())));
    }
  }
  return n;
}

size_t Worker::DrainBus() {
  size_t n = 0;
  while (n < kBudget) {
    auto event = client_->ReceiveEvent();
    if (!event) break;
    ++n;
    if (event->topic == "scheduler.started") Register();
  }
  return n;
}

void Worker::OnDispatch(const wire::Dispatch& dispatch) {
  if (!dispatch.assignments()) return;
  for (const wire::Assignment* a : *dispatch.assignments()) {
    Ref ref{a->task(), a->attempt()};
    if (done_.count(ref)) continue;  // acknowledged long ago: a late duplicate
    if (auto f = finished_.find(ref); f != finished_.end()) {
      report_finished_.insert(ref);  // ran already: say so again
      continue;
    }
    auto r = running_.find(ref.first);
    if (r != running_.end()) {
      if (r->second->ref == ref) {
        SendStarted(ref);  // duplicate delivery of what runs now
        continue;
      }
      Kill(r->second.get());  // an older attempt the scheduler gave up on
    }
    if (running_.size() >= options_.slots) {
      Complete(ref, wire::Outcome::Retryable, 0,
               "worker " + options_.id + " has no free slot (" + std::to_string(options_.slots) + " in use)");
      continue;
    }
    Start(ref.first, ref.second, codec::FromWire(a->spec()));
  }
}

void Worker::OnCancel(const wire::CancelTask& cancel) {
  if (!cancel.ref()) return;
  Ref ref{cancel.ref()->task(), cancel.ref()->attempt()};
  auto r = running_.find(ref.first);
  if (r != running_.end() && r->second->ref == ref) {
    r->second->cancelled = true;
    Kill(r->second.get());
  }
  finished_.erase(ref);
}

void Worker::OnAck(const wire::TaskFinishedAck& ack) {
  auto one = [&](const wire::TaskRef& r) {
    Ref ref{r.task(), r.attempt()};
    report_finished_.erase(ref);
    if (finished_.erase(ref) && done_.insert(ref).second) {
      done_order_.push_back(ref);
      if (done_order_.size() > kDoneMemory) {
        done_.erase(done_order_.front());
        done_order_.pop_front();
      }
    }
  };
  if (ack.refs()) {
    for (const auto* r : *ack.refs()) one(*r);
  } else if (ack.ref()) {
    one(*ack.ref());  // a scheduler from before batched acknowledgements
  }
}

// ---------------------------------------------------------------------------
// Outbound.

void Worker::ToScheduler(const std::string& payload) {
  if (!client_->Send(bus::kSchedulerAddress, payload)) {
    options_.logger->warn("could not queue a message for the scheduler; results are re-sent until acknowledged");
  }
}

void Worker::SendStarted(const Ref& ref) { report_started_.push_back(ref); }

void Worker::FlushReport() {
  if (report_started_.empty() && report_finished_.empty()) return;
  flatbuffers::FlatBufferBuilder fbb(256 + 64 * (report_started_.size() + report_finished_.size()));
  std::vector<flatbuffers::Offset<wire::TaskRef>> started;
  started.reserve(report_started_.size());
  for (const Ref& ref : report_started_) started.push_back(wire::CreateTaskRef(fbb, ref.first, ref.second));
  auto worker = fbb.CreateString(options_.id);
  std::vector<flatbuffers::Offset<wire::TaskFinished>> finished;
  finished.reserve(report_finished_.size());
  for (const Ref& ref : report_finished_) {
    auto f = finished_.find(ref);
    if (f == finished_.end()) continue;
    auto r = wire::CreateTaskRef(fbb, ref.first, ref.second);
    finished.push_back(wire::CreateTaskFinished(fbb, r, worker, f->second.outcome, f->second.exit_code,
                                                fbb.CreateString(f->second.message)));
  }
  ToScheduler(
      codec::Seal(fbb, wire::CreateWorkerReport(fbb, worker, fbb.CreateVector(started), fbb.CreateVector(finished))));
  report_started_.clear();
  report_finished_.clear();
}

void Worker::SendLog(const Ref& ref, const char* stream, const char* data, size_t size) {
  flatbuffers::FlatBufferBuilder fbb(size + 128);
  auto r = wire::CreateTaskRef(fbb, ref.first, ref.second);
  auto log = wire::CreateTaskLog(fbb, r, fbb.CreateString(stream), fbb.CreateString(data, size));
  ToScheduler(codec::Seal(fbb, log));
}

void Worker::Complete(const Ref& ref, wire::Outcome outcome, int32_t exit_code, const std::string& message) {
  finished_[ref] = Finished{outcome, exit_code, message, bus::WallClockMs()};
  report_finished_.insert(ref);
}

void Worker::ResendFinished() {
  uint64_t now = bus::WallClockMs();
  for (auto& [ref, f] : finished_) {
    if (now >= f.sent_ms + options_.resend_ms) {
      report_finished_.insert(ref);
      f.sent_ms = now;
    }
  }
}

// ---------------------------------------------------------------------------
// Executors.

void Worker::Start(uint64_t task, uint32_t attempt, TaskSpec spec) {
  Ref ref{task, attempt};
  if (options_.noop_executor) {
    SendStarted(ref);
    Complete(ref, wire::Outcome::Succeeded, 0, "");
    return;
  }
  auto run = std::make_unique<Run>();
  run->worker = this;
  run->ref = ref;
  run->spec = std::move(spec);
  Run* raw = run.get();
  running_[task] = std::move(run);
  SendStarted(ref);
  if (raw->spec.image.empty()) {
    StartExec(raw);
  } else {
    StartDocker(raw);
  }
}

// The exec run ends once its four handles (process, stdout, stderr, timer) are closed:
// then all output has been sent and the exit status is known.
void Worker::OnExecHandleClosed(uv_handle_t* handle) {
  auto* r = static_cast<Run*>(handle->data);
  if (--r->open_handles > 0) return;
  Worker* self = r->worker;
  Ref ref = r->ref;
  wire::Outcome outcome;
  std::string message;
  int32_t code = static_cast<int32_t>(r->exit_status);
  if (!r->spawn_error.empty()) {
    outcome = wire::Outcome::Failed;
    code = 127;
    message = r->spawn_error;
  } else if (r->cancelled) {
    outcome = wire::Outcome::Cancelled;
    message = "cancelled";
  } else if (r->timed_out) {
    outcome = wire::Outcome::TimedOut;
    code = 128 + SIGKILL;
    message = "killed after the timeout of " + std::to_string(r->spec.timeout_ms) + " ms";
  } else if (r->term_signal != 0) {
    outcome = wire::Outcome::Failed;
    code = 128 + r->term_signal;
    message = std::string("killed by signal ") + strsignal(r->term_signal);
  } else if (r->exit_status == 0) {
    outcome = wire::Outcome::Succeeded;
  } else {
    outcome = wire::Outcome::Failed;
    message = "exit status " + std::to_string(r->exit_status);
  }
  self->running_.erase(ref.first);  // frees r
  self->Complete(ref, outcome, code, message);
  self->loop_->MarkWork();
}

void Worker::StartExec(Run* run) {
  uv_loop_t* uv = loop_->uv();
  uv_pipe_init(uv, &run->out, 0);
  uv_pipe_init(uv, &run->err, 0);
  uv_timer_init(uv, &run->timer);
  run->out.data = run->err.data = run->timer.data = run->process.data = run;
  run->open_handles = 4;

  std::vector<char*> args;
  for (auto& a : run->spec.command) args.push_back(a.data());
  args.push_back(nullptr);
  uv_stdio_container_t stdio[3];
  stdio[0].flags = UV_IGNORE;
  stdio[1].flags = static_cast<uv_stdio_flags>(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
  stdio[1].data.stream = reinterpret_cast<uv_stream_t*>(&run->out);
  stdio[2].flags = static_cast<uv_stdio_flags>(UV_CREATE_PIPE | UV_WRITABLE_PIPE);
  stdio[2].data.stream = reinterpret_cast<uv_stream_t*>(&run->err);
  uv_process_options_t po{};
  po.file = args[0];
  po.args = args.data();
  po.stdio = stdio;
  po.stdio_count = 3;
  po.flags = UV_PROCESS_DETACHED;  // own process group: a timeout kills the whole tree
  po.exit_cb = [](uv_process_t* p, int64_t status, int signal) {
    auto* r = static_cast<Run*>(p->data);
    r->exited = true;
    r->exit_status = status;
    r->term_signal = signal;
    uv_timer_stop(&r->timer);
    uv_close(reinterpret_cast<uv_handle_t*>(&r->timer), OnExecHandleClosed);
    uv_close(reinterpret_cast<uv_handle_t*>(p), OnExecHandleClosed);
  };
  int rc = uv_spawn(uv, &run->process, &po);
  if (rc != 0) {
    run->spawn_error = "cannot run \"" + run->spec.command[0] + "\": " + uv_strerror(rc);
    run->exited = true;
    for (uv_handle_t* h : {reinterpret_cast<uv_handle_t*>(&run->process), reinterpret_cast<uv_handle_t*>(&run->out),
                           reinterpret_cast<uv_handle_t*>(&run->err), reinterpret_cast<uv_handle_t*>(&run->timer)}) {
      uv_close(h, OnExecHandleClosed);
    }
    return;
  }
  if (run->spec.timeout_ms > 0) {
    StartTimeout(run);
  }
  auto alloc = [](uv_handle_t*, size_t suggested, uv_buf_t* buf) {
    buf->base = new char[suggested];
    buf->len = suggested;
  };
  auto on_read = [](uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
    auto* r = static_cast<Run*>(s->data);
    const char* name = s == reinterpret_cast<uv_stream_t*>(&r->out) ? "stdout" : "stderr";
    if (n > 0) r->worker->SendLog(r->ref, name, buf->base, static_cast<size_t>(n));
    delete[] buf->base;
    if (n < 0) uv_close(reinterpret_cast<uv_handle_t*>(s), OnExecHandleClosed);
    r->worker->loop_->MarkWork();
  };
  uv_read_start(reinterpret_cast<uv_stream_t*>(&run->out), alloc, on_read);
  uv_read_start(reinterpret_cast<uv_stream_t*>(&run->err), alloc, on_read);
}

void Worker::StartDocker(Run* run) {
  run->work.data = run;
  uv_queue_work(
      loop_->uv(), &run->work,
      [](uv_work_t* w) {
        auto* r = static_cast<Run*>(w->data);
        DockerClient docker(r->worker->options_.docker_socket);
        auto id = docker.Create(r->spec.image, r->spec.command);
        if (!id.ok()) {
          r->docker_error = id.status().message();
          return;
        }
        {
          std::lock_guard<std::mutex> lock(r->mutex);
          r->container = *id;
        }
        if (r->cancelled || r->timed_out) {
          // Ended before the container started: nothing to wait for.
        } else if (Status s = docker.Start(*id); !s.ok()) {
          r->docker_error = s.message();
        } else {
          auto status = docker.Wait(*id);
          if (!status.ok()) {
            r->docker_error = status.status().message();
          } else {
            r->docker_status = *status;
            (void)docker.Logs(*id, &r->docker_out, &r->docker_err);
          }
        }
        (void)docker.Remove(*id);
      },
      [](uv_work_t* w, int) {
        auto* r = static_cast<Run*>(w->data);
        Worker* self = r->worker;
        Ref ref = r->ref;
        if (!r->docker_out.empty()) self->SendLog(ref, "stdout", r->docker_out.data(), r->docker_out.size());
        if (!r->docker_err.empty()) self->SendLog(ref, "stderr", r->docker_err.data(), r->docker_err.size());
        wire::Outcome outcome;
        std::string message;
        int32_t code = static_cast<int32_t>(r->docker_status);
        if (r->cancelled) {
          outcome = wire::Outcome::Cancelled;
          message = "cancelled";
        } else if (r->timed_out) {
          outcome = wire::Outcome::TimedOut;
          message = "container killed after the timeout of " + std::to_string(r->spec.timeout_ms) + " ms";
        } else if (!r->docker_error.empty()) {
          // The daemon could not run it here: another worker may.
          outcome = wire::Outcome::Retryable;
          message = "docker: " + r->docker_error;
        } else if (code == 0) {
          outcome = wire::Outcome::Succeeded;
        } else {
          outcome = wire::Outcome::Failed;
          message = "container exit status " + std::to_string(code);
        }
        if (r->timer_started) {
          // The timer handle must be closed before the Run is freed.
          uv_close(reinterpret_cast<uv_handle_t*>(&r->timer), [](uv_handle_t* h) {
            auto* run = static_cast<Run*>(h->data);
            run->worker->running_.erase(run->ref.first);
          });
        } else {
          self->running_.erase(ref.first);
        }
        self->Complete(ref, outcome, code, message);
        self->loop_->MarkWork();
      });
  if (run->spec.timeout_ms > 0) {
    uv_timer_init(loop_->uv(), &run->timer);
    run->timer.data = run;
    run->timer_started = true;
    StartTimeout(run);
  }
}

void Worker::StartTimeout(Run* run) {
  uv_timer_start(
      &run->timer,
      [](uv_timer_t* t) {
        auto* r = static_cast<Run*>(t->data);
        r->timed_out = true;
        r->worker->Kill(r);
      },
      run->spec.timeout_ms, 0);
}

void Worker::Kill(Run* run) {
  if (run->spec.image.empty()) {
    if (!run->exited && run->process.pid > 0) kill(-run->process.pid, SIGKILL);
    return;
  }
  std::string container;
  {
    std::lock_guard<std::mutex> lock(run->mutex);
    container = run->container;
  }
  if (container.empty()) return;
  // Blocking API call: on the thread pool.
  struct Job {
    uv_work_t work;
    std::string socket, container;
  };
  auto* job = new Job{{}, options_.docker_socket, container};
  job->work.data = job;
  uv_queue_work(
      loop_->uv(), &job->work,
      [](uv_work_t* w) {
        auto* j = static_cast<Job*>(w->data);
        (void)DockerClient(j->socket).Kill(j->container);
      },
      [](uv_work_t* w, int) { delete static_cast<Job*>(w->data); });
}

}  // namespace fm::worker
