#include "schemas/vocabulary.h"

#include <array>
#include <utility>

namespace fm {
namespace {

constexpr std::array<std::pair<wire::EventType, std::string_view>, 20> kEventTypes{{
    {wire::EventType::SchedulerStarted, "scheduler.started"},
    {wire::EventType::TaskSubmitted, "task.submitted"},
    {wire::EventType::TaskQueued, "task.queued"},
    {wire::EventType::TaskStarted, "task.started"},
    {wire::EventType::TaskLog, "task.log"},
    {wire::EventType::TaskRetrying, "task.retrying"},
    {wire::EventType::TaskSucceeded, "task.succeeded"},
    {wire::EventType::TaskFailed, "task.failed"},
    {wire::EventType::TaskCancelled, "task.cancelled"},
    {wire::EventType::WorkerRegistered, "worker.registered"},
    {wire::EventType::WorkerUpdated, "worker.updated"},
    {wire::EventType::WorkerLost, "worker.lost"},
    {wire::EventType::WorkerRejected, "worker.rejected"},
    {wire::EventType::WorkerDraining, "worker.draining"},
    {wire::EventType::WorkerUndrained, "worker.undrained"},
    {wire::EventType::TaskWaiting, "task.waiting"},
    {wire::EventType::WorkerQuarantined, "worker.quarantined"},
    {wire::EventType::WorkerRecovered, "worker.recovered"},
    {wire::EventType::TaskReady, "task.ready"},
    {wire::EventType::SchedulerStandby, "scheduler.standby"},
}};

constexpr std::array<std::pair<wire::Reason, std::string_view>, 17> kReasons{{
    {wire::Reason::NoEligibleWorker, "no_eligible_worker"},
    {wire::Reason::InvalidTask, "invalid_task"},
    {wire::Reason::KeyConflict, "key_conflict"},
    {wire::Reason::StorageUnavailable, "storage_unavailable"},
    {wire::Reason::WorkerLost, "worker_lost"},
    {wire::Reason::ExecutorError, "executor_error"},
    {wire::Reason::ExitStatus, "exit_status"},
    {wire::Reason::Timeout, "timeout"},
    {wire::Reason::Cancelled, "cancelled"},
    {wire::Reason::DuplicateWorkerId, "duplicate_worker_id"},
    {wire::Reason::ImageMissing, "image_missing"},
    {wire::Reason::MemoryLimit, "memory_limit"},
    {wire::Reason::SessionTtl, "session_ttl"},
    {wire::Reason::SessionIdle, "session_idle"},
    {wire::Reason::NotStarted, "not_started"},
    {wire::Reason::DependencyFailed, "dependency_failed"},
    {wire::Reason::LimitReached, "limit_reached"},
}};

constexpr std::array<std::pair<wire::ErrorCode, std::string_view>, 9> kErrorCodes{{
    {wire::ErrorCode::Malformed, "malformed"},
    {wire::ErrorCode::Unreachable, "unreachable"},
    {wire::ErrorCode::Oversized, "oversized"},
    {wire::ErrorCode::Unsupported, "unsupported"},
    {wire::ErrorCode::Storage, "storage"},
    {wire::ErrorCode::Unauthorized, "unauthorized"},
    {wire::ErrorCode::Unclaimed, "unclaimed"},
    {wire::ErrorCode::Busy, "busy"},
    {wire::ErrorCode::Fenced, "fenced"},
}};

constexpr std::array<std::pair<wire::TaskState, std::string_view>, 6> kTaskStates{{
    {wire::TaskState::Pending, "pending"},
    {wire::TaskState::Queued, "queued"},
    {wire::TaskState::Running, "running"},
    {wire::TaskState::Succeeded, "succeeded"},
    {wire::TaskState::Failed, "failed"},
    {wire::TaskState::Cancelled, "cancelled"},
}};

constexpr std::array<std::pair<wire::SubmitStatus, std::string_view>, 5> kSubmitStatuses{{
    {wire::SubmitStatus::Accepted, "accepted"},
    {wire::SubmitStatus::Rejected, "rejected"},
    {wire::SubmitStatus::Succeeded, "succeeded"},
    {wire::SubmitStatus::Failed, "failed"},
    {wire::SubmitStatus::Cancelled, "cancelled"},
}};

template <typename E, size_t N>
std::string_view NameIn(const std::array<std::pair<E, std::string_view>, N>& table, E value) {
  for (const auto& [e, name] : table) {
    if (e == value) return name;
  }
  return {};
}

template <typename E, size_t N>
E ParseIn(const std::array<std::pair<E, std::string_view>, N>& table, std::string_view name, E unknown) {
  for (const auto& [e, n] : table) {
    if (n == name) return e;
  }
  return unknown;
}

}  // namespace

std::string_view Name(wire::EventType type) { return NameIn(kEventTypes, type); }
std::string_view Name(wire::Reason reason) { return NameIn(kReasons, reason); }
std::string_view Name(wire::ErrorCode code) { return NameIn(kErrorCodes, code); }
std::string_view Name(wire::TaskState state) { return NameIn(kTaskStates, state); }
std::string_view Name(wire::SubmitStatus status) { return NameIn(kSubmitStatuses, status); }
wire::EventType ParseEventType(std::string_view name) { return ParseIn(kEventTypes, name, wire::EventType::Unknown); }
wire::Reason ParseReason(std::string_view name) { return ParseIn(kReasons, name, wire::Reason::None); }
wire::ErrorCode ParseErrorCode(std::string_view name) { return ParseIn(kErrorCodes, name, wire::ErrorCode::Unknown); }

}  // namespace fm
