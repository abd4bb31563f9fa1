#include "worker/core.h"

#include <algorithm>

#include "runtime/addresses.h"
#include "schemas/codec.h"
#include "schemas/text.h"
#include "schemas/units.h"
#include "schemas/validate.h"
#include "schemas/vocabulary.h"
#include "worker/gpus.h"

namespace fm::worker {

using codec::Str;

WorkerCore::WorkerCore(WorkerIdentity identity, WorkerCoreOptions options)
    : identity_(std::move(identity)), options_(options), health_(options.health) {}

// ---------------------------------------------------------------------------
// Inbound.

void WorkerCore::OnDirected(const std::string& from, const void* data, size_t size, uint64_t now_ms) {
  now_ms_ = now_ms;
  auto envelope = codec::Decode(data, size);
  if (!envelope.ok()) {
    if (from != bus::kBrokerAddress)
      out_.replies.push_back({from, codec::EncodeError(wire::ErrorCode::Malformed, envelope.status().message())});
    return;
  }
  const wire::Envelope& env = **envelope;
  const wire::Body type = env.body_type();
  if (type == wire::Body::Error) {
    // "unreachable" from the broker: results are re-sent anyway; output is not, so the
    // attempts running now are told (once each) that some of theirs may be missing.
    const auto* error = env.body_as_Error();
    if (from == bus::kBrokerAddress && ParseErrorCode(Str(error->code())) == wire::ErrorCode::Unreachable &&
        Str(error->about()) == bus::kSchedulerAddress) {
      for (const auto& [ref, run] : runs_) {
        if (sent_.count({ref, false})) continue;  // sequenced: sent again, not missing
        if (!told_output_lost_.insert(ref).second) continue;
        SendLog(ref, "fm", "some output of this attempt may be missing: the broker's queue to the scheduler was full");
      }
    }
    return;
  }
  const bool command = type == wire::Body::Dispatch || type == wire::Body::CancelTask ||
                       type == wire::Body::TaskFinishedAck || type == wire::Body::ReRegister ||
                       type == wire::Body::WorkerRejected;
  if (!command) {
    out_.replies.push_back(
        {from, codec::EncodeError(wire::ErrorCode::Unsupported,
                                  std::string("a worker does not take ") + wire::EnumNameBody(type) + " messages")});
    return;
  }
  if (from != bus::kSchedulerAddress) {
    ++dropped_not_from_scheduler_;  // only the scheduler commands a worker
    return;
  }
  switch (type) {
    case wire::Body::Dispatch:
      ObserveEpoch(env.body_as_Dispatch()->epoch());
      return OnDispatch(*env.body_as_Dispatch());
    case wire::Body::CancelTask:
      return OnCancel(*env.body_as_CancelTask());
    case wire::Body::TaskFinishedAck:
      return OnAck(*env.body_as_TaskFinishedAck());
    case wire::Body::ReRegister:
      ObserveEpoch(env.body_as_ReRegister()->epoch());
      return Register();
    case wire::Body::WorkerRejected:
      refusal_ = Str(env.body_as_WorkerRejected()->message());
      if (refusal_.empty()) refusal_ = "refused by the scheduler";
      return;
    default:
      return;
  }
}

void WorkerCore::OnDispatch(const wire::Dispatch& dispatch) {
  if (!dispatch.assignments()) return;
  for (const wire::Assignment* a : *dispatch.assignments()) {
    const Ref ref{a->task(), a->attempt()};
    if (done_.count(ref)) continue;  // acknowledged long ago: a late duplicate
    if (finished_.count(ref)) {
      report_finished_.insert(ref);  // ran already: say so again
      continue;
    }
    if (auto r = runs_.find(ref); r != runs_.end()) {
      if (!r->second.waiting) {  // a duplicate delivery of what runs now
        report_started_.push_back(ref);
        std::vector<std::string> ids;
        for (size_t i : r->second.gpus) ids.push_back(GpuDeviceId(identity_.hardware.gpus[i], i));
        if (!ids.empty()) report_devices_[ref] = std::move(ids);
      }
      continue;
    }
    // Other attempts of this task still here: older ones are superseded (the scheduler
    // gave up on them and freed their slot); a newer one makes this delivery stale.
    std::vector<Ref> older;
    bool stale = false;
    for (auto it = runs_.lower_bound({ref.task, 0}); it != runs_.end() && it->first.task == ref.task; ++it) {
      if (it->first.attempt > ref.attempt) {
        stale = true;
      } else {
        older.push_back(it->first);
      }
    }
    if (stale) continue;
    for (const Ref& old : older) StopRun(old);
    // Checked as the scheduler checks a submission: a hostile or broken dispatch fails
    // alone, with the reason, and never reaches an executor.
    TaskSpec spec = codec::FromWire(a->spec());
    if (Status valid = ValidateTaskSpec(spec); !valid.ok()) {
      Finish(ref, {wire::Outcome::Failed, 0, "invalid_task: " + valid.message()});
      continue;
    }
    if (slots_in_use_ >= identity_.slots) {
      Finish(ref, {wire::Outcome::Retryable, 0,
                   "worker " + identity_.id + " has no free slot (" + std::to_string(slots_in_use_) + " in use)"});
      continue;
    }
    Admit(ref, std::move(spec), a->owner() ? a->owner()->str() : std::string());
    if (dispatch.sequenced_output() && runs_.count(ref)) {
      sent_[{ref, false}];  // its stdout and stderr carry offsets and are kept until stored
      sent_[{ref, true}];
    }
  }
}

std::vector<bool> WorkerCore::BusyGpus() const {
  std::vector<bool> busy(identity_.hardware.gpus.size(), false);
  for (const auto& [ref, run] : runs_) {
    for (size_t i : run.gpus) busy[i] = true;
  }
  return busy;
}

void WorkerCore::Admit(const Ref& ref, TaskSpec spec, std::string owner) {
  RunState run{true, epoch_};
  run.capability = RunsInContainer(spec) ? "docker" : "";
  run.image = spec.image;
  run.waiting = true;
  run.spec = std::move(spec);
  run.owner = std::move(owner);
  runs_.emplace(ref, std::move(run));
  ++slots_in_use_;
  TryStart(ref);
}

bool WorkerCore::Unproven(const std::string& capability, const Ref& except) const {
  if (capability.empty() || health_.proven(capability)) return false;
  for (const auto& [ref, run] : runs_) {
    if (ref != except && run.starting && run.capability == capability) return true;
  }
  return false;
}

void WorkerCore::TryStart(const Ref& ref) {
  auto it = runs_.find(ref);
  if (it == runs_.end() || !it->second.waiting) return;
  RunState& run = it->second;
  auto refuse = [&](std::string why) {
    const bool current = run.epoch == epoch_;
    Release(&run);
    runs_.erase(it);
    DropEmptyOutput(ref);
    ++ended_[static_cast<size_t>(wire::Outcome::Retryable)];
    // Never started: the scheduler places it again without spending an attempt.
    if (current) Finish(ref, {wire::Outcome::Retryable, 0, std::move(why), wire::Reason::NotStarted});
  };
  if (!run.capability.empty() && health_.quarantined(run.capability)) {
    // Withdrawn after it was dispatched: it goes elsewhere, and counts as no failed start.
    return refuse("capability " + run.capability + " is quarantined on worker " + identity_.id + ": " +
                  health_.quarantines().at(run.capability).reason);
  }
  // While the executor has not shown that it starts tasks (at first, and after a failed
  // start), one start at a time: a broken daemon fails quarantine_after starts, not a
  // whole burst of dispatches.
  if (Unproven(run.capability, ref)) return;
  if (run.spec.resources.gpus > 0) {
    auto chosen = ChooseGpus(identity_.hardware.gpus, BusyGpus(), run.spec.resources);
    if (!chosen) {
      // The scheduler counted them free: they are, once the attempts it gave up on have
      // stopped (a cancel's grace). Without such an attempt its count and ours differ.
      bool stopping_holds_gpus = false;
      for (const auto& [r, other] : runs_) stopping_holds_gpus |= !other.counted && !other.gpus.empty();
      if (stopping_holds_gpus) return;
      return refuse("worker " + identity_.id + " has no free GPU serving this task (" +
                    std::to_string(run.spec.resources.gpus) + " wanted)");
    }
    run.gpus = std::move(*chosen);
  }
  run.waiting = false;
  run.starting = !run.capability.empty();
  TaskSpec spec = std::move(run.spec);
  run.spec = TaskSpec();
  Grant grant;
  grant.owner = std::move(run.owner);
  for (size_t i : run.gpus) grant.gpus.push_back(GpuDeviceId(identity_.hardware.gpus[i], i));
  if (!grant.gpus.empty()) report_devices_[ref] = grant.gpus;
  report_started_.push_back(ref);
  ++started_;
  executor_->Start(ref, spec, grant);  // may end it at once
}

void WorkerCore::StartWaiting() {
  std::vector<Ref> waiting;
  for (const auto& [ref, run] : runs_) {
    if (run.waiting) waiting.push_back(ref);
  }
  for (const Ref& ref : waiting) TryStart(ref);
}

void WorkerCore::StopRun(const Ref& ref) {
  auto it = runs_.find(ref);
  if (it == runs_.end()) return;
  Release(&it->second);
  if (!it->second.waiting) {
    executor_->Cancel(ref);  // may end it at once
    return;
  }
  const bool current = it->second.epoch == epoch_;
  runs_.erase(it);
  DropEmptyOutput(ref);
  ++ended_[static_cast<size_t>(wire::Outcome::Cancelled)];
  if (current) Finish(ref, {wire::Outcome::Cancelled, 0, "cancelled before it started"});
}

size_t WorkerCore::waiting() const {
  size_t n = 0;
  for (const auto& [ref, run] : runs_) n += run.waiting ? 1 : 0;
  return n;
}

std::vector<size_t> WorkerCore::gpus_of(const Ref& ref) const {
  auto it = runs_.find(ref);
  return it == runs_.end() ? std::vector<size_t>() : it->second.gpus;
}

void WorkerCore::OnCancel(const wire::CancelTask& cancel) {
  if (!cancel.ref()) return;
  const Ref ref{cancel.ref()->task(), cancel.ref()->attempt()};
  finished_.erase(ref);
  report_finished_.erase(ref);
  StopRun(ref);
}

void WorkerCore::OnAck(const wire::TaskFinishedAck& ack) {
  auto one = [&](const wire::TaskRef& r) {
    const Ref ref{r.task(), r.attempt()};
    report_finished_.erase(ref);
    if (finished_.erase(ref) && done_.insert(ref).second) {
      done_order_.push_back(ref);
      if (done_order_.size() > options_.done_memory) {
        done_.erase(done_order_.front());
        done_order_.pop_front();
      }
    }
  };
  if (ack.refs()) {
    for (const auto* r : *ack.refs()) one(*r);
  } else if (ack.ref()) {
    one(*ack.ref());  // a scheduler from before batched acknowledgements
  }
  if (ack.output()) {
    // What the scheduler stored: let it go. An attempt whose output is all stored may
    // report its end now.
    for (const auto* mark : *ack.output()) {
      if (!mark->ref()) continue;
      const Ref ref{mark->ref()->task(), mark->ref()->attempt()};
      auto it = sent_.find({ref, codec::Str(mark->stream()) == "stderr"});
      if (it == sent_.end()) continue;
      auto& kept = it->second.kept;
      if (mark->behind() && now_ms_ >= it->second.resent_ms + 1000) {
        // Some of it was lost on the way: from where the scheduler is, at once (once a
        // second at most), not after the stall time (acks of other output keep coming).
        it->second.resent_ms = now_ms_;
        for (const auto& [offset, data] : kept) {
          if (offset + data.size() > mark->end()) Queue(ref, mark->stream()->str(), data, offset);
        }
      }
      while (!kept.empty() && kept.front().first < mark->end()) {
        auto& [offset, data] = kept.front();
        const uint64_t stored = std::min<uint64_t>(mark->end() - offset, data.size());
        kept_bytes_ -= stored;
        if (stored == data.size()) {
          kept.pop_front();
        } else {
          data.erase(0, stored);
          offset += stored;
        }
      }
      if (kept.empty() && !runs_.count(ref)) {
        sent_.erase(it);
        if (finished_.count(ref) && !KeepsOutput(ref)) report_finished_.insert(ref);
      }
    }
  } else if (ack.output_bytes() > 0 && !sent_.empty()) {
    StopKeeping();  // a scheduler that does not say what it stored: as before, best effort
  }
  if (ack.output_bytes() > 0) {
    output_unacked_ -= std::min(output_unacked_, ack.output_bytes());
    output_progress_ms_ = now_ms_;
    output_stalls_ = 0;
    PaceOutput();
  }
}

void WorkerCore::PaceOutput() {
  if (!executor_) return;
  if (!output_paused_ && output_unacked_ > options_.output_window) {
    output_paused_ = true;
    output_progress_ms_ = now_ms_;
    executor_->PauseOutput(true);
  } else if (output_paused_ && output_unacked_ <= options_.output_window / 2) {
    output_paused_ = false;
    executor_->PauseOutput(false);
  }
}

// ---------------------------------------------------------------------------
// Runs.

void WorkerCore::ObserveEpoch(uint64_t epoch) {
  if (epoch == 0 || epoch == epoch_) return;
  const bool replaced = epoch_ != 0;
  epoch_ = epoch;
  if (!replaced) {  // the first epoch named: what runs now is its
    for (auto& [ref, run] : runs_) run.epoch = epoch;
    return;
  }
  std::vector<Ref> old;
  for (auto& [ref, run] : runs_) {
    if (run.counted) old.push_back(ref);
  }
  finished_.clear();
  report_finished_.clear();
  report_started_.clear();
  report_devices_.clear();
  done_.clear();
  done_order_.clear();
  sent_.clear();  // the old store's attempts' output: nobody there to take it
  kept_bytes_ = 0;
  for (const Ref& ref : old) StopRun(ref);  // may end them at once
}

void WorkerCore::Release(RunState* run) {
  if (!run->counted) return;
  run->counted = false;
  --slots_in_use_;
}

void WorkerCore::OnRunOutput(const Ref& ref, const char* stream, std::string_view data) {
  // Output is capped per attempt: past max_output it is dropped, with one note saying so.
  auto run = runs_.find(ref);
  if (run != runs_.end()) {
    RunState& r = run->second;
    if (r.dropped > 0 || r.output + data.size() > options_.max_output) {
      std::string_view kept = data.substr(0, options_.max_output - std::min(r.output, options_.max_output));
      const bool first = r.dropped == 0;
      r.dropped += data.size() - kept.size();
      r.output += kept.size();
      if (!kept.empty()) PassOutput(ref, stream, kept);
      if (first) {
        SendLog(ref, "fm",
                "output truncated: this attempt wrote more than " + FormatSize(options_.max_output) +
                    " (--max-output); the rest is dropped");
      }
      return;
    }
    r.output += data.size();
  }
  PassOutput(ref, stream, data);
}

void WorkerCore::PassOutput(const Ref& ref, const char* stream, std::string_view data) {
  auto partial = partial_output_.find({ref, stream});
  if (partial == partial_output_.end()) {
    size_t complete = CompleteUtf8Prefix(data);
    if (complete > 0) SendLog(ref, stream, data.substr(0, complete));
    if (complete < data.size()) partial_output_[{ref, stream}] = std::string(data.substr(complete));
    return;
  }
  std::string joined = std::move(partial->second);
  joined.append(data);
  size_t complete = CompleteUtf8Prefix(joined);
  if (complete > 0) SendLog(ref, stream, std::string_view(joined).substr(0, complete));
  if (complete < joined.size()) {
    partial->second = joined.substr(complete);
  } else {
    partial_output_.erase(partial);
  }
}

void WorkerCore::SendLog(const Ref& ref, const std::string& stream, std::string_view data) {
  std::optional<uint64_t> offset;
  auto sequenced = stream == "stdout" || stream == "stderr" ? sent_.find({ref, stream == "stderr"}) : sent_.end();
  if (sequenced != sent_.end()) {  // an attempt its scheduler dispatched with sequenced_output
    SentStream& s = sequenced->second;
    offset = s.next;
    s.next += data.size();
    if (!data.empty()) {
      if (kept_bytes_ == 0) output_progress_ms_ = now_ms_;  // the stall counts from the first kept byte
      s.kept.emplace_back(*offset, std::string(data));
      kept_bytes_ += data.size();
    }
  }
  Queue(ref, stream, data, offset);
}

void WorkerCore::Queue(const Ref& ref, const std::string& stream, std::string_view data,
                       std::optional<uint64_t> offset) {
  constexpr size_t kLogMessageBytes = 64u << 10;
  PendingLog* last = pending_logs_.empty() ? nullptr : &pending_logs_.back();
  if (last != nullptr && last->ref == ref && last->stream == stream &&
      last->data.size() + data.size() <= kLogMessageBytes && offset.has_value() == last->offset.has_value() &&
      (!offset || *last->offset + last->data.size() == *offset)) {
    last->data.append(data);
  } else {
    pending_logs_.push_back({ref, stream, std::string(data), offset});
  }
  output_unacked_ += data.size();
  PaceOutput();
}

void WorkerCore::DropEmptyOutput(const Ref& ref) {
  for (bool err : {false, true}) {  // an ended attempt's, all of it stored: nothing to keep for it
    auto it = sent_.find({ref, err});
    if (it != sent_.end() && it->second.kept.empty()) sent_.erase(it);
  }
}

bool WorkerCore::KeepsOutput(const Ref& ref) const {
  for (bool err : {false, true}) {
    auto it = sent_.find({ref, err});
    if (it != sent_.end() && !it->second.kept.empty()) return true;
  }
  return false;
}

void WorkerCore::SendKeptAgain() {
  for (const auto& [key, s] : sent_) {
    for (const auto& [offset, data] : s.kept) Queue(key.first, key.second ? "stderr" : "stdout", data, offset);
  }
}

void WorkerCore::StopKeeping() {
  sent_.clear();  // its attempts' output goes as it comes from now on, with no offsets
  kept_bytes_ = 0;
  for (const auto& [ref, f] : finished_) report_finished_.insert(ref);  // held for their output
}

void WorkerCore::FlushLogs() {
  for (auto& p : pending_logs_) {
    flatbuffers::FlatBufferBuilder fbb(p.data.size() + 128);
    auto r = wire::CreateTaskRef(fbb, p.ref.task, p.ref.attempt);
    auto log = wire::CreateTaskLog(fbb, r, fbb.CreateString(p.stream), fbb.CreateString(p.data),
                                   p.offset ? flatbuffers::Optional<uint64_t>(*p.offset) : flatbuffers::nullopt);
    out_.to_scheduler.push_back(codec::Seal(fbb, log));
  }
  pending_logs_.clear();
}

void WorkerCore::OnRunEnded(const Ref& ref, RunResult result) {
  auto run = runs_.find(ref);
  if (run == runs_.end()) return;  // not ours: an executor bug, never a crash
  const bool current = run->second.epoch == epoch_;
  if (run->second.dropped > 0) {
    if (!result.message.empty()) result.message += "; ";
    result.message += "output truncated: " + std::to_string(run->second.dropped) + " bytes over " +
                      FormatSize(options_.max_output) + " dropped";
  }
  if (!result.start_failure.empty() && !run->second.capability.empty() &&
      health_.OnStartFailed(run->second.capability, result.start_failure, result.message, run->second.image, now_ms_)) {
    const auto& q = health_.quarantines().at(run->second.capability);
    out_.warnings.push_back("capability " + run->second.capability + " quarantined: " + q.reason +
                            "; withdrawn until a re-probe starts " + run->second.image);
    announce_ = true;
  }
  Release(&run->second);
  runs_.erase(run);
  ready_.erase(ref);
  if (static_cast<size_t>(result.outcome) < ended_.size()) ++ended_[static_cast<size_t>(result.outcome)];
  told_output_lost_.erase(ref);
  for (const char* stream : {"stdout", "stderr"}) {  // what is left of a cut character goes as it is
    auto partial = partial_output_.find({ref, stream});
    if (partial == partial_output_.end()) continue;
    if (current) SendLog(ref, stream, partial->second);
    partial_output_.erase(partial);
  }
  DropEmptyOutput(ref);
  if (current) Finish(ref, std::move(result));  // an old store's result means nothing now
  StartWaiting();                               // GPUs it held, or a start it held back, may be free now
}

void WorkerCore::OnRunStarted(const Ref& ref) {
  auto run = runs_.find(ref);
  if (run == runs_.end() || run->second.capability.empty()) return;
  run->second.starting = false;
  health_.OnStarted(run->second.capability, run->second.image);
  StartWaiting();
}

void WorkerCore::OnRunReady(const Ref& ref, const Endpoint& endpoint) {
  auto run = runs_.find(ref);
  if (run == runs_.end() || run->second.epoch != epoch_ || !run->second.counted) return;
  ready_[ref] = endpoint;
  SendReady(ref, endpoint);
}

void WorkerCore::SendReady(const Ref& ref, const Endpoint& endpoint) {
  flatbuffers::FlatBufferBuilder fbb(256);
  auto r = wire::CreateTaskRef(fbb, ref.task, ref.attempt);
  out_.to_scheduler.push_back(
      codec::Seal(fbb, wire::CreateTaskReady(fbb, r, fbb.CreateString(identity_.id), codec::ToWire(fbb, endpoint))));
}

void WorkerCore::OnProbeEnded(const std::string& capability, bool ok, const std::string& message) {
  if (health_.OnProbe(capability, ok, message, now_ms_)) {
    out_.warnings.push_back("capability " + capability + " recovered: a re-probe started a container");
    announce_ = true;
    StartWaiting();
  } else if (health_.quarantined(capability)) {
    const auto& q = health_.quarantines().at(capability);
    out_.warnings.push_back("capability " + capability + " still quarantined: re-probe failed (" + message +
                            "); next in " + std::to_string(q.delay_ms / 1000) + " s");
  }
}

void WorkerCore::Finish(const Ref& ref, RunResult result) {
  finished_[ref] = Finished{std::move(result), now_ms_, now_ms_};
  report_finished_.insert(ref);
}

void WorkerCore::Tick(uint64_t now_ms) {
  now_ms_ = now_ms;
  // The acknowledgements are not coming (lost with a broker, or a scheduler that does
  // not send them): go on, waiting longer each time in a row (a slow scheduler's come),
  // and send what is kept again (also below the window: an attempt's end waits for it).
  if ((output_paused_ || kept_bytes_ > 0) &&
      now_ms >= output_progress_ms_ + (options_.output_stall_ms << std::min(output_stalls_, 4u))) {
    ++output_stalls_;
    output_progress_ms_ = now_ms;
    output_unacked_ = 0;
    SendKeptAgain();  // lost on the way, or the scheduler is away: at least once
    PaceOutput();
  }
  for (auto& [ref, f] : finished_) {
    if (now_ms >= f.sent_ms + options_.resend_ms) {
      report_finished_.insert(ref);
      f.sent_ms = now_ms;
    }
  }
  if (executor_) {
    for (const auto& [capability, image] : health_.DueProbes(now_ms)) executor_->Probe(capability, image);
  }
}

// ---------------------------------------------------------------------------
// Announcements and the report.

std::vector<Ref> WorkerCore::Held() const {
  std::vector<Ref> held;
  for (const auto& [ref, run] : runs_) {
    if (run.counted) held.push_back(ref);
  }
  for (const auto& [ref, f] : finished_) held.push_back(ref);
  return held;
}

namespace {
flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<wire::Quarantine>>> Quarantines(
    flatbuffers::FlatBufferBuilder& fbb, const Health& health) {
  codec::Quarantines q;
  for (const auto& [capability, state] : health.quarantines()) q[capability] = state.reason;
  return codec::ToWire(fbb, q);
}
}  // namespace

namespace {
flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<wire::TaskRef>>> Refs(flatbuffers::FlatBufferBuilder& fbb,
                                                                                  const std::vector<Ref>& refs) {
  std::vector<flatbuffers::Offset<wire::TaskRef>> offsets;
  offsets.reserve(refs.size());
  for (const Ref& r : refs) offsets.push_back(wire::CreateTaskRef(fbb, r.task, r.attempt));
  return fbb.CreateVector(offsets);
}
}  // namespace

void WorkerCore::Register() {
  output_unacked_ = 0;  // a scheduler (re)starting acknowledges nothing sent before
  SendKeptAgain();      // ... and may not have stored it: it keeps each byte once
  PaceOutput();
  const WorkerIdentity& w = identity_;
  flatbuffers::FlatBufferBuilder fbb(1024);
  auto held = Refs(fbb, Held());
  auto reg = wire::CreateWorkerRegistration(
      fbb, fbb.CreateString(w.id), fbb.CreateString(w.address), fbb.CreateString(w.node), w.instance,
      fbb.CreateString(w.version), w.slots, codec::ToWire(fbb, w.hardware), codec::ToWire(fbb, w.labels), held,
      codec::ToWire(fbb, announced()), w.noop_executor, Quarantines(fbb, health_), fbb.CreateString(w.limits));
  out_.publications.push_back({"fleet.register", codec::Seal(fbb, reg)});
  // A scheduler that restarted knows its sessions but maybe not where they answer.
  for (const auto& [ref, endpoint] : ready_) SendReady(ref, endpoint);
}

void WorkerCore::Heartbeat() {
  const WorkerIdentity& w = identity_;
  flatbuffers::FlatBufferBuilder fbb(512);
  auto held = Refs(fbb, Held());
  auto hb = wire::CreateWorkerHeartbeat(fbb, fbb.CreateString(w.id), fbb.CreateString(w.address), w.instance, held,
                                        codec::ToWire(fbb, announced()), Quarantines(fbb, health_));
  out_.publications.push_back({"fleet.heartbeat", codec::Seal(fbb, hb)});
}

bool WorkerCore::SetCapabilities(std::vector<std::string> capabilities) {
  Normalize(&capabilities);
  if (capabilities == identity_.capabilities) return false;
  identity_.capabilities = std::move(capabilities);
  return true;
}

WorkerOutbox WorkerCore::EndTurn() {
  FlushLogs();  // before the report: an attempt's output is stored before its end
  if (std::exchange(announce_, false)) Heartbeat();
  if (!report_started_.empty() || !report_finished_.empty()) {
    flatbuffers::FlatBufferBuilder fbb(256 + 64 * (report_started_.size() + report_finished_.size()));
    auto started = Refs(fbb, report_started_);
    auto worker = fbb.CreateString(identity_.id);
    std::vector<flatbuffers::Offset<wire::TaskFinished>> finished;
    finished.reserve(report_finished_.size());
    for (const Ref& ref : report_finished_) {
      auto f = finished_.find(ref);
      if (f == finished_.end()) continue;
      if (KeepsOutput(ref)) {
        // Reported once its output is stored (OnAck); if that never comes (a scheduler
        // that stopped marking), not held past kHoldEndMs: its kept output goes.
        if (now_ms_ < f->second.ended_ms + kHoldEndMs) continue;
        out_.warnings.push_back("task t" + std::to_string(ref.task) + " attempt " + std::to_string(ref.attempt) +
                                ": its output was not acknowledged within " + FormatDuration(kHoldEndMs) +
                                "; its end is reported without waiting more");
        for (bool err : {false, true}) {
          if (auto it = sent_.find({ref, err}); it != sent_.end()) {
            for (const auto& [offset, data] : it->second.kept) kept_bytes_ -= data.size();
            sent_.erase(it);
          }
        }
      }
      const RunResult& r = f->second.result;
      finished.push_back(wire::CreateTaskFinished(fbb, wire::CreateTaskRef(fbb, ref.task, ref.attempt), worker,
                                                  r.outcome, r.exit_code, fbb.CreateString(r.message), r.reason));
    }
    if (finished.empty() && report_started_.empty()) {  // every end held for its output
      report_finished_.clear();
      return std::exchange(out_, WorkerOutbox());
    }
    std::vector<flatbuffers::Offset<wire::AttemptDevices>> devices;
    for (const Ref& ref : report_started_) {
      auto d = report_devices_.find(ref);
      if (d == report_devices_.end()) continue;
      devices.push_back(wire::CreateAttemptDevices(fbb, wire::CreateTaskRef(fbb, ref.task, ref.attempt),
                                                   codec::ToWire(fbb, d->second)));
    }
    out_.to_scheduler.push_back(
        codec::Seal(fbb, wire::CreateWorkerReport(fbb, worker, started, fbb.CreateVector(finished),
                                                  devices.empty() ? 0 : fbb.CreateVector(devices))));
    report_started_.clear();
    report_devices_.clear();
    report_finished_.clear();
  }
  return std::exchange(out_, WorkerOutbox());
}

}  // namespace fm::worker
