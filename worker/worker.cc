#include "worker/worker.h"

#include <arpa/inet.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <random>

#include "schemas/codec.h"
#include "schemas/units.h"
#include "schemas/validate.h"
#include "worker/docker_client.h"
#include "worker/uv_executor.h"

namespace fm::worker {

namespace {
constexpr size_t kBudget = 4096;
constexpr const char* kVersion = FM_VERSION;
}  // namespace

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
  std::random_device rd;
  instance_ = (static_cast<uint64_t>(rd()) << 32) | rd();
}

Worker::~Worker() { cgroups_.Close(); }

Status Worker::Check() {
  auto endpoints = bus::ParseBrokerUrl(options_.broker);
  if (!endpoints.ok()) return Status::Invalid("--broker: " + endpoints.status().message());
  auto security = bus::LoadSecurity(options_.cert, options_.broker_cert, "worker", options_.root_cert);
  if (!security.ok()) return security.status();
  security_ = std::move(*security);
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  if (options_.id.empty()) options_.id = security_.on() ? security_.own.name : host;
  if (security_.on() && options_.id != security_.own.name) {
    return Status::Invalid("--id " + options_.id + ": with a certificate the worker's id is its name (\"" +
                           security_.own.name + "\" in " + security_.own.path + ")");
  }
  if (options_.node.empty()) options_.node = host;
  if (options_.id.find('/') != std::string::npos) return Status::Invalid("--id must not contain '/'");
  TaskUsers::Options users;
  users.run_as = options_.run_as;
  users.task_uids = options_.task_uids;
  users.state_dir = options_.state_dir;
  users.runs_tasks = !options_.noop_executor;
  auto configured = TaskUsers::Configure(users, geteuid());
  if (!configured.ok()) return configured.status();
  users_ = std::move(*configured);
  if (options_.slots == 0) options_.slots = std::max<uint32_t>(1, probe_.hardware.cpus_milli / 1000);
  for (const auto& [key, value] : options_.labels) {
    if (Status s = ValidateLabel(key, value); !s.ok()) return Status::Invalid("--label: " + s.message());
  }
  Normalize(&options_.labels);
  in_addr bind{};
  if (inet_pton(AF_INET, options_.sessions.bind.c_str(), &bind) != 1) {
    return Status::Invalid("--session-bind " + options_.sessions.bind + ": not an IPv4 address");
  }
  const std::string advertise = options_.sessions.advertise.empty() ? options_.node : options_.sessions.advertise;
  if (Status s = ValidateEndpoint({advertise, 22, options_.sessions.user}); !s.ok()) {
    return Status::Invalid("--advertise-host/--session-user: " + s.message());
  }
  return Status::Ok();
}

