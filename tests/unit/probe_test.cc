#include "worker/probe.h"

#include <catch2/catch.hpp>

#include "worker/cgroup.h"
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
  const std::string v1 = "4:memory:/process_api/abc\n3:cpu,cpuacct:/\n2:pids:/p\n0::/\n";
  CHECK(ParseCgroupV1Path(v1, "memory") == "/process_api/abc");
  CHECK(ParseCgroupV1Path(v1, "cpu") == "/");
  CHECK(ParseCgroupV1Path(v1, "cpuacct") == "/");
  CHECK(ParseCgroupV1Path(v1, "pids") == "/p");
  CHECK(ParseCgroupV1Path(v1, "blkio") == "");
}

TEST_CASE("a Docker create request carries the limits, labels and the GPUs chosen, as DeviceRequests", "[unit]") {
  DockerClient::ContainerSpec spec;
  spec.cpus_milli = 1500;
  spec.memory = 64ull << 20;
  spec.pids_limit = 4096;
  spec.labels = {{"fm.task", "t1"}};
  spec.gpus = {"GPU-a", "GPU-c"};
  auto body = DockerClient::CreateBody("img", {"true"}, spec);
  REQUIRE(body.ok());
  std::string compact;
  for (char ch : *body) {
    if (ch != ' ' && ch != '\n') compact += ch;
  }
  CHECK_THAT(compact, Catch::Contains(R"("NanoCpus":1500000000)") && Catch::Contains(R"("Memory":67108864)") &&
                          Catch::Contains(R"("PidsLimit":4096)") &&
                          Catch::Contains(R"("DeviceRequests":[{"Driver":"nvidia","DeviceIDs":["GPU-a","GPU-c"],)") &&
                          Catch::Contains(R"("Capabilities":[["gpu"]])"));
  spec.gpus.clear();
  body = DockerClient::CreateBody("img", {"true"}, spec);
  REQUIRE(body.ok());
  CHECK_THAT(*body, !Catch::Contains("DeviceRequests"));
}

TEST_CASE("a failed container start is the task's when the runtime ran and the command is not there", "[unit]") {
  CHECK(IsCommandMissing(
      "start: HTTP 500: runc: runc create failed: unable to start container process: exec: \"/nonexistent\": stat "
      "/nonexistent: no such file or directory: OCI runtime attempted to invoke a command that was not found"));
  CHECK(IsCommandMissing("OCI runtime create failed: exec: \"x\": executable file not found in $PATH: unknown"));
  CHECK_FALSE(IsCommandMissing("start: HTTP 500: fmbad: fm test: this runtime is broken: OCI runtime error"));
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
