// Work as a graph (TaskSpec.after): a task runs only after each task it names succeeded,
// and one that cannot succeed ends its dependents at once, transitively, in one turn.
// The engine stepped with the manual clock and the in-memory store; the model test at
// the end checks random graphs, outcomes and restarts against a plain oracle.
#include <catch2/catch.hpp>
#include <deque>
#include <map>
#include <random>
#include <set>

#include "scheduler/engine.h"
#include "tests/unit/engine_harness.h"

using namespace fm;
using namespace fm::sched;
using namespace fm::sched::testing;

namespace {

TaskSpec Keyed(const std::string& key, std::vector<std::string> after = {}) {
  TaskSpec s = NewTask();
  s.key = key;
  s.after = std::move(after);
  return s;
}

const wire::SubmitResult* ResultOf(const Turn& t, size_t i) {
  auto replies = t.To("client", wire::Body::SubmitReply);
  REQUIRE(replies.size() == 1);
  REQUIRE(replies[0]->body_as_SubmitReply()->results()->size() > i);
  return replies[0]->body_as_SubmitReply()->results()->Get(i);
}

}  // namespace

TEST_CASE("a task after another waits for it to succeed, says so, and runs then", "[unit][graph]") {
  Harness h;
  h.Register({"w", {}, 4, 8 * GiB, 4});
  Turn t = h.Submit({Keyed("prep"), Keyed("train", {"prep"})});
  const uint64_t prep = ResultOf(t, 0)->task(), train = ResultOf(t, 1)->task();
  CHECK(ResultOf(t, 1)->status() == wire::SubmitStatus::Accepted);
  CHECK(t.Dispatched(Harness::Address("w")) == std::vector<uint64_t>{prep});
  CHECK(h.engine().blocked_count() == 1);

  std::deque<Turn> kept;
  const auto* shown = h.Control(wire::ControlOp::Task, TaskName(train), &kept);
  REQUIRE(shown->ok());
  CHECK(shown->tasks()->Get(0)->state()->str() == "pending");
  CHECK(shown->tasks()->Get(0)->waiting()->str() ==
        "after: waits for " + TaskName(prep) + " \"prep\" (queued on w) to succeed");
  REQUIRE(shown->tasks()->Get(0)->spec()->after() != nullptr);
  CHECK(shown->tasks()->Get(0)->spec()->after()->Get(0)->str() == "prep");

  // Nothing moves it while its parent runs or is retried.
  t = h.Started(prep, 1, "w");
  CHECK(t.Dispatched(Harness::Address("w")).empty());
  t = h.Finished(prep, 1, "w", wire::Outcome::Succeeded);
  CHECK(t.Dispatched(Harness::Address("w")) == std::vector<uint64_t>{train});
  CHECK(h.engine().blocked_count() == 0);
  t = h.Finished(train, 1, "w", wire::Outcome::Succeeded);
  CHECK(t.Events("task.succeeded").size() == 1);
  CHECK(h.engine().active_count() == 0);
}

TEST_CASE("an after key that is unknown, or the task's own, is invalid_task and creates nothing", "[unit][graph]") {
  Harness h;
  h.Register({"w", {}});
  const uint64_t seq = h.engine().next_seq();
  const auto* unknown = OnlyResult(h.Submit({Keyed("b", {"nope"})}));
  CHECK(unknown->status() == wire::SubmitStatus::Rejected);
  CHECK(unknown->reason()->str() == "invalid_task");
  CHECK(unknown->task() == 0);
  CHECK(std::string(unknown->message()->str()).find("\"nope\"") != std::string::npos);
  const auto* self = OnlyResult(h.Submit({Keyed("c", {"c"})}));
  CHECK(self->reason()->str() == "invalid_task");
  CHECK(h.engine().next_seq() == seq);  // no task was made, nothing said

  // Keys are per owner: bob's "a" is not alice's.
  EngineOptions keyed;
  keyed.authenticate = true;
  Harness owners(keyed);
  owners.Register({"w", {}});
  owners.Submit({Keyed("a")}, false, "client/alice/1");
  Turn bob = owners.Submit({Keyed("b", {"a"})}, false, "client/bob/1");
  auto replies = bob.To("client/bob/1", wire::Body::SubmitReply);
  REQUIRE(replies.size() == 1);
  CHECK(replies[0]->body_as_SubmitReply()->results()->Get(0)->reason()->str() == "invalid_task");
}

