#include "runtime/policy.h"

#include "runtime/addresses.h"
#include "schemas/codec.h"

namespace fm::bus {

const char* RoleName(Role role) {
  switch (role) {
    case Role::kBroker:
      return "broker";
    case Role::kScheduler:
      return "scheduler";
    case Role::kWorker:
      return "worker";
    case Role::kClient:
      return "client";
    case Role::kOperator:
      return "operator";
    case Role::kNone:
      break;
  }
  return "none";
}

std::optional<Role> ParseRole(std::string_view text) {
  for (Role r : {Role::kBroker, Role::kScheduler, Role::kWorker, Role::kClient, Role::kOperator}) {
    if (text == RoleName(r)) return r;
  }
  return std::nullopt;
}

Status ValidateName(std::string_view name) {
  if (name.empty() || name.size() > 64) {
    return Status::Invalid("name \"" + std::string(name) + "\" must be 1 to 64 characters");
  }
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (!alnum && (i == 0 || (c != '.' && c != '_' && c != '-'))) {
      return Status::Invalid("name \"" + std::string(name) +
                             "\" may hold only letters, digits, '.', '_' and '-', and must start with a letter or "
                             "digit");
    }
  }
  return Status::Ok();
}

namespace {
constexpr std::pair<Role, std::string_view> kPrefixes[] = {
    {Role::kWorker, "w/"}, {Role::kClient, "client/"}, {Role::kOperator, "operator/"}, {Role::kBroker, "broker/"}};
}  // namespace

std::string AddressPrefix(Role role, std::string_view name) {
  if (role == Role::kScheduler) return kSchedulerAddress;
  for (const auto& [r, prefix] : kPrefixes) {
    if (r == role) return std::string(prefix) + std::string(name) + "/";
  }
  return "";
}

Principal PrincipalOf(std::string_view address) {
  if (address == kSchedulerAddress) return {Role::kScheduler, kSchedulerAddress};
  for (const auto& [role, prefix] : kPrefixes) {
    if (address.substr(0, prefix.size()) != prefix) continue;
    std::string_view rest = address.substr(prefix.size());
    size_t slash = rest.find('/');
    if (slash == std::string_view::npos || slash == 0) return {};
    return {role, std::string(rest.substr(0, slash))};
  }
  return {};
}

Status MayClaim(Role role, std::string_view name, std::string_view address) {
  std::string prefix = AddressPrefix(role, name);
  bool ok = role == Role::kScheduler
                ? address == prefix
                : !prefix.empty() && address.size() > prefix.size() && address.substr(0, prefix.size()) == prefix;
  if (ok) return Status::Ok();
  return Status::Invalid(std::string("role ") + RoleName(role) + " (certificate \"" + std::string(name) +
                         "\") may not hold address \"" + std::string(address) + "\"" +
                         (prefix.empty() ? "" : "; its addresses start with \"" + prefix + "\""));
}

namespace {

enum class Who { kUser, kOperator, kOwner };
struct ActionRule {
  Action action;
  const char* text;
  Who who;
};
constexpr ActionRule kActionRules[] = {
    {Action::kSubmit, "submit tasks", Who::kUser},
    {Action::kList, "list workers and tasks", Who::kUser},
    {Action::kReplay, "replay the event stream", Who::kUser},
    {Action::kDrain, "drain workers", Who::kOperator},
    {Action::kUndrain, "undrain workers", Who::kOperator},
    {Action::kSnapshot, "snapshot the store", Who::kOperator},
    {Action::kCancel, "cancel this task", Who::kOwner},
};

const ActionRule& RuleOf(Action action) {
  for (const auto& rule : kActionRules) {
    if (rule.action == action) return rule;
  }
  return kActionRules[0];  // unreachable: every Action has its rule (policy_test)
}

}  // namespace

const char* ActionText(Action action) { return RuleOf(action).text; }

