// What operators get: Prometheus metrics from every daemon, --check-config, the log
// formats and the systemd notify protocol, against the real binaries.
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <map>
#include <regex>
#include <sstream>

#include "tests/integration/harness.h"

using Catch::Matchers::Contains;
using Catch::Matchers::Equals;
using namespace fm::test;

namespace {

// The http://HOST:PORT/metrics a daemon said it serves, from its stderr.
std::string MetricsUrl(Process& p) {
  REQUIRE(p.WaitFor("metrics on http://", 10000, 1, true));
  std::smatch m;
  std::string err = p.Stderr();
  REQUIRE(std::regex_search(err, m, std::regex("http://[0-9.]+:[0-9]+/metrics")));
  return m.str();
}

// GET /metrics, parsed as the Prometheus text format: every line a comment (# HELP,
// # TYPE with a known type) or `name{labels} value`; a line that is neither fails the
// test. Returns the samples by "name{labels}".
std::map<std::string, double> Scrape(const std::string& url) {
  ToolRun got = RunTool({"/usr/bin/curl", "-sf", "--max-time", "5", url});
  REQUIRE(got.exit_code == 0);
  static const std::regex help(R"(^# HELP [a-zA-Z_:][a-zA-Z0-9_:]* .*$)");
  static const std::regex type(R"(^# TYPE [a-zA-Z_:][a-zA-Z0-9_:]* (counter|gauge|histogram|summary|untyped)$)");
  static const std::regex sample(
      R"(^([a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"]*",?)*\})?) (-?[0-9.e+-]+|\+Inf|-Inf|NaN|Nan)$)");
  std::map<std::string, double> samples;
  for (const auto& line : got.lines) {
    INFO(line);
    if (line.rfind("# HELP", 0) == 0) {
      CHECK(std::regex_match(line, help));
      continue;
    }
    if (line.rfind("# TYPE", 0) == 0) {
      CHECK(std::regex_match(line, type));
      continue;
    }
    std::smatch m;
    REQUIRE(std::regex_match(line, m, sample));
    samples[m[1].str()] = std::strtod(m[4].str().c_str(), nullptr);
  }
  return samples;
}

double Value(const std::map<std::string, double>& samples, const std::string& key) {
  auto it = samples.find(key);
  INFO(key);
  REQUIRE(it != samples.end());
  return it->second;
}

}  // namespace

