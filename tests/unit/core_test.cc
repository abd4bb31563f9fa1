// Storage faults through the scheduler core, with an error-injecting store: nothing
// that was not persisted is acknowledged, reads keep working, and writing resumes.
#include "scheduler/core.h"

#include <catch2/catch.hpp>

#include "schemas/codec.h"
#include "store/faulty_store.h"

using namespace fm;
using namespace fm::sched;

namespace {

std::string SubmitBytes(uint64_t correlation, const std::string& key = "") {
  flatbuffers::FlatBufferBuilder fbb;
  TaskSpec spec;
  spec.command = {"true"};
  spec.key = key;
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

std::string FinishedBytes(uint64_t task) {
  flatbuffers::FlatBufferBuilder fbb;
  auto ref = wire::CreateTaskRef(fbb, task, 1);
  return codec::Seal(fbb, wire::CreateTaskFinished(fbb, ref, fbb.CreateString("w"), wire::Outcome::Succeeded, 0, 0));
}

std::string ControlBytes(wire::ControlOp op) {
  flatbuffers::FlatBufferBuilder fbb;
  return codec::Seal(fbb, wire::CreateControlRequest(fbb, op, 0, 9));
}

// Opens the core and registers worker "w" (address w/w/1).
void OpenWithWorker(SchedulerCore& core, uint64_t now) {
  REQUIRE(core.Open(now).ok());
  std::string reg = RegistrationBytes();
  core.OnBus(reg.data(), reg.size(), now);
  core.EndTurn(now);
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
  OpenWithWorker(core, now);
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

TEST_CASE(
    "pipelined commits: a turn's messages wait for the commits before it, and a failed commit takes the turns "
    "gathered after it along",
    "[unit]") {
  auto mem = store::NewMemStore();
  store::FaultyStore store(mem.get());
  uint64_t now = 1'000'000;
  SchedulerCore core({}, &store, nullptr);
  OpenWithWorker(core, now);

  std::string first = SubmitBytes(1), second = SubmitBytes(2);
  core.OnDirected("a", first.data(), first.size(), now);
  CHECK(core.CloseTurn(now).empty());
  const store::WriteBatch& a_writes = core.StartCommit();
  CHECK(core.commit_in_flight());
  // The next turn runs while the first commit is being written, on top of its state.
  core.OnDirected("b", second.data(), second.size(), now);
  CHECK(core.CloseTurn(now).empty());
  CHECK(core.engine().active_count() == 2);
  CHECK(core.has_gathered());

  REQUIRE(store.Write(a_writes, true).ok());
  Outbox out = core.FinishCommit(Status::Ok(), now);
  for (const auto& d : out.directed) CHECK(d.to != "b");  // b's reply waits for b's commit
  CHECK(Only(out, "a")->body_type() == wire::Body::SubmitReply);

  const store::WriteBatch& b_writes = core.StartCommit();
  store.FailWrites("Input/output error");
  out = core.FinishCommit(store.Write(b_writes, true), now);
  const auto* refused = Only(out, "b");
  REQUIRE(refused->body_type() == wire::Body::Error);
  CHECK(refused->body_as_Error()->code()->str() == "storage");
  CHECK(out.events.empty());
  CHECK(core.degraded());
  CHECK(core.engine().active_count() == 1);  // a's task, which was written; b's never happened
}

TEST_CASE("a task that ended in a commit still being written is found by its key as ended", "[unit]") {
  auto mem = store::NewMemStore();
  uint64_t now = 1'000'000;
  EngineOptions options;
  options.recent_ended = 0;  // no in-memory ring: the answer must come from the store's view
  SchedulerCore core(options, mem.get(), nullptr);
  OpenWithWorker(core, now);
  std::string keyed = SubmitBytes(1, "job-7");
  core.OnDirected("a", keyed.data(), keyed.size(), now);
  core.EndTurn(now);

  std::string finished = FinishedBytes(1);
  core.OnDirected("w/w/1", finished.data(), finished.size(), now);
  core.CloseTurn(now);
  const store::WriteBatch& ended = core.StartCommit();  // the t/ record is not in the store yet
  core.OnDirected("a", keyed.data(), keyed.size(), now);
  core.CloseTurn(now);
  REQUIRE(mem->Write(ended, true).ok());
  core.FinishCommit(Status::Ok(), now);
  Outbox out = core.EndTurn(now);
  const auto* reply = Only(out, "a");
  REQUIRE(reply->body_type() == wire::Body::SubmitReply);
  const auto* result = reply->body_as_SubmitReply()->results()->Get(0);
  CHECK(result->task() == 1);
  CHECK(result->status() == wire::SubmitStatus::Succeeded);
}

TEST_CASE(
    "a store read error during a keyed submission refuses it with storage_unavailable, never a second task, "
    "and is sticky until the store answers",
    "[unit]") {
  auto mem = store::NewMemStore();
  store::FaultyStore store(mem.get());
  uint64_t now = 1'000'000;
  SchedulerCore core({}, &store, nullptr, /*storage_probe_ms=*/500);
  OpenWithWorker(core, now);
  std::string first = SubmitBytes(1, "k");
  core.OnDirected("client", first.data(), first.size(), now);
  Outbox out = core.EndTurn(now);
  uint64_t id = Only(out, "client")->body_as_SubmitReply()->results()->Get(0)->task();
  std::string done = FinishedBytes(id);
  core.OnDirected("w/w/1", done.data(), done.size(), now);
  core.EndTurn(now);

  // A new core knows the ended task's key only from the store, which now fails to read.
  SchedulerCore restarted({}, &store, nullptr, 500);
  OpenWithWorker(restarted, now);
  store.FailReads("Input/output error");
  restarted.OnDirected("client", first.data(), first.size(), now);
  out = restarted.EndTurn(now);
  const auto* reply = Only(out, "client");
  REQUIRE(reply->body_type() == wire::Body::SubmitReply);
  const auto* r = reply->body_as_SubmitReply()->results()->Get(0);
  CHECK(r->status() == wire::SubmitStatus::Rejected);
  CHECK(r->reason()->str() == "storage_unavailable");
  CHECK_THAT(r->message()->str(), Catch::Contains("Input/output error"));
  CHECK(restarted.engine().active_count() == 0);  // no second task
  CHECK(restarted.degraded());

  // Sticky: refused while the store cannot be read, served again once it can.
  std::string plain = SubmitBytes(2);
  restarted.OnDirected("client2", plain.data(), plain.size(), now);
  out = restarted.EndTurn(now);
  CHECK(Only(out, "client2")->body_type() == wire::Body::Error);
  store.HealReads();
  now += 600;
  restarted.Tick(now);
  CHECK_FALSE(restarted.degraded());
  std::string reg = RegistrationBytes();
  restarted.OnBus(reg.data(), reg.size(), now);
  restarted.OnDirected("client", first.data(), first.size(), now);
  out = restarted.EndTurn(now);
  const auto* after = Only(out, "client")->body_as_SubmitReply()->results()->Get(0);
  CHECK(after->task() == id);
  CHECK(after->status() == wire::SubmitStatus::Succeeded);
}
