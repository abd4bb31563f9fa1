// fm-worker: announces what it probed, runs what the scheduler dispatches to it, and
// reports results until they are acknowledged.
//
// Registration and heartbeats go on the event bus (topics fleet.register and
// fleet.heartbeat); task traffic is directed to the scheduler through the local broker.
// Deliveries are deduplicated by (task, attempt). A result is re-sent every
// resend interval until the scheduler acknowledges it.
//
// Thread: the loop thread; the docker executor's blocking API calls run on libuv's
// thread pool and report back on the loop thread.
#pragma once

#include <spdlog/spdlog.h>

#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <zmq.hpp>

#include "broker/bus.h"
#include "broker/loop.h"
#include "schemas/fm_generated.h"
#include "schemas/model.h"
#include "worker/probe.h"

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
  uint64_t heartbeat_ms = 1000;
  uint64_t resend_ms = 1000;
  bool noop_executor = false;  // benchmarking: complete each task at once without running it
  std::shared_ptr<spdlog::logger> logger;
};

// Applies --cpus/--memory to what was probed. Error when a flag would raise a value.
Status ApplyLimits(const WorkerOptions& options, Hardware* hw);

class Worker {
 public:
  Worker(zmq::context_t& context, WorkerOptions options, Probe probe);
  ~Worker();
  Status Open();
  void Attach(bus::Loop& loop);
  // 0 after a normal stop; 3 when the scheduler refused this worker's id.
  int exit_code() const { return exit_code_; }

 private:
  struct Run;  // one attempt being executed
  struct Finished {
    wire::Outcome outcome = wire::Outcome::Succeeded;
    int32_t exit_code = 0;
    std::string message;
    uint64_t sent_ms = 0;
  };
  using Ref = std::pair<uint64_t, uint32_t>;

  size_t DrainDirected();
  size_t DrainBus();
  void OnDispatch(const wire::Dispatch& dispatch);
  void OnCancel(const wire::CancelTask& cancel);
  void OnAck(const wire::TaskFinishedAck& ack);
  void Register();
  void Heartbeat();
  void ResendFinished();
  void Reprobe();

  void Start(uint64_t task, uint32_t attempt, TaskSpec spec);
  void StartExec(Run* run);
  void StartDocker(Run* run);
  void SendStarted(const Ref& ref);
  void SendLog(const Ref& ref, const char* stream, const char* data, size_t size);
  // Ends a run: records and sends the result, frees the slot.
  void Complete(const Ref& ref, wire::Outcome outcome, int32_t exit_code, const std::string& message);
  void Kill(Run* run);
  // Kills the run when its task's timeout passes. REQUIRES: run->timer initialized.
  void StartTimeout(Run* run);
  static void OnExecHandleClosed(uv_handle_t* handle);
  void ToScheduler(const std::string& payload);
  // Sends what started and finished this turn as one WorkerReport.
  void FlushReport();
  std::vector<flatbuffers::Offset<wire::TaskRef>> HeldRefs(flatbuffers::FlatBufferBuilder& fbb) const;

  WorkerOptions options_;
  Probe probe_;
  zmq::context_t& context_;
  std::unique_ptr<bus::Client> client_;
  bus::Loop* loop_ = nullptr;
  std::string address_;
  uint64_t instance_ = 0;
  std::map<uint64_t, std::unique_ptr<Run>> running_;  // by task id
  std::map<Ref, Finished> finished_;                  // results not yet acknowledged
  std::vector<Ref> report_started_;                   // for this turn's report
  std::set<Ref> report_finished_;                     // likewise (keys of finished_)
  std::set<Ref> done_;                                // acknowledged, to drop late duplicates
  std::deque<Ref> done_order_;
  // Capabilities as last probed; the re-probe's result is applied on the loop thread.
  std::vector<std::string> capabilities_;
  bool reprobe_in_flight_ = false;
  int exit_code_ = 0;
};

}  // namespace fm::worker
