#include "schemas/json.h"

#include <flatbuffers/flexbuffers.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <tuple>

#include "schemas/codec.h"
#include "schemas/fm_json_generated.h"
#include "schemas/text.h"
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
  // Everything but printable ASCII is written as a \u escape: control characters (which
  // JSON requires escaped) included, so the output is valid RFC 8259 JSON.
  options.natural_utf8 = false;
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
    // Every number is checked against its limit before it is converted: nothing wraps,
    // rounds to zero or saturates silently.
    char text[32];
    std::snprintf(text, sizeof text, "%g", r->cpus());
    if (!std::isfinite(r->cpus()) || r->cpus() < 0 || r->cpus() > kMaxCpus) {
      return Status::Invalid(std::string("resources.cpus is ") + text + ": it must be a number from 0 to " +
                             std::to_string(kMaxCpus));
    }
    spec.resources.cpus_milli = static_cast<uint32_t>(std::llround(r->cpus() * 1000));
    if (r->cpus() > 0 && spec.resources.cpus_milli == 0) {
      return Status::Invalid(std::string("resources.cpus is ") + text + ": the smallest share is 0.001 cpus");
    }
    if (r->memory()) {
      auto size = ParseSize(r->memory()->str());
      if (!size.ok()) return Status::Invalid("resources.memory: " + size.status().message());
      spec.resources.memory = *size;
    }
    if (r->gpus() < 0 || r->gpus() > kMaxGpus) {
      return Status::Invalid("resources.gpus is " + std::to_string(r->gpus()) + ": it must be from 0 to " +
                             std::to_string(kMaxGpus));
    }
    spec.resources.gpus = static_cast<uint32_t>(r->gpus());
    if (r->gpu_memory()) {
      auto size = ParseSize(r->gpu_memory()->str());
      if (!size.ok()) return Status::Invalid("resources.gpu_memory: " + size.status().message());
      spec.resources.gpu_memory = *size;
    }
    if (r->gpu_model()) spec.resources.gpu_model = r->gpu_model()->str();
  }
  for (auto [name, field, out] :
       {std::tuple{"labels", in->labels(), &spec.labels}, std::tuple{"env", in->env(), &spec.env}}) {
    if (!field) continue;
    auto root = flexbuffers::GetRoot(field->data(), field->size());
    if (!root.IsMap()) return Status::Invalid(std::string(name) + " must be a JSON object of strings");
    auto map = root.AsMap();
    auto keys = map.Keys();
    auto values = map.Values();
    for (size_t i = 0; i < keys.size(); ++i) {
      std::string key = keys[i].AsKey();
      if (!values[i].IsString()) {
        return Status::Invalid(std::string(name) + "." + key + " must be a string");
      }
      out->emplace_back(key, values[i].AsString().str());
    }
    Normalize(out);
  }
  if (in->cwd()) spec.cwd = in->cwd()->str();
  if (in->image()) spec.image = in->image()->str();
  if (in->max_attempts() < 0 || in->max_attempts() > kMaxAttempts) {
    return Status::Invalid("max_attempts is " + std::to_string(in->max_attempts()) + ": it must be from 0 to " +
                           std::to_string(kMaxAttempts));
  }
  spec.max_attempts = static_cast<uint32_t>(in->max_attempts());
  if (in->timeout()) {
    auto ms = ParseDurationMs(in->timeout()->str());
    if (!ms.ok()) return Status::Invalid("timeout: " + ms.status().message());
    if (*ms == 0) {
      return Status::Invalid("timeout \"" + in->timeout()->str() + "\" is under 1ms: leave it out for no timeout");
    }
    spec.timeout_ms = *ms;
  }
  spec.priority = in->priority();
  if (in->key()) spec.key = in->key()->str();
  if (in->after()) {
    for (const auto* key : *in->after()) spec.after.push_back(key->str());
    Normalize(&spec.after);
  }
  if (in->group()) spec.group = in->group()->str();
  if (const auto* a = in->array()) {
    if (a->count() < 1 || a->count() > static_cast<int64_t>(kMaxArrayCount)) {
      return Status::Invalid("array.count is " + std::to_string(a->count()) + ": it must be from 1 to " +
                             std::to_string(kMaxArrayCount));
    }
    if (a->max_running() < 0 || a->max_running() > a->count()) {
      return Status::Invalid("array.max_running is " + std::to_string(a->max_running()) +
                             ": it must be from 0 (no bound) to array.count");
    }
    // Element 0 as read: fm-submit makes the others (ExpandArray).
    spec.array = TaskSpec::Array{0, static_cast<uint32_t>(a->count()), static_cast<uint32_t>(a->max_running())};
  }
  if (in->retry_exit_codes()) {
    spec.retry_exit_codes.assign(in->retry_exit_codes()->begin(), in->retry_exit_codes()->end());
    Normalize(&spec.retry_exit_codes);
  }
  if (in->retry_backoff()) {
    auto ms = ParseDurationMs(in->retry_backoff()->str());
    if (!ms.ok()) return Status::Invalid("retry_backoff: " + ms.status().message());
    if (*ms == 0) return Status::Invalid("retry_backoff \"" + in->retry_backoff()->str() + "\" is under 1ms");
    spec.retry_backoff_ms = *ms;
  }
  if (in->kill_timeout()) {
    auto ms = ParseDurationMs(in->kill_timeout()->str());
    if (!ms.ok()) return Status::Invalid("kill_timeout: " + ms.status().message());
    if (*ms == 0) return Status::Invalid("kill_timeout \"" + in->kill_timeout()->str() + "\" is under 1ms");
    spec.kill_timeout_ms = *ms;
  }
  if (const auto* s = in->session()) {
    SessionSpec session;
    if (s->ssh_keys()) {
      for (const auto* key : *s->ssh_keys()) session.ssh_keys.push_back(key->str());
    }
    for (auto [name, field, out] : {std::tuple{"session.ttl", s->ttl(), &session.ttl_ms},
                                    std::tuple{"session.idle_timeout", s->idle_timeout(), &session.idle_timeout_ms}}) {
      if (!field) continue;
      auto ms = ParseDurationMs(field->str());
      if (!ms.ok()) return Status::Invalid(std::string(name) + ": " + ms.status().message());
      if (*ms < 1000) return Status::Invalid(std::string(name) + " \"" + field->str() + "\" is under 1s");
      *out = *ms;
    }
    spec.session = std::move(session);
  }
  Status valid = ValidateTaskSpec(spec);
  if (!valid.ok()) return valid;
  return spec;
}

