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

namespace {
// NUL would end the string for exec and Docker: what follows would silently not run.
bool HasNul(const std::string& s) { return s.find('\0') != std::string::npos; }
}  // namespace

Status ValidateEnv(const Labels& env) {
  if (env.size() > kMaxEnvVars) {
    return Status::Invalid("env has " + std::to_string(env.size()) + " variables; at most " +
                           std::to_string(kMaxEnvVars));
  }
  size_t bytes = 0;
  for (size_t i = 0; i < env.size(); ++i) {
    const auto& [name, value] = env[i];
    const std::string where = "env \"" + Printable(name) + "\"";
    if (name.empty()) return Status::Invalid("env has an empty variable name");
    if (!(std::isalpha(static_cast<unsigned char>(name[0])) || name[0] == '_') ||
        name.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_") !=
            std::string::npos) {
      return Status::Invalid(where + ": a name holds letters, digits and _, and does not start with a digit");
    }
    if (name.rfind("FM_", 0) == 0) {
      return Status::Invalid(where + ": names starting with FM_ are the worker's (FM_TASK_ID, FM_ATTEMPT, ...)");
    }
    if (HasNul(value)) return Status::Invalid(where + ": the value holds a NUL byte");
    if (i > 0 && env[i - 1].first == name) return Status::Invalid(where + " is set twice");
    bytes += name.size() + value.size() + 2;
  }
  if (bytes > kMaxEnvBytes) {
    return Status::Invalid("env is " + std::to_string(bytes) + " bytes; at most " + std::to_string(kMaxEnvBytes));
  }
  return Status::Ok();
}

std::string RedactedKey(const std::string& key) {
  size_t type_end = key.find(' ');
  if (type_end == std::string::npos) return "[key]";
  size_t data_end = key.find(' ', type_end + 1);
  std::string comment = data_end == std::string::npos ? std::string() : key.substr(data_end);
  return key.substr(0, type_end) + " ..." + comment;
}

Status ValidateEndpoint(const Endpoint& e) {
  if (e.host.empty() || e.host.size() > 253 || e.host[0] == '-' ||
      e.host.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.:-") !=
          std::string::npos) {
    return Status::Invalid("endpoint host \"" + Printable(e.host) + "\" is not a host name or address");
  }
  if (e.port == 0 || e.port > 65535)
    return Status::Invalid("endpoint port " + std::to_string(e.port) + " is out of range");
  if (e.user.empty() || e.user.size() > 32 ||
      !(std::islower(static_cast<unsigned char>(e.user[0])) || e.user[0] == '_') ||
      e.user.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789_-") != std::string::npos) {
    return Status::Invalid("endpoint user \"" + Printable(e.user) + "\" is not a user name");
  }
  return Status::Ok();
}

Status ValidateSession(const SessionSpec& session) {
  if (session.ssh_keys.empty()) return Status::Invalid("session.ssh_keys is empty: a session needs a public key");
  if (session.ssh_keys.size() > kMaxSessionKeys) {
    return Status::Invalid("session.ssh_keys has " + std::to_string(session.ssh_keys.size()) + " keys; at most " +
                           std::to_string(kMaxSessionKeys));
  }
  for (size_t i = 0; i < session.ssh_keys.size(); ++i) {
    const std::string& key = session.ssh_keys[i];
    const std::string where = "session.ssh_keys[" + std::to_string(i) + "]";
    // One authorized_keys line, of a key type (never options such as command="...").
    if (key.size() > kMaxSessionKeyBytes) return Status::Invalid(where + " is longer than 16 KiB");
    if (key.find_first_of(std::string("\n\r\0", 3)) != std::string::npos) {
      return Status::Invalid(where + " is not one line");
    }
    for (char ch : key) {  // no tab, escape sequence or other control character, shown or stored
      if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) {
        return Status::Invalid(where + " holds a control character");
      }
    }
    // TYPE SP BASE64 [SP COMMENT]: never authorized_keys options (command="...", from=...).
    bool typed = false;
    for (const char* type : {"ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-sha2-"}) typed |= key.rfind(type, 0) == 0;
    const size_t type_end = key.find(' ');
    const size_t data_end = type_end == std::string::npos ? type_end : key.find(' ', type_end + 1);
    const std::string data =
        type_end == std::string::npos
            ? std::string()
            : key.substr(type_end + 1, data_end == std::string::npos ? std::string::npos : data_end - type_end - 1);
    if (!typed || data.empty() ||
        data.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") !=
            std::string::npos) {
      return Status::Invalid(where + " is not a public key (\"ssh-ed25519 AAAA... comment\", as in a .pub file)");
    }
  }
  if (session.ttl_ms > kMaxSessionTtlMs) return Status::Invalid("session.ttl is above the limit of 7 days");
  if (session.idle_timeout_ms > kMaxSessionTtlMs) {
    return Status::Invalid("session.idle_timeout is above the limit of 7 days");
  }
  return Status::Ok();
}

