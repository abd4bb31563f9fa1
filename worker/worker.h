// fm-worker: announces what it probed, runs what the scheduler dispatches to it, and
// reports results until they are acknowledged.
//
// The decisions live in the socket-free WorkerCore (worker/core.h) and the attempts run
// through an Executor (worker/uv_executor.h, or the noop one); this is the loop, the
// sockets and the re-probe around them. Registration and heartbeats go on the event bus
// (topics fleet.register and fleet.heartbeat); task traffic is directed to the
// scheduler through the local broker.
//
// Thread: the loop thread; blocking Docker API calls (attempts, re-probes, stops) run on
// threads of their own (never libuv's pool) and report back on the loop thread.
#pragma once

#include <spdlog/spdlog.h>

#include <memory>
#include <optional>
#include <string>
#include <zmq.hpp>

#include "runtime/bus.h"
#include "runtime/loop.h"
#include "runtime/ops.h"
#include "runtime/rate_limited_log.h"
#include "schemas/fm_generated.h"
#include "schemas/model.h"
#include "worker/core.h"
#include "worker/executor.h"
#include "worker/probe.h"
#include "worker/task_users.h"
#include "worker/uv_executor.h"

namespace fm::worker {

struct WorkerOptions {
  std::string broker = bus::DefaultBrokerUrl();
  std::string id;                      // default: the host name
  std::string node;                    // default: the host name
  uint32_t slots = 0;                  // default: whole cpus found
  std::optional<uint32_t> cpus_milli;  // may only lower what was probed
  std::optional<uint64_t> memory;      // may only lower what was probed
  Labels labels;
  std::string docker_socket;  // empty: no docker capability
  std::string cert, broker_cert, root_cert;
  std::string run_as;     // exec tasks run as this user (worker/task_users.h)
  std::string task_uids;  // or each owner's as a uid of its own from this range, FIRST-LAST
  std::string state_dir;  // where the range's owners and their homes are kept
  uint64_t heartbeat_ms = 1000;
  // The core's: results re-sent, output kept per attempt (--max-output), quarantine
  // (--quarantine-after, --quarantine-probe).
  WorkerCoreOptions core;
  bool noop_executor = false;   // benchmarking: complete each task at once without running it
  std::string cgroup = "auto";  // exec limits: "auto", "v2", "v1" or "off"
  // Capability session: announced while a container of sessions.image starts and sshd
  // answers in it, checked every session_probe_ms (empty image: never announced).
  // sessions.advertise empty: the node name.
  SessionOptions sessions{.advertise = ""};
  uint64_t session_probe_ms = 60000;
  std::shared_ptr<spdlog::logger> logger;
};

// Applies --cpus/--memory to what was probed. Error when a flag would raise a value.
Status ApplyLimits(const WorkerOptions& options, Hardware* hw);

class Worker {
 public:
  Worker(zmq::context_t& context, WorkerOptions options, Probe probe);
  ~Worker();
  // What Open checks before it connects: the broker URL, certificates, limits, the
  // run-as user, labels (--check-config). Error names the option.
  Status Check();
  Status Open();
  void Attach(bus::Loop& loop);
  // Everything GET /metrics shows, read now. REQUIRES: Open() succeeded.
  void Metrics(ops::Sheet& sheet) const;
  // 0 after a normal stop; 3 when the scheduler refused this worker's id.
  int exit_code() const { return exit_code_; }

 private:
  size_t DrainDirected();
  size_t DrainBus();
  void Reprobe();
  // Removes the containers labelled fm.worker=<id> (a previous process's). Blocking.
  void RemoveOrphans();
  // Sends what the core produced this turn; stops when the scheduler refused us.
  void Flush();
  // Stops the worker (exit 2) once its broker turned out to be a node broker while the
  // root was not pinned (bus::Client::UnpinnedRoot); true then.
  bool StopIfUnpinned();

  WorkerOptions options_;
  Probe probe_;
  zmq::context_t& context_;
  bus::Security security_;
  TaskUsers users_;
  std::unique_ptr<bus::Client> client_;
  bus::RateLimitedLog link_log_{spdlog::default_logger()};
  bus::Loop* loop_ = nullptr;
  uint64_t instance_ = 0;
  std::unique_ptr<WorkerCore> core_;
  uint64_t probes_[2] = {0, 0};  // docker re-probes that answered, that failed
  std::unique_ptr<Executor> executor_;
  bool reprobe_in_flight_ = false;
  bool session_ok_ = false;             // the last session probe worked
  bool session_logged_ = false;         // the first probe's result was logged
  uint64_t next_session_probe_ms_ = 0;  // when the session image is tried again
  std::unique_ptr<OffLoop> off_loop_;   // the /_ping re-probe
  Cgroups cgroups_;                     // exec attempts' limits
  std::string exec_shim_;               // fm-cgexec's path
  int exit_code_ = 0;
};

}  // namespace fm::worker
