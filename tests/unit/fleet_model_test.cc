// The fleet index and the pending set are optimized paths: each is checked here against
// a plain oracle (scan every worker; walk every waiting task) on random fleets and tasks,
// leveldb ModelDB-style. The seed is printed on failure; FM_MODEL_SEED replays one.
#include <catch2/catch.hpp>
#include <cstdlib>
#include <map>
#include <random>

#include "scheduler/explain.h"
#include "scheduler/fleet_index.h"
#include "scheduler/pending.h"
#include "scheduler/placement.h"
#include "scheduler/predicates.h"

using namespace fm;
using namespace fm::sched;

namespace {

constexpr uint64_t GiB = 1ull << 30;

uint64_t Seed() {
  if (const char* s = std::getenv("FM_MODEL_SEED")) return std::strtoull(s, nullptr, 10);
  return std::random_device{}();
}

// Values chosen so that shapes collide often, and labels hold the characters that once
// made different label sets share a class (',', '=', '|').
struct Random {
  std::mt19937_64 rng;
  explicit Random(uint64_t seed) : rng(seed) {}
  size_t Below(size_t n) { return std::uniform_int_distribution<size_t>(0, n - 1)(rng); }
  bool Chance(double p) { return std::bernoulli_distribution(p)(rng); }
  template <typename T>
  const T& Pick(const std::vector<T>& v) {
    return v[Below(v.size())];
  }

  std::vector<std::string> Caps() {
    static const std::vector<std::string> all{"docker", "gpu", "session"};
    std::vector<std::string> caps;
    for (const auto& c : all) {
      if (Chance(0.4)) caps.push_back(c);
    }
    return caps;
  }
  Labels SomeLabels(double p) {
    static const std::vector<std::string> keys{"a", "b", "a,b", "x=y", "z|"};
    static const std::vector<std::string> values{"1", "2", "1,b=2", "|", ""};
    Labels labels;
    for (const auto& k : keys) {
      if (Chance(p)) labels.emplace_back(k, Pick(values));
    }
    Normalize(&labels);
    return labels;
  }
  WorkerState Worker(const std::string& id) {
    static const std::vector<std::string> models{"NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3", "Tesla T4"};
    WorkerState w;
    w.id = id;
    w.capabilities = Caps();
    w.hardware.cpus_milli = static_cast<uint32_t>(1000 * (1u << Below(4)));
    w.hardware.memory = GiB << Below(4);
    for (size_t g = Below(4); g > 0; --g) w.hardware.gpus.push_back({Pick(models), GiB * (16u << Below(3))});
    w.labels = SomeLabels(0.3);
    w.slots = static_cast<uint32_t>(1 + Below(4));
    w.draining = Chance(0.15);
    w.confirmed = !Chance(0.1);
    return w;
  }
  TaskSpec Task() {
    static const std::vector<std::string> models{"", "a100", "H100", "T4", "V100"};
    TaskSpec s;
    s.command = {"true"};
    s.required_capabilities = Chance(0.5) ? std::vector<std::string>{} : Caps();
    s.resources.cpus_milli = static_cast<uint32_t>(Pick(std::vector<uint32_t>{0, 500, 1000, 2000, 4000, 16000}));
    s.resources.memory = Pick(std::vector<uint64_t>{0, GiB / 2, GiB, 4 * GiB, 16 * GiB});
    s.resources.gpus = static_cast<uint32_t>(Chance(0.6) ? 0 : 1 + Below(3));
    if (s.resources.gpus) {
      s.resources.gpu_model = Pick(models);
      s.resources.gpu_memory = Pick(std::vector<uint64_t>{0, 16 * GiB, 40 * GiB, 80 * GiB});
    }
    s.labels = SomeLabels(0.2);
    s.priority = static_cast<int32_t>(Below(3));
    return s;
  }
};

// The oracle: every worker, scanned.
struct Oracle {
  std::map<std::string, WorkerState> workers;

  bool AnyEligible(const TaskSpec& spec) const {
    for (const auto& [id, w] : workers) {
      if (CheckEligible(spec, w).ok()) return true;
    }
    return false;
  }
  Explanation Why(const TaskSpec& spec) const {
    std::vector<const WorkerState*> all;
    for (const auto& [id, w] : workers) all.push_back(&w);
    return Explain(spec, all);
  }
  WorkerState* Place(const TaskSpec& spec, PlacementPolicy policy) {
    std::vector<WorkerState*> candidates;
    for (auto& [id, w] : workers) {
      if (w.confirmed && CheckEligible(spec, w).ok()) candidates.push_back(&w);
    }
    return Choose(spec, candidates, policy);
  }
};

void CheckAgree(const Fleet& fleet, Oracle& oracle, const TaskSpec& spec, PlacementPolicy policy) {
  REQUIRE(fleet.AnyEligible(spec) == oracle.AnyEligible(spec));
  Explanation a = fleet.Explain(spec), b = oracle.Why(spec);
  REQUIRE(a.message == b.message);
  REQUIRE(a.eligible == b.eligible);
  const WorkerState* placed = fleet.Place(spec, policy);
  const WorkerState* expected = oracle.Place(spec, policy);
  REQUIRE((placed ? placed->id : "(none)") == (expected ? expected->id : "(none)"));
}

}  // namespace

