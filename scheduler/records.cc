#include "scheduler/records.h"

#include <algorithm>

#include "schemas/codec.h"
#include "schemas/vocabulary.h"
#include "store/keys.h"

namespace fm::sched::records {

namespace keys = store::keys;
using codec::Str;

void PutTask(store::WriteBatch* writes, const std::string& key, const Task& t,
             flatbuffers::FlatBufferBuilder& scratch) {
  flatbuffers::FlatBufferBuilder& fbb = scratch;
  fbb.Clear();
  auto spec = codec::ToWire(fbb, t.spec);
  auto worker = fbb.CreateString(t.worker);
  std::string_view reason_name = Name(t.reason);
  auto reason = reason_name.empty() ? 0 : fbb.CreateString(reason_name.data(), reason_name.size());
  auto message = t.message.empty() ? 0 : fbb.CreateString(t.message);
  auto watcher = t.watcher.empty() ? 0 : fbb.CreateString(t.watcher);
  auto owner = t.owner.empty() ? 0 : fbb.CreateString(t.owner);
  auto failed = t.failed_on.empty() ? 0 : codec::ToWire(fbb, t.failed_on);
  auto gpus = t.gpus.empty() ? 0 : codec::ToWire(fbb, t.gpus);
  auto endpoint = t.endpoint.port == 0 ? 0 : codec::ToWire(fbb, t.endpoint);
  auto waits_for = t.waits_for.empty() ? 0 : fbb.CreateVector(t.waits_for);
  fbb.Finish(wire::CreateTaskRecord(fbb, t.id, spec, t.state, t.attempt, worker, t.submitted_ms, reason, message,
                                    t.exit_code, watcher, t.order, t.rejected, t.first_seq, owner, t.ended_ms,
                                    t.not_before_ms, failed, gpus, endpoint, t.handed_back, t.output_end[0],
                                    t.output_end[1], waits_for));
  writes->Put(key, std::string_view(reinterpret_cast<const char*>(fbb.GetBufferPointer()), fbb.GetSize()));
}

void DeleteWorker(store::WriteBatch* writes, const std::string& id) { writes->Delete(keys::Worker(id)); }

void PutActiveTask(store::WriteBatch* writes, const Task& t, bool waiting, flatbuffers::FlatBufferBuilder& scratch) {
  if (!waiting && t.record == Task::Record::kWaiting) writes->Delete(keys::WaitingTask(t.id));
  if (waiting && t.record == Task::Record::kActive) writes->Delete(keys::ActiveTask(t.id));
  PutTask(writes, waiting ? keys::WaitingTask(t.id) : keys::ActiveTask(t.id), t, scratch);
}

void PutClientKey(store::WriteBatch* writes, const std::string& key, uint64_t task) {
  writes->Put(keys::ClientKey(key), keys::EncodeU64(task));
}

void DeleteClientKey(store::WriteBatch* writes, const std::string& key) { writes->Delete(keys::ClientKey(key)); }

Result<uint64_t> ReadNextTaskId(const store::Store& store) { return ReadMeta(store, keys::kMetaNextTask, 1); }
Result<uint64_t> ReadEpoch(const store::Store& store) { return ReadMeta(store, keys::kMetaEpoch, 0); }
void PutNextTaskId(store::WriteBatch* writes, uint64_t id) {
  writes->Put(std::string(keys::kMetaNextTask), keys::EncodeU64(id));
}
void PutEpoch(store::WriteBatch* writes, uint64_t epoch) {
  writes->Put(std::string(keys::kMetaEpoch), keys::EncodeU64(epoch));
}

void PutWorker(store::WriteBatch* writes, const WorkerState& w) {
  flatbuffers::FlatBufferBuilder fbb(512);
  auto caps = codec::ToWire(fbb, w.capabilities);
  auto hw = codec::ToWire(fbb, w.hardware);
  auto labels = codec::ToWire(fbb, w.labels);
  auto reg = wire::CreateWorkerRegistration(fbb, fbb.CreateString(w.id), fbb.CreateString(w.address),
                                            fbb.CreateString(w.node), w.instance, fbb.CreateString(w.version), w.slots,
                                            hw, labels, 0, caps, w.noop_executor, codec::ToWire(fbb, w.quarantined),
                                            w.limits.empty() ? 0 : fbb.CreateString(w.limits));
  fbb.Finish(
      wire::CreateWorkerRecord(fbb, reg, w.draining, w.drain_reason.empty() ? 0 : fbb.CreateString(w.drain_reason)));
  writes->Put(keys::Worker(w.id),
              std::string_view(reinterpret_cast<const char*>(fbb.GetBufferPointer()), fbb.GetSize()));
}

namespace {

// The verified wire.TaskRecord in `stored` (copied into `storage` when misaligned).
Result<const wire::TaskRecord*> VerifiedRecord(std::string_view stored, std::string_view key, std::string* storage) {
  std::string_view value = codec::AlignedBytes(stored, storage);
  flatbuffers::Verifier v(reinterpret_cast<const uint8_t*>(value.data()), value.size());
  if (!v.VerifyBuffer<wire::TaskRecord>(nullptr)) {
    std::string where(key.substr(0, 2));
    if (key.size() >= 10) where += std::to_string(keys::DecodeU64(key.substr(2)));
    return Status::Internal("store: bad task record at " + where);
  }
  return flatbuffers::GetRoot<wire::TaskRecord>(value.data());
}

}  // namespace

Status DecodeTaskInto(std::string_view stored, std::string_view key, Task* out) {
  std::string storage;
  auto verified = VerifiedRecord(stored, key, &storage);
  if (!verified.ok()) return verified.status();
  const auto& r = **verified;
  Task& t = *out;
  t.id = r.id();
  t.spec = codec::FromWire(r.spec());
  t.state = r.state();
  t.attempt = r.attempt();
  t.worker = Str(r.worker());
  t.submitted_ms = r.submitted_ms();
  t.reason = ParseReason(Str(r.reason()));
  t.message = Str(r.message());
  t.exit_code = r.exit_code();
  t.watcher = Str(r.watcher());
  t.order = r.order();
  t.rejected = r.rejected();
  t.first_seq = r.first_seq();
  t.owner = Str(r.owner());
  t.ended_ms = r.ended_ms();
  t.not_before_ms = r.not_before_ms();
  t.failed_on = codec::Strings(r.failed_workers());
  t.handed_back = r.handed_back();
  t.output_end[0] = r.stdout_end();
  t.output_end[1] = r.stderr_end();
  if (r.waits_for()) t.waits_for.assign(r.waits_for()->begin(), r.waits_for()->end());
  t.gpus = codec::Strings(r.gpus());
  t.endpoint = codec::FromWire(r.endpoint());
  return Status::Ok();
}

Result<Task> DecodeTask(std::string_view stored, std::string_view key) {
  Task t;
  Status s = DecodeTaskInto(stored, key, &t);
  if (!s.ok()) return s;
  return t;
}

Result<RecordSummary> DecodeSummary(std::string_view stored, std::string_view key) {
  std::string storage;
  auto verified = VerifiedRecord(stored, key, &storage);
  if (!verified.ok()) return verified.status();
  const auto& r = **verified;
  RecordSummary out;
  out.id = r.id();
  out.ended_ms = r.ended_ms();
  out.submitted_ms = r.submitted_ms();
  if (r.spec() != nullptr && r.spec()->key() != nullptr && r.spec()->key()->size() > 0) {
    out.key = Str(r.spec()->key());
    out.owner = Str(r.owner());
  }
  return out;
}

Result<uint64_t> ReadMeta(const store::Store& store, std::string_view key, uint64_t absent) {
  auto v = store.Get(key);
  if (!v.ok()) return v.status();
  if (!v->has_value()) return absent;
  if ((*v)->size() != 8) return Status::Internal("store: bad value at " + std::string(key));
  return keys::DecodeU64(**v);
}

namespace {

// The task record at `key`, marked as kept there (`record`); nullopt when absent.
Result<std::optional<Task>> ReadTaskAt(const store::Store& store, const std::string& key, Task::Record record) {
  auto v = store.Get(key);
  if (!v.ok()) return v.status();
  if (!v->has_value()) return std::optional<Task>();
  auto t = DecodeTask(**v, key);
  if (!t.ok()) return t.status();
  t->record = record;
  return std::optional<Task>(std::move(*t));
}

// The task records with keys in [begin, end), decoded and marked as kept there, until
// `visit` returns false.
Status ScanTasks(const store::Store& store, const std::string& begin, const std::string& end, Task::Record record,
                 const std::function<bool(Task&)>& visit) {
  Status bad = Status::Ok();
  Status s = store.Scan(begin, end, [&](std::string_view key, std::string_view value) {
    Task t;
    bad = DecodeTaskInto(value, key, &t);
    if (!bad.ok()) return false;
    t.record = record;
    return visit(t);
  });
  return s.ok() ? bad : s;
}

}  // namespace

Result<std::optional<Task>> ReadEndedTask(const store::Store& store, uint64_t id) {
  return ReadTaskAt(store, keys::Task(id), Task::Record::kNone);
}

Result<std::optional<Task>> ReadWaitingTask(const store::Store& store, uint64_t id) {
  return ReadTaskAt(store, keys::WaitingTask(id), Task::Record::kWaiting);
}

Result<uint64_t> ScanWaiting(const store::Store& store, uint64_t from, uint64_t to, size_t most,
                             const std::function<void(WaitingLine)>& visit) {
  Status bad = Status::Ok();
  uint64_t next = to;
  size_t seen = 0;
  Status s =
      store.Scan(keys::WaitingTask(from), keys::WaitingTask(to), [&](std::string_view key, std::string_view stored) {
        const uint64_t id = keys::DecodeU64(key.substr(keys::kWaitingPrefix.size()));
        if (seen == most) {
          next = id;
          return false;
        }
        ++seen;
        std::string storage;
        auto verified = VerifiedRecord(stored, key, &storage);
        if (!verified.ok()) {
          bad = verified.status();
          return false;
        }
        const auto& r = **verified;
        WaitingLine line;
        line.id = id;
        line.order = r.order();
        line.submitted_ms = r.submitted_ms();
        if (const wire::TaskSpec* spec = r.spec()) {
          line.demand.priority = spec->priority();
          line.demand.required_capabilities = codec::Strings(spec->requires_());
          Normalize(&line.demand.required_capabilities);
          line.demand.resources = codec::FromWire(spec->resources());
          line.demand.labels = codec::FromWire(spec->labels());
          if (spec->group()) line.demand.group = spec->group()->str();
          if (const auto* a = spec->array()) {
            line.demand.array = TaskSpec::Array{a->index(), a->count(), a->max_running()};
          }
        }
        if (r.owner()) line.owner = r.owner()->str();
        visit(std::move(line));
        return true;
      });
  if (!s.ok()) return s;
  if (!bad.ok()) return bad;
  return next;
}

Status ScanWaitingTasks(const store::Store& store, uint64_t after, const std::function<bool(Task&)>& visit) {
  return ScanTasks(store, keys::WaitingTask(after + 1), keys::PrefixEnd(keys::kWaitingPrefix), Task::Record::kWaiting,
                   visit);
}

Result<std::optional<uint64_t>> ReadKey(const store::Store& store, const std::string& key) {
  auto v = store.Get(keys::ClientKey(key));
  if (!v.ok()) return v.status();
  if (!v->has_value()) return std::optional<uint64_t>();
  if ((*v)->size() != 8) return Status::Internal("store: bad key record for \"" + key + "\"");
  return std::optional<uint64_t>(keys::DecodeU64(**v));
}

Status ScanWorkers(const store::Store& store, uint64_t now_ms, const std::function<void(WorkerState)>& visit) {
  Status bad = Status::Ok();
  Status s = store.Scan(keys::kWorkerPrefix, keys::PrefixEnd(keys::kWorkerPrefix),
                        [&](std::string_view key, std::string_view stored) {
                          std::string storage;
                          std::string_view value = codec::AlignedBytes(stored, &storage);
                          flatbuffers::Verifier v(reinterpret_cast<const uint8_t*>(value.data()), value.size());
                          if (!v.VerifyBuffer<wire::WorkerRecord>(nullptr)) {
                            bad = Status::Internal("store: bad worker record at " + std::string(key));
                            return false;
                          }
                          const auto* rec = flatbuffers::GetRoot<wire::WorkerRecord>(value.data());
                          const auto* reg = rec->registration();
                          if (!reg || !reg->id()) return true;
                          WorkerState w;
                          w.id = Str(reg->id());
                          w.address = Str(reg->address());
                          w.node = Str(reg->node());
                          w.version = Str(reg->version());
                          w.noop_executor = reg->noop_executor();
                          w.instance = reg->instance();
                          w.capabilities = codec::Strings(reg->capabilities());
                          Normalize(&w.capabilities);
                          w.hardware = codec::FromWire(reg->hardware());
                          w.labels = codec::FromWire(reg->labels());
                          w.quarantined = codec::FromWire(reg->quarantined());
                          w.limits = Str(reg->limits());
                          w.slots = std::max<uint32_t>(reg->slots(), 1);
                          w.draining = rec->draining();
                          w.drain_reason = Str(rec->drain_reason());
                          w.last_seen_ms = now_ms;
                          w.confirmed = false;
                          visit(std::move(w));
                          return true;
                        });
  return s.ok() ? bad : s;
}

Status ScanActiveTasks(const store::Store& store, const std::function<void(Task)>& visit) {
  return ScanTasks(store, std::string(keys::kActivePrefix), keys::PrefixEnd(keys::kActivePrefix), Task::Record::kActive,
                   [&](Task& t) {
                     visit(std::move(t));
                     return true;
                   });
}

}  // namespace fm::sched::records