TEST_CASE("every daemon serves Prometheus metrics that count what happened, read at scrape time", "[integration]") {
  Cluster c({"--liveness", "2s", "--metrics-listen", "127.0.0.1:0"});
  Process& w = c.StartWorker("w1", {"--metrics-listen", "127.0.0.1:0", "--slots", "2"});
  std::string scheduler_url = MetricsUrl(c.scheduler());
  std::string worker_url = MetricsUrl(w);

  std::string tasks;
  for (int i = 0; i < 5; ++i)
    tasks += R"({"command":["true"]})"
             "\n";
  tasks += R"({"command":["sh","-c","exit 3"],"max_attempts":1})"
           "\n";
  tasks += R"({"command":["true"],"requires":["docker-nope"]})"
           "\n";
  ToolRun run = c.Submit(tasks, {"--wait"});
  REQUIRE(run.lines.size() == 7);

  auto s = Scrape(scheduler_url);
  CHECK(Value(s, "fm_scheduler_tasks_submitted_total") == 7);
  CHECK(Value(s, R"(fm_scheduler_tasks_ended_total{outcome="succeeded",reason="none"})") == 5);
  CHECK(Value(s, R"(fm_scheduler_tasks_ended_total{outcome="failed",reason="no_eligible_worker"})") == 1);
  CHECK(Value(s, R"(fm_scheduler_workers{state="live"})") == 1);
  CHECK(Value(s, R"(fm_scheduler_tasks{state="pending"})") == 0);
  CHECK(Value(s, "fm_scheduler_store_write_errors_total") == 0);
  CHECK(Value(s, "fm_scheduler_commits_total") > 0);
  // A histogram: +Inf holds every sample, buckets never decrease.
  CHECK(Value(s, R"(fm_scheduler_commit_seconds_bucket{le="+Inf"})") == Value(s, "fm_scheduler_commit_seconds_count"));
  CHECK(Value(s, R"(fm_scheduler_commit_seconds_bucket{le="0.001"})") <=
        Value(s, R"(fm_scheduler_commit_seconds_bucket{le="0.01"})"));
  CHECK(Value(s, "fm_scheduler_event_seq") > Value(s, "fm_scheduler_event_oldest_seq"));

  auto ws = Scrape(worker_url);
  CHECK(Value(ws, "fm_worker_attempts_started_total") == 6);
  CHECK(Value(ws, R"(fm_worker_attempts_ended_total{outcome="succeeded"})") == 5);
  CHECK(Value(ws, R"(fm_worker_attempts_ended_total{outcome="failed"})") == 1);
  CHECK(Value(ws, "fm_worker_slots") == 2);

  // Read at scrape time: a worker lost since shows at the next scrape.
  c.KillWorker("w1", SIGKILL);
  REQUIRE(c.WaitEvent("worker.lost"));
  auto after = Scrape(scheduler_url);
  CHECK(Value(after, "fm_scheduler_worker_losses_total") == 1);
  CHECK(Value(after, R"(fm_scheduler_workers{state="live"})") == 0);

  // The broker's own: a second broker (the cluster's is started without metrics).
  int base = PickPortBase();
  auto broker = Process::Start(
      {Bin("fm-broker"), "--bind", "tcp://127.0.0.1:" + std::to_string(base), "--metrics-listen", "127.0.0.1:0"});
  auto b = Scrape(MetricsUrl(*broker));
  CHECK(Value(b, "fm_broker_messages_routed_total") == 0);
  CHECK(Value(b, R"(fm_broker_messages_refused_total{cause="queue_full"})") == 0);
  CHECK(b.count("fm_broker_connections") == 1);

  // A port in use is an error that names the flag.
  std::string taken = scheduler_url.substr(7, scheduler_url.size() - 7 - 8);
  auto clash = Process::Start(
      {Bin("fm-broker"), "--bind", "tcp://127.0.0.1:" + std::to_string(PickPortBase()), "--metrics-listen", taken});
  CHECK(clash->Wait(10000) == 1);
  CHECK_THAT(clash->Stderr(), Contains("--metrics-listen " + taken + ": cannot listen"));
}

TEST_CASE("a daemon given --check-config validates options and the files they name without starting, exit 0 or 2",
          "[integration]") {
  TempDir dir;
  for (const char* name : {"fm-broker", "fm-scheduler", "fm-worker"}) {
    INFO(name);
    std::vector<std::string> argv = {Bin(name), "--check-config"};
    if (std::string(name) == "fm-scheduler") argv.insert(argv.end(), {"--data", dir.path() + "/never"});
    ToolRun ok = RunTool(WorkerCommand(argv));
    CHECK(ok.exit_code == 0);
    REQUIRE(ok.lines.size() == 1);
    CHECK(ok.lines[0] == std::string(name) + ": configuration OK");
    argv.insert(argv.end(), {"--cert", dir.path() + "/missing.cert_secret"});
    if (std::string(name) == "fm-broker") {
      argv.insert(argv.end(), {"--trust", dir.path()});
    } else {
      argv.insert(argv.end(), {"--broker-cert", dir.path() + "/missing.cert"});
    }
    ToolRun bad = RunTool(argv);
    CHECK(bad.exit_code == 2);
    CHECK_THAT(bad.err, Contains("missing.cert_secret"));
    CHECK(bad.lines.empty());
  }
  // Nothing was started: the scheduler created no data directory.
  CHECK(access((dir.path() + "/never").c_str(), F_OK) != 0);
  ToolRun upstream = RunTool({Bin("fm-broker"), "--check-config", "--upstream", "nowhere"});
  CHECK(upstream.exit_code == 2);
  CHECK_THAT(upstream.err, Contains("--upstream"));
  ToolRun worker = RunTool({Bin("fm-worker"), "--check-config", "--label", "bad label=x"});
  CHECK(worker.exit_code == 2);
  CHECK_THAT(worker.err, Contains("--label"));
}

