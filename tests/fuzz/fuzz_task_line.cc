// libFuzzer: fm-submit's task-line parser (FlatBuffers' JSON parser plus validation).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "schemas/json.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static fm::JsonCodec codec;
  auto spec = codec.ParseTaskLine(std::string_view(reinterpret_cast<const char*>(data), size));
  (void)spec;
  return 0;
}
