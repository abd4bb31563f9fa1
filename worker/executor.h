// How the worker runs an attempt, behind one interface: exec (a process through
// libuv), docker (the Engine API) and noop (benchmarks) are implementations; the worker
// core (worker/core.h) decides what runs and never touches a process or a socket.
//
// An attempt is named by its Ref, (task, attempt): two attempts of one task are two
// runs, and the end of one never touches the other.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "schemas/fm_generated.h"
#include "schemas/model.h"

namespace fm::worker {

using Ref = AttemptRef;  // schemas/model.h

struct RunResult {
  wire::Outcome outcome = wire::Outcome::Succeeded;
  int32_t exit_code = 0;
  std::string message;
  wire::Reason reason = wire::Reason::None;  // a failure's reason, when the executor knows it
  // Set when the executor could not start the attempt for a cause of its own (the
  // daemon refused to create or start the container), not the task's: the step that
  // failed ("docker create", "docker start"). Counts toward quarantine (worker/health.h).
  std::string start_failure;
};

// What the worker gives an attempt beyond its spec.
struct Grant {
  std::vector<std::string> gpus;  // device ids (GpuDeviceId) chosen for it
  std::string owner;              // who submitted it ("" without CURVE): whose uid it runs as
};

// What an executor reports, on the loop thread.
class RunSink {
 public:
  virtual ~RunSink() = default;
  // Output of a started attempt, in order per stream ("stdout" or "stderr").
  virtual void OnRunOutput(const Ref& ref, const char* stream, std::string_view data) = 0;
  // The attempt has ended and holds nothing any more (no process, no handle, no
  // container). Called exactly once per Start, possibly from within Start.
  virtual void OnRunEnded(const Ref& ref, RunResult result) = 0;
  // The executor's own start of the attempt worked (docker: the container started):
  // evidence of health (worker/health.h).
  virtual void OnRunStarted(const Ref& ref) { (void)ref; }
  // A session's sshd answers at `endpoint` (TaskSpec::session).
  virtual void OnRunReady(const Ref& ref, const Endpoint& endpoint) { (void)ref, (void)endpoint; }
  // A re-probe (Executor::Probe) ended: `ok` when the executor started a real run.
  virtual void OnProbeEnded(const std::string& capability, bool ok, const std::string& message) {
    (void)capability, (void)ok, (void)message;
  }
};

class Executor {
 public:
  virtual ~Executor() = default;
  // Starts `ref`. REQUIRES: `ref` is not running here. Thread: the loop thread.
  virtual void Start(const Ref& ref, const TaskSpec& spec, const Grant& grant) = 0;
  // Asks a running attempt to stop; its OnRunEnded still comes (outcome Cancelled).
  // No-op for an attempt that is not running.
  virtual void Cancel(const Ref& ref) = 0;
  // Stops (or resumes) reading every attempt's output: the output waits in its pipe
  // (or in the Docker daemon) and the task's writes block. Flow control only: an
  // attempt's end is never lost to it.
  virtual void PauseOutput(bool paused) { (void)paused; }
  // Checks by doing that `capability` works again: starts a real run of `image` and
  // removes it; the answer comes through RunSink::OnProbeEnded, never from within Probe.
  virtual void Probe(const std::string& capability, const std::string& image) { (void)capability, (void)image; }
};

// Completes each attempt at once without running anything: for benchmarks of the
// dispatch path only (fm-worker --noop-executor).
class NoopExecutor final : public Executor {
 public:
  explicit NoopExecutor(RunSink* sink) : sink_(sink) {}
  void Start(const Ref& ref, const TaskSpec&, const Grant&) override { sink_->OnRunEnded(ref, RunResult{}); }
  void Cancel(const Ref&) override {}

 private:
  RunSink* sink_;
};

}  // namespace fm::worker
