// libFuzzer: the Docker log stream as it comes from the Engine API: a chunked HTTP body
// holding multiplexed frames, fed in pieces whose sizes the input chooses.
#include <cstddef>
#include <cstdint>
#include <string>

#include "worker/docker_client.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t piece = 1 + data[0] % 64;
  std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
  fm::worker::ChunkedDecoder chunks;
  fm::worker::LogDemuxer frames, direct;
  size_t out = 0;
  auto sink = [&](const char*, std::string_view d) { out += d.size(); };
  for (size_t i = 0; i < in.size(); i += piece) {
    std::string_view part = in.substr(i, piece);
    (void)direct.Feed(part, sink);
    (void)chunks.Feed(part, [&](std::string_view body) { (void)frames.Feed(body, sink); });
  }
  if (out > 2 * in.size()) __builtin_trap();  // never more output than input
  return 0;
}
