// The real binaries on loopback: routing, fail fast, worker loss, bad input, fm-ctl.
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <regex>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "harness.h"
#include "runtime/bus.h"
#include "schemas/codec.h"

using namespace fm::test;
using Catch::Contains;

namespace {

// The worker a task ran on, from fm-submit --wait's JSON line.
std::string WorkerOf(const std::string& line) {
  std::smatch m;
  if (std::regex_search(line, m, std::regex(R"re("worker": "([^"]+)")re"))) return m[1];
  return "";
}

std::string Join(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += l + "\n";
  return out;
}

std::string Repeat(const std::string& line, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += line + "\n";
  return out;
}

// A cluster of two workers that differ in hardware and labels.
struct MixedFleet {
  Cluster cluster;
  MixedFleet() {
    cluster.StartWorker("big", {"--slots", "2", "--memory", "2GiB", "--label", "zone=a"});
    cluster.StartWorker("small", {"--slots", "2", "--cpus", "1", "--memory", "512MiB", "--label", "zone=b"});
  }
};

}  // namespace

TEST_CASE("on a mixed fleet each task lands only on a worker whose hardware and labels satisfy it", "[integration]") {
  MixedFleet f;
  std::string lines = Repeat(R"({"command": ["true"], "labels": {"zone": "b"}})", 3) +
                      Repeat(R"({"command": ["true"], "resources": {"memory": "1GiB"}})", 3) +
                      Repeat(R"({"command": ["true"], "resources": {"cpus": 2}})", 2);
  ToolRun run = f.cluster.Submit(lines, {"--wait"});
  INFO(run.err);
  REQUIRE(run.exit_code == 0);
  REQUIRE(run.lines.size() == 8);
  for (int i = 0; i < 3; ++i) CHECK(WorkerOf(run.lines[i]) == "small");
  for (int i = 3; i < 8; ++i) CHECK(WorkerOf(run.lines[i]) == "big");
  for (const auto& line : run.lines) CHECK_THAT(line, Contains(R"("status": "succeeded")"));
  // A fresh start on an empty data directory is not an error (RocksDB used to log one).
  CHECK_THAT(f.cluster.scheduler().Stderr(), !Contains(" error "));
}

TEST_CASE("with several eligible workers the load spreads across them", "[integration]") {
  MixedFleet f;
  ToolRun run = f.cluster.Submit(Repeat(R"({"command": ["sleep", "0.3"]})", 4), {"--wait"});
  INFO(run.err << Join(run.lines));
  REQUIRE(run.exit_code == 0);
  int on_big = 0, on_small = 0;
  for (const auto& line : run.lines) (WorkerOf(line) == "big" ? on_big : on_small)++;
  CHECK(on_big == 2);
  CHECK(on_small == 2);
}

TEST_CASE("when all eligible workers are full a task waits in the scheduler and runs when a slot frees",
          "[integration]") {
  Cluster c;
  c.StartWorker("solo", {"--slots", "1"});
  ToolRun run = c.Submit(R"({"command": ["sleep", "0.5"]})"
                         "\n"
                         R"({"command": ["true"]})"
                         "\n",
                         {"--wait"});
  REQUIRE(run.exit_code == 0);
  std::string first = TaskOf(run.lines[0]), second = TaskOf(run.lines[1]);
  // In the stream, the second task is queued only after the first ended.
  auto lines = c.tap().Lines();
  int first_done = -1, second_queued = -1;
  for (int i = 0; i < static_cast<int>(lines.size()); ++i) {
    if (lines[i].find("task.succeeded task=" + first + " ") != std::string::npos) first_done = i;
    if (lines[i].find("task.queued task=" + second + " ") != std::string::npos) second_queued = i;
  }
  REQUIRE(first_done >= 0);
  REQUIRE(second_queued >= 0);
  CHECK(second_queued > first_done);
}

TEST_CASE("a task no live worker could ever run is rejected at once, per predicate, and no worker receives it",
          "[integration]") {
  MixedFleet f;
  struct Row {
    const char* line;
    const char* message;
  };
  std::vector<Row> rows{
      {R"({"command": ["true"], "requires": ["gpu"]})", "0/2 workers eligible: 2 lack capability gpu"},
      {R"({"command": ["true"], "resources": {"cpus": 64}})", "0/2 workers eligible: 2 have fewer than 64 cpus"},
      {R"({"command": ["true"], "resources": {"memory": "8GiB"}})",
       "0/2 workers eligible: 2 have less than 8 GiB memory (largest 2 GiB)"},
      {R"({"command": ["true"], "resources": {"memory": "1GiB"}, "labels": {"zone": "b"}})",
       "0/2 workers eligible: 1 has 512 MiB memory < 1 GiB, 1 lacks label zone=b"},
      {R"({"command": ["true"], "resources": {"gpus": 1, "gpu_memory": "40GiB", "gpu_model": "H100"}})",
       "0/2 workers eligible: 2 have fewer than 1 GPUs (most 0)"},
      {R"({"command": ["true"], "labels": {"zone": "c"}})", "0/2 workers eligible: 2 lack label zone=c"},
  };
  std::string input;
  for (const auto& r : rows) input += std::string(r.line) + "\n";
  ToolRun run = f.cluster.Submit(input);
  CHECK(run.exit_code == 1);
  REQUIRE(run.lines.size() == rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    INFO(run.lines[i]);
    CHECK_THAT(run.lines[i], Contains(R"("status": "rejected")"));
    CHECK_THAT(run.lines[i], Contains(R"("reason": "no_eligible_worker")"));
    CHECK_THAT(run.lines[i], Contains(rows[i].message));
    std::string task = TaskOf(run.lines[i]);
    REQUIRE_FALSE(task.empty());
    REQUIRE(f.cluster.WaitEvent("task.failed task=" + task + " exit=0 reason=no_eligible_worker"));
    CHECK(f.cluster.tap().Count("task.queued task=" + task + " ") == 0);
  }
}

TEST_CASE("fm-tap --json prints seq, type, time, task, reason, message and the breakdown", "[integration]") {
  MixedFleet f;
  auto tap = Process::Start({Bin("fm-tap"), "--broker", f.cluster.broker(), "--since", "1", "--json", "task.failed"});
  ToolRun run = f.cluster.Submit(R"({"command": ["true"], "requires": ["docker"]})"
                                 "\n");
  REQUIRE(tap->WaitFor(R"("type": "task.failed")"));
  std::string line = tap->Lines().back();
  CHECK_THAT(line, Contains(R"({"seq": )"));
  CHECK_THAT(line, Contains(R"("time": ")"));
  CHECK_THAT(line, Contains(R"("task": ")" + TaskOf(run.lines[0]) + "\""));
  CHECK_THAT(line, Contains(R"("reason": "no_eligible_worker")"));
  CHECK_THAT(line, Contains(R"("message": "0/2 workers eligible: 2 lack capability docker")"));
  CHECK_THAT(line, Contains(R"("breakdown": [{"predicate": "capability","workers": 2)"));
}

TEST_CASE("exec streams stdout and stderr as log events, reports the exit status and stops it with SIGTERM on timeout",
          "[integration]") {
  Cluster c;
  c.StartWorker("w", {"--slots", "2"});
  ToolRun run = c.Submit(R"({"command": ["sh", "-c", "echo to-out; echo to-err >&2; exit 3"]})"
                         "\n"
                         R"({"command": ["sleep", "30"], "timeout": "300ms"})"
                         "\n",
                         {"--wait"});
  CHECK(run.exit_code == 1);
  REQUIRE(run.lines.size() == 2);
  CHECK_THAT(run.lines[0], Contains(R"("status": "failed","reason": "exit_status","message": "exit status 3")"));
  CHECK_THAT(run.lines[1], Contains(R"("reason": "timeout")"));
  std::string first = TaskOf(run.lines[0]);
  CHECK(c.WaitEvent("task.log task=" + first + " worker=w stream=stdout | to-out"));
  CHECK(c.WaitEvent("task.log task=" + first + " worker=w stream=stderr | to-err"));
  CHECK(c.WaitEvent("task.failed task=" + first + " worker=w exit=3 reason=exit_status"));
  CHECK(c.WaitEvent("task.failed task=" + TaskOf(run.lines[1]) + " worker=w exit=143 reason=timeout"));
}

TEST_CASE("a worker killed with SIGKILL is lost after the liveness window and its task runs elsewhere",
          "[integration]") {
  Cluster c({"--liveness", "1s"});
  c.StartWorker("a", {"--slots", "1"});
  c.StartWorker("b", {"--slots", "1"});
  auto submit = Process::Start({Bin("fm-submit"), "--broker", c.broker(), "--wait"}, R"({"command": ["sleep", "1"]})"
                                                                                     "\n");
  REQUIRE(c.WaitEvent("task.started task=t1 "));
  std::string victim = c.tap().Count("task.started task=t1 worker=a") ? "a" : "b";
  std::string survivor = victim == "a" ? "b" : "a";
  c.KillWorker(victim, SIGKILL);
  REQUIRE(c.WaitEvent("worker.lost worker=" + victim));
  REQUIRE(c.WaitEvent("task.retrying task=t1 worker=" + victim + " attempt=2 reason=worker_lost"));
  REQUIRE(c.WaitEvent("task.succeeded task=t1 worker=" + survivor + " attempt=2", 15000));
  CHECK(submit->Wait() == 0);
  CHECK_THAT(submit->Stdout(), Contains(R"("status": "succeeded","worker": ")" + survivor));
}

TEST_CASE("a worker paused past its liveness window runs the task's next attempt instead of failing it 'no free slot'",
          "[integration]") {
  // Regression: runs were keyed by task id, so the returning worker's old attempt held
  // the slot and the new attempt was refused until attempts ran out.
  Cluster c({"--liveness", "2s"});
  c.StartWorker("pw1", {"--slots", "1"});
  c.StartWorker("pw2", {"--slots", "1"});
  auto submit = Process::Start({Bin("fm-submit"), "--broker", c.broker(), "--wait"},
                               R"({"command": ["sleep", "6"], "max_attempts": 2})"
                               "\n");
  REQUIRE(c.WaitEvent("task.started task=t1 worker=pw1"));  // equal load: the smaller id
  ToolRun busy = c.Submit(R"({"command": ["sleep", "30"]})"
                          "\n");
  REQUIRE(busy.exit_code == 0);
  REQUIRE(c.WaitEvent("task.started task=t2 worker=pw2"));
  c.worker("pw1").Signal(SIGSTOP);
  REQUIRE(c.WaitEvent("worker.lost worker=pw1"));
  c.worker("pw1").Signal(SIGCONT);
  REQUIRE(c.WaitEvent("task.started task=t1 worker=pw1 attempt=2", 10000));
  REQUIRE(c.WaitEvent("task.succeeded task=t1 worker=pw1 attempt=2", 15000));
  CHECK(submit->Wait() == 0);
  CHECK(c.tap().Count("no free slot") == 0);
}

TEST_CASE(
    "waiting and running tasks wait through the reconnect grace when the last worker that could run them leaves, "
    "then fail with no_eligible_worker",
    "[integration]") {
  Cluster c({"--liveness", "1s", "--reconnect-grace", "2s"});
  c.StartWorker("gpuish", {"--slots", "1", "--label", "kind=special"});
  c.StartWorker("plain", {"--slots", "1"});
  auto submit = Process::Start({Bin("fm-submit"), "--broker", c.broker(), "--wait"},
                               R"({"command": ["sleep", "30"], "labels": {"kind": "special"}})"
                               "\n"
                               R"({"command": ["true"], "labels": {"kind": "special"}})"
                               "\n");
  REQUIRE(c.WaitEvent("task.started task=t1 worker=gpuish"));
  c.KillWorker("gpuish", SIGKILL);
  REQUIRE(c.WaitEvent("task.waiting task=t1 attempt=2: waiting: 1 eligible worker lost", 10000));
  REQUIRE(c.WaitEvent("reason=no_eligible_worker: 0/1 workers eligible: 1 lacks label kind=special", 15000, 2));
  CHECK(submit->Wait() == 1);
  auto lines = submit->Lines();
  REQUIRE(lines.size() == 2);
  for (const auto& line : lines) CHECK_THAT(line, Contains(R"("status": "failed","reason": "no_eligible_worker")"));
}

TEST_CASE("a worker killed and restarted on its node takes its id over at once, and its task runs there again",
          "[integration]") {
  Cluster c({"--liveness", "30s"});  // far longer than the test: no liveness window helps
  c.StartWorker("only", {"--slots", "1"});
  auto submit = Process::Start({Bin("fm-submit"), "--broker", c.broker(), "--wait"}, R"({"command": ["sleep", "1"]})"
                                                                                     "\n");
  REQUIRE(c.WaitEvent("task.started task=t1 worker=only"));
  c.KillWorker("only", SIGKILL);
  c.RestartWorker("only");  // waits for its registration: not refused
  REQUIRE(c.WaitEvent("task.succeeded task=t1 worker=only attempt=2", 15000));
  CHECK(submit->Wait() == 0);
  CHECK(c.worker("only").running());
  CHECK(c.tap().Count("worker.rejected") == 0);
}

TEST_CASE("fm-submit reports each bad line by number and what is wrong, and carries on with the rest",
          "[integration]") {
  Cluster c;
  c.StartWorker("w");
  std::string input = R"({"command": ["true"]})"
                      "\n"
                      "this is not json\n"
                      R"({"command": ["true"], "colour": "red"})"
                      "\n"
                      R"({"command": ["true"], "resources": {"memory": "8 parsecs"}})"
                      "\n"
                      R"({"command": ["true"], "resources": {"cpus": -2}})"
                      "\n"
                      R"({"command": []})"
                      "\n"
                      R"({"command": ["true"]})"
                      "\n";
  ToolRun run = c.Submit(input);
  CHECK(run.exit_code == 1);
  REQUIRE(run.lines.size() == 7);
  CHECK_THAT(run.lines[0], Contains(R"("line": 1,"task": "t1","status": "accepted")"));
  CHECK_THAT(
      run.lines[1],
      Contains(R"("line": 2,"status": "rejected","reason": "invalid_task","message": "line 2: not a JSON object)"));
  CHECK_THAT(run.lines[2], Contains(R"("message": "line 3: unknown field: colour)"));
  CHECK_THAT(run.lines[3], Contains(R"("message": "line 4: resources.memory: invalid size \"8 parsecs\")"));
  CHECK_THAT(run.lines[4],
             Contains(R"("message": "line 5: resources.cpus is -2: it must be a number from 0 to 1000000")"));
  CHECK_THAT(run.lines[5], Contains(R"("message": "line 6: command is missing or empty")"));
  CHECK_THAT(run.lines[6], Contains(R"("line": 7,"task": "t2","status": "accepted")"));
}

TEST_CASE("garbage frames to the broker and the scheduler are rejected and logged, both keep serving",
          "[integration]") {
  Cluster c;
  c.StartWorker("w");
  zmq::context_t ctx(1);
  zmq::socket_t raw(ctx, zmq::socket_type::dealer);
  raw.set(zmq::sockopt::routing_id, "garbage-sender");
  raw.set(zmq::sockopt::rcvtimeo, 10000);
  raw.set(zmq::sockopt::linger, 0);
  raw.connect(c.broker());
  auto reply = [&]() {
    std::vector<zmq::message_t> frames;
    REQUIRE(zmq::recv_multipart(raw, std::back_inserter(frames)));
    REQUIRE(frames.size() == 2);
    return frames[0].to_string() + "|" + frames[1].to_string();
  };
  // One frame, where [destination][payload] is expected: the broker answers.
  raw.send(zmq::str_buffer("just one frame"), zmq::send_flags::none);
  std::string r = reply();
  CHECK_THAT(r, Contains("fm-broker|"));
  CHECK_THAT(r, Contains("expected 2 frames"));
  // Bytes that are no fm envelope, to the scheduler (from a connection that claimed its
  // address, as every peer must first): it answers and logs.
  flatbuffers::FlatBufferBuilder fbb;
  std::string hello = fm::codec::Seal(fbb, fm::wire::CreateBrokerHello(fbb, fbb.CreateString("garbage-sender")));
  raw.send(zmq::buffer(std::string(fm::bus::kBrokerAddress)), zmq::send_flags::sndmore);
  raw.send(zmq::buffer(hello), zmq::send_flags::none);
  raw.send(zmq::str_buffer("fm-scheduler"), zmq::send_flags::sndmore);
  raw.send(zmq::str_buffer("\xde\xad\xbe\xef not a flatbuffer at all"), zmq::send_flags::none);
  r = reply();
  CHECK_THAT(r, Contains("fm-scheduler|"));
  CHECK_THAT(r, Contains("malformed"));
  // A destination nobody holds.
  raw.send(zmq::str_buffer("nobody"), zmq::send_flags::sndmore);
  raw.send(zmq::str_buffer("x"), zmq::send_flags::none);
  CHECK_THAT(reply(), Contains("no peer \"nobody\""));
  // Everyone else is undisturbed.
  ToolRun run = c.Submit(R"({"command": ["true"]})"
                         "\n",
                         {"--wait"});
  CHECK(run.exit_code == 0);
}

TEST_CASE("fm-ctl workers shows id, node, capabilities, hardware, slots in use and liveness, also as JSON",
          "[integration]") {
  MixedFleet f;
  auto busy = Process::Start({Bin("fm-submit"), "--broker", f.cluster.broker(), "--wait"},
                             R"({"command": ["sleep", "30"], "labels": {"zone": "b"}, "resources": {"cpus": 0.5}})"
                             "\n");
  REQUIRE(f.cluster.WaitEvent("task.started task=t1 worker=small"));
  ToolRun table = f.cluster.Ctl({"workers"});
  REQUIRE(table.exit_code == 0);
  REQUIRE(table.lines.size() == 3);
  CHECK_THAT(table.lines[0],
             Contains("WORKER") && Contains("CAPABILITIES") && Contains("SLOTS") && Contains("LIVENESS"));
  CHECK_THAT(table.lines[1],
             Contains("big") && Contains("0 B/2 GiB") && Contains("zone=a") && Contains("0/2") && Contains("live"));
  CHECK_THAT(table.lines[2], Contains("small") && Contains("0.5/1") && Contains("0 B/512 MiB") && Contains("zone=b") &&
                                 Contains("1/2"));
  ToolRun json = f.cluster.Ctl({"workers", "--json"});
  REQUIRE(json.exit_code == 0);
  std::string all;
  for (const auto& l : json.lines) all += l;
  CHECK_THAT(all, Contains(R"("id": "small")") && Contains(R"("slots_used": 1)") && Contains(R"("live": true)") &&
                      Contains(R"("memory": 536870912)"));
  CHECK(f.cluster.Ctl({"cancel", "t1"}).exit_code == 0);
  CHECK(busy->Wait() == 1);
  CHECK_THAT(busy->Stdout(), Contains(R"("status": "cancelled")"));
}

TEST_CASE("a second worker announcing a live worker's id is refused with a clear error, the first keeps working",
          "[integration]") {
  Cluster c;
  c.StartWorker("dup");
  auto second =
      // From another node (the same node's would be a restart taking the id over).
      Process::Start(WorkerCommand(
          {Bin("fm-worker"), "--broker", c.broker(), "--id", "dup", "--node", "elsewhere", "--heartbeat", "200ms"}));
  CHECK(second->Wait(15000) == 3);
  CHECK_THAT(second->Stderr(), Contains("worker id \"dup\" is already in use by a live worker"));
  CHECK(c.WaitEvent("worker.rejected worker=dup reason=duplicate_worker_id"));
  ToolRun run = c.Submit(R"({"command": ["true"]})"
                         "\n",
                         {"--wait"});
  CHECK(run.exit_code == 0);
  CHECK(WorkerOf(run.lines[0]) == "dup");
}

TEST_CASE("a worker speaking the first published schema, without capabilities, gets plain tasks and never a docker one",
          "[integration][compat]") {
  Cluster c;
  c.StartCustomWorker("old", {Bin("fm-test-v1-worker"), "--id", "old"});
  ToolRun run = c.Submit(R"({"command": ["true"], "image": "localhost/fm-busybox:latest"})"
                         "\n"
                         R"({"command": ["true"], "requires": ["docker"]})"
                         "\n"
                         R"({"command": ["true"]})"
                         "\n",
                         {"--wait"});
  REQUIRE(run.lines.size() == 3);
  CHECK_THAT(run.lines[0], Contains("0/1 workers eligible: 1 lacks capability docker"));
  CHECK_THAT(run.lines[1], Contains("0/1 workers eligible: 1 lacks capability docker"));
  CHECK_THAT(run.lines[2], Contains(R"("status": "succeeded","worker": "old")"));
  Process& old = c.worker("old");
  REQUIRE(old.WaitFor("received " + TaskOf(run.lines[2])));
  CHECK(old.Count("received " + TaskOf(run.lines[0])) == 0);
  CHECK(old.Count("received " + TaskOf(run.lines[1])) == 0);
}

TEST_CASE("fm-worker refuses --cpus and --memory above what was probed", "[integration]") {
  ToolRun run = RunTool(WorkerCommand({Bin("fm-worker"), "--broker", "tcp://127.0.0.1:1", "--cpus", "4096"}));
  CHECK(run.exit_code == 2);
  CHECK_THAT(run.err, Contains("--cpus 4096 exceeds the") && Contains("can only lower it"));
  run = RunTool(WorkerCommand({Bin("fm-worker"), "--broker", "tcp://127.0.0.1:1", "--memory", "64TiB"}));
  CHECK(run.exit_code == 2);
  CHECK_THAT(run.err, Contains("--memory 64 TiB exceeds the"));
  run = RunTool({Bin("fm-worker"), "--memory", "lots"});
  CHECK(run.exit_code == 2);
  CHECK_THAT(run.err, Contains("invalid size \"lots\""));
}

TEST_CASE("fm-submit without a scheduler says so instead of waiting forever", "[integration]") {
  TempDir dir;
  std::string broker = "tcp://127.0.0.1:" + std::to_string(PickPortBase());
  auto b = Process::Start({Bin("fm-broker"), "--bind", broker});
  REQUIRE(b->WaitFor("broker on", 10000, 1, true));
  ToolRun run = RunTool({Bin("fm-submit"), "--broker", broker, "--reply-timeout", "1s", "--", "true"});
  CHECK(run.exit_code == 1);
  CHECK_THAT(run.err, Contains("no scheduler is connected to broker " + broker));
}

TEST_CASE(
    "fm-tap --since replays from the store and follows live across a scheduler restart, a sequence older "
    "than retention is refused naming the oldest",
    "[integration]") {
  Cluster c({"--liveness", "2s", "--event-retention", "20"});
  c.StartWorker("w");
  ToolRun first = c.Submit(Repeat(R"({"command": ["true"]})", 10), {"--wait"});
  REQUIRE(first.exit_code == 0);
  c.RestartScheduler();
  ToolRun second = c.Submit(Repeat(R"({"command": ["true"]})", 3), {"--wait"});
  REQUIRE(second.exit_code == 0);
  // Published before the new scheduler's PUB was connected, scheduler.started reaches the
  // tap through the gap fill from the store.
  REQUIRE(c.WaitEvent("scheduler.started", 10000, 2));
  REQUIRE(c.WaitEvent("task.succeeded", 10000, 13));
  // The tap that followed all along saw every sequence number once, in order.
  uint64_t expected = 1;
  for (const auto& line : c.tap().Lines()) CHECK(std::stoull(line.substr(0, line.find(' '))) == expected++);
  // Replay from long ago: refused, naming what is kept.
  ToolRun old = RunTool({Bin("fm-tap"), "--broker", c.broker(), "--since", "1", "--count", "1"});
  CHECK(old.exit_code == 1);
  CHECK_THAT(old.err, Contains("is older than retention: the oldest available is"));
  // From the oldest kept: five events from there. (Retention trims a few blocks a turn,
  // so the oldest may move on between the two calls: then ask again.)
  std::string oldest;
  ToolRun kept;
  for (int attempt = 0; attempt < 10; ++attempt) {
    std::smatch m;
    REQUIRE(std::regex_search(old.err, m, std::regex("oldest available is ([0-9]+)")));
    oldest = m[1].str();
    kept = RunTool({Bin("fm-tap"), "--broker", c.broker(), "--since", oldest, "--count", "5"});
    if (kept.exit_code == 0 || kept.err.find("older than retention") == std::string::npos) break;
    old = kept;
  }
  INFO(kept.err);
  CHECK(kept.exit_code == 0);
  REQUIRE(kept.lines.size() == 5);
  CHECK(kept.lines[0].rfind(oldest + " ", 0) == 0);
}

TEST_CASE("fm-ctl drain stops new work to a worker and lets its running task finish, undrain reverses it",
          "[integration]") {
  Cluster c;
  c.StartWorker("d", {"--slots", "2"});
  auto running = Process::Start({Bin("fm-submit"), "--broker", c.broker(), "--wait"}, R"({"command": ["sleep", "1"]})"
                                                                                      "\n");
  REQUIRE(c.WaitEvent("task.started task=t1 worker=d"));
  ToolRun drain = c.Ctl({"drain", "d"});
  CHECK(drain.exit_code == 0);
  CHECK(c.WaitEvent("worker.draining worker=d: takes no new tasks; 1 still held"));
  ToolRun refused = c.Submit(R"({"command": ["true"]})"
                             "\n");
  CHECK_THAT(refused.lines.at(0), Contains("0/1 workers eligible: 1 is draining"));
  CHECK(running->Wait() == 0);
  CHECK_THAT(running->Stdout(), Contains(R"("status": "succeeded","worker": "d")"));
  CHECK_THAT(c.Ctl({"workers"}).lines.at(1), Contains("draining"));
  CHECK(c.Ctl({"undrain", "d"}).exit_code == 0);
  ToolRun after = c.Submit(R"({"command": ["true"]})"
                           "\n",
                           {"--wait"});
  CHECK_THAT(after.lines.at(0), Contains(R"("status": "succeeded","worker": "d")"));
  ToolRun unknown = c.Ctl({"drain", "nobody"});
  CHECK(unknown.exit_code == 1);
  CHECK_THAT(unknown.err, Contains("no live worker \"nobody\""));
}

TEST_CASE("fm-ctl tasks lists past one page with filters, and fm-ctl task says why a task waits", "[integration]") {
  Cluster c;
  c.StartWorker("solo", {"--slots", "1"});
  ToolRun submitted = c.Submit(Repeat(R"({"command": ["sleep", "30"]})", 1500));
  REQUIRE(submitted.exit_code == 0);
  ToolRun all = c.Ctl({"tasks"});
  REQUIRE(all.exit_code == 0);
  CHECK(all.lines.size() == 1 + 1500);  // a header and every task, over two pages
  CHECK_THAT(all.lines.back(), Contains("t1500"));
  ToolRun some = c.Ctl({"tasks", "--state", "pending", "--limit", "5"});
  REQUIRE(some.exit_code == 0);
  CHECK(some.lines.size() == 1 + 5);
  ToolRun one = c.Ctl({"task", "t3"});
  REQUIRE(one.exit_code == 0);
  CHECK_THAT(one.err + Join(one.lines), Contains("waiting    1 eligible, all full"));
  CHECK_THAT(Join(one.lines), Contains("task.submitted"));
  ToolRun none = c.Ctl({"task", "t99999"});
  CHECK(none.exit_code == 1);
  CHECK_THAT(none.err, Contains("no task t99999"));
}

TEST_CASE("a 17 MiB message published on the bus never reaches a subscriber, the scheduler and taps hear on",
          "[integration]") {
  // Regression: it was a protocol error for the scheduler's subscription, which then
  // heard nothing: every worker was declared lost and every task rejected.
  Cluster c({"--liveness", "2s"});
  c.StartWorker("w", {"--slots", "1"});
  int port = std::stoi(c.broker().substr(c.broker().rfind(':') + 1));
  zmq::context_t ctx(1);
  zmq::socket_t pub(ctx, zmq::socket_type::pub);
  pub.set(zmq::sockopt::linger, 0);
  pub.connect("tcp://127.0.0.1:" + std::to_string(port + 1));
  std::string huge(17u << 20, 'x');
  // Published until the broker has dropped the connection at least once (a PUB drops
  // messages until it is connected: the first ones may go nowhere).
  for (int i = 0; i < 20; ++i) {
    pub.send(zmq::str_buffer("fleet.heartbeat"), zmq::send_flags::sndmore);
    pub.send(zmq::buffer(huge), zmq::send_flags::none);
  }
  // A task that spans more than the liveness window still runs on the worker.
  ToolRun run = c.Submit(R"({"command": ["sleep", "3"]})"
                         "\n",
                         {"--wait"});
  INFO(run.err);
  CHECK(run.exit_code == 0);
  CHECK(c.WaitEvent("task.succeeded task=t1 "));
  CHECK(c.tap().Count("worker.lost") == 0);
}

TEST_CASE("a task line over the size limit is refused alone, before sending, and the other lines go on",
          "[integration]") {
  // Regression: one line over 8 MiB failed its whole batch after 30 s of re-sending.
  Cluster c;
  c.StartWorker("w");
  std::string huge = R"({"command": ["echo", ")" + std::string(9u << 20, 'x') + R"("]})";
  ToolRun run = c.Submit(R"({"command": ["true"]})"
                         "\n" +
                             huge + "\n" +
                             R"({"command": ["true"]})"
                             "\n",
                         {"--wait"});
  REQUIRE(run.lines.size() == 3);
  CHECK_THAT(run.lines[0], Contains(R"("status": "succeeded")"));
  CHECK_THAT(
      run.lines[1],
      Contains(
          R"("status": "rejected","reason": "invalid_task","message": "line 2: the task is 9 MiB, over the limit of 2 MiB for one task")"));
  CHECK_THAT(run.lines[2], Contains(R"("status": "succeeded")"));
  CHECK(run.exit_code == 1);
  // Many large lines: batches are cut by size too, never one message over the limit.
  ToolRun many = c.Submit(Repeat(R"({"command": ["true", ")" + std::string(10u << 10, 'y') + R"("]})", 1000));
  INFO(many.err);
  CHECK(many.exit_code == 0);
  CHECK(many.lines.size() == 1000);
}

TEST_CASE(
    "a history of 200 MB of task output replays completely, in batches under the size limit, and that output "
    "pushes no other event out",
    "[integration]") {
  // Regression: a replay batch was bounded by count only; after big output, fm-tap
  // --since 1 hung, each try resetting the scheduler's connection.
  Cluster c({"--liveness", "2s", "--event-retention", "20", "--log-retention", "1GiB"});
  c.StartWorker("w", {"--max-output", "256MiB"});
  ToolRun run = c.Submit(R"({"command": ["sh", "-c", "head -c 200000000 /dev/zero | tr '\\0' x"]})"
                         "\n"
                         R"({"command": ["echo", "after"]})"
                         "\n",
                         {"--wait"});
  INFO(run.err);
  REQUIRE(run.exit_code == 0);
  ToolRun tap =
      RunTool({Bin("fm-tap"), "--broker", c.broker(), "--since", "1", "--count", "2", "task.succeeded"}, "", 120000);
  INFO(tap.err);
  CHECK(tap.exit_code == 0);
  REQUIRE(tap.lines.size() == 2);
  CHECK_THAT(tap.lines[0] + tap.lines[1], Contains("task.succeeded task=t1") && Contains("task.succeeded task=t2"));
  CHECK(std::max(std::stoull(tap.lines[0]), std::stoull(tap.lines[1])) > 3000);  // past ~3000 events of output
  // The 20-event retention counts events, not output: the first ones are still there.
  ToolRun first = RunTool({Bin("fm-tap"), "--broker", c.broker(), "--since", "1", "--count", "1"});
  REQUIRE(first.lines.size() == 1);
  CHECK_THAT(first.lines[0], Contains("scheduler.started"));
}

TEST_CASE(
    "every program answers --version with the one version, exits 2 on a usage error naming it, and refuses an "
    "unknown key in its config file",
    "[integration]") {
  for (const char* name : {"fm-broker", "fm-scheduler", "fm-worker", "fm-submit", "fm-tap", "fm-ctl", "fm-keygen"}) {
    INFO(name);
    ToolRun version = RunTool({Bin(name), "--version"});
    CHECK(version.exit_code == 0);
    REQUIRE(version.lines.size() == 1);
    CHECK(version.lines[0] == std::string(name) + " " + FM_VERSION);
    ToolRun bad = RunTool({Bin(name), "--no-such-flag"});
    CHECK(bad.exit_code == 2);
    CHECK_THAT(bad.err, Contains(std::string(name) + ": ") && Contains("--help"));
  }
  ToolRun value = RunTool({Bin("fm-scheduler"), "--liveness"});
  CHECK(value.exit_code == 2);
  CHECK_THAT(value.err, Contains("--liveness"));
  // A misspelt key would silently turn a node broker into a lone root: an error instead.
  TempDir dir;
  std::string config = dir.path() + "/broker.conf";
  std::FILE* f = std::fopen(config.c_str(), "w");
  std::fputs("upstrem = tcp://127.0.0.1:1\n", f);
  std::fclose(f);
  ToolRun typo = RunTool({Bin("fm-broker"), "--config", config});
  CHECK(typo.exit_code == 2);
  CHECK_THAT(typo.err, Contains("\"upstrem\", which is not an option of fm-broker"));
}

TEST_CASE("fm-ctl ping exits 0 when the scheduler answers, saying what it holds, and 1 when it does not",
          "[integration]") {
  Cluster c;
  c.StartWorker("w");
  ToolRun up = c.Ctl({"ping"});
  CHECK(up.exit_code == 0);
  REQUIRE(up.lines.size() == 1);
  CHECK_THAT(up.lines[0], Contains(std::string("fm-scheduler ") + FM_VERSION + ": 1 workers, 0 tasks not ended"));
  c.KillScheduler();
  ToolRun down = c.Ctl({"--timeout", "1s", "ping"});
  CHECK(down.exit_code == 1);
  CHECK_THAT(down.err, Contains("scheduler"));
}

TEST_CASE(
    "an exec task gets its env and cwd (from JSON and from fm-submit --env/--cwd), a missing cwd fails it naming the "
    "directory, and FM_ names are refused",
    "[integration]") {
  Cluster c;
  c.StartWorker("w1");
  TempDir dir;
  ToolRun json =
      c.Submit(R"({"command": ["sh", "-c", "echo \"$GREETING|$FM_TASK_ID|$FM_ATTEMPT|$FM_WORKER_ID|$(pwd)\""],)"
               R"( "env": {"GREETING": "hello"}, "cwd": ")" +
                   dir.path() + R"("})" + "\n",
               {"--wait"});
  INFO(json.err);
  REQUIRE(json.lines.size() == 1);
  CHECK_THAT(json.lines[0], Contains(R"("status": "succeeded")"));
  CHECK(c.WaitEvent("hello|t1|1|w1|" + dir.path()));

  ToolRun flags = c.Submit("", {"--wait", "--env", "A=1", "--env", "B=two words", "--cwd", "/", "--", "sh", "-c",
                                "echo \"[$A][$B][$(pwd)]\""});
  CHECK(flags.exit_code == 0);
  CHECK(c.WaitEvent("[1][two words][/]"));

  ToolRun missing = c.Submit(R"({"command": ["true"], "cwd": "/no/such/dir"})"
                             "\n",
                             {"--wait"});
  REQUIRE(missing.lines.size() == 1);
  CHECK_THAT(missing.lines[0],
             Contains("failed") && Contains("cwd \\\"/no/such/dir\\\" is not a directory on worker w1"));

  ToolRun reserved = c.Submit(R"({"command": ["true"], "env": {"FM_TASK_ID": "t9"}})"
                              "\n");
  REQUIRE(reserved.lines.size() == 1);
  CHECK_THAT(reserved.lines[0], Contains("rejected") && Contains("names starting with FM_ are the worker's"));
  ToolRun relative = c.Submit("", {"--cwd", "tmp", "--", "true"});
  CHECK(relative.exit_code == 2);
  CHECK_THAT(relative.err, Contains("cwd \"tmp\" is not an absolute path"));
}

TEST_CASE(
    "timeout and cancel stop an exec task gracefully: SIGTERM lets it print its message, SIGKILL follows after its "
    "kill_timeout",
    "[integration]") {
  Cluster c;
  c.StartWorker("w1");
  // Traps TERM: says so and exits 0; the attempt still ends timed out.
  ToolRun trapped = c.Submit(
      R"({"command": ["sh", "-c", "trap 'echo got TERM, cleaning up; exit 0' TERM; echo ready; sleep 60 & wait"],)"
      R"( "timeout": "1s"})"
      "\n",
      {"--wait"});
  REQUIRE(trapped.lines.size() == 1);
  CHECK_THAT(trapped.lines[0], Contains("timed out after 1000 ms; exited with status 0 on SIGTERM"));
  CHECK(c.WaitEvent("got TERM, cleaning up"));

  // Ignores TERM: killed after its kill timeout, not 10 s.
  auto started = std::chrono::steady_clock::now();
  ToolRun stubborn = c.Submit(R"({"command": ["sh", "-c", "trap '' TERM; sleep 60"], "timeout": "500ms",)"
                              R"( "kill_timeout": "700ms"})"
                              "\n",
                              {"--wait"});
  auto took = std::chrono::steady_clock::now() - started;
  REQUIRE(stubborn.lines.size() == 1);
  CHECK_THAT(stubborn.lines[0], Contains("killed (SIGKILL: SIGTERM did not end it in time)"));
  CHECK(took < std::chrono::seconds(8));

  // Cancel: the same graceful stop.
  c.Submit(R"({"command": ["sh", "-c", "trap 'echo cancelled nicely; exit 0' TERM; echo up; sleep 60 & wait"]})"
           "\n");
  REQUIRE(c.WaitEvent("task=t3 worker=w1 stream=stdout | up"));  // its trap is set
  CHECK(c.Ctl({"cancel", "t3"}).exit_code == 0);
  CHECK(c.WaitEvent("cancelled nicely"));
}

TEST_CASE("a task that fails only on the first worker is retried after its backoff on the other one and succeeds there",
          "[integration]") {
  Cluster c;
  c.StartWorker("w1", {"--slots", "2"});
  c.StartWorker("w2", {"--slots", "2", "--label", "pool=b"});
  // Occupy w2 for a moment so that the first attempt lands on w1 (spread: least loaded).
  c.Submit(R"({"command": ["sleep", "1"], "labels": {"pool": "b"}})"
           "\n");
  REQUIRE(c.WaitEvent("task.started"));
  ToolRun run = c.Submit(R"({"command": ["sh", "-c", "test \"$FM_WORKER_ID\" != w1 || exit 3"],)"
                         R"( "retry_exit_codes": [3], "retry_backoff": "200ms", "max_attempts": 3})"
                         "\n",
                         {"--wait"});
  REQUIRE(run.lines.size() == 1);
  CHECK_THAT(run.lines[0], Contains(R"("status": "succeeded","worker": "w2")"));
  ToolRun task = c.Ctl({"task", "t2"});
  std::string all;
  for (const auto& l : task.lines) all += l + "\n";
  CHECK_THAT(all, Contains("task.retrying worker=w1 attempt=2 reason=exit_status") && Contains("avoiding w1"));
}