TEST_CASE(
    "a daemon given --log-format json writes one object a line with level, process, message and the task it names",
    "[integration]") {
  int base = PickPortBase();
  auto broker =
      Process::Start({Bin("fm-broker"), "--bind", "tcp://127.0.0.1:" + std::to_string(base), "--log-format", "json"});
  REQUIRE(broker->WaitFor("\"message\":\"broker on tcp://127.0.0.1:", 10000, 1, true));
  std::istringstream lines(broker->Stderr());
  std::string line;
  int n = 0;
  while (std::getline(lines, line)) {
    INFO(line);
    CHECK(std::regex_match(
        line, std::regex(R"(^\{"time_ms":[0-9]+,"level":"[a-z]+","process":"fm-broker","message":".*"\}$)")));
    ++n;
  }
  CHECK(n >= 1);
  ToolRun bad = RunTool({Bin("fm-broker"), "--log-format", "xml"});
  CHECK(bad.exit_code == 2);
  CHECK_THAT(bad.err, Contains("--log-format \"xml\""));
}

TEST_CASE("under systemd a daemon says READY=1 once serving, pings the watchdog from its loop, and STOPPING=1",
          "[integration]") {
  TempDir dir;
  std::string path = dir.path() + "/notify";
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  auto receive = [&] {
    char buf[512];
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    return n > 0 ? std::string(buf, n) : std::string();
  };
  int base = PickPortBase();
  auto broker = Process::Start({"/usr/bin/env", "NOTIFY_SOCKET=" + path, "WATCHDOG_USEC=200000", Bin("fm-broker"),
                                "--bind", "tcp://127.0.0.1:" + std::to_string(base)});
  std::string ready = receive();
  CHECK_THAT(ready, Contains("READY=1") && Contains("STATUS=routing on tcp://127.0.0.1:"));
  // At half the watchdog interval, from the loop: two pings within a few intervals.
  int pings = 0;
  for (int i = 0; i < 20 && pings < 2; ++i) pings += receive() == "WATCHDOG=1";
  CHECK(pings == 2);
  broker->Signal(SIGTERM);
  std::string last;
  for (int i = 0; i < 20; ++i) {
    last = receive();
    if (last != "WATCHDOG=1") break;
  }
  CHECK(last == "STOPPING=1");
  CHECK(broker->Wait(10000) == 0);
  close(fd);
}

