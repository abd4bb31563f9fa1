// Limits on exec attempts: a cgroup leaf each (v1 on these machines, as root; v2 where
// the worker has a delegated cgroup), with the cpus, memory and pids placement reserved;
// a task past its memory ends with memory_limit; a timeout kills every process in the
// leaf, even one that left its process group and dropped its marks. Without a cgroup the
// worker says "limits: off".
#include <catch2/catch.hpp>

#include "harness.h"

using namespace fm::test;
using Catch::Contains;

namespace {
bool LimitsOn(Cluster& c, const std::string& worker) {
  for (const auto& line : c.Ctl({"workers"}).lines) {
    if (line.rfind(worker + " ", 0) == 0) return line.find("limits: off") == std::string::npos;
  }
  return false;
}
}  // namespace

TEST_CASE("an exec task runs in a cgroup leaf of its own with the cpus, memory and pids placement reserved",
          "[integration][limits]") {
  Cluster c;
  c.StartWorker("lim", {"--slots", "2"});
  if (!LimitsOn(c, "lim")) {
    WARN("no cgroup this test may use here: limits are off, as fm-ctl workers says");
    return;
  }
  // The task reads its own cgroup's limits, v1 or v2, from /proc/self/cgroup.
  const std::string script =
      "v2=$(sed -n 's/^0:://p' /proc/self/cgroup); "
      "if [ -e /sys/fs/cgroup/cgroup.controllers ]; then d=/sys/fs/cgroup$v2; "
      "echo mem=$(cat $d/memory.max) pids=$(cat $d/pids.max) cpu=$(cut -d' ' -f1 $d/cpu.max) leaf=$(basename $d); "
      "else m=$(grep -E '^[0-9]+:memory:' /proc/self/cgroup | cut -d: -f3); "
      "p=$(grep -E '^[0-9]+:pids:' /proc/self/cgroup | cut -d: -f3); "
      "u=$(grep -E '^[0-9]+:([a-z,]*,)?cpu(,[a-z,]*)?:' /proc/self/cgroup | cut -d: -f3); "
      "echo mem=$(cat /sys/fs/cgroup/memory$m/memory.limit_in_bytes) pids=$(cat /sys/fs/cgroup/pids$p/pids.max) "
      "cpu=$(cat /sys/fs/cgroup/cpu$u/cpu.cfs_quota_us) leaf=$(basename $m); fi";
  ToolRun run = c.Submit(R"({"command": ["sh", "-c", ")" + script +
                             R"("], "resources": {"cpus": 1.5, "memory": "96MiB"}})"
                             "\n",
                         {"--wait"});
  INFO(run.err);
  REQUIRE(run.lines.size() == 1);
  CHECK_THAT(run.lines[0], Contains(R"("status": "succeeded")"));
  CHECK(c.WaitEvent("stdout | mem=100663296 pids=4096 cpu=150000 leaf=fm-t1-1"));
}

TEST_CASE("an exec task allocating past its memory ends with reason memory_limit", "[integration][limits]") {
  Cluster c;
  c.StartWorker("oom");
  if (!LimitsOn(c, "oom")) {
    WARN("no cgroup this test may use here: limits are off");
    return;
  }
  ToolRun run = c.Submit(
      R"j({"command": ["python3", "-c", "b = b'x' * (256 << 20); print(len(b))"], "resources": {"memory": "64MiB"}})j"
      "\n",
      {"--wait"});
  INFO(run.err);
  REQUIRE(run.lines.size() == 1);
  CHECK_THAT(run.lines[0],
             Contains(R"("status": "failed")") && Contains(R"("reason": "memory_limit")") && Contains("64 MiB"));
  // Within its memory, the same program succeeds.
  run = c.Submit(
      R"j({"command": ["python3", "-c", "b = b'x' * (16 << 20); print(len(b))"], "resources": {"memory": "256MiB"}})j"
      "\n",
      {"--wait"});
  REQUIRE(run.lines.size() == 1);
  CHECK_THAT(run.lines[0], Contains(R"("status": "succeeded")"));
}

TEST_CASE("a timeout kills every process in the attempt's cgroup, even one that left its group and its marks",
          "[integration][limits]") {
  Cluster c;
  c.StartWorker("esc");
  if (!LimitsOn(c, "esc")) {
    WARN("no cgroup this test may use here: limits are off");
    return;
  }
  // `env -i setsid` leaves the process group and drops every FM_ variable: only the
  // cgroup still knows it is the attempt's.
  ToolRun run =
      c.Submit(R"({"command": ["sh", "-c", "env -i setsid sleep 31415 & echo escaped; sleep 600"], "timeout": "1s",)"
               R"( "kill_timeout": "1s", "max_attempts": 1})"
               "\n",
               {"--wait"});
  REQUIRE(run.lines.size() == 1);
  CHECK_THAT(run.lines[0], Contains(R"("reason": "timeout")"));
  CHECK(c.WaitEvent("stdout | escaped"));
  ToolRun left = RunTool({"/usr/bin/pgrep", "-f", "sleep 31415"});
  CHECK(left.exit_code == 1);  // none
}

TEST_CASE("a worker without a cgroup for limits says so: fm-ctl workers shows limits: off", "[integration][limits]") {
  Cluster c;
  c.StartWorker("nolim", {"--cgroup", "off"});
  ToolRun table = c.Ctl({"workers"});
  REQUIRE(table.lines.size() == 2);
  CHECK_THAT(table.lines[1], Contains("nolim") && Contains("limits: off"));
  CHECK_THAT(c.worker("nolim").Stderr(), Contains("limits: off: exec tasks' cpus and memory are not enforced"));
  CHECK(c.WaitEvent("worker.registered worker=nolim: node"));
  CHECK_FALSE(LimitsOn(c, "nolim"));
}
