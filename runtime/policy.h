// Who may do what on the bus: roles, the addresses each may hold and the topics each
// may publish on. Pure functions; the broker (broker.h) asks them for every claim and
// every published message of a CURVE peer, the scheduler for every directed message.
//
// A peer's certificate names it and gives its role. Its address on the broker tree
// (what directed messages are routed by) must be one of its role's:
//   scheduler  fm-scheduler
//   worker     w/NAME/...        (NAME: the worker id)
//   client     client/NAME/...
//   operator   operator/NAME/...
//   broker     broker/NAME/...   (a node broker's link to its parent)
// Events: the scheduler publishes any topic; a worker only fleet.register and
// fleet.heartbeat about itself (id NAME, address w/NAME/...); a broker only fleet.*
// (its subtree's worker announcements, checked where they entered); nobody else.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "schemas/status.h"

namespace fm::bus {

enum class Role { kNone, kBroker, kScheduler, kWorker, kClient, kOperator };

// "broker", "scheduler", "worker", "client", "operator" ("none" for kNone).
const char* RoleName(Role role);
std::optional<Role> ParseRole(std::string_view text);

// A certificate (and worker) name: 1 to 64 of [A-Za-z0-9._-], starting with a letter or
// digit. Error says what is wrong.
Status ValidateName(std::string_view name);

// Who an address belongs to, as its form says (trustworthy only where the broker
// checked the claim: with CURVE). kNone for any other form (a keyless tool).
struct Principal {
  Role role = Role::kNone;
  std::string name;
};
Principal PrincipalOf(std::string_view address);

// The address prefix of a role's peers: "w/NAME/", "client/NAME/", ...; "fm-scheduler"
// for the scheduler.
std::string AddressPrefix(Role role, std::string_view name);

// May a peer with this role and name hold `address`? Error: unauthorized, naming both.
Status MayClaim(Role role, std::string_view name, std::string_view address);

// What a peer may ask of the scheduler. Each has one rule (policy.cc, kActionRules):
// any user (client or operator), an operator only, or the task's owner (a client) or an
// operator.
enum class Action { kSubmit, kList, kReplay, kDrain, kUndrain, kSnapshot, kCancel };
// "submit tasks", "list workers and tasks", ...: what the refusal names.
const char* ActionText(Action action);
// May a peer with this role and name do `action` (for kCancel, on a task of `owner`)?
// Error: the sentence its sender is told ("role client ("bob") may not cancel this
// task: the task belongs to "alice" ...").
Status MayAct(Role role, std::string_view name, Action action, std::string_view owner = {});

// May a peer with this role and name publish `payload` on `topic`? Error names the role,
// the topic and, for a worker, whose announcement it was.
Status MayPublish(Role role, std::string_view name, std::string_view topic, std::string_view payload);

// The worker a fleet.register or fleet.heartbeat payload announces: its id and address.
// Error when the payload is no such announcement, or does not match the topic.
Result<std::pair<std::string, std::string>> AnnouncedWorker(std::string_view topic, std::string_view payload);

// The topics anything is published on: the scheduler's event classes ("worker.", and
// "task.OWNER/" — each owner's task events apart, OWNER a certificate name or "-"
// without CURVE) and "scheduler.started", the workers' "fleet.register" and
// "fleet.heartbeat". A new topic is added here first (brokers go first in an upgrade).
extern const std::string_view kPublishedTopics[5];  // with "task." for every task topic
// The topic of `owner`'s task events ("" is the keyless owner "-").
std::string TaskTopic(std::string_view owner);

// May a subscriber with this role and name subscribe to `prefix`? A client only to its
// own task topic ("task.NAME/") and to prefixes of the other topics that match no task
// topic; anyone else to a prefix of a published topic ("" included) or one owner's task
// topic. Anything else could never match, or would show a client another's tasks: a
// broker keeps and passes on only these, so the tree holds a bounded set of
// subscriptions. Error names the rule.
Status MaySubscribe(Role role, std::string_view name, std::string_view prefix);

}  // namespace fm::bus
