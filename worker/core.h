// The worker without sockets or processes: what it announces, which dispatches it runs,
// deduplication by (task, attempt), results kept and re-sent until acknowledged, and the
// per-turn report. Messages go in as bytes (verified here), time is passed in, attempts
// run through an Executor, and what must leave the process comes out in an Outbox.
// fm-worker (worker/worker.h) is the loop and sockets around it.
//
// Runs are keyed by (task, attempt). A newer attempt of a task that still runs here
// replaces the older one: the older is cancelled and its slot is handed to the newer at
// once (the scheduler released it already), and the older's end touches only its own
// entry. Only the scheduler may dispatch, cancel, acknowledge, ask to re-register or
// refuse this worker; those from anyone else are dropped and counted.
//
// Thread: one (the loop thread).
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "schemas/model.h"
#include "worker/executor.h"
#include "worker/health.h"

namespace fm::worker {

struct WorkerIdentity {
  std::string id;
  std::string node;
  std::string address;  // this process's identity on its broker
  uint64_t instance = 0;
  std::string version;
  uint32_t slots = 1;
  Hardware hardware;
  Labels labels;
  std::vector<std::string> capabilities;  // sorted
  bool noop_executor = false;             // announced: tasks complete without running
  std::string limits = "off";             // how exec tasks' limits are enforced (announced)
};

struct WorkerCoreOptions {
  uint64_t resend_ms = 1000;          // a result not acknowledged is sent again after this
  size_t done_memory = 100000;        // acknowledged results remembered to drop late duplicates
  uint64_t max_output = 16ull << 20;  // bytes of stdout + stderr kept per attempt; the rest is dropped
  // Output flow control: at most this many bytes of output sent and not yet
  // acknowledged by the scheduler (TaskFinishedAck.output_bytes, sent once stored);
  // past it the executor stops reading the attempts' output (their writes block) until
  // half of it is acknowledged. Acknowledgements lost (a broker restart, a scheduler
  // that does not send them) reopen the window after output_stall_ms without one.
  uint64_t output_window = 4ull << 20;
  uint64_t output_stall_ms = 3000;  // doubled for each stall in a row, up to 16x
  HealthOptions health;             // when a capability is quarantined, how it is re-probed
};

struct WorkerOutbox {
  std::vector<std::string> to_scheduler;                          // directed payloads
  std::vector<std::pair<std::string, std::string>> replies;       // address, payload
  std::vector<std::pair<std::string, std::string>> publications;  // topic, payload
  std::vector<std::string> warnings;                              // for the worker's log
  bool empty() const { return to_scheduler.empty() && replies.empty() && publications.empty() && warnings.empty(); }
};

class WorkerCore final : public RunSink {
 public:
  // An attempt's end waits for its output to be stored at most this long (WorkerCore
  // keeps and sends again what the scheduler has not stored).
  static constexpr uint64_t kHoldEndMs = 300'000;
  WorkerCore(WorkerIdentity identity, WorkerCoreOptions options = {});
  // REQUIRES: set before the first message; outlives the core's use of it.
  void SetExecutor(Executor* executor) { executor_ = executor; }

  // A directed message from broker identity `from`. Malformed or unknown messages get an
  // Error reply (not to the broker itself); commands not from the scheduler are dropped.
  void OnDirected(const std::string& from, const void* data, size_t size, uint64_t now_ms);
  // RunSink: the executor's reports.
  void OnRunOutput(const Ref& ref, const char* stream, std::string_view data) override;
  void OnRunStarted(const Ref& ref) override;
  void OnRunReady(const Ref& ref, const Endpoint& endpoint) override;
  void OnRunEnded(const Ref& ref, RunResult result) override;
  void OnProbeEnded(const std::string& capability, bool ok, const std::string& message) override;
  // Schedules results not acknowledged within resend_ms to be sent again, and starts
  // the re-probes of quarantined capabilities that are due.
  void Tick(uint64_t now_ms);

