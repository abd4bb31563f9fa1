// libFuzzer: the worker's inbound path. Bytes go to the worker core as a message from
// the scheduler (dispatch, cancel, acknowledgement, ...): whatever passes the verifier is
// validated like a submission before anything would run. Attempts go to an executor that
// ends each at once, so runs, results and the report are exercised too.
#include <cstddef>
#include <cstdint>

#include "worker/core.h"
#include "worker/executor.h"

namespace {
class EndAtOnce final : public fm::worker::Executor {
 public:
  fm::worker::RunSink* sink = nullptr;
  void Start(const fm::worker::Ref& ref, const fm::TaskSpec& spec, const fm::worker::Grant&) override {
    sink->OnRunOutput(ref, "stdout", spec.command.empty() ? "" : spec.command.front());
    sink->OnRunEnded(ref, {});
  }
  void Cancel(const fm::worker::Ref&) override {}
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fm::worker::WorkerIdentity identity;
  identity.id = "fuzz";
  identity.slots = 4;
  fm::worker::WorkerCore core(identity);
  EndAtOnce executor;
  executor.sink = &core;
  core.SetExecutor(&executor);
  core.OnDirected("fm-scheduler", data, size, 1000);
  core.Tick(5000);
  core.Heartbeat();
  (void)core.EndTurn();
  return 0;
}
