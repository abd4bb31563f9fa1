#include "scheduler/views.h"

#include <algorithm>

#include "schemas/codec.h"
#include "schemas/validate.h"
#include "schemas/vocabulary.h"

namespace fm::sched::views {

namespace {
flatbuffers::Offset<wire::TaskView> Summary(flatbuffers::FlatBufferBuilder& fbb, const Task& t) {
  return wire::CreateTaskViewDirect(fbb, TaskName(t.id).c_str(), StateName(t.state), t.attempt, t.worker.c_str(),
                                    nullptr, std::string(Name(t.reason)).c_str(), t.message.c_str(), 0, nullptr,
                                    t.submitted_ms, t.owner.empty() ? nullptr : t.owner.c_str());
}
}  // namespace

TaskPage Tasks(flatbuffers::FlatBufferBuilder& fbb, const wire::ControlRequest& req, size_t page_size,
               const ForEachTask& each, const std::optional<std::string>& only_owner) {
  const std::string state = codec::Str(req.state()), worker = codec::Str(req.worker()), group = codec::Str(req.group());
  const std::string owner = only_owner ? *only_owner : codec::Str(req.owner());
  const size_t limit = std::min<size_t>(req.limit() ? req.limit() : page_size, page_size);
  std::vector<const Task*> list;
  each([&](const Task& t) {
    if (t.id <= req.after()) return;
    if (!state.empty() && state != StateName(t.state)) return;
    if (!worker.empty() && worker != t.worker) return;
    if (!group.empty() && group != t.spec.group) return;
    if ((only_owner || !owner.empty()) && owner != t.owner) return;
    list.push_back(&t);
  });
  auto by_id = [](const Task* a, const Task* b) { return a->id < b->id; };
  const size_t take = std::min(limit, list.size());
  std::partial_sort(list.begin(), list.begin() + static_cast<long>(take), list.end(), by_id);
  TaskPage page;
  for (size_t i = 0; i < take; ++i) {
    if (fbb.GetSize() >= kReplyBytes) {  // the rest on the next page
      page.next = list[i - 1]->id;
      return page;
    }
    page.tasks.push_back(Summary(fbb, *list[i]));
  }
  if (take < list.size() && take > 0) page.next = list[take - 1]->id;
  return page;
}

flatbuffers::Offset<wire::TaskView> TaskDetail(flatbuffers::FlatBufferBuilder& fbb, const Task& t,
                                               const std::string& waiting) {
  auto command = codec::ToWire(fbb, t.spec.command);
  // A session's keys are shown by type and comment only: never whole, anywhere.
  TaskSpec shown = t.spec;
  if (shown.session) {
    for (auto& key : shown.session->ssh_keys) key = RedactedKey(key);
  }
  auto spec = codec::ToWire(fbb, shown);
  std::string_view reason = Name(t.reason);
  return wire::CreateTaskView(fbb, fbb.CreateString(TaskName(t.id)), fbb.CreateString(StateName(t.state)), t.attempt,
                              fbb.CreateString(t.worker), command, fbb.CreateString(reason.data(), reason.size()),
                              fbb.CreateString(t.message), spec, waiting.empty() ? 0 : fbb.CreateString(waiting),
                              t.submitted_ms, t.owner.empty() ? 0 : fbb.CreateString(t.owner),
                              t.gpus.empty() ? 0 : codec::ToWire(fbb, t.gpus),
                              t.endpoint.port == 0 ? 0 : codec::ToWire(fbb, t.endpoint), t.first_seq);
}

std::vector<flatbuffers::Offset<wire::WorkerView>> Workers(flatbuffers::FlatBufferBuilder& fbb, const Fleet& fleet,
                                                           uint64_t now_ms) {
  std::vector<flatbuffers::Offset<wire::WorkerView>> out;
  for (const auto& [id, w] : fleet.workers()) {
    out.push_back(wire::CreateWorkerView(
        fbb, fbb.CreateString(w.id), fbb.CreateString(w.node), fbb.CreateString(w.address),
        codec::ToWire(fbb, w.capabilities), codec::ToWire(fbb, w.hardware), codec::ToWire(fbb, w.labels), w.slots,
        w.slots_used, w.confirmed, w.draining, now_ms - std::min(now_ms, w.last_seen_ms), fbb.CreateString(w.version),
        w.cpus_used, w.memory_used, w.gpus_used, w.noop_executor,
        w.drain_reason.empty() ? 0 : fbb.CreateString(w.drain_reason), static_cast<uint32_t>(w.tasks.size()),
        codec::ToWire(fbb, w.quarantined), w.limits.empty() ? 0 : fbb.CreateString(w.limits)));
  }
  return out;
}

}  // namespace fm::sched::views
