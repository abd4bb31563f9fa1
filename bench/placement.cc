// Placement cost against fleet size, through the scheduler library (no sockets, no disk):
// 1k, 10k and 100k registered workers with mixed capabilities, hardware and labels.
// Reports microseconds per task for admission (the eligibility check that decides fail
// fast) and for placement (choosing a worker with room), each over a batch of tasks.
#include "bench_util.h"
#include "scheduler/engine.h"
#include "scheduler/fleet_index.h"
#include "schemas/codec.h"
#include "store/store.h"

using namespace fm;
using namespace fm::bench;

namespace {

std::string Registration(int i) {
  flatbuffers::FlatBufferBuilder fbb(512);
  std::vector<std::string> caps;
  if (i % 3 == 0) caps.push_back("docker");
  if (i % 5 == 0) caps.push_back("gpu");
  Hardware hw{static_cast<uint32_t>((2 + i % 4 * 2) * 1000), (4ull + i % 8 * 4) << 30, {}};
  if (i % 5 == 0) hw.gpus.push_back({i % 10 == 0 ? "NVIDIA H100 80GB HBM3" : "NVIDIA A10", 24ull << 30});
  Labels labels{{"zone", std::string(1, static_cast<char>('a' + i % 3))}};
  std::string id = "w" + std::to_string(i);
  auto reg = wire::CreateWorkerRegistration(
      fbb, fbb.CreateString(id), fbb.CreateString("w/" + id + "/1"), fbb.CreateString("node"), 1,
      fbb.CreateString("bench"), 4, codec::ToWire(fbb, hw), codec::ToWire(fbb, labels), 0, codec::ToWire(fbb, caps));
  return codec::Seal(fbb, reg);
}

std::string Submit(int tasks, int shape) {
  flatbuffers::FlatBufferBuilder fbb(1 << 16);
  std::vector<flatbuffers::Offset<wire::TaskSpec>> specs;
  for (int i = 0; i < tasks; ++i) {
    TaskSpec s;
    s.command = {"true"};
    if (shape == 0) {  // common: docker in zone a, 2 cpus
      s.required_capabilities = {"docker"};
      s.labels = {{"zone", "a"}};
      s.resources.cpus_milli = 2000;
    } else {  // rare: an H100
      s.required_capabilities = {"gpu"};
      s.resources.gpus = 1;
      s.resources.gpu_model = "H100";
    }
    specs.push_back(codec::ToWire(fbb, s));
  }
  return codec::Seal(fbb, wire::CreateSubmitRequest(fbb, fbb.CreateVector(specs), false, 1));
}

// The choice alone: Fleet::Place over the class index, no transition recorded.
void Choose(int workers, int tasks) {
  sched::Fleet fleet;
  for (int i = 0; i < workers; ++i) {
    std::string reg = Registration(i);
    const auto* r = wire::GetEnvelope(reg.data())->body_as_WorkerRegistration();
    sched::WorkerState w;
    w.id = r->id()->str();
    w.capabilities = codec::Strings(r->capabilities());
    w.hardware = codec::FromWire(r->hardware());
    w.labels = codec::FromWire(r->labels());
    w.slots = r->slots();
    fleet.Add(std::move(w));
  }
  TaskSpec spec;
  spec.command = {"true"};
  spec.required_capabilities = {"docker"};
  spec.labels = {{"zone", "a"}};
  spec.resources.cpus_milli = 2000;
  double t0 = NowSeconds();
  size_t found = 0;
  for (int i = 0; i < tasks; ++i) found += fleet.Place(spec, sched::PlacementPolicy::kSpread) != nullptr;
  double t1 = NowSeconds();
  Report("choose_us_per_task_" + std::to_string(workers) + "_workers", (t1 - t0) * 1e6 / tasks, "us");
  Report("worker_classes_" + std::to_string(workers) + "_workers", static_cast<double>(fleet.class_count()), "classes");
  if (found != static_cast<size_t>(tasks)) Report("choose_found_none", 1, "error");
}

void Run(int workers, int tasks) {
  auto store = store::NewMemStore();
  sched::Engine engine({});
  (void)engine.Recover(store.get(), 1000);
  for (int i = 0; i < workers; ++i) {
    std::string reg = Registration(i);
    engine.OnBus(*wire::GetEnvelope(reg.data()), 1000);
  }
  engine.FinishTurn(1000);
  engine.effects().Clear();
  for (int shape : {0, 1}) {
    std::string req = Submit(tasks, shape);
    double t0 = NowSeconds();
    engine.OnDirected("bench", *wire::GetEnvelope(req.data()), 2000);
    double t1 = NowSeconds();
    engine.FinishTurn(2000);
    double t2 = NowSeconds();
    engine.effects().Clear();
    const char* name = shape == 0 ? "common" : "rare";
    std::string suffix = std::string(name) + "_" + std::to_string(workers) + "_workers";
    Report("admit_us_per_task_" + suffix, (t1 - t0) * 1e6 / tasks, "us");
    Report("place_us_per_task_" + suffix, (t2 - t1) * 1e6 / tasks, "us");
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool tiny = Tiny(argc, argv);
  for (int workers : tiny ? std::vector<int>{100} : std::vector<int>{1000, 10000, 100000}) {
    Run(workers, tiny ? 10 : 1000);
    Choose(workers, tiny ? 10 : 100000);
  }
  return 0;
}
