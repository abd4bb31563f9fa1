#include "schemas/validate.h"

#include <cctype>

#include "schemas/text.h"

namespace fm {

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
  if (spec.key.size() > kMaxKeyBytes) {
    return Status::Invalid("key is longer than " + std::to_string(kMaxKeyBytes) + " bytes");
  }
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
  if (spec.after.size() > kMaxAfter) {
    return Status::Invalid("after lists " + std::to_string(spec.after.size()) + " keys; at most " +
                           std::to_string(kMaxAfter));
  }
  for (size_t i = 0; i < spec.after.size(); ++i) {
    if (spec.after[i].empty()) return Status::Invalid("after[" + std::to_string(i) + "] is an empty key");
    if (HasNul(spec.after[i])) return Status::Invalid("after[" + std::to_string(i) + "] holds a NUL byte");
    if (spec.after[i].size() > kMaxKeyBytes) {
      return Status::Invalid("after[" + std::to_string(i) + "] is longer than " + std::to_string(kMaxKeyBytes) +
                             " bytes");
    }
    if (spec.after[i] == spec.key) {
      return Status::Invalid("after names the task's own key \"" + spec.key + "\": a task cannot run after itself");
    }
  }
  if (!spec.group.empty()) {
    if (spec.group.size() > kMaxGroupBytes) {
      return Status::Invalid("group is longer than " + std::to_string(kMaxGroupBytes) + " bytes");
    }
    for (unsigned char ch : spec.group) {
      if (ch < 0x20 || ch == 0x7f) return Status::Invalid("group holds a control character");
    }
  }
  if (spec.array) {
    const auto& a = *spec.array;
    if (a.count < 1 || a.count > kMaxArrayCount) {
      return Status::Invalid("array.count is " + std::to_string(a.count) + ": it must be from 1 to " +
                             std::to_string(kMaxArrayCount));
    }
    if (a.index >= a.count) {
      return Status::Invalid("array.index " + std::to_string(a.index) + " is not below array.count " +
                             std::to_string(a.count));
    }
    if (a.max_running > a.count) return Status::Invalid("array.max_running is above array.count");
  }
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

std::vector<std::string> ImpliedCapabilities(const TaskSpec& spec) {
  std::vector<std::string> caps;
  if (!spec.image.empty()) caps.push_back("docker");
  // A session goes only where one was really started (the worker's probe by doing).
  if (spec.session) caps.push_back("session");
  return caps;
}

bool RunsInContainer(const TaskSpec& spec) { return !spec.image.empty() || spec.session.has_value(); }

}  // namespace fm
