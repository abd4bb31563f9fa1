#include "scheduler/predicates.h"

#include <catch2/catch.hpp>

#include "scheduler/explain.h"
#include "scheduler/placement.h"

using namespace fm;
using namespace fm::sched;

namespace {
constexpr uint64_t GiB = 1ull << 30;

WorkerState MakeWorker(std::string id, std::vector<std::string> caps, uint32_t cpus, uint64_t memory,
                       std::vector<Gpu> gpus = {}, Labels labels = {}) {
  WorkerState w;
  w.id = std::move(id);
  w.capabilities = std::move(caps);
  Normalize(&w.capabilities);
  w.hardware = {cpus * 1000, memory, std::move(gpus)};
  w.labels = std::move(labels);
  w.slots = 2;
  return w;
}

TaskSpec Needs(std::vector<std::string> caps, Resources r = {}, Labels labels = {}) {
  TaskSpec s;
  s.command = {"true"};
  s.required_capabilities = std::move(caps);
  Normalize(&s.required_capabilities);
  s.resources = std::move(r);
  s.labels = std::move(labels);
  return s;
}
}  // namespace

TEST_CASE("capability_satisfies: required must be a subset of announced, nothing announced satisfies nothing",
          "[unit]") {
  struct Row {
    std::vector<std::string> required, announced;
    bool ok;
    const char* missing;
  };
  for (const Row& row : std::vector<Row>{
           {{}, {}, true, ""},
           {{}, {"docker"}, true, ""},
           {{"docker"}, {}, false, "docker"},
           {{"docker"}, {"docker"}, true, ""},
           {{"docker", "gpu"}, {"docker"}, false, "gpu"},
           {{"docker", "gpu"}, {"docker", "gpu", "x"}, true, ""},
           {{"Docker"}, {"docker"}, false, "Docker"},
       }) {
    std::string missing;
    CHECK(CapabilitySatisfies(row.required, row.announced, &missing) == row.ok);
    if (!row.ok) CHECK(missing == row.missing);
  }
}

TEST_CASE("hw_satisfies judges cpus, memory, GPU count, model and per-GPU memory against total capacity", "[unit]") {
  Hardware h100x2{8000, 64 * GiB, {{"NVIDIA H100 80GB HBM3", 80 * GiB}, {"NVIDIA H100 80GB HBM3", 80 * GiB}}};
  Hardware a10{4000, 16 * GiB, {{"NVIDIA A10", 24 * GiB}}};
  Hardware cpu_only{2000, 4 * GiB, {}};
  struct Row {
    Resources need;
    const Hardware* hw;
    Predicate failed;
  };
  for (const Row& row : std::vector<Row>{
           {{}, &cpu_only, Predicate::kNone},
           {{2000, 4 * GiB}, &cpu_only, Predicate::kNone},
           {{2001, 0}, &cpu_only, Predicate::kCpus},
           {{0, 4 * GiB + 1}, &cpu_only, Predicate::kMemory},
           {{0, 0, 1}, &cpu_only, Predicate::kGpus},
           {{0, 0, 1}, &a10, Predicate::kNone},
           {{0, 0, 2}, &a10, Predicate::kGpus},
           {{0, 0, 1, 0, "H100"}, &a10, Predicate::kGpuModel},
           {{0, 0, 1, 0, "h100"}, &h100x2, Predicate::kNone},
           {{0, 0, 2, 40 * GiB, "H100"}, &h100x2, Predicate::kNone},
           {{0, 0, 1, 40 * GiB}, &a10, Predicate::kGpuMemory},
           {{0, 0, 1, 80 * GiB}, &h100x2, Predicate::kNone},
           {{0, 0, 1, 81 * GiB}, &h100x2, Predicate::kGpuMemory},
       }) {
    CAPTURE(row.need.cpus_milli, row.need.memory, row.need.gpus, row.need.gpu_memory, row.need.gpu_model);
    CHECK(HwSatisfies(row.need, *row.hw).failed == row.failed);
  }
}

TEST_CASE("labels select workers carrying every key=value", "[unit]") {
  Labels worker{{"rack", "r1"}, {"zone", "a"}};
  CHECK(LabelsSatisfy({}, worker));
  CHECK(LabelsSatisfy({{"zone", "a"}}, worker));
  std::string missing;
  CHECK_FALSE(LabelsSatisfy({{"zone", "b"}}, worker, &missing));
  CHECK(missing == "zone=b");
  CHECK_FALSE(LabelsSatisfy({{"gpu", "yes"}}, worker, &missing));
}

TEST_CASE("the explanation counts each worker under the first predicate it fails", "[unit]") {
  WorkerState docker_small = MakeWorker("a", {"docker"}, 2, 4 * GiB);
  WorkerState bare = MakeWorker("b", {}, 8, 64 * GiB);
  WorkerState docker_big = MakeWorker("c", {"docker"}, 8, 64 * GiB, {}, {{"zone", "a"}});
  std::vector<const WorkerState*> fleet{&docker_small, &bare, &docker_big};

  Explanation e = Explain(Needs({"gpu"}), {&docker_small, &bare});
  CHECK(e.eligible == 0);
  CHECK(e.message == "0/2 workers eligible: 2 lack capability gpu");

  e = Explain(Needs({"docker"}, {0, 8 * GiB}, {{"zone", "b"}}), fleet);
  CHECK(e.message ==
        "0/3 workers eligible: 1 lacks capability docker, 1 has 4 GiB memory < 8 GiB, 1 lacks label zone=b");
  REQUIRE(e.breakdown.size() == 3);
  CHECK(e.breakdown[0].predicate == "capability");
  CHECK(e.breakdown[1].predicate == "memory");
  CHECK(e.breakdown[2].predicate == "labels");

  e = Explain(Needs({}, {0, 0, 1}), fleet);
  CHECK(e.message == "0/3 workers eligible: 3 have fewer than 1 GPUs (most 0)");

  e = Explain(Needs({}, {16000, 0}), {&docker_small});
  CHECK(e.message == "0/1 workers eligible: 1 has 2 cpus < 16");

  e = Explain(Needs({"docker"}), fleet);
  CHECK(e.eligible == 2);

  e = Explain(Needs({}), {});
  CHECK(e.message == "0/0 workers eligible: no live workers");
}

TEST_CASE("a draining worker is not eligible", "[unit]") {
  WorkerState w = MakeWorker("a", {}, 2, 4 * GiB);
  w.draining = true;
  CHECK(CheckEligible(Needs({}), w).failed == Predicate::kDraining);
  CHECK(Explain(Needs({}), {&w}).message == "0/1 workers eligible: 1 is draining");
}

TEST_CASE("spread picks the least loaded worker, binpack the most loaded that fits", "[unit]") {
  WorkerState a = MakeWorker("a", {}, 4, 8 * GiB);
  WorkerState b = MakeWorker("b", {}, 4, 8 * GiB);
  a.slots = b.slots = 4;
  TaskSpec t = Needs({}, {1000, GiB});
  Reserve(t, &a);
  std::vector<WorkerState*> both{&a, &b};
  CHECK(Choose(t, both, PlacementPolicy::kSpread) == &b);
  CHECK(Choose(t, both, PlacementPolicy::kBinpack) == &a);
  // Full on cpus: not a candidate even with free slots.
  Reserve(t, &a);
  Reserve(t, &a);
  Reserve(t, &a);
  CHECK_FALSE(HasRoom(t, a));
  CHECK(Choose(t, both, PlacementPolicy::kBinpack) == &b);
  Release(t, &a);
  CHECK(HasRoom(t, a));
}
