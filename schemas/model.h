// The plain C++ model of what the wire carries, shared by the tools, the worker and
// the scheduler library. Conversions to and from the FlatBuffers tables live in
// schemas/codec.h; nothing here does I/O.
#pragma once

#include <compare>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "schemas/status.h"

namespace fm {

// One attempt of one task: what workers and the scheduler name a delivery by (a task is
// run again as a new attempt; a late word about an earlier one is told apart by it).
struct AttemptRef {
  uint64_t task = 0;
  uint32_t attempt = 0;
  auto operator<=>(const AttemptRef&) const = default;
};

// Sorted by key, keys unique.
using Labels = std::vector<std::pair<std::string, std::string>>;

struct Resources {
  uint32_t cpus_milli = 0;
  uint64_t memory = 0;  // bytes
  uint32_t gpus = 0;
  uint64_t gpu_memory = 0;  // per GPU, bytes
  std::string gpu_model;    // case-insensitive substring of the GPU's model; empty: any
  auto operator<=>(const Resources&) const = default;
};

inline constexpr uint64_t kDefaultKillTimeoutMs = 10'000;
inline constexpr uint64_t kDefaultRetryBackoffMs = 1'000;
inline constexpr uint64_t kMaxRetryDelayMs = 300'000;

// An interactive session (TaskSpec::session).
struct SessionSpec {
  std::vector<std::string> ssh_keys;  // authorized public keys, one line each
  uint64_t ttl_ms = 0;                // 0: kDefaultSessionTtlMs; capped by the worker
  uint64_t idle_timeout_ms = 0;       // 0: kDefaultSessionIdleMs
  bool operator==(const SessionSpec&) const = default;
};
constexpr uint64_t kDefaultSessionTtlMs = 3600 * 1000;
constexpr uint64_t kDefaultSessionIdleMs = 15 * 60 * 1000;
constexpr uint64_t kMaxSessionTtlMs = 7 * 24 * 3600 * 1000ull;
constexpr size_t kMaxSessionKeys = 32;
constexpr size_t kMaxSessionKeyBytes = 16 << 10;

struct Endpoint {
  std::string host;
  uint32_t port = 0;
  std::string user;
  bool operator==(const Endpoint&) const = default;
};

struct TaskSpec {
  std::vector<std::string> command;                // empty only for a session: the image's own command
  std::vector<std::string> required_capabilities;  // sorted, unique
  Resources resources;
  Labels labels;
  std::string image;          // non-empty: the docker executor runs it
  uint32_t max_attempts = 0;  // 0: the scheduler's default
  uint64_t timeout_ms = 0;    // 0: none
  int32_t priority = 0;
  std::string key;  // client idempotency key; empty: none
  Labels env;       // variables for the task (sorted by name); FM_* are the worker's
  std::string cwd;  // working directory, absolute; empty: the worker's default
  // Cancel and timeout send SIGTERM (docker stop), then SIGKILL this much later; 0: the
  // default, kDefaultKillTimeoutMs.
  uint64_t kill_timeout_ms = 0;
  // Exit statuses worth another attempt (sorted, unique); any other non-zero status fails
  // the task at once.
  std::vector<int32_t> retry_exit_codes;
  // The delay before a retry: this, doubled for each attempt so far, jittered by ±25%,
  // at most kMaxRetryDelayMs; 0: kDefaultRetryBackoffMs.
  uint64_t retry_backoff_ms = 0;
  // Set: an interactive session; requires capability "session"; runs the worker's
  // session image unless `image` names another.
  std::optional<SessionSpec> session;
  // Keys of the same owner's earlier tasks: it runs only after each of them succeeded
  // (sorted, unique). Resolved to task ids at submission; an unknown key is refused.
  std::vector<std::string> after;
  std::string group;  // the owner's name for tasks listed, counted and cancelled together
  // Set: element `index` of an array of `count` tasks of `group`, at most `max_running`
  // of its tasks queued or running at once (0: no bound).
  struct Array {
    uint32_t index = 0, count = 0, max_running = 0;
    bool operator==(const Array&) const = default;
  };
  std::optional<Array> array;
  bool operator==(const TaskSpec&) const = default;
};

struct Gpu {
  std::string model;
  uint64_t memory = 0;
  std::string uuid;  // NVML's device UUID; empty when the probe could not read it
  auto operator<=>(const Gpu&) const = default;
};

// Does `gpu` serve a task asking for `need`: its model contains need.gpu_model
// (case-insensitive; empty: any) and it has at least need.gpu_memory.
bool GpuServes(const Gpu& gpu, const Resources& need);
// How a task is given the GPU at `index` of its worker's list: its UUID, or the index.
std::string GpuDeviceId(const Gpu& gpu, size_t index);

struct Hardware {
  uint32_t cpus_milli = 0;
  uint64_t memory = 0;
  std::vector<Gpu> gpus;
  auto operator<=>(const Hardware&) const = default;
};

// Task ids print as "t<N>"; ParseTaskName accepts that form or a bare number.
std::string TaskName(uint64_t id);
bool ParseTaskName(const std::string& name, uint64_t* id);

// Label keys are 1-128 characters of [A-Za-z0-9._/-] starting with a letter or digit;
// values are 0-256 characters of [A-Za-z0-9._/:-]. Nothing else (no ',', '=', spaces,
// control characters or NUL), so a label reads the same in every tool and log line.
// Error: names the label and what is wrong with it.
Status ValidateLabel(const std::string& key, const std::string& value);
// Parses a "K=V" command-line label and validates it.
Result<std::pair<std::string, std::string>> ParseLabel(const std::string& text);

// Sorts and removes duplicates in place.
void Normalize(std::vector<std::string>* set);
void Normalize(std::vector<int32_t>* set);
void Normalize(Labels* labels);

}  // namespace fm
