// fm-ctl's requests to the scheduler (ControlRequest): who may ask what, the answers
// read from the scheduler's state (ping, workers, tasks, one task with its events), and
// the actions, each done by the part that owns it: drain and undrain by membership,
// cancel by the engine's task state machine, snapshot by the daemon once the turn is
// committed. It reads the engine's state (a friend) and changes none of it itself.
//
// Thread: one; the engine's.
#pragma once

#include <cstdint>
#include <string>

#include "schemas/fm_generated.h"

namespace fm::sched {

class Engine;

namespace control {

// Answers `req` from `from` (a ControlReply, or an Error for a sender not allowed).
void Handle(Engine& engine, const std::string& from, const wire::ControlRequest& req, uint64_t now_ms);

struct Internals;  // control.cc's reader of the engine's state

}  // namespace control
}  // namespace fm::sched