TEST_CASE("fm-ctl tasks still lists the ended tasks after the scheduler restarts, on the same data or a snapshot",
          "[integration]") {
  TempDir dir;
  Cluster c({"--liveness", "2s"}, dir.path() + "/data");
  c.StartWorker("w");
  std::string lines;
  for (int i = 0; i < 5; ++i)
    lines += R"({"command": ["true"]})"
             "\n";
  REQUIRE(c.Submit(lines, {"--wait"}).exit_code == 0);
  auto succeeded = [&] {
    ToolRun list = c.Ctl({"tasks", "--state", "succeeded"});
    int n = 0;
    for (const auto& line : list.lines) n += line.find("succeeded") != std::string::npos;
    return n;
  };
  REQUIRE(succeeded() == 5);
  REQUIRE(c.Ctl({"snapshot", dir.path() + "/copy"}).exit_code == 0);
  c.RestartScheduler();
  int listed_after = 0;  // 0 before: the list was the scheduler's memory only
  for (int i = 0; i < 50 && (listed_after = succeeded()) != 5; ++i) usleep(100 * 1000);
  CHECK(listed_after == 5);
  ToolRun task = c.Ctl({"task", "t3"});
  CHECK_THAT(Join(task.lines), Contains("succeeded"));
  // A scheduler started from the snapshot lists them too.
  Cluster copy({"--liveness", "2s"}, dir.path() + "/copy");
  ToolRun listed = copy.Ctl({"tasks", "--state", "succeeded"});
  CHECK(std::count_if(listed.lines.begin(), listed.lines.end(),
                      [](const std::string& l) { return l.find("succeeded") != std::string::npos; }) == 5);
}

