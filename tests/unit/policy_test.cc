// Who may hold which address and publish what (runtime/policy.h), and what the engine
// lets each role do once the broker vouched for the addresses.
#include "runtime/policy.h"

#include <catch2/catch.hpp>

#include "engine_harness.h"
#include "runtime/addresses.h"

using namespace fm;
using namespace fm::bus;
using namespace fm::sched::testing;
using Catch::Contains;

namespace {

std::string Registration(const std::string& id, const std::string& address) {
  flatbuffers::FlatBufferBuilder fbb;
  return codec::Seal(fbb, wire::CreateWorkerRegistration(fbb, fbb.CreateString(id), fbb.CreateString(address)));
}

std::string ControlBytes(wire::ControlOp op, const std::string& target) {
  flatbuffers::FlatBufferBuilder fbb;
  return codec::Seal(fbb, wire::CreateControlRequestDirect(fbb, op, target.c_str(), 1));
}

std::string ErrorText(const Turn& t, const std::string& to) {
  for (const auto* env : t.To(to, wire::Body::Error)) return codec::Str(env->body_as_Error()->message());
  return "";
}

}  // namespace

TEST_CASE("each role holds only its own addresses, and fm-scheduler only the scheduler", "[unit]") {
  CHECK(MayClaim(Role::kScheduler, "s1", kSchedulerAddress).ok());
  CHECK(MayClaim(Role::kWorker, "w1", "w/w1/abc").ok());
  CHECK(MayClaim(Role::kClient, "alice", "client/alice/fm-submit/h/1/x").ok());
  CHECK(MayClaim(Role::kOperator, "ops", "operator/ops/x").ok());
  CHECK(MayClaim(Role::kBroker, "n1", "broker/n1/h/1/x").ok());
  CHECK_THAT(MayClaim(Role::kWorker, "w1", kSchedulerAddress).message(), Contains("may not hold address"));
  CHECK_FALSE(MayClaim(Role::kWorker, "w1", "w/w10/abc").ok());  // a prefix of another name
  CHECK_FALSE(MayClaim(Role::kWorker, "w1", "w/w1/").ok());
  CHECK_FALSE(MayClaim(Role::kClient, "alice", "operator/alice/x").ok());
  CHECK_FALSE(MayClaim(Role::kOperator, "ops", "w/ops/x").ok());
  CHECK_FALSE(MayClaim(Role::kScheduler, "s1", "fm-scheduler/x").ok());
  CHECK_FALSE(MayClaim(Role::kNone, "", "client/x/y").ok());
}

TEST_CASE("an address says whose it is, any other form belongs to nobody", "[unit]") {
  CHECK(PrincipalOf("w/w1/abc").role == Role::kWorker);
  CHECK(PrincipalOf("w/w1/abc").name == "w1");
  CHECK(PrincipalOf("operator/ops/x").role == Role::kOperator);
  CHECK(PrincipalOf(kSchedulerAddress).role == Role::kScheduler);
  CHECK(PrincipalOf("fm-submit/host/1/x").role == Role::kNone);
  CHECK(PrincipalOf("w//x").role == Role::kNone);
  CHECK(PrincipalOf("client/alice").role == Role::kNone);
}

TEST_CASE("only the scheduler publishes events, a worker announces only itself", "[unit]") {
  CHECK(MayPublish(Role::kScheduler, "s", "task.succeeded", "").ok());
  CHECK_THAT(MayPublish(Role::kClient, "alice", "task.succeeded", "").message(),
             Contains("only the scheduler publishes events"));
  CHECK_FALSE(MayPublish(Role::kWorker, "w1", "task.succeeded", "").ok());
  CHECK(MayPublish(Role::kWorker, "w1", "fleet.register", Registration("w1", "w/w1/1")).ok());
  CHECK_THAT(MayPublish(Role::kWorker, "w1", "fleet.register", Registration("w2", "w/w2/1")).message(),
             Contains("announces worker \"w2\""));
  CHECK_FALSE(MayPublish(Role::kWorker, "w1", "fleet.register", Registration("w1", "w/w2/1")).ok());
  CHECK_FALSE(MayPublish(Role::kWorker, "w1", "fleet.heartbeat", Registration("w1", "w/w1/1")).ok());  // wrong body
  CHECK_FALSE(MayPublish(Role::kWorker, "w1", "fleet.register", "garbage").ok());
  CHECK(MayPublish(Role::kBroker, "n1", "fleet.heartbeat", "").ok());
  CHECK_FALSE(MayPublish(Role::kBroker, "n1", "scheduler.started", "").ok());
}