Status Worker::Open() {
  if (Status s = Check(); !s.ok()) return s;
  // Against what was probed (--check-config probes nothing: --cpus and --memory are
  // checked here, at start).
  if (Status s = ApplyLimits(options_, &probe_.hardware); !s.ok()) return s;
  auto endpoints = bus::ParseBrokerUrl(options_.broker);
  char suffix[20];
  snprintf(suffix, sizeof suffix, "%016llx", static_cast<unsigned long long>(instance_));
  WorkerIdentity identity;
  identity.id = options_.id;
  identity.node = options_.node;
  identity.address = "w/" + options_.id + "/" + suffix;
  identity.instance = instance_;
  identity.version = kVersion;
  identity.slots = options_.slots;
  identity.hardware = probe_.hardware;
  identity.labels = options_.labels;
  identity.capabilities = probe_.capabilities;
  identity.noop_executor = options_.noop_executor;
  Normalize(&identity.capabilities);
  if (!options_.noop_executor) {
    // The exec shim: beside this program in a build, in ../libexec/fm installed.
    char self[4096] = {0};
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    std::string dir = n > 0 ? std::string(self, static_cast<size_t>(n)) : std::string();
    dir = dir.substr(0, dir.rfind('/') + 1);
    exec_shim_ = dir + kExecShimName;
    if (access(exec_shim_.c_str(), X_OK) != 0) exec_shim_ = dir + "../libexec/fm/" + kExecShimName;
    cgroups_ = Cgroups::Detect(options_.id, options_.cgroup);
    if (cgroups_.on() && access(exec_shim_.c_str(), X_OK) != 0) {
      cgroups_.Close();
      cgroups_ = Cgroups::Off(std::string(kExecShimName) + " is not beside fm-worker nor in " + exec_shim_ +
                              ": exec tasks cannot join their cgroups");
    }
  }
  identity.limits = cgroups_.mode();
  core_ = std::make_unique<WorkerCore>(identity, options_.core);
  client_ = std::make_unique<bus::Client>(context_, *endpoints, identity.address, true, true, security_);
  client_->Subscribe("scheduler.started");
  std::string gpus;
  for (const auto& g : probe_.hardware.gpus) gpus += " [" + g.model + " " + FormatSize(g.memory) + "]";
  std::string caps;
  for (const auto& c : identity.capabilities) caps += " " + c;
  options_.logger->info("worker {} on node {}: {} cpus, {} memory, {} GPUs{}, {} slots, capabilities:{}", options_.id,
                        options_.node, FormatCpus(probe_.hardware.cpus_milli), FormatSize(probe_.hardware.memory),
                        probe_.hardware.gpus.size(), gpus, options_.slots, caps.empty() ? " (none)" : caps);
  for (const auto& note : probe_.notes) options_.logger->info("probe: {}", note);
  if (options_.noop_executor) {
    options_.logger->warn(
        "--noop-executor: tasks are reported succeeded without being run (benchmarks only); announced to the "
        "scheduler, shown by fm-ctl workers");
  }
  RemoveOrphans();
  if (cgroups_.on()) {
    size_t stale = cgroups_.RemoveStale();
    options_.logger->info("exec tasks run in a {} leaf each (cpus, memory and pids limited as placed){}",
                          cgroups_.mode(),
                          stale ? "; removed " + std::to_string(stale) + " a previous worker left" : std::string());
  } else if (!options_.noop_executor) {
    options_.logger->warn("limits: off: exec tasks' cpus and memory are not enforced ({})", cgroups_.why_off());
  }
  if (!options_.noop_executor) {
    if (users_.privileged() && access(exec_shim_.c_str(), X_OK) != 0) {
      return Status::Unavailable(std::string(kExecShimName) + " is not beside fm-worker nor in " + exec_shim_ +
                                 ": exec tasks cannot switch to their user");
    }
    options_.logger->info("{}", users_.Describe());
    if (security_.on() && !users_.privileged()) {
      options_.logger->warn(
          "exec tasks run as this worker's own user, who can read its certificate ({}): run the worker as root "
          "with --task-uids FIRST-LAST",
          security_.own.path);
    } else if (security_.on() && !options_.run_as.empty()) {
      options_.logger->warn(
          "every owner's exec tasks run as the one user {}: they can read each other's environment and files; "
          "--task-uids FIRST-LAST gives each owner a uid of its own",
          options_.run_as);
    }
  }
  return Status::Ok();
}

void Worker::RemoveOrphans() {
  // Before this process takes any task: every container labelled with this worker's id
  // is a previous process's, left behind by a crash or a kill.
  if (options_.docker_socket.empty() || options_.noop_executor ||
      !std::binary_search(probe_.capabilities.begin(), probe_.capabilities.end(), "docker")) {
    return;
  }
  DockerClient docker(options_.docker_socket);
  auto left = docker.ListLabeled("fm.worker", options_.id);
  if (!left.ok()) {
    options_.logger->warn("could not look for containers a previous worker {} left: {}", options_.id,
                          left.status().message());
    return;
  }
  size_t removed = 0;
  for (const auto& id : *left) {
    if (Status s = docker.Remove(id); s.ok()) {
      ++removed;
    } else {
      options_.logger->warn("could not remove container {} a previous worker {} left: {}", id, options_.id,
                            s.message());
    }
  }
  if (removed > 0) options_.logger->info("removed {} containers a previous worker {} left", removed, options_.id);
}