TEST_CASE("a failed parent ends every task after it, transitively in one turn, naming the first failure",
          "[unit][graph]") {
  Harness h;
  h.Register({"w", {}, 4, 8 * GiB, 4});
  Turn t = h.Submit({Keyed("a"), Keyed("b", {"a"}), Keyed("c", {"b"}), Keyed("side"), Keyed("d", {"c", "side"})});
  const uint64_t a = ResultOf(t, 0)->task(), b = ResultOf(t, 1)->task(), d = ResultOf(t, 4)->task();
  CHECK(h.engine().blocked_count() == 3);
  t = h.Finished(a, 1, "w", wire::Outcome::Failed, 3);
  auto failed = t.Events("task.failed");
  REQUIRE(failed.size() == 4);
  for (size_t i = 1; i < 4; ++i) CHECK(failed[i]->reason()->str() == "dependency_failed");
  const std::string root = "\"a\" (" + TaskName(a) + ") failed exit_status: exit status 3";
  CHECK(failed[1]->message()->str() == "after " + root);  // b ran after a, the first failure
  CHECK(failed[3]->task()->str() == TaskName(d));
  CHECK(failed[3]->message()->str() == "after \"c\" (t3): " + root);
  CHECK(h.engine().blocked_count() == 0);
  CHECK(h.engine().active_count() == 1);  // "side", which d also waited for, runs on

  // Submitted after the failure: ends at once, same cause, and a watcher is told in the reply.
  t = h.Submit({Keyed("e", {"c"})}, /*watch=*/true);
  const auto* late = OnlyResult(t);
  CHECK(late->status() == wire::SubmitStatus::Failed);
  CHECK(late->reason()->str() == "dependency_failed");
  CHECK(late->message()->str() == "after \"c\" (t3): " + root);
  CHECK(t.Events("task.submitted").size() == 1);
  CHECK(t.Events("task.failed").size() == 1);
  CHECK(t.To("client", wire::Body::TaskEnded).empty());  // said once, in the reply
  CHECK(OnlyResult(h.Submit({Keyed("f", {"a"})}))->message()->str() == "after " + root);
  CHECK(OnlyResult(h.Submit({Keyed("g", {"b"})}))->message()->str() == "after \"b\" (t2): " + root);

  // A cancelled parent likewise; a resubmitted key answers as it ended.
  t = h.Submit({Keyed("x"), Keyed("y", {"x"})});
  std::deque<Turn> kept;
  const uint64_t x = ResultOf(t, 0)->task();
  REQUIRE(h.Control(wire::ControlOp::Cancel, TaskName(x), &kept)->ok());
  const auto* y = OnlyResult(h.Submit({Keyed("y", {"x"})}));
  CHECK(y->status() == wire::SubmitStatus::Failed);
  CHECK(y->message()->str() == "after \"x\" (" + TaskName(x) + ") cancelled: cancelled by fm-ctl");
  (void)b;
}

TEST_CASE("a 10,000-task chain whose root fails ends all 10,000 in one turn", "[unit][graph]") {
  Harness h;
  h.Register({"w", {}});
  constexpr int kChain = 10000;
  std::vector<TaskSpec> chain;
  for (int i = 0; i < kChain; ++i) {
    chain.push_back(Keyed("k" + std::to_string(i),
                          i == 0 ? std::vector<std::string>{} : std::vector<std::string>{"k" + std::to_string(i - 1)}));
  }
  Turn t = h.Submit(chain);
  CHECK(t.Dispatched(Harness::Address("w")) == std::vector<uint64_t>{1});
  CHECK(h.engine().blocked_count() == kChain - 1);
  h.Restart();  // the edges come back from the records
  h.Register({"w", {}}, {{1, 1}});
  CHECK(h.engine().blocked_count() == kChain - 1);
  t = h.Finished(1, 1, "w", wire::Outcome::Failed, 1);
  auto failed = t.Events("task.failed");
  REQUIRE(failed.size() == kChain);
  std::set<std::string> ended;
  for (const auto* e : failed) ended.insert(e->task()->str());
  CHECK(ended.size() == kChain);
  CHECK(failed.back()->message()->str().find("\"k0\" (t1) failed exit_status") != std::string::npos);
  CHECK(h.engine().active_count() == 0);
  CHECK(h.engine().blocked_count() == 0);
  CHECK(h.engine().stored_ended_tasks() == kChain);
}

