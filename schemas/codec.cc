#include "schemas/codec.h"

#include <algorithm>

#include "schemas/vocabulary.h"

namespace fm::codec {

Result<const wire::Envelope*> Decode(const void* data, size_t size) {
  if (size > kMaxMessageBytes) {
    return Status::Invalid("oversized message: " + std::to_string(size) + " bytes, limit " +
                           std::to_string(kMaxMessageBytes));
  }
  if (size < 8) {
    return Status::Invalid("malformed message: " + std::to_string(size) + " bytes is too short for an fm envelope");
  }
  flatbuffers::Verifier verifier(static_cast<const uint8_t*>(data), size);
  if (!wire::VerifyEnvelopeBuffer(verifier)) {
    return Status::Invalid("malformed message: " + std::to_string(size) +
                           " bytes failed FlatBuffers verification as fm.wire.Envelope");
  }
  const wire::Envelope* envelope = wire::GetEnvelope(data);
  if (envelope->body_type() == wire::Body::NONE || envelope->body() == nullptr) {
    return Status::Invalid("malformed message: envelope has no body");
  }
  if (static_cast<int>(envelope->body_type()) > static_cast<int>(wire::Body::MAX)) {
    return Status::Invalid("unsupported message type " + std::to_string(static_cast<int>(envelope->body_type())));
  }
  return envelope;
}

std::string EncodeError(wire::ErrorCode code, const std::string& message, const std::string& about) {
  flatbuffers::FlatBufferBuilder fbb(256);
  auto body = wire::CreateErrorDirect(fbb, std::string(Name(code)).c_str(), message.c_str(),
                                      about.empty() ? nullptr : about.c_str());
  return Seal(fbb, body);
}

std::string EncodeCancelTask(const AttemptRef& ref) {
  flatbuffers::FlatBufferBuilder fbb(64);
  return Seal(fbb, wire::CreateCancelTask(fbb, wire::CreateTaskRef(fbb, ref.task, ref.attempt)));
}

std::string EncodeReRegister(uint64_t epoch) {
  flatbuffers::FlatBufferBuilder fbb(64);
  return Seal(fbb, wire::CreateReRegister(fbb, epoch));
}

std::string EncodeWorkerRejected(const std::string& id, const std::string& message) {
  flatbuffers::FlatBufferBuilder fbb(256);
  return Seal(fbb, wire::CreateWorkerRejectedDirect(fbb, id.c_str(), message.c_str()));
}

std::vector<std::string> Strings(const flatbuffers::Vector<flatbuffers::Offset<flatbuffers::String>>* v) {
  std::vector<std::string> out;
  if (!v) return out;
  out.reserve(v->size());
  for (const auto* s : *v) out.push_back(Str(s));
  return out;
}

flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<flatbuffers::String>>> ToWire(
    flatbuffers::FlatBufferBuilder& fbb, const std::vector<std::string>& strings) {
  return fbb.CreateVectorOfStrings(strings);
}

flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<wire::KeyValue>>> ToWire(
    flatbuffers::FlatBufferBuilder& fbb, const Labels& labels) {
  std::vector<flatbuffers::Offset<wire::KeyValue>> pairs;
  pairs.reserve(labels.size());
  for (const auto& [key, value] : labels) {
    pairs.push_back(wire::CreateKeyValueDirect(fbb, key.c_str(), value.c_str()));
  }
  return fbb.CreateVector(pairs);
}

flatbuffers::Offset<wire::Hardware> ToWire(flatbuffers::FlatBufferBuilder& fbb, const Hardware& hw) {
  std::vector<flatbuffers::Offset<wire::Gpu>> gpus;
  for (const auto& gpu : hw.gpus)
    gpus.push_back(
        wire::CreateGpuDirect(fbb, gpu.model.c_str(), gpu.memory, gpu.uuid.empty() ? nullptr : gpu.uuid.c_str()));
  return wire::CreateHardwareDirect(fbb, hw.cpus_milli, hw.memory, &gpus);
}

flatbuffers::Offset<wire::Resources> ToWire(flatbuffers::FlatBufferBuilder& fbb, const Resources& r) {
  return wire::CreateResourcesDirect(fbb, r.cpus_milli, r.memory, r.gpus, r.gpu_memory,
                                     r.gpu_model.empty() ? nullptr : r.gpu_model.c_str());
}

flatbuffers::Offset<wire::TaskSpec> ToWire(flatbuffers::FlatBufferBuilder& fbb, const TaskSpec& spec) {
  auto command = ToWire(fbb, spec.command);
  auto requires_ = ToWire(fbb, spec.required_capabilities);
  auto resources = ToWire(fbb, spec.resources);
  auto labels = ToWire(fbb, spec.labels);
  auto image = spec.image.empty() ? 0 : fbb.CreateString(spec.image);
  auto key = spec.key.empty() ? 0 : fbb.CreateString(spec.key);
  auto env = spec.env.empty() ? 0 : ToWire(fbb, spec.env);
  auto cwd = spec.cwd.empty() ? 0 : fbb.CreateString(spec.cwd);
  flatbuffers::Offset<wire::SessionSpec> session = 0;
  if (spec.session) {
    session = wire::CreateSessionSpec(fbb, ToWire(fbb, spec.session->ssh_keys), spec.session->ttl_ms,
                                      spec.session->idle_timeout_ms);
  }
  auto after = spec.after.empty() ? 0 : ToWire(fbb, spec.after);
  auto group = spec.group.empty() ? 0 : fbb.CreateString(spec.group);
  auto array =
      spec.array ? wire::CreateArraySpec(fbb, spec.array->index, spec.array->count, spec.array->max_running) : 0;
  return wire::CreateTaskSpec(fbb, command, requires_, resources, labels, image, spec.max_attempts, spec.timeout_ms,
                              spec.priority, key, env, cwd, spec.kill_timeout_ms,
                              spec.retry_exit_codes.empty() ? 0 : fbb.CreateVector(spec.retry_exit_codes),
                              spec.retry_backoff_ms, session, after, group, array);
}

flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<wire::Quarantine>>> ToWire(
    flatbuffers::FlatBufferBuilder& fbb, const Quarantines& quarantines) {
  if (quarantines.empty()) return 0;
  std::vector<flatbuffers::Offset<wire::Quarantine>> out;
  for (const auto& [capability, reason] : quarantines) {
    out.push_back(wire::CreateQuarantineDirect(fbb, capability.c_str(), reason.c_str()));
  }
  return fbb.CreateVector(out);
}

Quarantines FromWire(const flatbuffers::Vector<flatbuffers::Offset<wire::Quarantine>>* quarantines) {
  // Bounded: a worker says why in a line, for a few capabilities.
  constexpr size_t kMaxQuarantines = 16, kMaxReasonBytes = 512;
  Quarantines out;
  if (!quarantines) return out;
  for (const auto* q : *quarantines) {
    if (out.size() >= kMaxQuarantines) break;
    if (!q->capability() || q->capability()->size() == 0 || q->capability()->size() > 128) continue;
    std::string reason = Str(q->reason());
    if (reason.size() > kMaxReasonBytes) reason = reason.substr(0, kMaxReasonBytes) + "...";
    out[q->capability()->str()] = std::move(reason);
  }
  return out;
}

Labels FromWire(const flatbuffers::Vector<flatbuffers::Offset<wire::KeyValue>>* labels) {
  Labels out;
  if (!labels) return out;
  for (const auto* kv : *labels) out.emplace_back(Str(kv->key()), Str(kv->value()));
  Normalize(&out);
  return out;
}

Hardware FromWire(const wire::Hardware* hw) {
  Hardware out;
  if (!hw) return out;
  out.cpus_milli = hw->cpus_milli();
  out.memory = hw->memory();
  if (hw->gpus()) {
    for (const auto* gpu : *hw->gpus()) out.gpus.push_back({Str(gpu->model()), gpu->memory(), Str(gpu->uuid())});
  }
  return out;
}

Resources FromWire(const wire::Resources* r) {
  Resources out;
  if (!r) return out;
  out.cpus_milli = r->cpus_milli();
  out.memory = r->memory();
  out.gpus = r->gpus();
  out.gpu_memory = r->gpu_memory();
  out.gpu_model = Str(r->gpu_model());
  return out;
}

TaskSpec FromWire(const wire::TaskSpec* spec) {
  TaskSpec out;
  if (!spec) return out;
  out.command = Strings(spec->command());
  out.required_capabilities = Strings(spec->requires_());
  Normalize(&out.required_capabilities);
  out.resources = FromWire(spec->resources());
  out.labels = FromWire(spec->labels());
  out.image = Str(spec->image());
  out.max_attempts = spec->max_attempts();
  out.timeout_ms = spec->timeout_ms();
  out.priority = spec->priority();
  out.key = Str(spec->key());
  out.env = FromWire(spec->env());
  out.cwd = Str(spec->cwd());
  out.kill_timeout_ms = spec->kill_timeout_ms();
  if (spec->retry_exit_codes()) {
    out.retry_exit_codes.assign(spec->retry_exit_codes()->begin(), spec->retry_exit_codes()->end());
    Normalize(&out.retry_exit_codes);
  }
  out.retry_backoff_ms = spec->retry_backoff_ms();
  out.after = Strings(spec->after());
  if (spec->group()) out.group = spec->group()->str();
  if (const auto* a = spec->array()) out.array = TaskSpec::Array{a->index(), a->count(), a->max_running()};
  if (const auto* s = spec->session()) {
    out.session = SessionSpec{Strings(s->ssh_keys()), s->ttl_ms(), s->idle_timeout_ms()};
  }
  return out;
}

flatbuffers::Offset<wire::Endpoint> ToWire(flatbuffers::FlatBufferBuilder& fbb, const Endpoint& e) {
  return wire::CreateEndpointDirect(fbb, e.host.c_str(), e.port, e.user.c_str());
}

Endpoint FromWire(const wire::Endpoint* e) {
  if (!e) return {};
  return {Str(e->host()), e->port(), Str(e->user())};
}

flatbuffers::Offset<wire::Event> CopyEvent(flatbuffers::FlatBufferBuilder& fbb, const wire::Event& e,
                                           std::string (*text)(std::string_view)) {
  auto str = [&](const flatbuffers::String* s) -> std::string {
    if (!s) return {};
    return text ? text(s->string_view()) : s->str();
  };
  auto opt = [&](const flatbuffers::String* s) { return s ? fbb.CreateString(str(s)) : 0; };
  std::vector<flatbuffers::Offset<wire::PredicateCount>> breakdown;
  if (e.breakdown()) {
    for (const auto* pc : *e.breakdown()) {
      breakdown.push_back(wire::CreatePredicateCountDirect(fbb, str(pc->predicate()).c_str(), pc->workers(),
                                                           str(pc->detail()).c_str()));
    }
  }
  flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<flatbuffers::String>>> caps = 0;
  if (e.capabilities()) {
    std::vector<std::string> names;
    for (const auto* c : *e.capabilities()) names.push_back(str(c));
    caps = ToWire(fbb, names);
  }
  auto hw = e.hardware() ? ToWire(fbb, FromWire(e.hardware())) : 0;
  flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<wire::KeyValue>>> labels = 0;
  if (e.labels()) {
    Labels pairs;
    for (const auto* kv : *e.labels()) pairs.emplace_back(str(kv->key()), str(kv->value()));
    labels = ToWire(fbb, pairs);
  }
  auto type = opt(e.type()), time = opt(e.time()), task = opt(e.task()), worker = opt(e.worker()),
       reason = opt(e.reason()), message = opt(e.message()), stream = opt(e.stream()), data = opt(e.data()),
       owner = opt(e.owner());
  flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<flatbuffers::String>>> gpus = 0;
  if (e.gpus()) {
    std::vector<std::string> ids;
    for (const auto* g : *e.gpus()) ids.push_back(str(g));
    gpus = ToWire(fbb, ids);
  }
  auto bd = breakdown.empty() ? 0 : fbb.CreateVector(breakdown);
  return wire::CreateEvent(fbb, e.seq(), type, time, task, worker, reason, message, e.attempt(), e.exit_code(), stream,
                           data, e.eligible(), e.fleet(), bd, caps, hw, labels, e.time_ms(), owner, gpus,
                           e.endpoint() ? ToWire(fbb, FromWire(e.endpoint())) : 0, e.epoch());
}

}  // namespace fm::codec
