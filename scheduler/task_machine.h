// The task state machine in one table: every transition a task may make, from which
// state, on which event, to which state, with what effects. The engine takes a task's
// next state only from here (Engine::Step), and a message that would make a transition
// the table does not have is refused (ignored as stale, or answered "unauthorized" when
// it came from the wrong worker). tests/unit/task_machine_test.cc walks every pair of
// state and event through the real engine: each legal one lands where the table says,
// every other leaves the task as it was.
//
//   pending --place--> queued --start--> running --succeed--> succeeded
//   queued|running --fail--> failed          pending --unrunnable--> failed
//   queued|running --retry--> pending (attempt + 1; attempts left)
//   queued --hand_back--> pending (attempt + 1, none spent)
//   pending|queued|running --cancel--> cancelled
//   running --ready--> running (a session's endpoint)
//   pending --backoff_over--> pending (placeable again)
//   queued|running --orphaned--> pending (after a restart, its worker unknown)
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

#include "schemas/fm_generated.h"

namespace fm::sched {

enum class TaskEvent : uint8_t {
  kPlace,        // placement found room on a worker: Dispatch sent
  kStart,        // the worker says the attempt started
  kReady,        // a session's sshd answers (endpoint)
  kSucceed,      // the worker says it succeeded
  kFail,         // it failed: exit status, timeout, image missing, memory, attempts used up
  kCancel,       // fm-ctl cancel, or the worker says it was cancelled
  kRetry,        // its worker was lost, or a retryable failure with attempts left
  kHandBack,     // the worker handed the attempt back before starting it
  kUnrunnable,   // no live worker (nor one in its reconnect grace) could ever run it, or a
                 // task it runs after (TaskSpec.after) ended without succeeding
  kBackoffOver,  // its retry backoff ended
  kOrphaned,     // the scheduler restarted and its worker is not known any more
};
inline constexpr int kTaskEventCount = 11;

struct TaskTransition {
  wire::TaskState from;
  TaskEvent event;
  wire::TaskState to;
  std::string_view effects;
};

namespace machine {
using S = wire::TaskState;
using E = TaskEvent;
inline constexpr TaskTransition kTransitions[] = {
    {S::Pending, E::kPlace, S::Queued, "reserve on the worker; task.queued; Dispatch"},
    {S::Queued, E::kStart, S::Running, "the devices given kept; task.started"},
    {S::Running, E::kReady, S::Running, "endpoint stored; task.ready; the watcher told where"},
    {S::Queued, E::kSucceed, S::Succeeded, "release; task.succeeded; t/ record; the watcher told"},
    {S::Running, E::kSucceed, S::Succeeded, "release; task.succeeded; t/ record; the watcher told"},
    {S::Queued, E::kFail, S::Failed, "release; task.failed; t/ record; the watcher told"},
    {S::Running, E::kFail, S::Failed, "release; task.failed; t/ record; the watcher told"},
    {S::Pending, E::kCancel, S::Cancelled, "task.cancelled; t/ record"},
    {S::Queued, E::kCancel, S::Cancelled, "CancelTask to the worker; release; task.cancelled; t/ record"},
    {S::Running, E::kCancel, S::Cancelled, "CancelTask to the worker; release; task.cancelled; t/ record"},
    {S::Queued, E::kRetry, S::Pending, "release; attempt + 1; task.retrying; placed again or after a backoff"},
    {S::Running, E::kRetry, S::Pending, "release; attempt + 1; task.retrying; placed again or after a backoff"},
    {S::Queued, E::kHandBack, S::Pending, "release; attempt + 1, none spent; task.retrying; placed elsewhere"},
    {S::Pending, E::kUnrunnable, S::Failed,
     "task.failed no_eligible_worker with the breakdown, or dependency_failed naming the task it ran after; t/ "
     "record; its own dependents end likewise"},
    {S::Pending, E::kBackoffOver, S::Pending, "joins the pending set"},
    {S::Queued, E::kOrphaned, S::Pending, "placed again, the same attempt"},
    {S::Running, E::kOrphaned, S::Pending, "placed again, the same attempt"},
};
}  // namespace machine
using machine::kTransitions;

// The state `event` takes a task in state `from` to; nullopt when the table has no such
// transition (the event is refused).
constexpr std::optional<wire::TaskState> NextState(wire::TaskState from, TaskEvent event) {
  for (const auto& t : kTransitions) {
    if (t.from == from && t.event == event) return t.to;
  }
  return std::nullopt;
}

constexpr std::string_view TaskEventName(TaskEvent e) {
  constexpr std::string_view kNames[kTaskEventCount] = {"place",      "start",        "ready",   "succeed",
                                                        "fail",       "cancel",       "retry",   "hand_back",
                                                        "unrunnable", "backoff_over", "orphaned"};
  return kNames[static_cast<int>(e)];
}

}  // namespace fm::sched
