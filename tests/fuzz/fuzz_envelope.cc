// libFuzzer: every inbound message decoder. Bytes go through the size check and the
// FlatBuffers verifier, and what passes is handed to the scheduler engine as a directed
// and as a bus message, the way fm-scheduler would.
#include <cstddef>
#include <cstdint>

#include "scheduler/engine.h"
#include "schemas/codec.h"
#include "store/store.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static auto store = fm::store::NewMemStore();
  auto envelope = fm::codec::Decode(data, size);
  if (!envelope.ok()) return 0;
  fm::sched::Engine engine({});
  if (!engine.Recover(store.get(), 1000).ok()) return 0;
  engine.OnDirected("fuzz", **envelope, 1000);
  engine.OnBus(**envelope, 1000);
  engine.Tick(2000);
  engine.FinishTurn(2000);
  return 0;
}