TEST_CASE("certificate names are plain: no slash, no empty, nothing past 64", "[unit]") {
  CHECK(ValidateName("w1").ok());
  CHECK(ValidateName("gpu-node_7.a").ok());
  CHECK_FALSE(ValidateName("").ok());
  CHECK_FALSE(ValidateName("a/b").ok());
  CHECK_FALSE(ValidateName("-x").ok());
  CHECK_FALSE(ValidateName(std::string(65, 'a')).ok());
}

TEST_CASE("authenticated, a client cancels only its own tasks, drains nothing, and its keys are its own", "[unit]") {
  sched::EngineOptions options;
  options.authenticate = true;
  Harness h(options);
  h.Register({"w1", {}, 4, 8 * GiB, 1});
  const std::string alice = "client/alice/x", bob = "client/bob/y", ops = "operator/ops/z";
  auto spec = NewTask();
  spec.command = {"sleep", "9"};
  spec.key = "k1";
  h.Submit({spec}, false, alice);
  Turn t = h.Submit({spec}, false, bob);
  auto reply = t.To(bob, wire::Body::SubmitReply);
  REQUIRE(reply.size() == 1);
  CHECK(reply[0]->body_as_SubmitReply()->results()->Get(0)->task() == 2);  // bob's k1 is not alice's
  CHECK(h.engine().active_task(1)->owner == "alice");
  CHECK(h.engine().active_task(2)->owner == "bob");

  h.engine().OnDirected(bob, *wire::GetEnvelope(ControlBytes(wire::ControlOp::Cancel, "t1").data()), h.now);
  t = h.Commit();
  CHECK_THAT(ErrorText(t, bob), Contains("may not cancel this task") && Contains("belongs to \"alice\""));
  CHECK(h.engine().active_task(1) != nullptr);
  h.engine().OnDirected(bob, *wire::GetEnvelope(ControlBytes(wire::ControlOp::Drain, "w1").data()), h.now);
  t = h.Commit();
  CHECK_THAT(ErrorText(t, bob), Contains("may not drain workers"));
  CHECK_FALSE(h.engine().worker("w1")->draining);
  h.engine().OnDirected(alice, *wire::GetEnvelope(ControlBytes(wire::ControlOp::Cancel, "t1").data()), h.now);
  h.Commit();
  CHECK(h.engine().active_task(1) == nullptr);
  h.engine().OnDirected(ops, *wire::GetEnvelope(ControlBytes(wire::ControlOp::Cancel, "t2").data()), h.now);
  h.Commit();
  CHECK(h.engine().active_task(2) == nullptr);
  CHECK(h.engine().unauthorized() == 2);

  // A worker's key, an unauthenticated form, may not submit.
  t = h.Submit({NewTask()}, false, "w/w1/1");
  CHECK_THAT(ErrorText(t, "w/w1/1"), Contains("role worker (\"w1\") may not submit tasks"));
  t = h.Submit({NewTask()}, false, "fm-submit/h/1/x");
  CHECK_THAT(ErrorText(t, "fm-submit/h/1/x"), Contains("role none may not submit tasks"));
}

TEST_CASE("a task's start, result and output count only from the worker it is on", "[unit]") {
  Harness h;
  h.Register({"w1", {}, 4, 8 * GiB, 1});
  h.Register({"w2", {}, 4, 8 * GiB, 1});
  h.Submit({NewTask()});
  const std::string on = h.engine().active_task(1)->worker, other = on == "w1" ? "w2" : "w1";
  // The other worker reports it started and succeeded, naming the right worker inside.
  flatbuffers::FlatBufferBuilder fbb;
  auto ref = wire::CreateTaskRef(fbb, 1, 1);
  std::string finished =
      codec::Seal(fbb, wire::CreateTaskFinished(fbb, ref, fbb.CreateString(on), wire::Outcome::Succeeded, 0, 0));
  h.engine().OnDirected(Harness::Address(other), *wire::GetEnvelope(finished.data()), h.now);
  Turn t = h.Commit();
  CHECK(t.Events("task.succeeded").empty());
  CHECK(h.engine().active_task(1) != nullptr);
  CHECK(h.engine().unauthorized() == 1);
  // From the worker it is on: it ends.
  t = h.Finished(1, 1, on, wire::Outcome::Succeeded);
  CHECK(t.Events("task.succeeded").size() == 1);
}

