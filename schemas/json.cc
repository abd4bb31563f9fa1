#include "schemas/json.h"

#include <flatbuffers/flexbuffers.h>

#include <cstdio>
#include <stdexcept>

#include "schemas/fm_json_generated.h"
#include "schemas/units.h"

namespace fm {
namespace wire::embedded {
extern const char* const kFmSchema;
extern const char* const kFmJsonSchema;
}  // namespace wire::embedded

namespace {

flatbuffers::IDLOptions JsonOptions() {
  flatbuffers::IDLOptions options;
  options.strict_json = true;
  options.indent_step = -1;  // one line
  options.natural_utf8 = true;
  return options;
}

void LoadSchema(flatbuffers::Parser* parser, const char* schema, const char* name) {
  if (!parser->Parse(schema)) {
    throw std::logic_error(std::string("embedded schema ") + name + " does not parse: " + parser->error_);
  }
}

// flatbuffers reports "error: 1: 23: error: unknown field: foo"; keep what follows
// the position, which is what a person needs.
std::string CleanParserError(const std::string& raw) {
  std::string text = raw;
  size_t last = text.rfind("error: ");
  if (last != std::string::npos) text = text.substr(last + 7);
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  if (text.rfind("unknown field", 0) == 0) return text + " (see the task format in README.md)";
  return text;
}

std::string TrimJson(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

}  // namespace

JsonCodec::JsonCodec() : wire_parser_(JsonOptions()), line_printer_(JsonOptions()) {
  LoadSchema(&wire_parser_, wire::embedded::kFmSchema, "fm.fbs");
  LoadSchema(&line_printer_, wire::embedded::kFmJsonSchema, "fm_json.fbs");
  ResetLineParser();
}

void JsonCodec::ResetLineParser() {
  line_parser_ = std::make_unique<flatbuffers::Parser>(JsonOptions());
  LoadSchema(line_parser_.get(), wire::embedded::kFmJsonSchema, "fm_json.fbs");
}

Result<TaskSpec> JsonCodec::ParseTaskLine(std::string_view line) {
  size_t start = line.find_first_not_of(" \t\r");
  if (start == std::string_view::npos) return Status::Invalid("empty line: expected a JSON task object");
  if (line[start] != '{') {
    return Status::Invalid("not a JSON object: a task line starts with '{'");
  }
  std::string text(line);
  if (!line_parser_->ParseJson(text.c_str())) {
    std::string message = CleanParserError(line_parser_->error_);
    ResetLineParser();  // a failed parse can leave the parser's state half-built
    return Status::Invalid(message);
  }
  flatbuffers::Verifier verifier(line_parser_->builder_.GetBufferPointer(), line_parser_->builder_.GetSize());
  if (!json::VerifyTaskLineBuffer(verifier)) return Status::Invalid("task line does not verify");
  const json::TaskLine* in = json::GetTaskLine(line_parser_->builder_.GetBufferPointer());

  TaskSpec spec;
  if (in->command()) {
    for (const auto* arg : *in->command()) spec.command.push_back(arg->str());
  }
  if (in->requires_()) {
    for (const auto* cap : *in->requires_()) spec.required_capabilities.push_back(cap->str());
  }
  Normalize(&spec.required_capabilities);
  if (const auto* r = in->resources()) {
    if (r->cpus() < 0) {
      char text[32];
      std::snprintf(text, sizeof text, "%g", r->cpus());
      return Status::Invalid(std::string("resources.cpus is ") + text + ": a cpu count cannot be negative");
    }
    spec.resources.cpus_milli = static_cast<uint32_t>(r->cpus() * 1000 + 0.5);
    if (r->memory()) {
      auto size = ParseSize(r->memory()->str());
      if (!size.ok()) return Status::Invalid("resources.memory: " + size.status().message());
      spec.resources.memory = *size;
    }
    if (r->gpus() < 0) {
      return Status::Invalid("resources.gpus is " + std::to_string(r->gpus()) + ": a GPU count cannot be negative");
    }
    spec.resources.gpus = static_cast<uint32_t>(r->gpus());
    if (r->gpu_memory()) {
      auto size = ParseSize(r->gpu_memory()->str());
      if (!size.ok()) return Status::Invalid("resources.gpu_memory: " + size.status().message());
      spec.resources.gpu_memory = *size;
    }
    if (r->gpu_model()) spec.resources.gpu_model = r->gpu_model()->str();
  }
  if (in->labels()) {
    auto root = flexbuffers::GetRoot(in->labels()->data(), in->labels()->size());
    if (!root.IsMap()) return Status::Invalid("labels must be a JSON object of strings");
    auto map = root.AsMap();
    auto keys = map.Keys();
    auto values = map.Values();
    for (size_t i = 0; i < keys.size(); ++i) {
      std::string key = keys[i].AsKey();
      if (!values[i].IsString()) {
        return Status::Invalid("labels." + key + " must be a string");
      }
      spec.labels.emplace_back(key, values[i].AsString().str());
    }
    Normalize(&spec.labels);
  }
  if (in->image()) spec.image = in->image()->str();
  if (in->max_attempts() < 0) return Status::Invalid("max_attempts cannot be negative");
  spec.max_attempts = static_cast<uint32_t>(in->max_attempts());
  if (in->timeout()) {
    auto ms = ParseDurationMs(in->timeout()->str());
    if (!ms.ok()) return Status::Invalid("timeout: " + ms.status().message());
    spec.timeout_ms = *ms;
  }
  spec.priority = in->priority();
  if (in->key()) spec.key = in->key()->str();
  Status valid = ValidateTaskSpec(spec);
  if (!valid.ok()) return valid;
  return spec;
}

Status ValidateTaskSpec(const TaskSpec& spec) {
  if (spec.command.empty()) return Status::Invalid("command is missing or empty");
  if (spec.command.front().empty()) return Status::Invalid("command[0] is an empty string");
  if (spec.resources.gpus == 0 && (spec.resources.gpu_memory != 0 || !spec.resources.gpu_model.empty())) {
    return Status::Invalid("resources.gpu_memory and gpu_model need resources.gpus >= 1");
  }
  if (spec.max_attempts > 1000) return Status::Invalid("max_attempts is above 1000");
  for (const auto& cap : spec.required_capabilities) {
    if (cap.empty()) return Status::Invalid("requires holds an empty capability name");
  }
  for (const auto& [key, value] : spec.labels) {
    if (Status s = ValidateLabel(key, value); !s.ok()) return Status::Invalid("labels: " + s.message());
  }
  return Status::Ok();
}

std::string JsonCodec::EventToJson(const wire::Event* event) { return TableToJson(event, "fm.wire.Event"); }

std::string JsonCodec::TableToJson(const void* table, const char* table_name) {
  std::string text;
  if (!flatbuffers::GenerateTextFromTable(wire_parser_, table, table_name, &text)) {
    return "{\"error\": \"cannot print " + std::string(table_name) + "\"}";
  }
  return TrimJson(std::move(text));
}

std::string JsonCodec::SubmitLineToJson(const SubmitLineFields& f) {
  flatbuffers::FlatBufferBuilder fbb(256);
  auto opt = [&](const std::string& s) { return s.empty() ? 0 : fbb.CreateString(s); };
  auto task = opt(f.task), status = opt(f.status), reason = opt(f.reason), message = opt(f.message),
       worker = opt(f.worker);
  auto line = json::CreateSubmitLine(fbb, f.line, task, status, reason, message, worker);
  fbb.Finish(line);
  std::string text;
  flatbuffers::GenerateTextFromTable(line_printer_, flatbuffers::GetRoot<flatbuffers::Table>(fbb.GetBufferPointer()),
                                     "fm.json.SubmitLine", &text);
  return TrimJson(std::move(text));
}

}  // namespace fm
