// libFuzzer: a standby parses the write batches its leader ships (store::WriteBatch::Parse).
// Whatever parses must serialize back to the very bytes, and apply to a store.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "store/store.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  auto batch = fm::store::WriteBatch::Parse(bytes);
  if (!batch.ok()) return 0;
  if (batch->Serialize() != bytes) std::abort();
  static auto store = fm::store::NewMemStore();
  (void)store->Write(*batch, false);
  return 0;
}
