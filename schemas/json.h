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
#include "schemas/validate.h"  // a parsed task line is validated

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

}  // namespace fm
