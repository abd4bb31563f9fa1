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
  frame(1, "out2\n");
  std::string out, err;
  DemuxDockerLogs(raw, &out, &err);
  CHECK(out == "out1\nout2\n");
  CHECK(err == "err\n");
}
