#include "worker/probe.h"

#include <catch2/catch.hpp>

#include "worker/docker_client.h"
#include "worker/worker.h"

using namespace fm;
using namespace fm::worker;

TEST_CASE("cgroup cpu.max and /proc/self/cgroup parse", "[unit]") {
  CHECK(ParseCgroupCpuMax("150000 100000\n") == 1500);
  CHECK(ParseCgroupCpuMax("max 100000\n") == 0);
  CHECK(ParseCgroupCpuMax("") == 0);
  CHECK(ParseCgroupV2Path("0::/system.slice/fm.service\n") == "/system.slice/fm.service");
  CHECK(ParseCgroupV2Path("12:cpu:/x\n") == "");
}

TEST_CASE("the probed machine has cpus and memory", "[unit]") {
  CHECK(ProbeCpusMilli() >= 1000);
  CHECK(ProbeMemoryBytes() > (64ull << 20));
}

TEST_CASE("a worker's --cpus and --memory may only lower what was probed", "[unit]") {
  Hardware hw{2000, 4ull << 30, {}};
  WorkerOptions o;
  o.cpus_milli = 1000;
  o.memory = 1ull << 30;
  REQUIRE(ApplyLimits(o, &hw).ok());
  CHECK(hw.cpus_milli == 1000);
  CHECK(hw.memory == 1ull << 30);
  WorkerOptions raise;
  raise.cpus_milli = 64000;
  Status s = ApplyLimits(raise, &hw);
  REQUIRE_FALSE(s.ok());
  CHECK_THAT(s.message(), Catch::Contains("can only lower"));
  WorkerOptions more_memory;
  more_memory.memory = 1ull << 40;
  CHECK_FALSE(ApplyLimits(more_memory, &hw).ok());
}

TEST_CASE("a docker socket with nothing behind it is not a docker capability", "[unit]") {
  std::string note;
  CHECK_FALSE(ProbeDocker("/nonexistent/docker.sock", 200, &note));
  CHECK_THAT(note, Catch::Contains("did not answer"));
}

TEST_CASE("docker's multiplexed log stream splits into stdout and stderr", "[unit]") {
  std::string raw;
  auto frame = [&](char kind, const std::string& data) {
    raw += std::string{kind, 0, 0, 0};
    uint32_t n = static_cast<uint32_t>(data.size());
    raw += std::string{static_cast<char>(n >> 24), static_cast<char>(n >> 16), static_cast<char>(n >> 8),
                       static_cast<char>(n)};
    raw += data;
  };
  frame(1, "out1\n");
  frame(2, "err\n");
  frame(0, "");
  frame(1, "out2\n");
  // However the stream is cut into reads, the same output comes out.
  for (size_t piece : {size_t{1}, size_t{3}, size_t{8}, raw.size()}) {
    LogDemuxer demux;
    std::string out, err;
    for (size_t i = 0; i < raw.size(); i += piece) {
      REQUIRE(demux.Feed(std::string_view(raw).substr(i, piece), [&](const char* stream, std::string_view data) {
        (std::string(stream) == "stderr" ? err : out).append(data);
      }));
    }
    CHECK(out == "out1\nout2\n");
    CHECK(err == "err\n");
  }
  LogDemuxer demux;
  CHECK_FALSE(demux.Feed(std::string("\x07\0\0\0\0\0\0\1x", 9), [](const char*, std::string_view) {}));
}

TEST_CASE("a chunked HTTP body decodes the same however it is cut into reads, and garbage is refused", "[unit]") {
  const std::string body = "5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n";
  for (size_t piece = 1; piece <= body.size(); ++piece) {
    ChunkedDecoder chunks;
    std::string out;
    for (size_t i = 0; i < body.size(); i += piece) {
      REQUIRE(chunks.Feed(std::string_view(body).substr(i, piece), [&](std::string_view d) { out.append(d); }));
    }
    CHECK(out == "hello 0123456789");
    CHECK(chunks.done());
  }
  ChunkedDecoder bad;
  CHECK_FALSE(bad.Feed("zz\r\n", [](std::string_view) {}));
  ChunkedDecoder missing_crlf;
  CHECK_FALSE(missing_crlf.Feed("1\r\nab\r\n", [](std::string_view) {}));
}