Status ValidateTaskSpec(const TaskSpec& spec) {
  if (spec.session) {
    if (Status s = ValidateSession(*spec.session); !s.ok()) return s;
  } else if (spec.command.empty()) {
    return Status::Invalid("command is missing or empty");
  }
  if (!spec.command.empty() && spec.command.front().empty()) {
    return Status::Invalid("command[0] is an empty string");
  }
  for (size_t i = 0; i < spec.command.size(); ++i) {
    if (HasNul(spec.command[i])) return Status::Invalid("command[" + std::to_string(i) + "] holds a NUL byte");
  }
  if (HasNul(spec.key)) return Status::Invalid("key holds a NUL byte");
  if (HasNul(spec.image)) return Status::Invalid("image holds a NUL byte");
  if (HasNul(spec.resources.gpu_model)) return Status::Invalid("resources.gpu_model holds a NUL byte");
  if (spec.resources.cpus_milli > kMaxCpus * 1000) {
    return Status::Invalid("resources.cpus is above the limit of " + std::to_string(kMaxCpus));
  }
  if (spec.resources.gpus > kMaxGpus) {
    return Status::Invalid("resources.gpus is above the limit of " + std::to_string(kMaxGpus));
  }
  if (spec.resources.gpus == 0 && (spec.resources.gpu_memory != 0 || !spec.resources.gpu_model.empty())) {
    return Status::Invalid("resources.gpu_memory and gpu_model need resources.gpus >= 1");
  }
  if (spec.max_attempts > kMaxAttempts) {
    return Status::Invalid("max_attempts is above the limit of " + std::to_string(kMaxAttempts));
  }
  for (const auto& cap : spec.required_capabilities) {
    if (cap.empty()) return Status::Invalid("requires holds an empty capability name");
    if (HasNul(cap)) return Status::Invalid("requires holds a capability name with a NUL byte");
  }
  for (const auto& [key, value] : spec.labels) {
    if (Status s = ValidateLabel(key, value); !s.ok()) return Status::Invalid("labels: " + s.message());
  }
  if (Status s = ValidateEnv(spec.env); !s.ok()) return s;
  if (spec.retry_exit_codes.size() > 256) return Status::Invalid("retry_exit_codes lists more than 256 statuses");
  for (int32_t code : spec.retry_exit_codes) {
    if (code < 1 || code > 255) {
      return Status::Invalid("retry_exit_codes holds " + std::to_string(code) + ": exit statuses are 1 to 255");
    }
  }
  if (spec.retry_backoff_ms > kMaxRetryDelayMs) {
    return Status::Invalid("retry_backoff is above the limit of " + std::to_string(kMaxRetryDelayMs / 1000) + " s");
  }
  if (spec.kill_timeout_ms > kMaxKillTimeoutMs) {
    return Status::Invalid("kill_timeout is above the limit of " + std::to_string(kMaxKillTimeoutMs / 1000) + " s");
  }
  if (!spec.cwd.empty()) {
    if (spec.cwd[0] != '/') return Status::Invalid("cwd \"" + spec.cwd + "\" is not an absolute path");
    if (HasNul(spec.cwd)) return Status::Invalid("cwd holds a NUL byte");
    if (spec.cwd.size() > kMaxCwdBytes) {
      return Status::Invalid("cwd is longer than " + std::to_string(kMaxCwdBytes) + " bytes");
    }
  }
  return Status::Ok();
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