TEST_CASE("a chain that succeeds runs link by link, across restarts", "[unit][graph]") {
  Harness h;
  h.Register({"w", {}, 4, 8 * GiB, 4});
  h.Submit({Keyed("a"), Keyed("b", {"a"}), Keyed("c", {"a", "b"})});
  for (uint64_t id = 1; id <= 3; ++id) {
    h.Restart();
    Turn t = h.Register({"w", {}, 4, 8 * GiB, 4}, {{id, 1}});
    CHECK(h.engine().active_task(id)->state == wire::TaskState::Queued);
    t = h.Finished(id, 1, "w", wire::Outcome::Succeeded);
    CHECK(t.Dispatched(Harness::Address("w")) == (id < 3 ? std::vector<uint64_t>{id + 1} : std::vector<uint64_t>{}));
  }
  CHECK(h.engine().active_count() == 0);
}

// The model: tasks submitted over time with random parents among those before them
// (ended or not), outcomes at random, cancels, dependents submitted in the very turn
// their parent ends, and restarts. The oracle: a task may be dispatched only once every
// parent succeeded; it ends exactly once; a parent that did not succeed ends it
// dependency_failed; when everything left succeeds, nothing is left waiting.
TEST_CASE("random graphs, outcomes and restarts match a plain oracle: none stuck, one end each", "[unit][graph]") {
  const uint32_t seed = GENERATE(1u, 2u, 3u, 4u, 5u, 6u, 7u, 8u);
  INFO("seed " << seed);
  std::mt19937 rng(seed);
  auto chance = [&](int percent) { return static_cast<int>(rng() % 100) < percent; };
  Harness h;
  const WorkerSpec w{"w", {}, 4, 8 * GiB, 3};
  h.Register(w);

  struct Model {
    std::vector<uint64_t> parents;
    std::string key;
    enum { kOpen, kSucceeded, kFailed, kCancelled } end = kOpen;
    bool dep_failed = false;
  };
  std::map<uint64_t, Model> model;
  std::map<uint64_t, uint32_t> on_worker;  // dispatched, not finished: task -> attempt
  std::map<uint64_t, int> ends;            // end events per task
  std::map<uint64_t, std::string> end_reason;
  std::vector<std::string> violations;
  std::deque<Turn> kept;

  auto ended_model = [&](uint64_t id) { return model.at(id).end != Model::kOpen; };
  auto take = [&](Turn t) {
    for (const auto* env : t.To(Harness::Address("w"), wire::Body::Dispatch)) {
      for (const auto* a : *env->body_as_Dispatch()->assignments()) {
        const uint64_t id = a->task();
        for (uint64_t p : model.at(id).parents) {
          if (model.at(p).end != Model::kSucceeded) {
            violations.push_back(TaskName(id) + " dispatched before its parent " + TaskName(p) + " succeeded");
          }
        }
        if (!ended_model(id)) on_worker[id] = a->attempt();
      }
    }
    for (const char* type : {"task.succeeded", "task.failed", "task.cancelled"}) {
      for (const auto* e : t.Events(type)) {
        uint64_t id = 0;
        REQUIRE(ParseTaskName(e->task()->str(), &id));
        ++ends[id];
        end_reason[id] = e->reason() ? e->reason()->str() : "";
      }
    }
  };
  // The oracle's side of a task ending without success: its open dependents, transitively.
  std::function<void(uint64_t)> doom = [&](uint64_t id) {
    for (auto& [child, m] : model) {
      if (m.end != Model::kOpen) continue;
      if (std::find(m.parents.begin(), m.parents.end(), id) == m.parents.end()) continue;
      m.end = Model::kFailed;
      m.dep_failed = true;
      on_worker.erase(child);
      doom(child);
    }
  };
  auto make_spec = [&](int n, std::vector<uint64_t>* parents) {
    TaskSpec s = Keyed("k" + std::to_string(n));
    if (!model.empty()) {
      const int count = static_cast<int>(rng() % 4);
      for (int i = 0; i < count; ++i) {
        auto it = std::next(model.begin(), static_cast<long>(rng() % model.size()));
        s.after.push_back(it->second.key);
        parents->push_back(it->first);
      }
    }
    std::sort(s.after.begin(), s.after.end());
    s.after.erase(std::unique(s.after.begin(), s.after.end()), s.after.end());
    return s;
  };
  auto record_submit = [&](const Turn& t, std::vector<uint64_t> parents, const std::string& key) {
    const auto* r = OnlyResult(t);
    REQUIRE(r->task() != 0);
    Model m;
    m.parents = std::move(parents);
    m.key = key;
    const uint64_t id = r->task();
    model[id] = m;
    bool any_failed = false;
    for (uint64_t p : model[id].parents)
      any_failed |= model.at(p).end == Model::kFailed || model.at(p).end == Model::kCancelled;
    if (any_failed) {
      model[id].end = Model::kFailed;
      model[id].dep_failed = true;
      CHECK(r->status() == wire::SubmitStatus::Failed);
    }
  };
  auto finish = [&](uint64_t id, bool ok) {
    model.at(id).end = ok ? Model::kSucceeded : Model::kFailed;
    if (!ok) doom(id);
    on_worker.erase(id);
  };

  int next_key = 0;
  for (int step = 0; step < 300; ++step) {
    const int action = static_cast<int>(rng() % 100);
    if (action < 40) {
      std::vector<uint64_t> parents;
      TaskSpec s = make_spec(next_key, &parents);
      Turn t = h.Submit({s});
      record_submit(t, parents, s.key);
      take(std::move(t));
      ++next_key;
    } else if (action < 75 && !on_worker.empty()) {
      auto it = std::next(on_worker.begin(), static_cast<long>(rng() % on_worker.size()));
      const auto [id, attempt] = *it;
      const bool ok = chance(75);
      if (chance(30)) {
        // A dependent of it submitted in the very turn it ends, before or after the result.
        std::vector<uint64_t> parents{id};
        TaskSpec child = Keyed("k" + std::to_string(next_key++), {model.at(id).key});
        const bool submit_first = chance(50);
        if (submit_first) h.Deliver({child});
        h.DeliverFinished(id, attempt, "w", ok ? wire::Outcome::Succeeded : wire::Outcome::Failed, ok ? 0 : 1);
        if (!submit_first) h.Deliver({child});
        Turn t = h.Commit();
        if (submit_first) {
          // Accepted while the parent was open: ended with it when it failed.
          const auto* r = OnlyResult(t);
          model[r->task()] = Model{parents, child.key};
          finish(id, ok);
        } else {
          finish(id, ok);
          record_submit(t, parents, child.key);
        }
        take(std::move(t));
      } else {
        Turn t = h.Finished(id, attempt, "w", ok ? wire::Outcome::Succeeded : wire::Outcome::Failed, ok ? 0 : 1);
        finish(id, ok);
        take(std::move(t));
      }
    } else if (action < 85 && !model.empty()) {
      auto it = std::next(model.begin(), static_cast<long>(rng() % model.size()));
      if (it->second.end != Model::kOpen) continue;
      const uint64_t id = it->first;
      REQUIRE(h.Control(wire::ControlOp::Cancel, TaskName(id), &kept)->ok());
      take(std::move(kept.back()));
      it->second.end = Model::kCancelled;
      on_worker.erase(id);
      doom(id);
    } else if (action < 92) {
      h.Restart();
      std::vector<std::pair<uint64_t, uint32_t>> held(on_worker.begin(), on_worker.end());
      take(h.Register(w, held));
    } else {
      take(h.Heartbeat("w", {}));
      take(h.Tick(300));
    }
  }
  // Everything left succeeds: nothing may stay waiting.
  for (int rounds = 0; rounds < 1000 && !on_worker.empty(); ++rounds) {
    auto [id, attempt] = *on_worker.begin();
    Turn t = h.Finished(id, attempt, "w", wire::Outcome::Succeeded);
    finish(id, true);
    take(std::move(t));
  }
  CHECK(violations.empty());
  for (const auto& v : violations) UNSCOPED_INFO(v);
  CHECK(h.engine().active_count() == 0);
  CHECK(h.engine().blocked_count() == 0);
  for (const auto& [id, m] : model) {
    INFO(TaskName(id));
    CHECK(ends[id] == 1);
    CHECK(m.end != Model::kOpen);
    if (m.dep_failed) CHECK(end_reason[id] == "dependency_failed");
    if (m.end == Model::kSucceeded) CHECK(end_reason[id].empty());
  }
}

