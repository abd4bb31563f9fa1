// The scheduler's state machine: tasks, the fleet, placement and the event stream, as a
// pure component. Messages and time go in; store mutations, directed messages and
// events come out in Effects. No sockets, no disk, no clock: the daemon
// (scheduler/daemon.h) feeds it and, once per loop turn, commits Effects::writes as one
// synced WriteBatch before sending anything in Effects (group commit).
//
// Task states: pending -> queued(worker) -> running -> succeeded | failed | cancelled;
// every transition is in one table (task_machine.h). A lost worker or a retryable
// failure sends a task back to pending with attempt + 1, up to max_attempts. A task no
// live worker could ever run fails at once with reason no_eligible_worker.
//
// The backlog: the engine keeps up to cached_waiting_tasks tasks that wait for their
// first placement whole in memory (those submitted first; their record at a/ like every
// task in memory). Past that, a new task's record goes to q/ and memory holds only its
// place in its demand's line (pending.h: ~48 bytes); it is read back when it is placed
// (its record then moves to a/), cancelled or shown.
// After a start it reads a/ (the tasks placed, running or retrying: bounded by the
// fleet) at once and q/ a batch per turn, placing from what it has read meanwhile.
//
// The engine holds the transitions; it talks to narrow parts: the fleet index
// (fleet_index.h), the pending set (pending.h), the event log (event_log.h), the store's
// records (records.h) and the control views (views.h).
//
// Thread: one; the caller's loop thread.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "runtime/policy.h"
#include "scheduler/control.h"
#include "scheduler/effects.h"
#include "scheduler/ended_tasks.h"
#include "scheduler/event_log.h"
#include "scheduler/explain.h"
#include "scheduler/fleet.h"
#include "scheduler/fleet_index.h"
#include "scheduler/groups.h"
#include "scheduler/membership.h"
#include "scheduler/pending.h"
#include "scheduler/placement.h"
#include "scheduler/task.h"
#include "scheduler/task_machine.h"
#include "schemas/fm_generated.h"
#include "schemas/model.h"
#include "store/store.h"

namespace fm::sched {

struct EngineOptions {
  uint64_t liveness_window_ms = 5000;  // a worker unheard for this long is lost
  // With --etcd: which leadership this is ("leader of NAME as NODE, epoch E"), said by
  // scheduler.started and fm-ctl ping. Empty: a scheduler on its own.
  std::string leadership;
  uint64_t leadership_epoch = 0;  // stamped on every event (0: none)
  struct Standby {
    std::string node, state;
    uint64_t acked = 0, behind = 0;
    bool in_sync = false;
  };
  struct Leadership {
    std::string name, node, describe;
    uint64_t since_ms = 0;
    bool forced = false;
    // With --ha-listen: the standbys following this leader as they are now, and the
    // batches it wrote (asked at each fm-ctl ha).
    std::function<std::vector<Standby>(uint64_t* batches)> standbys;
  } leader;  // fm-ctl ha (with leadership_epoch)
  // Tasks whose only eligible workers were lost wait this long for one to come back
  // before they fail no_eligible_worker (0: they fail at once).
  uint64_t reconnect_grace_ms = 30000;
  uint32_t default_max_attempts = 3;
  PlacementPolicy policy = PlacementPolicy::kSpread;
  uint64_t redispatch_after_ms = 2000;  // re-send a queued task not yet started
  uint64_t event_retention_count = 1'000'000;
  uint64_t event_retention_age_ms = 7ull * 24 * 3600 * 1000;  // events and task output
  // Task output (task.log events) is retained apart from the other events, by bytes.
  uint64_t log_retention_bytes = 1ull << 30;
  // Ended tasks (and the submission keys that name them) are deleted oldest id first
  // past this many, and once they ended longer ago than the age.
  uint64_t task_retention_count = 100'000;
  uint64_t task_retention_age_ms = 7ull * 24 * 3600 * 1000;
  size_t task_trim_per_tick = 4096;  // ended tasks deleted per Tick at most
  size_t replay_batch = 512;         // events per ReplayBatch message (and at most ~1 MiB)
  size_t task_page = 1000;           // tasks per fm-ctl tasks page (and at most ~1 MiB)
  size_t recent_ended = 1000;        // ended tasks fm-ctl tasks still lists
  // Senders are authenticated (the broker checked every address claim against a CURVE
  // certificate, runtime/policy.h): roles are enforced and tasks get owners. Off: every
  // sender may do everything (a keyless cluster on loopback).
  bool authenticate = false;
  // The epoch a new store gets (the daemon draws it at random); non-zero.
  uint64_t fresh_epoch = 1;
  // Tasks waiting for their first placement kept whole in memory (the rest wait at q/ and
  // are read back when placed), and how many q/ records a turn reads after a start.
  size_t cached_waiting_tasks = 65536;
  size_t waiting_load_batch = 20000;
  // Tasks waiting for a task they run after (TaskSpec.after), held whole in memory: past
  // this many a new one is rejected (limit_reached).
  size_t max_blocked_tasks = 200000;
  // Clamps values that make no sense (zero windows) to usable ones.
  void Validate();
};

// What the engine counted since it started (metrics; never stored).
struct EngineStats {
  uint64_t submitted = 0;     // tasks created (accepted or refused at once)
  uint64_t redeliveries = 0;  // Dispatch sent again for a task queued and not yet started
  uint64_t worker_losses = 0;
  uint64_t retries = 0;                                                // attempts sent back to pending
  std::map<std::pair<wire::TaskState, wire::Reason>, uint64_t> ended;  // by state and reason
};

// The tasks not ended and the workers, by state, counted when asked.
struct EngineCensus {
  size_t pending = 0, queued = 0, running = 0;
  uint64_t oldest_pending_ms = 0;  // when the longest-waiting pending task was submitted (0: none)
  size_t workers_live = 0, workers_draining = 0, workers_unconfirmed = 0, workers_lost = 0;
};

// The delay before attempt `attempt` + 1 of task `task`: spec.retry_backoff_ms (or the
// default) doubled per attempt so far, at most kMaxRetryDelayMs, jittered 0.75x-1.25x.
uint64_t RetryDelayMs(const TaskSpec& spec, uint64_t task, uint32_t attempt);

class Engine {
 public:
  explicit Engine(EngineOptions options);