  // Queues this worker's registration (fleet.register) or heartbeat (fleet.heartbeat).
  void Register();
  void Heartbeat();
  // Replaces the probed capabilities (a re-probe's result). Returns whether they changed.
  // What is announced is these less the quarantined ones.
  bool SetCapabilities(std::vector<std::string> capabilities);
  std::vector<std::string> announced() const { return health_.Announced(identity_.capabilities); }
  const Health& health() const { return health_; }

  // Ends the turn: what started and finished goes out as one WorkerReport; returns all
  // that must leave the process.
  WorkerOutbox EndTurn();

  // Set when the scheduler refused this worker (its id is held by another live one).
  bool refused() const { return !refusal_.empty(); }
  const std::string& refusal() const { return refusal_; }

  const WorkerIdentity& identity() const { return identity_; }
  // Slots in use: attempts running here that the scheduler counts (not cancelled or
  // superseded ones still winding down).
  uint32_t slots_in_use() const { return slots_in_use_; }
  bool running(const Ref& ref) const { return runs_.count(ref) > 0; }
  size_t unacknowledged() const { return finished_.size(); }
  uint64_t dropped_not_from_scheduler() const { return dropped_not_from_scheduler_; }
  uint64_t output_unacknowledged() const { return output_unacked_; }
  bool output_paused() const { return output_paused_; }
  uint64_t epoch() const { return epoch_; }
  size_t runs() const { return runs_.size(); }
  // Dispatched attempts not started yet: waiting for GPUs that a stopping attempt
  // holds, or for an unproven executor's start in flight (worker/health.h).
  size_t waiting() const;
  // The GPUs (indexes into identity().hardware.gpus) an attempt holds.
  std::vector<size_t> gpus_of(const Ref& ref) const;
  // Attempts started, and ended by outcome (indexed by wire::Outcome), since the start.
  uint64_t started() const { return started_; }
  const std::array<uint64_t, 5>& ended() const { return ended_; }

 private:
  struct RunState {
    bool counted = true;       // holds one of this worker's slots
    uint64_t epoch = 0;        // of the store that dispatched it
    uint64_t output = 0;       // bytes of output passed on
    uint64_t dropped = 0;      // bytes of output over max_output
    std::vector<size_t> gpus;  // held until the attempt has ended, cancelled or not
    bool waiting = false;      // dispatched, not started yet (TryStart)
    bool starting = false;     // handed to an executor with a capability, not yet known started
    TaskSpec spec;             // while waiting
    std::string owner;         // while waiting: who submitted it
    std::string capability;    // "docker" for image tasks: what its start failures count against
    std::string image;
  };
  struct Finished {
    RunResult result;
    uint64_t sent_ms = 0;
    uint64_t ended_ms = 0;
  };

  void OnDispatch(const wire::Dispatch& dispatch);
  // Takes a dispatched attempt in (its slot counted) and tries to start it.
  void Admit(const Ref& ref, TaskSpec spec, std::string owner);
  // Starts a waiting attempt with its GPUs, or leaves it waiting (GPUs a stopping attempt
  // holds; another start of an unproven executor in flight), or refuses it (Retryable:
  // no GPU could be had, or its capability was quarantined meanwhile).
  void TryStart(const Ref& ref);
  // Whether `capability`'s executor has not shown since its last failure that it starts
  // tasks and another attempt than `except` is starting on it now.
  bool Unproven(const std::string& capability, const Ref& except) const;
  // Tries to start every waiting attempt.
  void StartWaiting();
  // Stops an attempt: a waiting one ends here at once, a started one through the executor.
  void StopRun(const Ref& ref);
  std::vector<bool> BusyGpus() const;
  void OnCancel(const wire::CancelTask& cancel);
  void OnAck(const wire::TaskFinishedAck& ack);
  void Release(RunState* run);
  // A scheduler with another store (epoch) took over: task ids may be given again, so
  // nothing of the old store's is kept, reported or deduplicated against.
  void ObserveEpoch(uint64_t epoch);
  void Finish(const Ref& ref, RunResult result);
  void SendLog(const Ref& ref, const std::string& stream, std::string_view data);
  // Passes output on in whole UTF-8 characters (the end of a cut one waits for the next read).
  void PassOutput(const Ref& ref, const char* stream, std::string_view data);
  std::vector<Ref> Held() const;
  // Pauses or resumes the executor's output as the window closes or opens.
  void PaceOutput();
  // Seals the turn's output into messages.
  void FlushLogs();