TEST_CASE("blocked tasks are bounded: past --max-blocked a new one is limit_reached, others go on", "[unit][graph]") {
  EngineOptions options;
  options.max_blocked_tasks = 2;
  Harness h(options);
  h.Register({"w", {}});
  Turn t = h.Submit({Keyed("a"), Keyed("b", {"a"}), Keyed("c", {"a"}), Keyed("d", {"a"}), Keyed("e")});
  CHECK(ResultOf(t, 1)->status() == wire::SubmitStatus::Accepted);
  CHECK(ResultOf(t, 2)->status() == wire::SubmitStatus::Accepted);
  CHECK(ResultOf(t, 3)->status() == wire::SubmitStatus::Rejected);
  CHECK(ResultOf(t, 3)->reason()->str() == "limit_reached");
  CHECK_THAT(ResultOf(t, 3)->message()->str(), Catch::Contains("--max-blocked"));
  CHECK(ResultOf(t, 4)->status() == wire::SubmitStatus::Accepted);  // no after: not bounded by it
  h.Finished(1, 1, "w", wire::Outcome::Succeeded);
  CHECK(h.engine().blocked_count() == 0);
  CHECK(OnlyResult(h.Submit({Keyed("d", {"a"})}))->status() == wire::SubmitStatus::Accepted);
}