  // Rebuilds state from `store`, which must outlive the engine (it also serves replay
  // and lookups of ended tasks). Workers last known are presumed live for one liveness
  // window from `now_ms`. The tasks waiting for their first placement are read later, a
  // batch per FinishTurn (waiting_loaded()). Error: the store could not be read or holds
  // a bad record.
  Status Recover(const store::Store* store, uint64_t now_ms);
  // Announces the scheduler (event scheduler.started, ReRegister to known workers).
  void Start(uint64_t now_ms);
  // An event of the scheduler itself (no task, no worker), e.g. scheduler.standby.
  void Notice(wire::EventType type, const std::string& message, uint64_t now_ms);

  // A directed message from broker identity `from` (submit, control, replay, worker
  // reports). A message of a type the scheduler does not take gets an Error reply.
  void OnDirected(const std::string& from, const wire::Envelope& envelope, uint64_t now_ms);
  // The broker could not deliver to `address`: a worker's queued tasks are dispatched
  // again after a short delay (100 ms) instead of the full re-dispatch interval.
  void OnUnreachable(const std::string& address, uint64_t now_ms);
  // A bus message (worker registration, heartbeat).
  void OnBus(const wire::Envelope& envelope, uint64_t now_ms);
  // Liveness, re-dispatch and retention. Call a few times per second. The scheduler's
  // own silence is never taken for the fleet's: after a gap of more than a quarter of
  // the liveness window since the last Tick, every worker gets a fresh window; when most
  // of the fleet (2 or more confirmed workers) would be lost at once while nothing at all
  // arrived for half a window, losses wait until something arrives, and then every
  // worker gets a fresh window.
  void Tick(uint64_t now_ms);
  // Ends the turn: fails tasks no worker can run any more, places what fits, builds one
  // Dispatch per worker, records counters. Then commit effects().writes, then send.
  void FinishTurn(uint64_t now_ms);

  Effects& effects() { return effects_; }
  // The first store read that failed since the last call (OK if none). A read error is
  // sticky for the caller (the core turns degraded), never taken for "not found".
  Status TakeReadError() { return std::exchange(read_error_, Status::Ok()); }

