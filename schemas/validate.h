// What a task may be: the limits of its numbers, the checks the JSON schema cannot make
// (ValidateTaskSpec, applied by the scheduler to every submission and by the worker to
// every dispatch), and the capabilities its shape implies (one rule for both sides).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "schemas/model.h"
#include "schemas/status.h"

namespace fm {

// Limits of a task's numbers (beyond them a value is refused, never wrapped or clamped).
inline constexpr uint32_t kMaxCpus = 1'000'000;
inline constexpr uint32_t kMaxGpus = 1024;
inline constexpr uint32_t kMaxAttempts = 1000;
// A task's environment and working directory.
inline constexpr size_t kMaxEnvVars = 256;
inline constexpr size_t kMaxEnvBytes = 128 * 1024;  // names and values together
inline constexpr size_t kMaxCwdBytes = 4096;
inline constexpr size_t kMaxAfter = 1000;  // keys a task runs after
// after keys in one submission message, all tasks together: each is a store lookup.
inline constexpr size_t kMaxAfterPerMessage = 10'000;
inline constexpr size_t kMaxKeyBytes = 1024;  // a key, and each key of after
inline constexpr size_t kMaxGroupBytes = 128;
inline constexpr uint32_t kMaxArrayCount = 100'000;      // tasks of one array
inline constexpr uint64_t kMaxKillTimeoutMs = 3600'000;  // an hour between SIGTERM and SIGKILL

// Environment variables a task may set: names [A-Za-z_][A-Za-z0-9_]* that do not start
// with FM_ (the worker's own: FM_TASK_ID, FM_ATTEMPT, FM_WORKER_ID, ...), values
// without NUL, unique, within the limits above. Error names the variable.
Status ValidateEnv(const Labels& env);

// Checks what the JSON schema cannot: a non-empty command, counts within their limits,
// no NUL byte in a command, key, image, capability or GPU model, labels as ValidateLabel
// says, env as ValidateEnv says, cwd absolute. The scheduler applies it to every
// submission and the worker to every dispatch.
Status ValidateTaskSpec(const TaskSpec& spec);
// "ssh-ed25519 ... comment": a public key line without its key material, for showing.
std::string RedactedKey(const std::string& key);
// A session's endpoint as a worker reports it: a host of [A-Za-z0-9.:-] not starting
// with '-' (never an ssh option), a port, a user of [a-z_][a-z0-9_-]*.
Status ValidateEndpoint(const Endpoint& endpoint);
// A session's keys (one public key line each, at most 32), ttl and idle timeout.
Status ValidateSession(const SessionSpec& session);

// What a task's shape needs of a worker beyond the capabilities it names: "docker" for
// an image, "session" for a session. The scheduler adds them to what the task requires.
std::vector<std::string> ImpliedCapabilities(const TaskSpec& spec);
// Whether the task runs in a container (an image, or a session's container): a failed
// start counts against the worker's capability "docker" (its health, worker/health.h).
bool RunsInContainer(const TaskSpec& spec);

}  // namespace fm