namespace {

TaskSpec InGroup(const std::string& group) {
  TaskSpec s = NewTask();
  s.group = group;
  return s;
}

// fm-ctl group G: pending, queued, running, succeeded, failed, cancelled.
std::vector<uint64_t> Counts(const wire::ControlReply* r) {
  REQUIRE(r->ok());
  REQUIRE(r->group() != nullptr);
  const auto* g = r->group();
  return {g->pending(), g->queued(), g->running(), g->succeeded(), g->failed(), g->cancelled()};
}

}  // namespace

TEST_CASE("a group counts its tasks per state, lists them, and cancels the rest in one turn, across restarts",
          "[unit][graph]") {
  EngineOptions options;
  options.cached_waiting_tasks = 5;  // most of the group waits at q/, out of memory
  options.waiting_load_batch = 7;
  Harness h(options);
  h.Register({"w", {}, 4, 8 * GiB, 2});
  std::vector<TaskSpec> specs(40, InGroup("sweep"));
  specs.push_back(InGroup("other"));
  h.Submit(specs);
  std::deque<Turn> kept;
  CHECK(Counts(h.Control(wire::ControlOp::Group, "", &kept, "ctl", "sweep")) ==
        std::vector<uint64_t>{38, 2, 0, 0, 0, 0});
  h.Started(1, 1, "w");
  h.Finished(2, 1, "w", wire::Outcome::Failed, 1);
  CHECK(Counts(h.Control(wire::ControlOp::Group, "", &kept, "ctl", "sweep")) ==
        std::vector<uint64_t>{37, 1, 1, 0, 1, 0});
  CHECK_FALSE(h.Control(wire::ControlOp::Group, "", &kept, "ctl", "nope")->ok());

  // Listed by group, out of memory ones too.
  flatbuffers::FlatBufferBuilder fbb;
  std::string bytes = codec::Seal(fbb, wire::CreateControlRequestDirect(fbb, wire::ControlOp::Tasks, nullptr, 1, 0, 0,
                                                                        nullptr, nullptr, nullptr, nullptr, "other"));
  h.engine().OnDirected("ctl", *wire::GetEnvelope(bytes.data()), h.now);
  const Turn& listed = kept.emplace_back(h.Commit());
  const auto* page = listed.To("ctl", wire::Body::ControlReply).at(0)->body_as_ControlReply();
  REQUIRE(page->tasks()->size() == 1);
  CHECK(page->tasks()->Get(0)->task()->str() == "t41");

  // A restart reads the group back: ended counts from g/, open tasks from a/ and q/.
  h.Restart(options);
  h.Register({"w", {}, 4, 8 * GiB, 2}, {{1, 1}, {3, 1}});
  CHECK_FALSE(h.Control(wire::ControlOp::Cancel, "", &kept, "ctl", "sweep")->ok());  // still reading q/
  while (!h.engine().waiting_loaded()) h.Commit();
  CHECK(Counts(h.Control(wire::ControlOp::Group, "", &kept, "ctl", "sweep")) ==
        std::vector<uint64_t>{37, 1, 1, 0, 1, 0});

  const uint64_t seq = h.engine().next_seq();
  const auto* cancelled = h.Control(wire::ControlOp::Cancel, "", &kept, "ctl", "sweep");
  REQUIRE(cancelled->ok());
  CHECK(cancelled->message()->str() == "cancelled 39 tasks of group \"sweep\"");
  const Turn& turn = kept.back();
  CHECK(turn.Events("task.cancelled").size() == 39);
  CHECK(turn.To(Harness::Address("w"), wire::Body::CancelTask).size() == 2);  // the queued and the running one
  CHECK(turn.Events("task.queued").size() == 1);                              // "other" takes a freed slot
  CHECK(h.engine().next_seq() == seq + 40);                                   // nothing else said
  CHECK(Counts(h.Control(wire::ControlOp::Group, "", &kept, "ctl", "sweep")) ==
        std::vector<uint64_t>{0, 0, 0, 0, 1, 39});
  CHECK(h.engine().active_count() == 1);  // "other"
  h.Restart(options);
  CHECK(Counts(h.Control(wire::ControlOp::Group, "", &kept, "ctl", "sweep")) ==
        std::vector<uint64_t>{0, 0, 0, 0, 1, 39});
}

