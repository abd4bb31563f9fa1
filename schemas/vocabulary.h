// The names the typed vocabulary (fm.fbs: EventType, Reason, ErrorCode, TaskState,
// SubmitStatus) travels as on the wire, in the store, in JSON and in what tools print. One table per enum, in both
// directions: code compares enums and only this file spells the strings.
#pragma once

#include <string_view>

#include "schemas/fm_generated.h"

namespace fm {

// "task.failed"; "" for Unknown.
std::string_view Name(wire::EventType type);
// "no_eligible_worker"; "" for None.
std::string_view Name(wire::Reason reason);
// "malformed"; "" for Unknown.
std::string_view Name(wire::ErrorCode code);
// "pending", "queued", "running", "succeeded", "failed", "cancelled".
std::string_view Name(wire::TaskState state);
// "accepted", "rejected", "succeeded", "failed", "cancelled".
std::string_view Name(wire::SubmitStatus status);

// The enum a name stands for; Unknown / None for a name this version does not know.
wire::EventType ParseEventType(std::string_view name);
wire::Reason ParseReason(std::string_view name);
wire::ErrorCode ParseErrorCode(std::string_view name);

}  // namespace fm
