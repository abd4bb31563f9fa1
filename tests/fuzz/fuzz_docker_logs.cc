// libFuzzer: the Docker log stream demultiplexer (bytes from the Engine API).
#include <cstddef>
#include <cstdint>
#include <string>

#include "worker/docker_client.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string out, err;
  fm::worker::DemuxDockerLogs(std::string(reinterpret_cast<const char*>(data), size), &out, &err);
  return 0;
}
