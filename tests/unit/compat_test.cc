// A registration encoded with the first published schema (tests/compat/fm_v1.fbs,
// no capabilities field) reads as a worker with no capabilities: strict default.
#include <catch2/catch.hpp>

#include "compat/fm_v1_generated.h"
#include "scheduler/engine.h"
#include "schemas/codec.h"
#include "store/store.h"

using namespace fm;

TEST_CASE("an old worker's registration reads as no capabilities, it gets plain tasks and never docker ones",
          "[unit][compat]") {
  flatbuffers::FlatBufferBuilder fbb;
  auto hw = v1::CreateHardware(fbb, 4000, 8ull << 30);
  auto reg = v1::CreateWorkerRegistrationDirect(fbb, "old", "w/old/1", "node", 1, "0.0.1", 2, hw);
  fbb.Finish(v1::CreateEnvelope(fbb, v1::Body::WorkerRegistration, reg.Union()));
  std::string bytes(reinterpret_cast<const char*>(fbb.GetBufferPointer()), fbb.GetSize());

  auto env = codec::Decode(bytes.data(), bytes.size());
  REQUIRE(env.ok());
  REQUIRE((*env)->body_type() == wire::Body::WorkerRegistration);
  CHECK((*env)->body_as_WorkerRegistration()->capabilities() == nullptr);

  auto store = store::NewMemStore();
  sched::Engine engine({});
  REQUIRE(engine.Recover(store.get(), 1000).ok());
  engine.OnBus(**env, 1000);
  engine.FinishTurn(1000);
  engine.effects().Clear();
  REQUIRE(engine.worker("old") != nullptr);
  CHECK(engine.worker("old")->capabilities.empty());

  auto submit = [&](std::vector<std::string> caps) {
    flatbuffers::FlatBufferBuilder b;
    TaskSpec spec;
    spec.command = {"true"};
    spec.required_capabilities = caps;
    std::vector<flatbuffers::Offset<wire::TaskSpec>> specs{codec::ToWire(b, spec)};
    std::string req = codec::Seal(b, wire::CreateSubmitRequest(b, b.CreateVector(specs)));
    engine.OnDirected("client", *wire::GetEnvelope(req.data()), 1000);
    engine.FinishTurn(1000);
    bool dispatched = false;
    for (const auto& d : engine.effects().directed) dispatched |= d.to == "w/old/1";
    engine.effects().Clear();
    return dispatched;
  };
  CHECK_FALSE(submit({"docker"}));
  CHECK(submit({}));
}
