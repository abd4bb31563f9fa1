// The scheduler's records in the store (key layout: store/keys.h and
// docs/ARCHITECTURE.md): tasks and workers encoded as FlatBuffers tables, the meta
// counters, and the scans recovery makes. Every read error is a value, never taken for
// "not found"; a record that does not verify is an error naming its key.
#pragma once

#include <flatbuffers/flatbuffers.h>

#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "scheduler/fleet.h"
#include "scheduler/task.h"
#include "schemas/status.h"
#include "store/store.h"

namespace fm::sched::records {

// Encodes `t` as a wire.TaskRecord at `key` (an a/ or t/ key) in `writes`; `scratch` is
// reused between records.
void PutTask(store::WriteBatch* writes, const std::string& key, const Task& t, flatbuffers::FlatBufferBuilder& scratch);
// Encodes `w`'s announcement and drain state as a wire.WorkerRecord at w/<id>.
void PutWorker(store::WriteBatch* writes, const WorkerState& w);
// Deletes worker `id`'s record (it was lost).
void DeleteWorker(store::WriteBatch* writes, const std::string& id);
// A task not ended, at q/<id> when `waiting` (it waits for its first placement), else
// at a/<id>; where t.record says it was before, that record is deleted.
void PutActiveTask(store::WriteBatch* writes, const Task& t, bool waiting, flatbuffers::FlatBufferBuilder& scratch);
// The task a client key (scoped by owner) names, at k/<key>; deleted with the task.
void PutClientKey(store::WriteBatch* writes, const std::string& key, uint64_t task);
void DeleteClientKey(store::WriteBatch* writes, const std::string& key);
// The meta counters: the next task id (1 when absent) and the cluster epoch (0: none yet).
Result<uint64_t> ReadNextTaskId(const store::Store& store);
Result<uint64_t> ReadEpoch(const store::Store& store);
void PutNextTaskId(store::WriteBatch* writes, uint64_t id);
void PutEpoch(store::WriteBatch* writes, uint64_t epoch);

// Decodes a wire.TaskRecord. Error: it does not verify.
Result<Task> DecodeTask(std::string_view value, std::string_view key);
// The same into `*out` (a fresh Task): no move of the decoded task after.
Status DecodeTaskInto(std::string_view value, std::string_view key, Task* out);
// What retention needs of a stored task record, read without decoding the rest (its
// spec, its output): the id, when it ended (or was submitted), and its client key.
struct RecordSummary {
  uint64_t id = 0, ended_ms = 0, submitted_ms = 0;
  std::string owner, key;  // the client key and its owner; empty without one
};
Result<RecordSummary> DecodeSummary(std::string_view value, std::string_view key);

// The u64 at a meta key; `absent` when it is not there.
Result<uint64_t> ReadMeta(const store::Store& store, std::string_view key, uint64_t absent);
// The ended task `id` (t/); nullopt when it is not there.
Result<std::optional<Task>> ReadEndedTask(const store::Store& store, uint64_t id);
// The task `id` waiting for its first placement (q/, its record kWaiting); nullopt when
// it is not there (placed, ended, or never).
Result<std::optional<Task>> ReadWaitingTask(const store::Store& store, uint64_t id);
// What placement needs of a waiting task: its place in line and its demand (the spec's
// capabilities, resources, labels and priority; the rest left empty).
struct WaitingLine {
  uint64_t id = 0, order = 0, submitted_ms = 0;
  TaskSpec demand;  // with its priority (and its group)
  std::string owner;
};
// Visits the waiting tasks (q/) with ids in [from, to), in id order, at most `most` of
// them; returns the id to go on from (`to` when all were visited). Decodes only what
// WaitingLine holds. Error: a read failed or a record does not verify.
Result<uint64_t> ScanWaiting(const store::Store& store, uint64_t from, uint64_t to, size_t most,
                             const std::function<void(WaitingLine)>& visit);
// Visits the waiting tasks (q/) with ids above `after` in id order, decoded, until
// `visit` returns false (it may move the task away).
Status ScanWaitingTasks(const store::Store& store, uint64_t after, const std::function<bool(Task&)>& visit);
// The task id a client key was first used for (k/); nullopt when the key is new.
Result<std::optional<uint64_t>> ReadKey(const store::Store& store, const std::string& key);

// Every stored worker, as last announced (not confirmed, last seen `now_ms`).
Status ScanWorkers(const store::Store& store, uint64_t now_ms, const std::function<void(WorkerState)>& visit);
// Every task not ended (a/), in id order.
Status ScanActiveTasks(const store::Store& store, const std::function<void(Task)>& visit);

}  // namespace fm::sched::records