  WorkerIdentity identity_;
  WorkerCoreOptions options_;
  Executor* executor_ = nullptr;
  uint64_t now_ms_ = 0;
  uint64_t epoch_ = 0;  // 0 until a scheduler names one

  std::map<Ref, RunState> runs_;  // attempts the executor holds
  // The end of a read that cut a UTF-8 character short, per attempt and stream: sent
  // with the next read, so that a character is never split across two log events.
  std::map<std::pair<Ref, std::string>, std::string> partial_output_;
  uint32_t slots_in_use_ = 0;
  std::map<Ref, Finished> finished_;  // results not yet acknowledged
  std::set<Ref> done_;                // acknowledged, to drop late duplicates
  std::deque<Ref> done_order_;
  std::vector<Ref> report_started_;
  std::set<Ref> report_finished_;
  WorkerOutbox out_;
  std::string refusal_;
  uint64_t dropped_not_from_scheduler_ = 0;
  uint64_t started_ = 0;
  std::array<uint64_t, 5> ended_{};
  // Output of the turn, in order; consecutive pieces of one attempt's stream are joined
  // (up to 64 KiB a message), so that many small reads make few messages.
  struct PendingLog {
    Ref ref;
    std::string stream, data;
    std::optional<uint64_t> offset;  // stdout and stderr: where data starts in the attempt's stream
  };
  std::vector<PendingLog> pending_logs_;
  // Output at least once, for attempts dispatched with sequenced_output: their stdout
  // and stderr carry offsets, and what the scheduler has not said it stored
  // (TaskFinishedAck.output) is kept, at most the attempt's --max-output, and sent again
  // after a (re)registration, a stall, or a mark that says some was lost (`behind`). An
  // attempt's end is reported once its output is stored (or kHoldEndMs after it ended).
  // A scheduler that acknowledges output without marks (older) turns it off.
  struct SentStream {
    uint64_t next = 0;                                  // the offset of the next byte
    uint64_t resent_ms = 0;                             // sent again at the scheduler's word
    std::deque<std::pair<uint64_t, std::string>> kept;  // (offset, bytes) not yet stored
  };
  std::map<std::pair<Ref, bool>, SentStream> sent_;  // (attempt, stderr?)
  uint64_t kept_bytes_ = 0;
  bool KeepsOutput(const Ref& ref) const;
  void DropEmptyOutput(const Ref& ref);
  void Queue(const Ref& ref, const std::string& stream, std::string_view data, std::optional<uint64_t> offset);
  void SendKeptAgain();
  void StopKeeping();
  uint64_t output_unacked_ = 0;      // output bytes sent, not acknowledged
  uint64_t output_progress_ms_ = 0;  // the last acknowledgement of output, or the pause
  bool output_paused_ = false;
  uint32_t output_stalls_ = 0;                              // stall resets since the last acknowledgement
  std::set<Ref> told_output_lost_;                          // attempts told that the broker refused some output
  std::map<Ref, std::vector<std::string>> report_devices_;  // GPUs of the attempts in report_started_
  std::map<Ref, Endpoint> ready_;  // sessions whose sshd answers: said again on (re-)registration
  void SendReady(const Ref& ref, const Endpoint& endpoint);
  Health health_;
  bool announce_ = false;  // the quarantined set changed: heartbeat at the end of the turn
};

}  // namespace fm::worker