TEST_CASE(
    "fm-ctl drain takes a reason, waits until the worker holds nothing, cancels what is left at the deadline, and "
    "drains every worker of a node",
    "[integration]") {
  Cluster c;
  c.StartWorker("w1", {"--node", "rack1"});
  ToolRun first = c.Submit(R"({"command":["sleep","1"]})"
                           "\n");
  REQUIRE(c.WaitEvent("task.started"));
  ToolRun drained = c.Ctl({"drain", "w1", "--reason", "kernel upgrade", "--wait"});
  CHECK(drained.exit_code == 0);
  REQUIRE(drained.lines.size() == 2);
  CHECK(drained.lines[0] == "draining w1");
  CHECK(drained.lines[1] == "drained w1: no task left");
  CHECK(c.WaitEvent("task.succeeded"));  // it finished: drain never kills by itself
  CHECK(c.WaitEvent("takes no new tasks (kernel upgrade)"));
  ToolRun workers = c.Ctl({"workers"});
  REQUIRE(workers.lines.size() == 2);
  CHECK_THAT(workers.lines[1], Contains("draining (kernel upgrade)"));
  // The drain is about the worker, not one process of it: a restart keeps it.
  c.KillWorker("w1", SIGKILL);
  c.RestartWorker("w1");
  workers = c.Ctl({"workers"});
  REQUIRE(workers.lines.size() == 2);
  CHECK_THAT(workers.lines[1], Contains("draining (kernel upgrade)"));

  // A task that would outlast the deadline is cancelled there; --node finds the worker.
  CHECK(c.Ctl({"undrain", "w1"}).exit_code == 0);
  c.Submit(R"({"command":["sleep","60"]})"
           "\n");
  REQUIRE(c.WaitEvent("task.started", 10000, 2));
  ToolRun forced = c.Ctl({"drain", "--node", "rack1", "--wait", "--deadline", "1s"});
  CHECK(forced.exit_code == 0);
  CHECK_THAT(forced.lines.back(), Equals("drained w1: no task left"));
  std::string all;
  for (const auto& l : forced.lines) all += l + "\n";
  CHECK_THAT(all, Contains("deadline passed: t2 on w1: cancelled t2"));
  CHECK(c.WaitEvent("task.cancelled"));

  ToolRun none = c.Ctl({"drain", "--node", "rack9"});
  CHECK(none.exit_code == 1);
  CHECK_THAT(none.err, Contains("no live worker on node \"rack9\""));
  ToolRun both = c.Ctl({"drain"});
  CHECK(both.exit_code == 2);
}

TEST_CASE(
    "fm-ctl snapshot under load writes a consistent copy that a scheduler starts from, with every task acknowledged "
    "before it",
    "[integration]") {
  TempDir out;
  std::string snap = out.path() + "/snap";
  {
    Cluster c;
    c.StartWorker("w", {"--noop-executor"});
    std::string before;
    for (int i = 0; i < 100; ++i)
      before += R"({"command":["true"]})"
                "\n";
    ToolRun acked = c.Submit(before, {"--wait"});
    REQUIRE(acked.lines.size() == 100);
    // Load while the snapshot is written: a second submitter, not waited for.
    std::string load;
    for (int i = 0; i < 3000; ++i)
      load += R"({"command":["true"]})"
              "\n";
    auto submitter = Process::Start({Bin("fm-submit"), "--broker", c.broker()}, load);
    REQUIRE(c.WaitEvent("task.submitted", 20000, 150));
    ToolRun taken = c.Ctl({"snapshot", snap});
    CHECK(taken.exit_code == 0);
    REQUIRE(taken.lines.size() == 1);
    CHECK_THAT(taken.lines[0], Contains("snapshot written to " + snap) && Contains("--data " + snap));
    CHECK(submitter->Wait(60000) == 0);
    // The directory exists now: a second snapshot there is refused, naming it.
    ToolRun again = c.Ctl({"snapshot", snap});
    CHECK(again.exit_code == 1);
    CHECK_THAT(again.err, Contains(snap + " exists already"));
    ToolRun relative = c.Ctl({"snapshot", "snap"});
    CHECK(relative.exit_code == 2);
  }
  // A scheduler started from the copy has every task acknowledged before it, ended as
  // it was, and the events up to the snapshot (some of the load's among them).
  Cluster restored({"--liveness", "2s"}, snap);
  for (int id = 1; id <= 100; ++id) {
    ToolRun t = restored.Ctl({"task", "t" + std::to_string(id)});
    INFO(id);
    REQUIRE(t.exit_code == 0);
    CHECK_THAT(t.lines[1], Contains("succeeded"));
  }
  ToolRun ping = restored.Ctl({"ping"});
  REQUIRE(ping.exit_code == 0);
  std::smatch m;
  REQUIRE(std::regex_search(ping.lines[0], m, std::regex("event seq ([0-9]+)")));
  CHECK(std::stoull(m[1].str()) > 200);
}