TEST_CASE("the fleet index agrees with a scan of every worker on eligibility, explanation and placement",
          "[unit][model]") {
  const uint64_t seed = Seed();
  INFO("FM_MODEL_SEED=" << seed);
  Random rnd(seed);
  for (int round = 0; round < 300; ++round) {
    const PlacementPolicy policy = rnd.Chance(0.5) ? PlacementPolicy::kSpread : PlacementPolicy::kBinpack;
    Fleet fleet;
    Oracle oracle;
    const size_t n = 1 + rnd.Below(24);
    for (size_t i = 0; i < n; ++i) {
      WorkerState w = rnd.Worker("w" + std::to_string(rnd.Below(40)));
      oracle.workers[w.id] = w;
      fleet.Add(w);
    }
    for (int step = 0; step < 40; ++step) {
      TaskSpec spec = rnd.Task();
      CheckAgree(fleet, oracle, spec, policy);
      // Then change the fleet the way the engine does, on both sides.
      const WorkerState* chosen = fleet.Place(spec, policy);
      const size_t action = rnd.Below(10);
      if (chosen && action < 6) {
        std::string id = chosen->id;
        fleet.ModifyLoad(id, [&](WorkerState& w) { Reserve(spec, &w); });
        Reserve(spec, &oracle.workers.at(id));
      } else if (!oracle.workers.empty() && action < 8) {
        auto it = std::next(oracle.workers.begin(), static_cast<long>(rnd.Below(oracle.workers.size())));
        TaskSpec unit;  // release one slot's worth
        fleet.ModifyLoad(it->first, [&](WorkerState& w) { Release(unit, &w); });
        Release(unit, &it->second);
      } else if (!oracle.workers.empty() && action == 8) {
        auto it = std::next(oracle.workers.begin(), static_cast<long>(rnd.Below(oracle.workers.size())));
        bool drain = !it->second.draining;
        fleet.Modify(it->first, [&](WorkerState& w) { w.draining = drain; });
        it->second.draining = drain;
      } else if (!oracle.workers.empty()) {
        auto it = std::next(oracle.workers.begin(), static_cast<long>(rnd.Below(oracle.workers.size())));
        fleet.Remove(it->first);
        oracle.workers.erase(it);
      }
    }
  }
}

TEST_CASE("workers whose labels join to the same text are different classes", "[unit]") {
  // "a=1,b=2" as one label and a=1, b=2 as two once shared a class key.
  WorkerState wa, wb;
  wa.id = "wa";
  wa.labels = {{"a", "1,b=2"}};
  wb.id = "wb";
  wb.labels = {{"a", "1"}, {"b", "2"}};
  wa.hardware = wb.hardware = {1000, GiB, {}};
  TaskSpec wants;
  wants.command = {"true"};
  wants.labels = {{"a", "1"}, {"b", "2"}};
  for (bool a_first : {true, false}) {
    Fleet fleet;
    if (a_first) {
      fleet.Add(wa);
      fleet.Add(wb);
    } else {
      fleet.Add(wb);
      fleet.Add(wa);
    }
    CHECK(fleet.class_count() == 2);
    REQUIRE(fleet.AnyEligible(wants));
    const WorkerState* placed = fleet.Place(wants, PlacementPolicy::kSpread);
    REQUIRE(placed != nullptr);
    CHECK(placed->id == "wb");
    CHECK(fleet.Explain(wants).message == "1/2 workers eligible: 1 lacks label a=1");
  }
}

TEST_CASE("the pending walk offers tasks in the order a walk over every waiting task would, and stops per demand",
          "[unit][model]") {
  const uint64_t seed = Seed();
  INFO("FM_MODEL_SEED=" << seed);
  Random rnd(seed);
  for (int round = 0; round < 200; ++round) {
    PendingSet pending;
    std::map<PendingSet::Entry, TaskSpec> all;  // the oracle: every waiting task in line order
    uint64_t order = 0;
    for (size_t i = 1 + rnd.Below(60); i > 0; --i) {
      TaskSpec spec = rnd.Task();
      ++order;
      PendingSet::Entry e = PendingSet::Entry::Of(spec.priority, order, order);
      pending.Insert(spec, e);
      all[e] = spec;
    }
    // A random capacity per demand: how many of it fit in this walk.
    std::map<std::tuple<std::vector<std::string>, Resources, Labels>, int> room;
    auto key = [](const TaskSpec& s) { return std::make_tuple(s.required_capabilities, s.resources, s.labels); };
    for (const auto& [e, spec] : all) room.try_emplace(key(spec), static_cast<int>(rnd.Below(4)));
    auto oracle_room = room;

    std::vector<uint64_t> placed, expected;
    pending.Walk([&](uint64_t id, const TaskSpec& demand) {
      int& left = room.at(key(demand));
      if (left == 0) return PendingSet::Offer::kNoRoom;
      --left;
      placed.push_back(id);
      return PendingSet::Offer::kPlaced;
    });
    for (const auto& [e, spec] : all) {
      int& left = oracle_room.at(key(spec));
      if (left > 0) {
        --left;
        expected.push_back(e.id);
      }
    }
    REQUIRE(placed == expected);
    REQUIRE(pending.size() == all.size() - placed.size());
  }
}