void Worker::Attach(bus::Loop& loop) {
  loop_ = &loop;
  off_loop_ = std::make_unique<OffLoop>(loop.uv());
  if (options_.noop_executor) {
    executor_ = std::make_unique<NoopExecutor>(core_.get());
  } else {
    UvExecutorOptions executor_options;
    executor_options.docker_socket = options_.docker_socket;
    executor_options.worker_id = options_.id;
    char instance[20];
    snprintf(instance, sizeof instance, "%016llx", static_cast<unsigned long long>(instance_));
    executor_options.instance = instance;
    executor_options.users = &users_;
    executor_options.cgroups = &cgroups_;
    executor_options.sessions = options_.sessions;
    if (executor_options.sessions.advertise.empty()) executor_options.sessions.advertise = options_.node;
    executor_options.exec_shim = exec_shim_;
    executor_ = std::make_unique<UvExecutor>(loop.uv(), core_.get(), std::move(executor_options),
                                             [this] { loop_->MarkWork(); });
  }
  core_->SetExecutor(executor_.get());
  loop.Watch(client_->dealer(), [this] { return DrainDirected(); });
  loop.Watch(client_->sub(), [this] { return DrainBus(); });
  loop.Every(
      options_.heartbeat_ms,
      [this] {
        bus::TendLink(*client_, link_log_, bus::WallClockMs());
        if (StopIfUnpinned()) return;
        core_->Heartbeat();
      },
      100);
  loop.Every(options_.core.resend_ms, [this] { core_->Tick(bus::WallClockMs()); });
  loop.OnTurnEnd([this] { Flush(); });
  loop.Every(options_.heartbeat_ms, [this] { Reprobe(); });
  core_->Register();
}

bool Worker::StopIfUnpinned() {
  const std::string& problem = client_->UnpinnedRoot();
  if (problem.empty()) return false;
  if (exit_code_ == 0) {
    options_.logger->error("{}", problem);
    exit_code_ = 2;  // a configuration error: not to be restarted as is
    loop_->Stop();
  }
  return true;
}

void Worker::Flush() {
  WorkerOutbox out = core_->EndTurn();
  for (const auto& payload : out.to_scheduler) {
    if (!client_->Send(bus::kSchedulerAddress, payload)) {
      options_.logger->warn("could not queue a message for the scheduler; results are re-sent until acknowledged");
    }
  }
  for (const auto& [to, payload] : out.replies) client_->Send(to, payload);
  for (const auto& warning : out.warnings) options_.logger->warn("{}", warning);
  for (const auto& [topic, payload] : out.publications) client_->Publish(topic, payload);
  if (core_->refused() && exit_code_ == 0) {
    options_.logger->error("the scheduler refused this worker: {}", core_->refusal());
    exit_code_ = 3;
    loop_->Stop();
  }
}