  // Introspection (tests, fm-ctl).
  const WorkerState* worker(const std::string& id) const;
  const Task* active_task(uint64_t id) const;
  // Tasks in line for placement (of the backlog, those read so far).
  size_t pending_count() const { return pending_.size(); }
  // Tasks not ended (of the backlog, those read so far).
  size_t active_count() const { return active_.size() - cached_waiting_ + waiting_records_; }
  // Tasks kept whole in memory.
  size_t tasks_in_memory() const { return active_.size(); }
  // Tasks waiting for a task they run after (TaskSpec.after) to succeed.
  size_t blocked_count() const { return blocked_; }
  // Every waiting task in the store has been read since Recover.
  bool waiting_loaded() const { return load_from_ >= load_to_; }
  uint64_t next_seq() const { return log_.next_seq(); }
  uint64_t stored_events() const { return log_.stored_events(); }
  uint64_t stored_log_bytes() const { return log_.stored_log_bytes(); }
  // Ended tasks the store holds (t/), and those deleted by their retention since the start.
  uint64_t stored_ended_tasks() const { return ended_.stored(); }
  uint64_t tasks_trimmed() const { return ended_.trimmed(); }
  // The store's cluster epoch (records::ReadEpoch).
  uint64_t epoch() const { return epoch_; }
  // Waiting tasks offered to placement since the start: one per task placed, plus at
  // most one per demand and walk that found no room (however long the backlog).
  uint64_t placement_offers() const { return placement_offers_; }
  // Times the scheduler suspected its own silence (a gap in its ticks, or a mass
  // silence held) instead of losing workers.
  uint64_t self_silences() const { return membership_.self_silences(); }
  // Messages refused for their sender (role, ownership, a report from the wrong worker).
  uint64_t unauthorized() const { return unauthorized_; }
  const EngineStats& stats() const { return stats_; }
  // O(tasks not ended + workers): for a scrape, not for every turn.
  EngineCensus Census() const;
  // The oldest event seq replay still has.
  uint64_t oldest_seq() const { return log_.oldest_seq(); }

 private:
  void OnSubmit(const std::string& from, const wire::SubmitRequest& req, uint64_t now_ms);
  // What membership decided, as task transitions: a lost worker's tasks back to pending,
  // a rejoined worker reconciled with what it says it holds.
  void Apply(const MembershipVerdict& verdict, uint64_t now_ms);
  void OnTaskStarted(const std::string& from, const wire::TaskRef& ref, uint64_t now_ms,
                     std::vector<std::string> gpus = {});
  // A session's sshd answers: stored, task.ready, and the watching submitter told.
  void OnTaskReady(const std::string& from, const wire::TaskReady& msg, uint64_t now_ms);
  void OnTaskFinished(const std::string& from, const wire::TaskFinished& msg, uint64_t now_ms);
  void OnWorkerReport(const std::string& from, const wire::WorkerReport& report, uint64_t now_ms);
  void FlushBatched();
  void OnTaskLog(const std::string& from, const wire::TaskLog& msg, uint64_t now_ms);
  // Notes a refused message for the log.
  void Refused(const std::string& from, const std::string& what);
  friend struct control::Internals;  // fm-ctl's answers read the state (control.h)
  void OnReplay(const std::string& from, const wire::ReplayRequest& req);
  // fm-ctl cancel (authorized): the task ends cancelled; its attempt, if dispatched, is
  // told to stop, and its output is kept until the worker says it ended.
  void Cancel(Task* t, const std::string& from, uint64_t now_ms);

