// The JSON forms of tasks and events, through FlatBuffers' own JSON parser and printer
// against the embedded schemas (schemas/fm.fbs, schemas/fm_json.fbs), so the JSON and
// the wire cannot drift apart.
#pragma once

#include <flatbuffers/idl.h>

#include <memory>
#include <string>
#include <string_view>

#include "schemas/fm_generated.h"
#include "schemas/model.h"
#include "schemas/status.h"

namespace fm {

struct SubmitLineFields {
  uint64_t line = 0;
  std::string task, status, reason, message, worker;
  std::string endpoint;  // a session's "USER@HOST:PORT" (status "ready")
};

// Not thread-safe: one per thread.
class JsonCodec {
 public:
  JsonCodec();
  JsonCodec(const JsonCodec&) = delete;
  JsonCodec& operator=(const JsonCodec&) = delete;

  // Parses and validates one task line (schema fm.json.TaskLine). The error message
  // names what is wrong: not JSON, an unknown field, a bad size, a negative count,
  // an empty command.
  Result<TaskSpec> ParseTaskLine(std::string_view line);

  // One-line JSON object for an event (fm.wire.Event), field names quoted.
  std::string EventToJson(const wire::Event* event);
  // One-line JSON object for fm-submit's output.
  std::string SubmitLineToJson(const SubmitLineFields& fields);
  // One-line JSON for any table of fm.fbs, e.g. "fm.wire.WorkerView".
  std::string TableToJson(const void* table, const char* table_name);

 private:
  flatbuffers::Parser wire_parser_;                   // fm.fbs, for printing
  std::unique_ptr<flatbuffers::Parser> line_parser_;  // fm_json.fbs, rebuilt after an error
  flatbuffers::Parser line_printer_;                  // fm_json.fbs, for printing
  void ResetLineParser();
};

// Limits of a task's numbers (beyond them a value is refused, never wrapped or clamped).
inline constexpr uint32_t kMaxCpus = 1'000'000;
inline constexpr uint32_t kMaxGpus = 1024;
inline constexpr uint32_t kMaxAttempts = 1000;
// A task's environment and working directory.
inline constexpr size_t kMaxEnvVars = 256;
inline constexpr size_t kMaxEnvBytes = 128 * 1024;  // names and values together
inline constexpr size_t kMaxCwdBytes = 4096;
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

}  // namespace fm
