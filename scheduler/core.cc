#include "scheduler/core.h"

#include <set>

#include "runtime/addresses.h"
#include "schemas/codec.h"
#include "schemas/vocabulary.h"
#include "store/keys.h"

namespace fm::sched {

SchedulerCore::SchedulerCore(EngineOptions options, store::Store* store, std::shared_ptr<spdlog::logger> logger,
                             uint64_t storage_probe_ms)
    : options_(options),
      store_(store),
      view_(store),
      logger_(logger ? std::move(logger) : spdlog::default_logger()),
      rejected_log_(logger_),
      storage_probe_ms_(storage_probe_ms) {}

Status SchedulerCore::Open(uint64_t now_ms) {
  if (Status s = Rebuild(now_ms); !s.ok()) return s;
  engine_->Start(now_ms);
  return Status::Ok();
}

void Commit::Append(Commit&& other) {
  writes.Append(std::move(other.writes));
  for (auto& d : other.out.directed) out.directed.push_back(std::move(d));
  for (auto& e : other.out.events) out.events.push_back(std::move(e));
  for (auto& s : other.out.snapshots) out.snapshots.push_back(std::move(s));
  for (auto& s : other.submitters) submitters.push_back(std::move(s));
  for (auto& r : other.reads) reads.push_back(std::move(r));
  other = Commit();
}

Status SchedulerCore::Rebuild(uint64_t now_ms) {
  engine_ = std::make_unique<Engine>(options_);
  return engine_->Recover(&view_, now_ms);
}

void SchedulerCore::ShowPending() {
  std::vector<const store::WriteBatch*> pending;
  if (in_flight_active_) pending.push_back(&in_flight_.writes);
  pending.push_back(&gathered_.writes);
  view_.SetPending(std::move(pending));
}

void SchedulerCore::Refuse(const std::string& from, uint64_t correlation) {
  immediate_.directed.push_back({from, codec::EncodeError(wire::ErrorCode::Storage,
                                                          "the scheduler cannot write to its store (" + storage_error_ +
                                                              "); it refuses changes until writing works again",
                                                          std::to_string(correlation))});
}

void SchedulerCore::OnDirected(const std::string& from, const void* data, size_t size, uint64_t now_ms) {
  auto envelope = codec::Decode(data, size);
  if (!envelope.ok()) {
    rejected_log_.Warn(from, now_ms, "rejected message from " + from + ": " + envelope.status().message());
    if (from != bus::kBrokerAddress)
      immediate_.directed.push_back(
          {from, codec::EncodeError(wire::ErrorCode::Malformed, envelope.status().message())});
    return;
  }
  const wire::Envelope& env = **envelope;
  switch (env.body_type()) {
    case wire::Body::Error: {
      const auto* error = env.body_as_Error();
      logger_->debug("error from {}: {} {} ({})", from, codec::Str(error->code()), codec::Str(error->message()),
                     codec::Str(error->about()));
      // A worker the broker tree cannot reach yet (its route is still being announced):
      // try its dispatches again soon rather than after the full re-dispatch interval.
      if (from == bus::kBrokerAddress && ParseErrorCode(codec::Str(error->code())) == wire::ErrorCode::Unreachable)
        engine_->OnUnreachable(codec::Str(error->about()), now_ms);
      return;
    }
    case wire::Body::SubmitRequest: {
      uint64_t correlation = env.body_as_SubmitRequest()->correlation();
      if (degraded_) return Refuse(from, correlation);
      turn_submitters_.push_back({from, correlation});
      break;
    }
    case wire::Body::ReplayRequest:
      turn_reads_.push_back({from, std::string(static_cast<const char*>(data), size)});
      break;
    case wire::Body::ControlRequest: {
      const auto* req = env.body_as_ControlRequest();
      bool read = req->op() == wire::ControlOp::Workers || req->op() == wire::ControlOp::Tasks ||
                  req->op() == wire::ControlOp::Task;
      if (read) {
        turn_reads_.push_back({from, std::string(static_cast<const char*>(data), size)});
      } else if (degraded_) {
        return Refuse(from, req->correlation());
      }
      break;
    }
    case wire::Body::TaskStarted:
    case wire::Body::TaskFinished:
    case wire::Body::WorkerReport:
    case wire::Body::TaskLog:
      // Not acknowledged while degraded: the worker re-sends results until they are.
      if (degraded_) return;
      break;
    default:
      break;
  }
  engine_->OnDirected(from, env, now_ms);
  LogRefusals(now_ms);
}

void SchedulerCore::LogRefusals(uint64_t now_ms) {
  auto& refused = engine_->effects().refused;
  for (const auto& [from, why] : refused) rejected_log_.Warn("unauthorized " + from, now_ms, why);
  refused.clear();
}

void SchedulerCore::OnBus(const void* data, size_t size, uint64_t now_ms) {
  // Registrations write; liveness is not judged while degraded. Workers re-register
  // when the scheduler serves normally again.
  if (degraded_) return;
  auto envelope = codec::Decode(data, size);
  if (!envelope.ok()) {
    rejected_log_.Warn("the bus", now_ms, "rejected bus message: " + envelope.status().message());
    return;
  }
  engine_->OnBus(**envelope, now_ms);
  LogRefusals(now_ms);
}

void SchedulerCore::Tick(uint64_t now_ms) {
  rejected_log_.Flush(now_ms);
  if (!degraded_) {
    uint64_t before = engine_->self_silences();
    engine_->Tick(now_ms);
    if (engine_->self_silences() != before) {
      logger_->warn(
          "the scheduler heard nothing for a while (its own loop stalled, or its link to the broker): "
          "every worker gets a fresh liveness window instead of being declared lost");
    }
    return;
  }
  // The probe writes from this thread: never beside a commit being written.
  if (now_ms < next_probe_ms_ || in_flight_active_) return;
  next_probe_ms_ = now_ms + storage_probe_ms_;
  store::WriteBatch probe;
  probe.Put("m/storage_probe", store::keys::EncodeU64(++probes_));
  Status s = store_->Write(probe, /*sync=*/true);
  if (s.ok()) s = store_->Get("m/storage_probe").status();  // and reads work too
  if (!s.ok()) {
    logger_->debug("store still refuses writes: {}", s.message());
    return;
  }
  logger_->warn("the store takes writes again, and reads; serving normally");
  degraded_ = false;
  storage_error_.clear();
  // Liveness was not judged while degraded: start every worker's window afresh.
  if (Status r = Rebuild(now_ms); !r.ok()) {
    logger_->error("re-reading the store failed: {}", r.message());
  }
}

Outbox SchedulerCore::EndTurn(uint64_t now_ms) {
  Outbox out = CloseTurn(now_ms);
  Outbox done = CommitGathered(now_ms);
  for (auto& d : done.directed) out.directed.push_back(std::move(d));
  for (auto& e : done.events) out.events.push_back(std::move(e));
  return out;
}

Outbox SchedulerCore::CloseTurn(uint64_t now_ms) {
  engine_->FinishTurn(now_ms);
  if (Status read = engine_->TakeReadError(); !read.ok()) {
    // A read that fails is as serious as a write that fails: refuse changes until the
    // store answers again (what the engine derived without it was refused already).
    if (!degraded_) logger_->error("cannot read the store, refusing changes until it can: {}", read.message());
    degraded_ = true;
    storage_error_ = read.message();
    next_probe_ms_ = now_ms + storage_probe_ms_;
  }
  Effects& effects = engine_->effects();
  Commit turn;
  turn.writes.Append(std::move(effects.writes));
  turn.out.directed = std::move(effects.directed);
  turn.out.events = std::move(effects.events);
  turn.out.snapshots = std::move(effects.snapshots);
  turn.submitters = std::move(turn_submitters_);
  turn.reads = std::move(turn_reads_);
  effects.Clear();
  turn_submitters_.clear();
  turn_reads_.clear();
  gathered_.Append(std::move(turn));
  Outbox out = std::move(immediate_);
  immediate_ = Outbox();
  return out;
}

const store::WriteBatch& SchedulerCore::StartCommit() {
  in_flight_ = std::move(gathered_);
  gathered_ = Commit();
  in_flight_active_ = true;
  ShowPending();
  return in_flight_.writes;
}

Outbox SchedulerCore::FinishCommit(const Status& s, uint64_t now_ms) {
  Commit done = std::move(in_flight_);
  in_flight_ = Commit();
  in_flight_active_ = false;
  ++commits_;
  if (!s.ok()) ++write_errors_;
  // What was gathered after a failed commit was derived from it: it fails too.
  if (!s.ok()) done.Append(std::move(gathered_));
  ShowPending();
  if (s.ok()) return std::move(done.out);
  return Fail(s, std::move(done), now_ms);
}

Outbox SchedulerCore::CommitGathered(uint64_t now_ms) {
  const store::WriteBatch& writes = StartCommit();
  Status s = writes.empty() ? Status::Ok() : store_->Write(writes, /*sync=*/true);
  return FinishCommit(s, now_ms);
}

Outbox SchedulerCore::Fail(const Status& s, Commit failed, uint64_t now_ms) {
  // The turns did not happen: forget them, tell their submitters, answer their reads.
  // So also for a turn still open (a timer's work): the rebuilt engine derives it again.
  engine_->effects().Clear();
  for (auto& sub : turn_submitters_) failed.submitters.push_back(std::move(sub));
  for (auto& read : turn_reads_) failed.reads.push_back(std::move(read));
  turn_submitters_.clear();
  turn_reads_.clear();
  if (!degraded_) logger_->error("cannot write to the store, refusing changes until it can: {}", s.message());
  degraded_ = true;
  storage_error_ = s.message();
  next_probe_ms_ = now_ms + storage_probe_ms_;
  if (Status r = Rebuild(now_ms); !r.ok()) logger_->error("re-reading the store failed: {}", r.message());
  for (const auto& [from, correlation] : failed.submitters) Refuse(from, correlation);
  for (const auto& snapshot : failed.out.snapshots) Refuse(snapshot.from, snapshot.correlation);
  std::set<std::string> readers;
  Outbox out;
  for (const auto& [from, bytes] : failed.reads) {
    engine_->OnDirected(from, *wire::GetEnvelope(bytes.data()), now_ms);
    readers.insert(from);
  }
  // Only the answers to reads leave: anything else the rebuilt engine derived is not
  // committed and will be derived again.
  for (auto& d : engine_->effects().directed) {
    if (readers.count(d.to)) out.directed.push_back(std::move(d));
  }
  engine_->effects().Clear();
  for (auto& d : immediate_.directed) out.directed.push_back(std::move(d));
  immediate_ = Outbox();
  return out;
}

}  // namespace fm::sched
