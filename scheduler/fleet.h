// What the scheduler knows about one worker: what it announced and what is reserved on
// it. Plain data; the engine owns every WorkerState.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "schemas/model.h"

namespace fm::sched {

struct WorkerState {
  // Announced by the worker (registration, heartbeats).
  std::string id;
  std::string address;  // broker identity for directed messages
  std::string node;
  std::string version;
  uint64_t instance = 0;
  std::vector<std::string> capabilities;  // sorted, unique; empty satisfies nothing
  Hardware hardware;                      // total capacity
  Labels labels;
  uint32_t slots = 1;
  bool noop_executor = false;  // benchmark mode: completes tasks without running them
  // Capabilities the worker withdrew because it failed to start tasks: capability -> why.
  std::map<std::string, std::string> quarantined;
  std::string limits;  // how its exec tasks' limits are enforced: "cgroup2", "cgroup1", "off" ("": not said)

  // Kept by the scheduler.
  bool draining = false;
  std::string drain_reason;  // fm-ctl drain --reason
  uint64_t last_seen_ms = 0;
  // False for a worker loaded from the store at restart until it registers again: it
  // counts toward eligibility for one liveness window, but gets no new work.
  bool confirmed = true;

  // Reservations of the tasks queued or running here.
  uint32_t slots_used = 0;
  uint32_t cpus_used = 0;
  uint64_t memory_used = 0;
  uint32_t gpus_used = 0;
  std::set<uint64_t> tasks;
};

}  // namespace fm::sched