  // The tasks queued or running on `worker_id` that it does not hold are sent again
  // (queued) or re-placed (running); what it holds that is not its to run is cancelled.
  void Reconcile(const std::string& worker_id, const std::set<AttemptRef>& held, uint64_t now_ms);
  // The task waits for a lost worker: say so once on the stream.
  void MarkWaiting(const Task& t, uint64_t now_ms);
  void Queue(Task* t, const std::string& worker_id, uint64_t now_ms);
  // Back to pending with attempt + 1, or failed when attempts are used up.
  // `blame_worker`: the attempt failed there (a retryable exit status, an executor that
  // could not run it): the worker is remembered and the retry waits a backoff. Not for a
  // lost worker (placed again at once).
  // `spent` false: the attempt never started (handed back): it does not count against
  // max_attempts (Task::handed_back), and only a run of hand-backs waits a backoff.
  void Retry(Task* t, wire::Reason reason, const std::string& message, uint64_t now_ms, bool blame_worker = false,
             bool spent = true);
  static constexpr uint32_t kHandBacksWithoutBackoff = 3;
  // Tasks whose retry backoff is over join the pending set.
  void ReleaseBackoff(uint64_t now_ms);
  // Takes `t` to the state task_machine.h gives for `event`; false, and nothing changed,
  // when the table has no such transition.
  bool Step(Task* t, TaskEvent event);
  // A terminal transition (`event`: succeed, fail, cancel, unrunnable); refused (nothing
  // changes) when the table has none from the task's state. Removes the task from the
  // active set; `t` is invalid after.
  void End(Task* t, TaskEvent event, wire::Reason reason, const std::string& message, int32_t exit_code,
           uint64_t now_ms, const Explanation* explanation = nullptr);
  void Unassign(Task* t);
  void FailUnrunnable(uint64_t now_ms);
  // Dependencies (TaskSpec.after). The tasks waiting for the parents ended since the
  // last call: one that succeeded lets them go (a task with none left joins the line);
  // one that did not ends them dependency_failed, and theirs in turn, in this turn.
  void ResolveDependents(uint64_t now_ms);
  // An array element with a bound on its group's tasks in flight (max_running).
  static bool Bounded(const TaskSpec& spec) { return spec.array && spec.array->max_running > 0 && !spec.group.empty(); }
  // A task free to run joins the line (the pending set), unless its array's bound holds
  // it back (groups.h); the held ones are released at the turn's end as others end.
  void JoinLine(Task& t);
  // Drops ended or unblocked tasks from dependents_.
  void CompactDependents();
  void ReleaseHeld();
  // The message of a task ended dependency_failed after `key` (task `id`), given the
  // first failure of the chain (`cause`); `direct`: that task is the first failure.
  static std::string DependencyMessage(const std::string& key, uint64_t id, const std::string& cause, bool direct);
  // What a dependent of `parent` is told when it ended without succeeding (bounded).
  static std::string DependencyCause(const std::string& key, uint64_t id, wire::TaskState state, wire::Reason reason,
                                     const std::string& message, const std::vector<std::string>& parent_after);
  // The task not ended `id`, in memory or read back from q/ (then held in memory);
  // nullptr when there is none, or the store could not be read (read_error_ set).
  Task* Load(uint64_t id);
  // Like Load, without holding it: a copy in `*copy` when it was read from the store.
  const Task* Peek(uint64_t id, std::optional<Task>* copy) const;
  // The next batch of waiting tasks after a start (Recover).
  void LoadWaiting();
  // Writes the turn's changed tasks; drops waiting tasks past cached_waiting_tasks.
  void WriteTasks();
  // Ended task `id`'s record was deleted by its retention: so is its client key (`key`
  // of `owner`), if it still names it.
  void ForgetKey(uint64_t id, const std::string& owner, const std::string& key);
  void PlacePending(uint64_t now_ms);
  static PendingSet::Entry LineOf(const Task& t) { return PendingSet::Entry::Of(t.spec.priority, t.order, t.id); }
  void FlushDispatches();
  // The fields every event about task `t` starts with: its id, attempt, worker, owner.
  static EventFields EventAbout(wire::EventType type, const Task& t) {
    EventFields f;
    f.type = type;
    f.task = t.id;
    f.attempt = t.attempt;
    f.worker = t.worker;
    f.owner = t.owner;
    return f;
  }
  void Emit(EventFields& fields, uint64_t now_ms) {
    if (fields.task != 0 && fields.owner.empty()) {
      if (const Task* t = active_task(fields.task)) fields.owner = t->owner;
    }
    log_.Append(fields, now_ms, &effects_);
  }
  // The sender of a directed message may do `action` (bus::MayAct; always,
  // unauthenticated). When not, it gets an Error "unauthorized" naming its role and the
  // action, and the refusal is noted for the log.
  bool Authorized(const std::string& from, bus::Action action, const std::string& owner = "");
  // A report about `t` comes from the worker the task is on (its registered address).
  bool FromTaskWorker(const Task& t, const std::string& from, const char* what);
  // The client whose view is limited to its own tasks; none for an operator, or when
  // the cluster is keyless (REQUIRES: `from` was Authorized as a user).
  std::optional<std::string> ClientName(const std::string& from) const;
  void Send(const std::string& to, std::string payload);
  // The task first submitted with a key, as a resubmission of that key is answered.
  struct KeyedTask {
    uint64_t id = 0;
    wire::SubmitStatus status = wire::SubmitStatus::Accepted;
    wire::Reason reason = wire::Reason::None;
    std::string message, worker;
    std::optional<TaskSpec> spec;  // absent when its record is gone
  };
  // nullopt when `key` was never used. Error: the store could not be read (never taken
  // for "not found": a resubmission must not create a second task).
  Result<std::optional<KeyedTask>> FindKeyed(const std::string& key);

  EngineOptions options_;
  const store::Store* store_ = nullptr;
  Effects effects_;
  mutable Status read_error_;  // Peek, a const read, notes its failure too
  EventLog log_;