Status MayAct(Role role, std::string_view name, Action action, std::string_view owner) {
  const ActionRule& rule = RuleOf(action);
  const bool ok = role == Role::kOperator ||
                  (role == Role::kClient && (rule.who == Who::kUser || (rule.who == Who::kOwner && owner == name)));
  if (ok) return Status::Ok();
  std::string message = std::string("role ") + RoleName(role) +
                        (name.empty() ? "" : " (\"" + std::string(name) + "\")") + " may not " + rule.text;
  if (rule.who == Who::kOwner && role == Role::kClient) {
    message += ": the task belongs to " +
               (owner.empty() ? std::string("nobody named") : "\"" + std::string(owner) + "\"") +
               " (an operator may cancel any task)";
  }
  if (rule.who == Who::kOperator && role == Role::kClient) message += " (that takes role operator)";
  return Status::Invalid(message);
}

Status MayPublish(Role role, std::string_view name, std::string_view topic, std::string_view payload) {
  auto refuse = [&](const std::string& why) {
    return Status::Invalid(std::string("role ") + RoleName(role) + " (certificate \"" + std::string(name) +
                           "\") may not publish on topic \"" + std::string(topic) + "\"" + why);
  };
  switch (role) {
    case Role::kScheduler:
      return Status::Ok();
    case Role::kBroker:
      return topic.substr(0, 6) == "fleet." ? Status::Ok() : refuse(": only the scheduler publishes events");
    case Role::kWorker:
      break;
    default:
      return refuse(": only the scheduler publishes events");
  }
  if (topic != "fleet.register" && topic != "fleet.heartbeat") {
    return refuse(": a worker publishes only fleet.register and fleet.heartbeat");
  }
  auto announced = AnnouncedWorker(topic, payload);
  if (!announced.ok()) return refuse(": " + announced.status().message());
  const auto& [id, address] = *announced;
  if (id != name) return refuse(": it announces worker \"" + id + "\"");
  if (Status s = MayClaim(role, name, address); !s.ok()) return refuse(": " + s.message());
  return Status::Ok();
}

Result<std::pair<std::string, std::string>> AnnouncedWorker(std::string_view topic, std::string_view payload) {
  std::string storage;
  std::string_view bytes = codec::AlignedBytes(payload, &storage);
  auto env = codec::Decode(bytes.data(), bytes.size());
  if (!env.ok()) return env.status();
  if (const auto* reg = (*env)->body_as_WorkerRegistration(); reg && topic == "fleet.register") {
    return std::pair{codec::Str(reg->id()), codec::Str(reg->address())};
  }
  if (const auto* hb = (*env)->body_as_WorkerHeartbeat(); hb && topic == "fleet.heartbeat") {
    return std::pair{codec::Str(hb->id()), codec::Str(hb->address())};
  }
  return Status::Invalid("the body does not match the topic");
}

const std::string_view kPublishedTopics[5] = {"task.", "worker.", "scheduler.started", "fleet.register",
                                              "fleet.heartbeat"};

std::string TaskTopic(std::string_view owner) {
  return "task." + (owner.empty() ? std::string("-") : std::string(owner)) + "/";
}

Status MaySubscribe(Role role, std::string_view name, std::string_view prefix) {
  std::string shown(prefix.substr(0, 64));
  for (char& c : shown) {
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
  }
  // One owner's task topic: task.NAME/ exactly.
  if (prefix.size() > 6 && prefix.substr(0, 5) == "task." && prefix.back() == '/') {
    std::string_view owner = prefix.substr(5, prefix.size() - 6);
    if (owner == "-" || ValidateName(owner).ok()) {
      if (role != Role::kClient || owner == name) return Status::Ok();
      return Status::Invalid("subscription \"" + shown + "\": a client (\"" + std::string(name) +
                             "\") follows only its own tasks (" + TaskTopic(name) + ")");
    }
  }
  for (std::string_view topic : kPublishedTopics) {
    if (topic.substr(0, prefix.size()) != prefix) continue;
    // A prefix that matches task topics shows every owner's tasks: not to a client.
    if (role == Role::kClient && std::string_view("task.").substr(0, prefix.size()) == prefix) {
      return Status::Invalid("subscription \"" + shown + "\" would show a client every owner's tasks; a client (\"" +
                             std::string(name) + "\") follows " + TaskTopic(name));
    }
    return Status::Ok();
  }
  return Status::Invalid("subscription \"" + shown +
                         "\" matches no topic anything is published on (task.OWNER/, "
                         "worker., scheduler.started, fleet.register, fleet.heartbeat)");
}

}  // namespace fm::bus
