// GPU assignment without a GPU: workers load the fake NVML the tests build
// (tests/gpu/fake_nvml.cc) through LD_LIBRARY_PATH, and it reports the GPUs that
// $FM_FAKE_NVML lists. What the worker chose is what the task sees and what
// task.started names.
#include <catch2/catch.hpp>
#include <set>

#include "harness.h"

using namespace fm::test;
using Catch::Contains;

namespace {

// Starts worker `id` with the fake NVML reporting `gpus` ("MODEL=MiB;...").
Process& StartGpuWorker(Cluster& c, const std::string& id, const std::string& gpus,
                        std::vector<std::string> args = {}) {
  std::vector<std::string> argv = {"/usr/bin/env",
                                   std::string("LD_LIBRARY_PATH=") + FM_FAKE_NVML_DIR,
                                   "FM_FAKE_NVML=" + gpus,
                                   Bin("fm-worker"),
                                   "--id",
                                   id,
                                   "--heartbeat",
                                   "200ms"};
  argv.insert(argv.end(), args.begin(), args.end());
  return c.StartCustomWorker(id, argv);
}

// The value after "KEY=" up to the next space in the first tap line holding `needle`.
std::string Field(Cluster& c, const std::string& needle, const std::string& key) {
  for (const auto& line : c.tap().Lines()) {
    if (line.find(needle) == std::string::npos) continue;
    size_t at = line.find(key + "=");
    if (at == std::string::npos) return {};
    size_t end = line.find_first_of(" |", at);
    return line.substr(at + key.size() + 1, end == std::string::npos ? std::string::npos : end - at - key.size() - 1);
  }
  return {};
}

}  // namespace

TEST_CASE("each GPU task gets devices of its own that match its model and memory, named in task.started",
          "[integration][gpu]") {
  Cluster c;
  StartGpuWorker(c, "g1", "NVIDIA A100-SXM4-80GB=81920;NVIDIA A100-SXM4-80GB=81920;Tesla T4=15360", {"--slots", "4"});
  ToolRun table = c.Ctl({"workers"});
  REQUIRE(table.lines.size() == 2);
  CHECK_THAT(table.lines[1], Contains("3x") && Contains("A100") && Contains("T4"));

  // Two A100 tasks that run at the same time, one task any GPU of 10 GiB (the T4 serves:
  // the smallest that does), one with no GPU at all.
  const std::string show =
      R"("sh", "-c", "echo seen cuda=[$CUDA_VISIBLE_DEVICES] nv=[$NVIDIA_VISIBLE_DEVICES]; sleep 2")";
  ToolRun run = c.Submit(R"({"command": [)" + show +
                             R"(], "resources": {"gpus": 1, "gpu_model": "a100"}})"
                             "\n"
                             R"({"command": [)" +
                             show +
                             R"(], "resources": {"gpus": 1, "gpu_model": "A100"}})"
                             "\n"
                             R"({"command": [)" +
                             show +
                             R"(], "resources": {"gpus": 1, "gpu_memory": "10GiB"}})"
                             "\n"
                             R"({"command": [)" +
                             show +
                             R"(]})"
                             "\n",
                         {"--wait"});
  INFO(run.err);
  REQUIRE(run.lines.size() == 4);
  for (const auto& line : run.lines) CHECK_THAT(line, Contains(R"("status": "succeeded")"));

  std::string a = Field(c, "task.started task=t1 ", "gpus"), b = Field(c, "task.started task=t2 ", "gpus");
  std::string t4 = Field(c, "task.started task=t3 ", "gpus");
  CHECK(std::set<std::string>{a, b} == std::set<std::string>{"GPU-fake-0000", "GPU-fake-0001"});
  CHECK(t4 == "GPU-fake-0002");
  CHECK(Field(c, "task.started task=t4 ", "gpus").empty());
  // What each task saw is what was chosen for it; a task without GPUs sees none.
  CHECK(c.WaitEvent("task.log task=t1 worker=g1 stream=stdout | seen cuda=[" + a + "] nv=[" + a + "]"));
  CHECK(c.WaitEvent("task.log task=t2 worker=g1 stream=stdout | seen cuda=[" + b + "] nv=[" + b + "]"));
  CHECK(c.WaitEvent("task.log task=t3 worker=g1 stream=stdout | seen cuda=[GPU-fake-0002] nv=[GPU-fake-0002]"));
  CHECK(c.WaitEvent("task.log task=t4 worker=g1 stream=stdout | seen cuda=[] nv=[void]"));
  // Stored with the task.
  ToolRun shown = c.Ctl({"task", "t3"});
  bool listed = false;
  for (const auto& line : shown.lines)
    listed |= line.rfind("gpus", 0) == 0 && line.find("GPU-fake-0002") != std::string::npos;
  CHECK(listed);
}

TEST_CASE("a two-GPU task gets two devices, and tasks wait for GPUs rather than share one", "[integration][gpu]") {
  Cluster c;
  StartGpuWorker(c, "g2", "Tesla T4=15360;Tesla T4=15360", {"--slots", "4"});
  // Three one-GPU tasks on two GPUs: the third is placed only when one ends; never are
  // two of them on one device at once (each writes its device while it holds it).
  TempDir dir;
  const std::string hold =
      R"(["sh", "-c", "d=)" + dir.path() + R"(/$CUDA_VISIBLE_DEVICES; mkdir $d || exit 9; sleep 1; rmdir $d"])";
  ToolRun run = c.Submit(R"({"command": )" + hold +
                             R"(, "resources": {"gpus": 1}})"
                             "\n"
                             R"({"command": )" +
                             hold +
                             R"(, "resources": {"gpus": 1}})"
                             "\n"
                             R"({"command": )" +
                             hold +
                             R"(, "resources": {"gpus": 1}})"
                             "\n"
                             R"({"command": ["sh", "-c", "echo pair=$CUDA_VISIBLE_DEVICES"], "resources": {"gpus": 2}})"
                             "\n",
                         {"--wait"});
  INFO(run.err);
  REQUIRE(run.lines.size() == 4);
  for (const auto& line : run.lines) CHECK_THAT(line, Contains(R"("status": "succeeded")"));
  CHECK(c.WaitEvent("pair=GPU-fake-0000,GPU-fake-0001"));
  CHECK(Field(c, "task.started task=t4 ", "gpus") == "GPU-fake-0000,GPU-fake-0001");
}
