// A task as the scheduler keeps it, and how its state reads to people and submitters.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "schemas/fm_generated.h"
#include "schemas/model.h"
#include "schemas/vocabulary.h"

namespace fm::sched {

struct Task {
  uint64_t id = 0;
  TaskSpec spec;
  wire::TaskState state = wire::TaskState::Pending;
  uint32_t attempt = 1;
  uint32_t handed_back = 0;  // attempts a worker handed back unstarted: not counted against max_attempts
  std::string worker;        // worker id while queued or running
  uint64_t submitted_ms = 0;
  uint64_t order = 0;          // FIFO position
  std::string watcher;         // submitter address told when the task ends
  std::string owner;           // who submitted it: the certificate name (empty without CURVE)
  uint64_t dispatched_ms = 0;  // last Dispatch sent (queued)
  wire::Reason reason = wire::Reason::None;
  std::string message;
  int32_t exit_code = 0;
  bool rejected = false;               // refused at submission: never accepted
  uint64_t first_seq = 0;              // its first event's seq
  uint64_t ended_ms = 0;               // when it ended (0 while not ended)
  uint64_t not_before_ms = 0;          // pending in retry backoff until then
  std::vector<std::string> failed_on;  // workers an attempt failed on (sorted, at most 64)
  std::vector<std::string> gpus;       // the devices its current attempt was given (once started)
  Endpoint endpoint;                   // a session's, once its sshd answered
  // The tasks of spec.after that have not succeeded yet (ids; sorted): while any is
  // left, the task is pending but out of the line for placement (blocked).
  std::vector<uint64_t> waits_for;
  // The current attempt's output stored so far, stdout and stderr (bytes): a sequencing
  // worker's TaskLog is taken from there on, a resent range below it dropped.
  uint64_t output_end[2] = {0, 0};
  // Where its record is (not stored): none yet (submitted this turn), a/, or q/ while it
  // waits for its first placement, when the engine may drop it from memory and read it
  // back to place it (engine.h, "The backlog").
  enum class Record : uint8_t { kNone, kActive, kWaiting };
  Record record = Record::kNone;
  bool first_wait = false;  // pending and never placed (not stored)
};

// A name of `owner`'s (an idempotency key, a group): owners' names apart, and a keyless
// cluster's (owner "") as given.
inline std::string OwnerScoped(const std::string& owner, const std::string& name) {
  return owner.empty() ? name : owner + std::string(1, '\0') + name;
}

// "a, b": the workers a task failed on, for task.retrying and fm-ctl task.
inline std::string Listed(const std::vector<std::string>& ids) {
  std::string out;
  for (const auto& id : ids) out += (out.empty() ? "" : ", ") + id;
  return out;
}

// "pending", "queued", ... (schemas/vocabulary.h spells them).
inline const char* StateName(wire::TaskState s) { return Name(s).empty() ? "unknown" : Name(s).data(); }

// What a submitter is told for a task in state `s` (accepted while not ended).
inline wire::SubmitStatus StatusOf(wire::TaskState s) {
  switch (s) {
    case wire::TaskState::Succeeded:
      return wire::SubmitStatus::Succeeded;
    case wire::TaskState::Failed:
      return wire::SubmitStatus::Failed;
    case wire::TaskState::Cancelled:
      return wire::SubmitStatus::Cancelled;
    default:
      return wire::SubmitStatus::Accepted;
  }
}

}  // namespace fm::sched
