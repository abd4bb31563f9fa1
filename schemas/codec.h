// Encoding and decoding of the wire envelope. Every inbound buffer goes through
// Decode(): refused by size first, then by the FlatBuffers verifier, before any field
// is read.
#pragma once

#include <flatbuffers/flatbuffers.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "schemas/fm_generated.h"
#include "schemas/model.h"
#include "schemas/status.h"

namespace fm::codec {

// Largest payload any fm process accepts. Larger ones are refused before decoding.
constexpr size_t kMaxMessageBytes = 8u << 20;

// On success the envelope points into `data`, which must outlive it.
// Errors: Invalid("oversized ..."), Invalid("malformed ...") naming what failed.
Result<const wire::Envelope*> Decode(const void* data, size_t size);

// Finishes `fbb` with an Envelope around `body`; the bytes stay in the builder.
template <typename T>
void FinishEnvelope(flatbuffers::FlatBufferBuilder& fbb, flatbuffers::Offset<T> body) {
  fbb.Finish(wire::CreateEnvelope(fbb, wire::BodyTraits<T>::enum_value, body.Union()));
}

// Finishes `fbb` with an Envelope around `body` and returns the bytes.
template <typename T>
std::string Seal(flatbuffers::FlatBufferBuilder& fbb, flatbuffers::Offset<T> body) {
  FinishEnvelope(fbb, body);
  return std::string(reinterpret_cast<const char*>(fbb.GetBufferPointer()), fbb.GetSize());
}

// A directed error reply.
std::string EncodeError(wire::ErrorCode code, const std::string& message, const std::string& about = {});
// The scheduler's commands to a worker: stop an attempt; register again (the cluster's
// epoch); go away (its id is another's, or a newer instance replaced it).
std::string EncodeCancelTask(const AttemptRef& ref);
std::string EncodeReRegister(uint64_t epoch);
std::string EncodeWorkerRejected(const std::string& id, const std::string& message);

// Null-safe readers.
inline std::string Str(const flatbuffers::String* s) { return s ? s->str() : std::string(); }

// The alignment FlatBuffers needs of a buffer's start: that of its largest scalar (fm's
// schemas force no larger alignment). ZeroMQ's large messages start 8-aligned.
inline constexpr size_t kAlignment = alignof(uint64_t);

// FlatBuffers reads scalars in place, so a buffer must start at an aligned address:
// `bytes` as they are when they do, else copied into *storage. Returns aligned bytes.
inline std::string_view AlignedBytes(std::string_view bytes, std::string* storage) {
  if (reinterpret_cast<uintptr_t>(bytes.data()) % kAlignment == 0) return bytes;
  storage->assign(bytes.data(), bytes.size());  // heap or in-object: aligned either way
  return *storage;
}

// Calls `visit(event, envelope_bytes)` for the event `env` holds, or for each event of
// the EventBlock it holds (each nested envelope verified, in order), until `visit`
// returns false. `envelope_bytes` are the event's own Envelope(Event), valid during the
// call. Returns false when a nested event is malformed (or `visit` stopped).
template <typename Visit>
bool ForEachEvent(const wire::Envelope& env, std::string_view env_bytes, Visit visit) {
  if (env.body_type() == wire::Body::Event) return visit(*env.body_as_Event(), env_bytes);
  const auto* block = env.body_as_EventBlock();
  if (!block || !block->events()) return false;
  std::string aligned;  // a nested buffer is copied out so that its fields are aligned
  for (const auto* bytes : *block->events()) {
    if (!bytes->envelope()) return false;
    aligned.assign(reinterpret_cast<const char*>(bytes->envelope()->data()), bytes->envelope()->size());
    auto inner = Decode(aligned.data(), aligned.size());
    if (!inner.ok() || (*inner)->body_type() != wire::Body::Event) return false;
    if (!visit(*(*inner)->body_as_Event(), std::string_view(aligned))) return false;
  }
  return true;
}

// Re-encodes an event into `fbb` field by field (FlatBuffers has no deep copy); with
// `text`, every string field passes through it (e.g. ValidUtf8).
flatbuffers::Offset<wire::Event> CopyEvent(flatbuffers::FlatBufferBuilder& fbb, const wire::Event& e,
                                           std::string (*text)(std::string_view) = nullptr);
std::vector<std::string> Strings(const flatbuffers::Vector<flatbuffers::Offset<flatbuffers::String>>* v);

flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<flatbuffers::String>>> ToWire(
    flatbuffers::FlatBufferBuilder& fbb, const std::vector<std::string>& strings);
flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<wire::KeyValue>>> ToWire(
    flatbuffers::FlatBufferBuilder& fbb, const Labels& labels);
flatbuffers::Offset<wire::Hardware> ToWire(flatbuffers::FlatBufferBuilder& fbb, const Hardware& hw);
flatbuffers::Offset<wire::Resources> ToWire(flatbuffers::FlatBufferBuilder& fbb, const Resources& r);
flatbuffers::Offset<wire::TaskSpec> ToWire(flatbuffers::FlatBufferBuilder& fbb, const TaskSpec& spec);

Labels FromWire(const flatbuffers::Vector<flatbuffers::Offset<wire::KeyValue>>* labels);
Hardware FromWire(const wire::Hardware* hw);
Resources FromWire(const wire::Resources* r);
TaskSpec FromWire(const wire::TaskSpec* spec);

flatbuffers::Offset<wire::Endpoint> ToWire(flatbuffers::FlatBufferBuilder& fbb, const Endpoint& e);
Endpoint FromWire(const wire::Endpoint* e);

// Quarantined capabilities: capability -> reason (0 / empty when none).
using Quarantines = std::map<std::string, std::string>;
flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<wire::Quarantine>>> ToWire(
    flatbuffers::FlatBufferBuilder& fbb, const Quarantines& quarantines);
Quarantines FromWire(const flatbuffers::Vector<flatbuffers::Offset<wire::Quarantine>>* quarantines);

}  // namespace fm::codec
