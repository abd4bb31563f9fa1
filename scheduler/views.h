// fm-ctl's views of the scheduler's state: built from the values passed in, bounded in
// count and bytes so that a reply never nears the directed message limit.
#pragma once

#include <flatbuffers/flatbuffers.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "scheduler/effects.h"
#include "scheduler/fleet_index.h"
#include "scheduler/task.h"
#include "schemas/fm_generated.h"

namespace fm::sched::views {

struct TaskPage {
  std::vector<flatbuffers::Offset<wire::TaskView>> tasks;
  uint64_t next = 0;  // the next page's `after`; 0 when this is the last page
};

// Calls its argument with every task that may be listed.
using ForEachTask = std::function<void(const std::function<void(const Task&)>&)>;

// One page of the tasks with ids above req.after, in id order, filtered by req.state,
// req.worker, req.group and req.owner (`only_owner`, when given, over req.owner: a client's view),
// at most min(req.limit or page_size, page_size). Sorts only the page: O(tasks) however
// many pages there are.
TaskPage Tasks(flatbuffers::FlatBufferBuilder& fbb, const wire::ControlRequest& req, size_t page_size,
               const ForEachTask& each, const std::optional<std::string>& only_owner = std::nullopt);

// One task in full: its spec, and `waiting` (why a pending task is not placed).
flatbuffers::Offset<wire::TaskView> TaskDetail(flatbuffers::FlatBufferBuilder& fbb, const Task& t,
                                               const std::string& waiting);

// Every worker of the fleet with its load and liveness.
std::vector<flatbuffers::Offset<wire::WorkerView>> Workers(flatbuffers::FlatBufferBuilder& fbb, const Fleet& fleet,
                                                           uint64_t now_ms);

}  // namespace fm::sched::views
