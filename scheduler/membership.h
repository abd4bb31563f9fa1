// Worker membership: who is in the fleet and whether they are alive. It takes
// registrations and heartbeats, judges liveness (with the scheduler's self-silence rule),
// keeps workers lost within the reconnect grace, refuses replaced instances and duplicate
// ids, records quarantined capabilities and drains, writes the w/ records and emits the
// worker.* events. It never touches a task: what it decides about tasks comes back as a
// Verdict (workers lost with the tasks they held, a worker rejoined with the attempts it
// says it holds, the fleet shrank), which the engine applies as task transitions — as
// Nomad's heartbeat code judges liveness and its reconciler acts.
//
// The fleet index it keeps (fleet_index.h) is also where the engine reserves and places:
// membership decides who is in it and what they announced, the engine their load.
//
// Thread: one; the engine's.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "scheduler/effects.h"
#include "scheduler/event_log.h"
#include "scheduler/fleet.h"
#include "scheduler/fleet_index.h"
#include "scheduler/task.h"
#include "schemas/fm_generated.h"
#include "store/store.h"

namespace fm::sched {

struct MembershipOptions {
  uint64_t liveness_window_ms = 5000;   // a worker unheard for this long is lost
  uint64_t reconnect_grace_ms = 30000;  // a lost worker counts as eligible this long
  bool authenticate = false;            // senders' addresses name their keys (runtime/policy.h)
};

// What a membership step decided that the engine applies to tasks.
struct MembershipVerdict {
  struct Lost {
    std::string id;
    std::vector<uint64_t> tasks;  // queued or running there: back to pending (worker_lost)
    std::string why;
  };
  std::vector<Lost> lost;  // in the order they were lost
  // A worker that (re)registered, and the attempts it says it holds: what it should hold
  // and does not is sent again or re-placed, what it holds and should not is cancelled.
  std::optional<std::string> rejoined;
  std::set<AttemptRef> held;
  bool fleet_shrank = false;      // a waiting task may have lost its last eligible worker
  bool placement_needed = false;  // a worker joined or changed: waiting tasks may fit
};

// Workers by state, counted when asked.
struct WorkerCounts {
  size_t live = 0, draining = 0, unconfirmed = 0, lost = 0;
};

class Membership {
 public:
  Membership(MembershipOptions options, EventLog* log, Effects* effects);

  // The workers last stored (w/), presumed live for one window from `now_ms`, not
  // confirmed until they register again. `epoch`: the cluster's, sent in ReRegister.
  Status Recover(const store::Store& store, uint64_t now_ms, uint64_t epoch);
  // Asks every known worker to register again (the scheduler started).
  void AskAllToRegister();

  MembershipVerdict Register(const wire::WorkerRegistration& reg, uint64_t now_ms);
  MembershipVerdict Heartbeat(const wire::WorkerHeartbeat& hb, uint64_t now_ms);
  // Something arrived from the broker (the scheduler's link works).
  void Heard(uint64_t now_ms) { last_inbound_ms_ = now_ms; }
  // Liveness and the end of reconnect graces. The scheduler's own silence is never taken
  // for the fleet's: after a gap of more than a quarter of the liveness window since the
  // last Tick, every worker gets a fresh window; when most of the fleet (2 or more
  // confirmed workers) would be lost at once while nothing at all arrived for half a
  // window, losses wait until something arrives, and then every worker gets a fresh window.
  MembershipVerdict Tick(uint64_t now_ms);
  // fm-ctl drain / undrain: the reply's text, or an error naming what is wrong.
  Result<std::string> SetDraining(const std::string& id, bool drain, const std::string& reason, uint64_t now_ms,
                                  MembershipVerdict* verdict);
  // A worker's result or output was heard: it is alive.
  void Touch(const std::string& id, uint64_t now_ms) { fleet_.Touch(id, now_ms); }

  // With authentication: `address` is one worker `id`'s key may hold.
  bool FromWorkerNamed(const std::string& address, const std::string& id) const;
  // `address` is worker `id`'s registered one (or, for a worker no longer in the fleet,
  // one its key may hold).
  bool FromWorkerOf(const std::string& address, const std::string& id) const;

  // Lost workers within the reconnect grace that could run `spec`: how many, and when
  // the last of them was lost.
  size_t LostEligible(const TaskSpec& spec, uint64_t* last_lost_ms) const;
  // "waiting: 1 eligible worker lost 4 s ago ..." for a task that waits for lost workers;
  // empty when none could run it.
  std::string WaitingForLost(const TaskSpec& spec, uint64_t now_ms) const;

  Fleet& fleet() { return fleet_; }
  const Fleet& fleet() const { return fleet_; }
  WorkerCounts Count() const;
  // Times the scheduler suspected its own silence (a gap in its ticks, or a mass silence
  // held) instead of losing workers.
  uint64_t self_silences() const { return self_silences_; }

 private:
  void Lose(const std::string& id, const std::string& why, uint64_t now_ms, MembershipVerdict* verdict);
  // worker.quarantined for each capability newly withdrawn, worker.recovered for each back.
  void EmitQuarantines(const std::string& id, const std::map<std::string, std::string>& before,
                       const std::map<std::string, std::string>& after, uint64_t now_ms);
  // One worker.* event about worker `id` (with what it announced, when `info`).
  void EmitWorker(wire::EventType type, const std::string& id, std::string message, uint64_t now_ms,
                  const WorkerState* info = nullptr, wire::Reason reason = wire::Reason::None);
  void Send(const std::string& to, std::string payload);
  void Reject(const std::string& address, const std::string& id, const std::string& message);

  MembershipOptions options_;
  EventLog* log_;
  Effects* effects_;
  uint64_t epoch_ = 0;

  Fleet fleet_;  // every worker believed live, indexed by class
  struct LostWorker {
    WorkerState shape;  // as last announced
    uint64_t lost_ms = 0;
  };
  std::map<std::string, LostWorker> lost_;  // lost within the reconnect grace, by id
  // Instances that a restart on their node replaced: refused if they speak again.
  std::set<std::pair<std::string, uint64_t>> replaced_;
  uint64_t last_tick_ms_ = 0, last_inbound_ms_ = 0, hold_since_ms_ = 0;
  uint64_t self_silences_ = 0;
};

}  // namespace fm::sched