TEST_CASE("groups are per owner: a client cancels and counts only its own, an operator any by --owner",
          "[unit][graph]") {
  EngineOptions options;
  options.authenticate = true;
  Harness h(options);
  h.Register({"w", {}, 4, 8 * GiB, 1});
  const std::string alice = "client/alice/x", bob = "client/bob/y", ops = "operator/ops/z";
  h.Submit({InGroup("g"), InGroup("g")}, false, alice);
  h.Submit({InGroup("g")}, false, bob);
  std::deque<Turn> kept;
  CHECK(Counts(h.Control(wire::ControlOp::Group, "", &kept, bob, "g")) == std::vector<uint64_t>{1, 0, 0, 0, 0, 0});
  CHECK_FALSE(h.Control(wire::ControlOp::Cancel, "", &kept, bob, "g", "alice")->ok());
  REQUIRE(h.Control(wire::ControlOp::Cancel, "", &kept, bob, "g")->ok());
  CHECK(Counts(h.Control(wire::ControlOp::Group, "", &kept, alice, "g")) == std::vector<uint64_t>{1, 1, 0, 0, 0, 0});
  const auto* by_ops = h.Control(wire::ControlOp::Cancel, "", &kept, ops, "g", "alice");
  REQUIRE(by_ops->ok());
  CHECK(by_ops->message()->str() == "cancelled 2 tasks of group \"g\"");
  CHECK(h.engine().active_count() == 0);
}

namespace {

std::vector<TaskSpec> Array(const std::string& group, uint32_t count, uint32_t max_running) {
  std::vector<TaskSpec> out;
  for (uint32_t i = 0; i < count; ++i) {
    TaskSpec s = InGroup(group);
    s.key = group + "[" + std::to_string(i) + "]";
    s.array = TaskSpec::Array{i, count, max_running};
    out.push_back(s);
  }
  return out;
}

}  // namespace