TEST_CASE("a subscription is taken only when it could match a published topic, and a client follows only its own tasks",
          "[unit]") {
  for (Role role : {Role::kOperator, Role::kScheduler, Role::kWorker, Role::kBroker}) {
    for (const char* ok : {"", "t", "task.", "worker.", "scheduler.", "scheduler.started", "fleet.", "fleet.register",
                           "fleet.heartbeat", "task.alice/", "task.-/"}) {
      INFO(RoleName(role) << " " << ok);
      CHECK(MaySubscribe(role, "x", ok).ok());
    }
  }
  // Finer than a class is never matched (events travel in blocks per class and owner),
  // nor is anything else.
  for (const char* bad : {"task.succeeded", "tasks", "scheduler.started.x", "w/alice/", "fleet.registerX", "task.alice",
                          "task.al ice/", "task.alice/x"}) {
    INFO(bad);
    CHECK_FALSE(MaySubscribe(Role::kOperator, "ops", bad).ok());
  }
  // A client: its own tasks, and the rest of the stream, never everyone's tasks.
  for (const char* ok : {"task.alice/", "worker.", "w", "scheduler.", "s"}) {
    INFO(ok);
    CHECK(MaySubscribe(Role::kClient, "alice", ok).ok());
  }
  CHECK_THAT(MaySubscribe(Role::kClient, "alice", "task.bob/").message(), Contains("only its own tasks"));
  for (const char* everyone : {"", "t", "task."}) {
    INFO(everyone);
    CHECK_THAT(MaySubscribe(Role::kClient, "alice", everyone).message(), Contains("every owner's tasks"));
  }
  CHECK(TaskTopic("alice") == "task.alice/");
  CHECK(TaskTopic("") == "task.-/");
  Status s = MaySubscribe(Role::kOperator, "ops", std::string("ab\x01", 3));
  CHECK_THAT(s.message(), Contains("\"ab?\"") && Contains("matches no topic"));
}

TEST_CASE("who may ask what of the scheduler, one rule per action: every role against every action", "[unit]") {
  // Expected, per action: may a client do it (on its own task / another's), may an operator.
  struct Row {
    Action action;
    bool client_own, client_other, operator_any;
  };
  const Row rows[] = {
      {Action::kSubmit, true, true, true},    {Action::kList, true, true, true},
      {Action::kReplay, true, true, true},    {Action::kDrain, false, false, true},
      {Action::kUndrain, false, false, true}, {Action::kSnapshot, false, false, true},
      {Action::kCancel, true, false, true},
  };
  for (const Row& row : rows) {
    INFO(ActionText(row.action));
    CHECK(MayAct(Role::kClient, "alice", row.action, "alice").ok() == row.client_own);
    CHECK(MayAct(Role::kClient, "alice", row.action, "bob").ok() == row.client_other);
    CHECK(MayAct(Role::kOperator, "ops", row.action, "bob").ok() == row.operator_any);
    // Nobody else asks the scheduler anything: workers, brokers, the scheduler's own key,
    // and a keyless sender (the engine does not ask without authentication).
    for (Role other : {Role::kWorker, Role::kBroker, Role::kScheduler, Role::kNone}) {
      CHECK_FALSE(MayAct(other, "alice", row.action, "alice").ok());
    }
  }
  CHECK_THAT(MayAct(Role::kClient, "bob", Action::kCancel, "alice").message(),
             Contains("role client (\"bob\") may not cancel this task") && Contains("belongs to \"alice\""));
  CHECK_THAT(MayAct(Role::kClient, "bob", Action::kDrain).message(), Contains("that takes role operator"));
  CHECK_THAT(MayAct(Role::kWorker, "w1", Action::kSubmit).message(), Contains("role worker (\"w1\") may not submit"));
}
