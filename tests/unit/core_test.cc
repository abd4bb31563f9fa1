// Storage faults through the scheduler core, with an error-injecting store: nothing
// that was not persisted is acknowledged, reads keep working, and writing resumes.
#include "scheduler/core.h"

#include <catch2/catch.hpp>

#include "schemas/codec.h"
#include "store/faulty_store.h"

using namespace fm;
using namespace fm::sched;

namespace {

std::string SubmitBytes(uint64_t correlation) {
  flatbuffers::FlatBufferBuilder fbb;
  TaskSpec spec;
  spec.command = {"true"};
  std::vector<flatbuffers::Offset<wire::TaskSpec>> specs{codec::ToWire(fbb, spec)};
  return codec::Seal(fbb, wire::CreateSubmitRequest(fbb, fbb.CreateVector(specs), false, correlation));
}

std::string RegistrationBytes() {
  flatbuffers::FlatBufferBuilder fbb;
  Hardware hw{2000, 1ull << 30, {}};
  auto reg = wire::CreateWorkerRegistration(fbb, fbb.CreateString("w"), fbb.CreateString("w/w/1"),
                                            fbb.CreateString("n"), 1, fbb.CreateString("t"), 2, codec::ToWire(fbb, hw));
  return codec::Seal(fbb, reg);
}

std::string ControlBytes(wire::ControlOp op) {
  flatbuffers::FlatBufferBuilder fbb;
  return codec::Seal(fbb, wire::CreateControlRequest(fbb, op, 0, 9));
}

const wire::Envelope* Only(const Outbox& out, const std::string& to) {
  const wire::Envelope* found = nullptr;
  for (const auto& d : out.directed) {
    if (d.to == to) {
      REQUIRE(found == nullptr);
      found = wire::GetEnvelope(d.payload.data());
    }
  }
  REQUIRE(found != nullptr);
  return found;
}

}  // namespace

TEST_CASE(
    "when the store cannot write, submissions are refused, nothing is acknowledged, reads still answer, "
    "and writing resumes on its own",
    "[unit]") {
  auto mem = store::NewMemStore();
  store::FaultyStore store(mem.get());
  uint64_t now = 1'000'000;
  SchedulerCore core({}, &store, nullptr, /*storage_probe_ms=*/500);
  REQUIRE(core.Open(now).ok());
  core.EndTurn(now);
  std::string reg = RegistrationBytes();
  core.OnBus(reg.data(), reg.size(), now);
  core.EndTurn(now);

  store.FailWrites("No space left on device");
  std::string submit = SubmitBytes(41);
  core.OnDirected("client", submit.data(), submit.size(), now);
  Outbox out = core.EndTurn(now);
  // The submission was not persisted: the client gets a storage error, not an acceptance.
  const auto* reply = Only(out, "client");
  REQUIRE(reply->body_type() == wire::Body::Error);
  CHECK(reply->body_as_Error()->code()->str() == "storage");
  CHECK_THAT(reply->body_as_Error()->message()->str(), Catch::Contains("No space left on device"));
  CHECK(reply->body_as_Error()->about()->str() == "41");
  CHECK(out.events.empty());
  CHECK(core.degraded());
  CHECK(core.engine().active_count() == 0);  // the failed turn never happened

  // While degraded: new submissions refused at once, reads answered.
  core.OnDirected("client2", submit.data(), submit.size(), now);
  std::string workers = ControlBytes(wire::ControlOp::Workers);
  core.OnDirected("ctl", workers.data(), workers.size(), now);
  out = core.EndTurn(now);
  CHECK(Only(out, "client2")->body_type() == wire::Body::Error);
  const auto* view = Only(out, "ctl");
  REQUIRE(view->body_type() == wire::Body::ControlReply);
  CHECK(view->body_as_ControlReply()->workers()->size() == 1);

  // Writing works again: the next probe notices and submissions are accepted.
  store.HealWrites();
  now += 600;
  core.Tick(now);
  CHECK_FALSE(core.degraded());
  core.OnDirected("client3", submit.data(), submit.size(), now);
  out = core.EndTurn(now);
  const auto* accepted = Only(out, "client3");
  REQUIRE(accepted->body_type() == wire::Body::SubmitReply);
  CHECK(accepted->body_as_SubmitReply()->results()->Get(0)->status() == wire::SubmitStatus::Accepted);
}

TEST_CASE("a storage failure while a worker reports a result leaves the result unacknowledged", "[unit]") {
  auto mem = store::NewMemStore();
  store::FaultyStore store(mem.get());
  uint64_t now = 1'000'000;
  SchedulerCore core({}, &store, nullptr);
  REQUIRE(core.Open(now).ok());
  std::string reg = RegistrationBytes();
  core.OnBus(reg.data(), reg.size(), now);
  core.EndTurn(now);
  std::string submit = SubmitBytes(1);
  core.OnDirected("client", submit.data(), submit.size(), now);
  core.EndTurn(now);

  store.FailWrites("Input/output error");
  flatbuffers::FlatBufferBuilder fbb;
  auto ref = wire::CreateTaskRef(fbb, 1, 1);
  std::string finished =
      codec::Seal(fbb, wire::CreateTaskFinished(fbb, ref, fbb.CreateString("w"), wire::Outcome::Succeeded, 0, 0));
  core.OnDirected("w/w/1", finished.data(), finished.size(), now);
  Outbox out = core.EndTurn(now);
  for (const auto& d : out.directed) CHECK(d.to != "w/w/1");
  CHECK(core.engine().active_count() == 1);
}