std::string JsonCodec::EventToJson(const wire::Event* event) {
  std::string text;
  if (flatbuffers::GenerateTextFromTable(wire_parser_, event, "fm.wire.Event", &text)) return TrimJson(std::move(text));
  // A string that is not UTF-8 (task output is any bytes): the same event with every
  // string made valid (U+FFFD for what is not), never an event without its fields.
  flatbuffers::FlatBufferBuilder fbb(1024);
  fbb.Finish(codec::CopyEvent(fbb, *event, [](std::string_view s) { return ValidUtf8(s); }));
  text.clear();
  if (!flatbuffers::GenerateTextFromTable(
          wire_parser_, flatbuffers::GetRoot<flatbuffers::Table>(fbb.GetBufferPointer()), "fm.wire.Event", &text)) {
    return "{\"seq\": " + std::to_string(event->seq()) + ", \"error\": \"cannot print this event\"}";
  }
  return TrimJson(std::move(text));
}

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
  auto endpoint = opt(f.endpoint);
  auto line = json::CreateSubmitLine(fbb, f.line, task, status, reason, message, worker, endpoint);
  fbb.Finish(line);
  std::string text;
  flatbuffers::GenerateTextFromTable(line_printer_, flatbuffers::GetRoot<flatbuffers::Table>(fbb.GetBufferPointer()),
                                     "fm.json.SubmitLine", &text);
  return TrimJson(std::move(text));
}

}  // namespace fm