  Membership membership_;                      // who is in the fleet and alive (membership.h)
  Fleet& fleet_;                               // membership's index, where tasks are placed and reserved
  EndedTasks ended_;                           // the ended tasks' records and their retention (ended_tasks.h)
  Groups groups_;                              // tasks by group (groups.h)
  std::unordered_map<uint64_t, Task> active_;  // tasks not yet ended
  PendingSet pending_;                         // tasks waiting for room, per demand
  std::multimap<uint64_t, uint64_t> backoff_;  // due time -> pending task in retry backoff (may be stale)
  // Tasks whose record is at q/: those in memory, and all read or made since the start.
  size_t cached_waiting_ = 0;
  // Tasks in memory never placed yet (Task::first_wait): at most cached_waiting_tasks
  // after a turn, but for those read back.
  size_t hot_first_waits_ = 0;
  uint64_t waiting_records_ = 0;
  // q/ ids not yet read after a start: [load_from_, load_to_). Those read meanwhile by
  // id (a cancel) are skipped when the load reaches them.
  uint64_t load_from_ = 0, load_to_ = 0;
  std::unordered_set<uint64_t> skip_on_load_;
  // Client keys first used this turn (not in any batch the store's view reads yet).
  std::unordered_map<std::string, uint64_t> turn_keys_;
  // Waiting tasks read ahead from q/ (in id order) with one read back by Load: taken
  // (and removed) when they are read back in turn; dropped past 4 x kReadAhead.
  std::unordered_map<uint64_t, Task> read_ahead_;
  static constexpr size_t kReadAhead = 256;
  mutable uint64_t waiting_floor_ = 1;  // no q/ record below it (Census)
  // Tasks the stream was told wait for a lost worker (task.waiting said once).
  std::unordered_set<uint64_t> announced_waiting_;
  std::vector<uint64_t> dirty_tasks_;  // active tasks whose a/ record changed this turn (may repeat)
  std::map<std::string, std::vector<uint64_t>> dispatches_;  // worker id -> tasks to send
  // Sent once per turn per address: acknowledgements of results, ended tasks for watchers.
  std::map<std::string, std::vector<AttemptRef>> acks_;
  std::map<std::string, uint64_t> output_taken_;  // worker address -> TaskLog bytes this turn
  // worker address -> (task, attempt, stderr?) -> its stored output's end, for the
  // sequenced output taken from it this turn (TaskFinishedAck.output).
  struct OutputEnd {
    uint64_t end = 0;
    bool behind = false;  // some was dropped past a gap
  };
  std::map<std::string, std::map<std::tuple<uint64_t, uint32_t, bool>, OutputEnd>> output_marks_;
  struct EndedResult {
    uint64_t task;
    wire::SubmitStatus status;
    wire::Reason reason;
    std::string message, worker;
  };
  std::map<std::string, std::vector<EndedResult>> ended_for_watchers_;
  // Cancelled attempts still stopping (SIGTERM, then the kill timeout): their output is
  // kept until the worker reports them ended. At most 10,000, oldest id dropped first.
  struct WindingDown {
    uint32_t attempt = 0;
    std::string worker, owner;
  };
  std::map<uint64_t, WindingDown> winding_down_;
  // Dependencies: a task -> the blocked tasks that wait for it to succeed (may name tasks
  // ended meanwhile: skipped). A blocked task is pending, out of pending_, held in memory
  // with its record at a/, and Task::waits_for lists what it still waits for.
  std::unordered_map<uint64_t, std::vector<uint64_t>> dependents_;
  struct EndedParent {
    uint64_t id = 0;
    bool succeeded = false;
    bool direct = false;     // it failed itself (not for a parent of its own)
    std::string key, cause;  // cause: what its dependents say failed (the first failure of the chain)
  };
  std::vector<EndedParent> ended_parents_;  // ended with dependents, not resolved yet
  std::string ending_cause_;                // the cause passed down while ending a dependent
  bool resolving_ = false;
  size_t blocked_ = 0;           // tasks waiting for a parent (dependents_ may hold ended ones)
  size_t stale_dependents_ = 0;  // blocked tasks ended since dependents_ was compacted

  uint64_t next_task_id_ = 1;
  uint64_t next_order_ = 1;
  uint64_t persisted_task_id_ = 0;
  uint64_t epoch_ = 0;
  bool epoch_persisted_ = false;
  uint64_t placement_offers_ = 0;
  uint64_t unauthorized_ = 0;
  EngineStats stats_;
  bool fleet_shrank_ = false;
  bool placement_needed_ = false;

  // Reused for the task records built one after another in a turn.
  flatbuffers::FlatBufferBuilder scratch_{1024};
};

}  // namespace fm::sched