TEST_CASE("an array runs at most max_running at once, the rest in index order, and says why it waits",
          "[unit][graph]") {
  Harness h;
  h.Register({"w", {}, 16, 64 * GiB, 8});
  Turn t = h.Submit(Array("sweep", 6, 2));
  CHECK(t.Dispatched(Harness::Address("w")) == std::vector<uint64_t>{1, 2});
  std::deque<Turn> kept;
  const auto* shown = h.Control(wire::ControlOp::Task, "t3", &kept);
  REQUIRE(shown->ok());
  CHECK_THAT(shown->tasks()->Get(0)->waiting()->str(), Catch::StartsWith("array bound: group \"sweep\" has 2 tasks"));
  CHECK_THAT(h.Control(wire::ControlOp::Ping, "", &kept)->message()->str(), Catch::Contains("4 held (array bounds)"));
  t = h.Finished(2, 1, "w", wire::Outcome::Succeeded);
  CHECK(t.Dispatched(Harness::Address("w")) == std::vector<uint64_t>{3});
  // A cancelled held one frees nothing and is never placed; a failed one frees its place.
  REQUIRE(h.Control(wire::ControlOp::Cancel, "t4", &kept)->ok());
  CHECK(kept.back().Dispatched(Harness::Address("w")).empty());
  t = h.Finished(1, 1, "w", wire::Outcome::Failed, 1);
  CHECK(t.Dispatched(Harness::Address("w")) == std::vector<uint64_t>{5});
  // Across a restart: the two in flight count, nothing more goes.
  h.Restart();
  t = h.Register({"w", {}, 16, 64 * GiB, 8}, {{3, 1}, {5, 1}});
  CHECK(t.Dispatched(Harness::Address("w")).empty());
  t = h.Finished(3, 1, "w", wire::Outcome::Succeeded);
  CHECK(t.Dispatched(Harness::Address("w")) == std::vector<uint64_t>{6});
}

TEST_CASE("arrays with random outcomes, retries, cancels and restarts never exceed their bound, one end each",
          "[unit][graph]") {
  const uint32_t seed = GENERATE(11u, 12u, 13u, 14u, 15u, 16u);
  INFO("seed " << seed);
  std::mt19937 rng(seed);
  EngineOptions options;
  options.cached_waiting_tasks = 8;  // held ones wait at q/, out of memory
  options.waiting_load_batch = 5;
  Harness h(options);
  const WorkerSpec w{"w", {}, 64, 64 * GiB, 32};
  h.Register(w);
  std::map<std::string, uint32_t> bound;
  std::map<uint64_t, std::string> group_of;
  std::map<uint64_t, uint32_t> on_worker;  // dispatched, not ended: task -> attempt
  std::map<uint64_t, int> ends;
  std::vector<std::string> violations;
  std::deque<Turn> kept;
  auto take = [&](const Turn& t) {
    for (const auto* env : t.To(Harness::Address("w"), wire::Body::Dispatch)) {
      for (const auto* a : *env->body_as_Dispatch()->assignments()) on_worker[a->task()] = a->attempt();
    }
    for (const char* type : {"task.succeeded", "task.failed", "task.cancelled"}) {
      for (const auto* e : t.Events(type)) {
        uint64_t id = 0;
        REQUIRE(ParseTaskName(e->task()->str(), &id));
        ++ends[id];
        on_worker.erase(id);
      }
    }
    std::map<std::string, uint32_t> flying;
    for (const auto& [id, attempt] : on_worker) ++flying[group_of[id]];
    for (const auto& [g, n] : flying) {
      if (n > bound[g])
        violations.push_back(g + ": " + std::to_string(n) + " in flight, bound " + std::to_string(bound[g]));
    }
  };
  for (int a = 0; a < 3; ++a) {
    const std::string g = "a" + std::to_string(a);
    bound[g] = 1 + rng() % 4;
    std::vector<TaskSpec> specs = Array(g, 10 + rng() % 20, bound[g]);
    for (auto& s : specs) s.retry_exit_codes = {75};
    Turn t = h.Submit(specs);
    for (const auto* r : *t.To("client", wire::Body::SubmitReply).at(0)->body_as_SubmitReply()->results()) {
      group_of[r->task()] = g;
    }
    take(t);
  }
  for (int step = 0; step < 400 && !(on_worker.empty() && h.engine().active_count() == 0); ++step) {
    const int action = static_cast<int>(rng() % 100);
    if (action < 70 && !on_worker.empty()) {
      auto it = std::next(on_worker.begin(), static_cast<long>(rng() % on_worker.size()));
      const auto [id, attempt] = *it;
      const int roll = static_cast<int>(rng() % 10);
      if (roll < 6) {
        take(h.Finished(id, attempt, "w", wire::Outcome::Succeeded));
      } else if (roll < 8) {
        take(h.Finished(id, attempt, "w", wire::Outcome::Failed, 75));  // retried: stays in flight
        on_worker.erase(id);
      } else {
        take(h.Finished(id, attempt, "w", wire::Outcome::Failed, 1));
      }
    } else if (action < 78 && !group_of.empty()) {
      auto it = std::next(group_of.begin(), static_cast<long>(rng() % group_of.size()));
      if (ends[it->first] == 0) {
        REQUIRE(h.Control(wire::ControlOp::Cancel, TaskName(it->first), &kept)->ok());
        take(kept.back());
      }
    } else if (action < 86) {
      h.Restart(options);
      std::vector<std::pair<uint64_t, uint32_t>> held(on_worker.begin(), on_worker.end());
      take(h.Register(w, held));
    } else {
      take(h.Heartbeat("w", {}));
      take(h.Tick(1500));  // retry backoffs end
    }
  }
  for (int rounds = 0; rounds < 2000 && (h.engine().active_count() > 0 || !on_worker.empty()); ++rounds) {
    if (on_worker.empty()) {
      take(h.Heartbeat("w", {}));
      take(h.Tick(1500));
      continue;
    }
    auto [id, attempt] = *on_worker.begin();
    take(h.Finished(id, attempt, "w", wire::Outcome::Succeeded));
  }
  for (const auto& v : violations) UNSCOPED_INFO(v);
  CHECK(violations.empty());
  CHECK(h.engine().active_count() == 0);
  for (const auto& [id, g] : group_of) {
    INFO(TaskName(id));
    CHECK(ends[id] == 1);
  }
}