TEST_CASE("fm-tap --task follows one task's events only, from its first stored one, and exits after its end",
          "[integration]") {
  Cluster c;
  c.StartWorker("w1", {"--slots", "2"});
  ToolRun first = c.Submit(R"({"command": ["echo", "one"]})"
                           "\n",
                           {"--wait"});
  REQUIRE(first.exit_code == 0);
  // t2 runs until told: the tap joins while it is running, after its first events.
  TempDir dir;
  const std::string go = dir.path() + "/go";
  auto second = Process::Start(
      {Bin("fm-submit"), "--broker", c.broker(), "--wait"},
      R"({"command": ["sh", "-c", "echo two; while [ ! -e )" + go + R"( ]; do sleep 0.05; done; echo three"]})" + "\n");
  REQUIRE(c.WaitEvent("task.log task=t2 "));
  auto tap = Process::Start({Bin("fm-tap"), "--broker", c.broker(), "--task", "t2"});
  REQUIRE(tap->WaitFor("task.log task=t2", 10000));
  std::FILE* f = std::fopen(go.c_str(), "w");
  REQUIRE(f);
  std::fclose(f);
  CHECK(tap->Wait(15000) == 0);  // it ends with the task
  CHECK(second->Wait() == 0);
  const std::string out = tap->Stdout();
  INFO(out);
  // Its whole story, from task.submitted (before the tap started) to its end, and
  // nothing of another task or of the fleet.
  CHECK_THAT(out, Contains("task.submitted task=t2") && Contains("task.started task=t2") && Contains("| two") &&
                      Contains("| three") && Contains("task.succeeded task=t2"));
  CHECK_THAT(out, !Contains("task=t1") && !Contains("worker.registered"));
  ToolRun missing = RunTool({Bin("fm-tap"), "--broker", c.broker(), "--task", "t99"});
  CHECK(missing.exit_code == 1);
  CHECK_THAT(missing.err, Contains("no task t99"));
  ToolRun bad = RunTool({Bin("fm-tap"), "--broker", c.broker(), "--task", "x"});
  CHECK(bad.exit_code == 2);
  CHECK_THAT(bad.err, Contains("is not a task id"));
}