void Worker::Reprobe() {
  if (options_.docker_socket.empty() || reprobe_in_flight_) return;
  reprobe_in_flight_ = true;
  struct Answer {
    bool docker = false;
    std::string note;
    bool session_probed = false, session = false;
    std::string session_note;
  };
  auto answer = std::make_shared<Answer>();
  // The session image is tried by doing (a container started, sshd reached), less often
  // than the ping: it costs a container.
  const bool session_due = !options_.sessions.image.empty() && bus::WallClockMs() >= next_session_probe_ms_;
  off_loop_->Run(
      [answer, session_due, socket = options_.docker_socket, image = options_.sessions.image, id = options_.id,
       bind = options_.sessions.bind] {
        answer->docker = ProbeDocker(socket, 1000, &answer->note);
        if (answer->docker && session_due) {
          answer->session_probed = true;
          answer->session = ProbeSession(socket, image, id, bind, 20000, &answer->session_note);
        }
      },
      [this, answer] {
        reprobe_in_flight_ = false;
        ++probes_[answer->docker ? 0 : 1];
        if (answer->session_probed) {
          next_session_probe_ms_ = bus::WallClockMs() + options_.session_probe_ms;
          if (answer->session && !session_ok_) {
            options_.logger->info("capability session announced: {}", answer->session_note);
          } else if (!answer->session && session_ok_) {
            options_.logger->warn("capability session withdrawn: {}", answer->session_note);
          } else if (!answer->session && !session_logged_) {
            options_.logger->info("capability session not announced: {}", answer->session_note);
          }
          session_logged_ = true;
          session_ok_ = answer->session;
        }
        if (!answer->docker) session_ok_ = false;
        std::vector<std::string> caps = core_->identity().capabilities;
        const bool had_docker = std::binary_search(caps.begin(), caps.end(), "docker");
        if (had_docker != answer->docker) {
          if (answer->docker) {
            options_.logger->info("capability docker announced again: {}", answer->note);
          } else {
            options_.logger->warn("capability docker withdrawn: {}", answer->note);
          }
        }
        auto set = [&caps](const char* cap, bool on) {
          auto it = std::find(caps.begin(), caps.end(), cap);
          if (on && it == caps.end()) caps.push_back(cap);
          if (!on && it != caps.end()) caps.erase(it);
        };
        set("docker", answer->docker);
        set("session", session_ok_);
        core_->SetCapabilities(std::move(caps));
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
    if (std::string refusal = bus::BrokerRefusal(*msg); !refusal.empty()) {
      link_log_.Warn("refused", bus::WallClockMs(), "the broker refused this worker: " + refusal);
      continue;
    }
    core_->OnDirected(msg->from, msg->payload.data(), msg->payload.size(), bus::WallClockMs());
  }
  return n;
}

size_t Worker::DrainBus() {
  size_t n = 0;
  while (n < kBudget) {
    auto event = client_->ReceiveEvent();
    if (!event) break;
    ++n;
    if (event->topic == "scheduler.started") core_->Register();
  }
  return n;
}

void Worker::Metrics(ops::Sheet& sheet) const {
  sheet.Gauge("worker_tasks_running", "attempts running here (cancelled ones winding down too)", core_->runs());
  sheet.Gauge("worker_slots_used", "slots the scheduler counts as taken", core_->slots_in_use());
  sheet.Gauge("worker_slots", "slots this worker offers", core_->identity().slots);
  sheet.Counter("worker_attempts_started_total", "attempts handed to the executor", core_->started());
  const char* names[] = {"succeeded", "failed", "cancelled", "timed_out", "retryable"};
  for (size_t i = 0; i < core_->ended().size(); ++i) {
    sheet.Counter("worker_attempts_ended_total",
                  "attempts ended, by outcome (retryable: the executor could not run it here)",
                  static_cast<double>(core_->ended()[i]), {{"outcome", names[i]}});
  }
  const auto caps = core_->announced();
  for (const char* cap : {"docker", "gpu", "session"}) {
    sheet.Gauge("worker_capability", "1 while the capability is announced (probed, and not quarantined)",
                std::binary_search(caps.begin(), caps.end(), cap) ? 1 : 0, {{"capability", cap}});
    sheet.Gauge("worker_capability_quarantined", "1 while the capability is withdrawn because tasks failed to start",
                core_->health().quarantined(cap) ? 1 : 0, {{"capability", cap}});
  }
  sheet.Gauge("worker_attempts_waiting",
              "dispatched attempts not started yet (GPUs a stopping attempt holds, an unproven executor)",
              core_->waiting());
  sheet.Counter("worker_docker_probes_total", "docker re-probes, by result", static_cast<double>(probes_[0]),
                {{"result", "ok"}});
  sheet.Counter("worker_docker_probes_total", "", static_cast<double>(probes_[1]), {{"result", "failed"}});
  sheet.Gauge("worker_output_unacknowledged_bytes", "task output sent and not yet stored by the scheduler",
              core_->output_unacknowledged());
  sheet.Gauge("worker_output_paused", "1 while output is held back for the scheduler to catch up",
              core_->output_paused() ? 1 : 0);
  sheet.Gauge("worker_results_unacknowledged", "results sent and not yet acknowledged", core_->unacknowledged());
}

}  // namespace fm::worker