TEST_CASE("a task after two keeps waiting for the one left across a restart, its record not rewritten per parent",
          "[unit][graph]") {
  Harness h;
  h.Register({"w", {}, 4, 8 * GiB, 4});
  h.Submit({Keyed("a"), Keyed("b"), Keyed("c", {"a", "b"})});
  h.Finished(1, 1, "w", wire::Outcome::Succeeded);
  h.Restart();
  h.Register({"w", {}, 4, 8 * GiB, 4}, {{2, 1}});
  CHECK(h.engine().blocked_count() == 1);
  std::deque<Turn> kept;
  CHECK(h.Control(wire::ControlOp::Task, "t3", &kept)->tasks()->Get(0)->waiting()->str() ==
        "after: waits for t2 \"b\" (queued on w) to succeed");
  Turn t = h.Finished(2, 1, "w", wire::Outcome::Succeeded);
  CHECK(t.Dispatched(Harness::Address("w")) == std::vector<uint64_t>{3});
}

TEST_CASE("after keys are bounded per message, and tasks without after in that message still go in", "[unit][graph]") {
  Harness h;
  h.Register({"w", {}, 4, 8 * GiB, 1});
  std::vector<TaskSpec> parents;
  std::vector<std::string> keys;
  for (int i = 0; i < 1000; ++i) {
    keys.push_back("p" + std::to_string(i));
    parents.push_back(Keyed(keys.back()));
  }
  h.Submit(parents);
  std::vector<TaskSpec> message;
  for (int i = 0; i < 11; ++i) message.push_back(Keyed("c" + std::to_string(i), keys));
  message.push_back(Keyed("plain"));
  Turn t = h.Submit(message);
  for (size_t i = 0; i < 10; ++i) CHECK(ResultOf(t, i)->status() == wire::SubmitStatus::Accepted);
  CHECK(ResultOf(t, 10)->status() == wire::SubmitStatus::Rejected);
  CHECK_THAT(ResultOf(t, 10)->message()->str(), Catch::Contains("after keys in all"));
  CHECK(ResultOf(t, 11)->status() == wire::SubmitStatus::Accepted);
}
