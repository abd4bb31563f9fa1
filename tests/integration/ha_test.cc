// A standby scheduler on etcd (scheduler/ha.h, scheduler/replication.h): a real etcd
// member on loopback, real fm-schedulers competing through it. One leads and says so; the
// other waits and never leads while it is outside the in-sync set; the leader comes back
// after a kill -9 with a greater epoch; a leader that cannot renew its lease exits
// before the lease ends; an operator can force a standby to lead, and it says so. With
// --ha-listen a standby follows the leader, is in sync, and takes over on its own with
// everything acknowledged; one that lags leaves the set; over CURVE only the cluster's
// schedulers follow.
#include <signal.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <regex>
#include <thread>
#include <zmq.hpp>

#include "harness.h"
#include "runtime/cert.h"

using namespace fm::test;

namespace {

// The epoch in a ping's answer ("...; leader of fm as a, epoch 7"), 0 when none.
uint64_t PingEpoch(Cluster& c, const std::string& node) {
  ToolRun ping = c.Ctl({"--timeout", "1s", "ping"});
  std::smatch m;
  const std::string all = ping.out;
  if (ping.exit_code != 0 || !std::regex_search(all, m, std::regex("leader of fm as " + node + ", epoch ([0-9]+)"))) {
    return 0;
  }
  return std::stoull(m[1]);
}

// "YYYY-MM-DDTHH:MM:SS.mmm" in UTC, as the daemons' log lines begin.
std::string UtcNow() {
  const auto now = std::chrono::system_clock::now();
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count();
  const time_t secs = static_cast<time_t>(ms / 1000);
  tm utc{};
  gmtime_r(&secs, &utc);
  char text[64];
  std::snprintf(text, sizeof text, "%04d-%02d-%02dT%02d:%02d:%02d.%03d", utc.tm_year + 1900, utc.tm_mon + 1,
                utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, static_cast<int>(ms % 1000));
  return text;
}

// Until fm-ctl ha names `set` as the in-sync set (a standby dropped under load is sent a
// new copy and joins again).
bool WaitInSync(Cluster& c, const std::string& set, int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    if (c.Ctl({"--timeout", "2s", "ha"}).out.find("in sync   " + set + "\n") != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

void CopyFile(const std::string& from, const std::string& to) {
  std::filesystem::copy_file(from, to, std::filesystem::copy_options::overwrite_existing);
}

uint64_t WaitForLeader(Cluster& c, const std::string& node, int timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < deadline) {
    if (uint64_t epoch = PingEpoch(c, node); epoch != 0) return epoch;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return 0;
}

}  // namespace

TEST_CASE(
    "schedulers on etcd elect one leader, a standby outside the in-sync set never leads on its own, and a "
    "leader that cannot renew its lease stops",
    "[integration][ha]") {
  Etcd etcd;
  const std::vector<std::string> ha{"--etcd", etcd.url(), "--ha-lease", "2s"};
  std::vector<std::string> a_args{"--liveness", "2s", "--ha-node", "a"};
  a_args.insert(a_args.end(), ha.begin(), ha.end());
  Cluster c(a_args);
  REQUIRE(c.WaitEvent("leader of fm as a, epoch", 10000));
  const uint64_t first = WaitForLeader(c, "a", 10000);
  REQUIRE(first > 0);

  TempDir b_data;
  auto start_b = [&](std::vector<std::string> extra) {
    std::vector<std::string> argv{Bin("fm-scheduler"), "--broker",  c.broker(), "--data",
                                  b_data.path(),       "--ha-node", "b"};
    argv.insert(argv.end(), ha.begin(), ha.end());
    argv.insert(argv.end(), extra.begin(), extra.end());
    return Process::Start(argv);
  };
  auto b = start_b({});
  // Once a is gone, b says it will not lead (not in sync); an operator restarts it forced.
  auto force_b = [&](const std::string& says) {
    REQUIRE(b->WaitFor("will not lead fm: this scheduler (b) is not in the in-sync set [a]", 15000, 1, true));
    b->Signal(SIGTERM);
    REQUIRE(b->Wait(10000) == 0);
    auto forced = start_b({"--ha-force-promotion"});
    REQUIRE(forced->WaitFor(says, 15000, 1, true));
    return forced;
  };
  REQUIRE(b->WaitFor("standby for fm: led by a (host", 10000, 1, true));
  ToolRun ha_text = c.Ctl({"ha"});
  CHECK(ha_text.out.find("leader    a (host ") != std::string::npos);
  CHECK(ha_text.out.find("epoch     " + std::to_string(first) + "\n") != std::string::npos);
  CHECK(ha_text.out.find("in sync   a\n") != std::string::npos);
  CHECK(c.Ctl({"ha", "--json"}).out.find("\"epoch\": " + std::to_string(first)) != std::string::npos);

  SECTION("the leader's kill -9 leaves the standby waiting, and the leader back leads with a greater epoch") {
    c.KillScheduler();
    // Outside the in-sync set: its store may lack what a acknowledged.
    REQUIRE(b->WaitFor("will not lead fm: this scheduler (b) is not in the in-sync set [a]", 10000, 1, true));
    REQUIRE(b->running());
    CHECK(c.Ctl({"--timeout", "1s", "ping"}).exit_code != 0);  // nobody answers for the cluster
    c.RestartScheduler();
    const uint64_t second = WaitForLeader(c, "a", 15000);
    CHECK(second > first);
    REQUIRE(b->WaitFor("standby for fm: led by a (host", 10000, 2, true));

    // A standby stops cleanly while it waits.
    b->Signal(SIGTERM);
    CHECK(b->Wait(10000) == 0);
    CHECK(b->WaitFor("stopped while waiting to lead fm", 1000, 1, true));
    // A leader's clean stop hands over at once: its lease, and the leader key with it, is
    // gone as soon as it has exited (asked of etcd's own JSON gateway).
    c.scheduler().Signal(SIGTERM);
    REQUIRE(c.scheduler().Wait(10000) == 0);
    auto range = Process::Start({"/usr/bin/curl", "-s", "-X", "POST", etcd.url() + "/v3/kv/range", "-d",
                                 R"({"key": "L2ZtL2ZtL2xlYWRlcg=="})"});  // base64 of /fm/fm/leader
    REQUIRE(range->Wait(10000) == 0);
    range->WaitClosed(2000);
    INFO(range->Stdout());
    CHECK(range->Stdout().find("\"revision\"") != std::string::npos);  // etcd answered
    CHECK(range->Stdout().find("\"kvs\"") == std::string::npos);       // no leader key
  }

  SECTION("a leader that cannot reach etcd exits before its lease ends; forced, the standby leads and says so") {
    // Some stream first (each task fails at once: no worker), for the tap to have followed.
    c.Submit(R"({"command": ["true"]})"
             "\n"
             R"({"command": ["true"]})"
             "\n"
             R"({"command": ["true"]})"
             "\n");
    REQUIRE(c.WaitEvent("task.failed", 10000, 3));
    etcd.process().Signal(SIGSTOP);
    const auto stopped = std::chrono::steady_clock::now();
    CHECK(c.scheduler().Wait(10000) == 3);
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - stopped).count();
    // Its deadline is its last renewal (at most a third of the lease before the stop) plus
    // the lease less a margin: well within the lease and a second of scheduling on a
    // loaded machine.
    CHECK(took < 3.0);
    c.scheduler().WaitClosed(2000);
    CHECK(c.scheduler().Stderr().find("no longer sure to lead fm (epoch " + std::to_string(first) + ")") !=
          std::string::npos);
    etcd.process().Signal(SIGCONT);

    auto forced = force_b("BY FORCE: not in the in-sync set [a]");
    const uint64_t third = WaitForLeader(c, "b", 10000);
    CHECK(third > first);
    CHECK(c.Ctl({"ping"}).out.find("(promoted by force)") != std::string::npos);
    // Its stream starts again at seq 1, from its own store: the tap that followed a's (to
    // seq 4) follows b's from its start once it hears from it.
    c.Submit(R"({"command": ["true"]})"
             "\n");
    CHECK(c.tap().WaitFor("epoch " + std::to_string(third) + " leads with a stream of its own", 10000, 1, true));
    CHECK(c.WaitEvent("leader of fm as b, epoch " + std::to_string(third) + " (promoted by force)", 10000));
  }

  SECTION("a stopped leader is replaced while its connection is still open, and on waking sends nothing and exits") {
    c.scheduler().Signal(SIGSTOP);
    // Its lease runs out; b is not in sync, so it takes an operator to promote it.
    auto forced = force_b("BY FORCE");
    // The broker still holds a's connection open (ZeroMQ's heartbeats would drop it only
    // after 15 s): the greater epoch takes fm-scheduler at once.
    const uint64_t third = WaitForLeader(c, "b", 6000);
    REQUIRE(third > first);
    CHECK(c.broker_process().WaitFor("fm-scheduler: epoch " + std::to_string(third) + " leads from now on", 2000, 1,
                                     true));
    c.scheduler().Signal(SIGCONT);
    CHECK(c.scheduler().Wait(10000) == 3);
    c.scheduler().WaitClosed(2000);
    CHECK(c.scheduler().Stderr().find("no longer sure to lead fm (epoch " + std::to_string(first) + ")") !=
          std::string::npos);
    CHECK(WaitForLeader(c, "b", 5000) == third);
  }
}

TEST_CASE("fm-scheduler refuses HA options it cannot use, naming them", "[integration][ha]") {
  TempDir data;
  for (const auto& [args, says] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"--etcd", "127.0.0.1:2379"}, "--etcd \"127.0.0.1:2379\": each endpoint is http://HOST:PORT"},
           {{"--etcd", "http://127.0.0.1"}, "name the port"},
           {{"--ha-force-promotion"}, "--ha-force-promotion: only with --etcd"},
           {{"--etcd", "http://127.0.0.1:2379", "--ha-lease", "1s"}, "--ha-lease"},
       }) {
    std::vector<std::string> argv{Bin("fm-scheduler"), "--data", data.path()};
    argv.insert(argv.end(), args.begin(), args.end());
    auto p = Process::Start(argv);
    CHECK(p->Wait(10000) == 2);
    p->WaitClosed(2000);
    INFO(p->Stderr());
    CHECK(p->Stderr().find(says) != std::string::npos);
  }
}

TEST_CASE(
    "a standby kept in sync takes over on its own after the leader's kill -9: fm-submit --wait rides through and "
    "every task ends once",
    "[integration][ha]") {
  Etcd etcd;
  const std::vector<std::string> ha{"--etcd",     etcd.url(), "--ha-lease",   "2s", "--ha-listen", "tcp://127.0.0.1:*",
                                    "--liveness", "5s",       "--ha-lag-max", "1s"};
  std::vector<std::string> a_args{"--ha-node", "a"};
  a_args.insert(a_args.end(), ha.begin(), ha.end());
  Cluster c(a_args);
  REQUIRE(c.WaitEvent("leader of fm as a, epoch", 10000));
  const uint64_t first = WaitForLeader(c, "a", 10000);
  REQUIRE(first > 0);
  c.StartWorker("w1", {"--slots", "2"});
  REQUIRE(c.WaitEvent("worker.registered", 10000));
  // A task before the standby joins: it gets it in its copy of the store.
  REQUIRE(c.Submit(R"({"command": ["true"]})"
                   "\n",
                   {"--wait"})
              .exit_code == 0);

  TempDir b_data;
  std::vector<std::string> b_argv{Bin("fm-scheduler"), "--broker",  c.broker(), "--data",
                                  b_data.path(),       "--ha-node", "b"};
  b_argv.insert(b_argv.end(), ha.begin(), ha.end());
  auto b = Process::Start(b_argv);
  const bool copied = b->WaitFor("copied the leader's store", 15000, 1, true);
  INFO("b: " << b->Stderr() << "\na: " << c.scheduler().Stderr());
  REQUIRE(copied);
  REQUIRE(c.scheduler().WaitFor("standby b is in sync", 15000, 1, true));
  CHECK(c.WaitEvent("b joined the in-sync set [a, b]", 10000));
  const std::string view = c.Ctl({"ha"}).out;
  CHECK(view.find("in sync   a, b\n") != std::string::npos);
  CHECK(std::regex_search(view, std::regex("\nb +in sync +[0-9]+ +[0-9]+\n")));
  CHECK(c.Ctl({"ha", "--json"}).out.find(R"("state": "in sync")") != std::string::npos);
  // A leader with nothing to write still says it is alive: the standby stays in sync
  // (it does not take the silence for a lost leader and ask for a new copy).
  CHECK_FALSE(b->WaitFor("nothing heard", 12000, 1, true));
  CHECK(c.scheduler().Count("left the in-sync set", true) == 0);

  SECTION("the leader's kill -9: the standby leads on its own, and the old leader comes back as its standby") {
    // 40 tasks through one fm-submit --wait; the leader is killed while they run.
    std::string lines;
    for (int i = 0; i < 40; ++i)
      lines += R"({"command": ["sleep", "0.1"]})"
               "\n";
    auto submit = Process::Start({Bin("fm-submit"), "--broker", c.broker(), "--wait"}, lines);
    REQUIRE(c.WaitEvent("task.succeeded", 20000, 6));
    REQUIRE(WaitInSync(c, "a, b", 20000));
    c.KillScheduler();
    // Not by force: b is in the in-sync set, with everything a acknowledged.
    REQUIRE(b->WaitFor("leading fm as b (epoch", 15000, 1, true));
    const uint64_t second = WaitForLeader(c, "b", 15000);
    CHECK(second > first);
    CHECK(c.Ctl({"ping"}).out.find("by force") == std::string::npos);
    REQUIRE(submit->Wait(60000) == 0);
    submit->WaitClosed(2000);
    const std::string out = submit->Stdout();
    size_t results = 0, succeeded = 0;
    for (size_t at = 0; (at = out.find('\n', at)) != std::string::npos; ++at) ++results;
    for (size_t at = 0; (at = out.find("\"succeeded\"", at)) != std::string::npos; ++at) ++succeeded;
    INFO(out);
    CHECK(results == 40);
    CHECK(succeeded == 40);
    // Each task ended once in the stream the tap followed from a's on to b's (41 with the
    // one from before b joined, which b had in its copy).
    REQUIRE(c.WaitEvent("task.succeeded", 10000, 41));
    CHECK(c.tap().Count("task.succeeded") == 41);
    CHECK(c.Ctl({"task", "t1"}).out.find("succeeded") != std::string::npos);
    // a, started again on its store, follows b: it gets a whole copy (its store may hold
    // batches b never had) and joins b's in-sync set.
    c.RestartScheduler();
    CHECK(b->WaitFor("standby a is in sync", 15000, 1, true));
    CHECK(c.Ctl({"ha"}).out.find("in sync   b, a\n") != std::string::npos);
  }

  SECTION("a standby that stops acknowledging leaves the in-sync set after --ha-lag-max, and then never leads") {
    b->Signal(SIGSTOP);
    // The batch waits for b at most the lag bound, then b leaves the set and it is released:
    // the submission is answered no sooner than the leader's log says b left (a leader that
    // did not wait would answer at once). Both clocks: the wall clock in UTC, to the ms.
    REQUIRE(c.Submit(R"({"command": ["true"]})"
                     "\n",
                     {"--wait"})
                .exit_code == 0);
    const std::string answered = UtcNow();
    REQUIRE(c.scheduler().WaitFor("standby b left the in-sync set", 5000, 1, true));
    const std::string log = c.scheduler().Stderr();
    const size_t left = log.rfind('\n', log.find("standby b left the in-sync set"));
    const std::string left_at = log.substr(left == std::string::npos ? 0 : left + 1, 23);
    INFO("b left at " << left_at << ", the submission was answered by " << answered);
    CHECK(left_at <= answered);
    CHECK(c.WaitEvent("b left the in-sync set: batch", 10000));
    CHECK(c.Ctl({"ha"}).out.find("in sync   a\n") != std::string::npos);
    // Back, it is sent a new copy and joins again.
    b->Signal(SIGCONT);
    REQUIRE(c.scheduler().WaitFor("standby b is in sync", 20000, 2, true));
    // Dropped again, then the leader dies: b, outside the set, does not lead.
    b->Signal(SIGSTOP);
    REQUIRE(c.Submit(R"({"command": ["true"]})"
                     "\n",
                     {"--wait"})
                .exit_code == 0);
    REQUIRE(c.scheduler().WaitFor("standby b left the in-sync set", 5000, 2, true));
    c.KillScheduler();
    b->Signal(SIGCONT);
    CHECK(b->WaitFor("will not lead fm: this scheduler (b) is not in the in-sync set [a]", 15000, 1, true));
  }
  b->Signal(SIGTERM);
  CHECK(b->Wait(10000) == 0);
}

TEST_CASE(
    "with certificates the leader's batches go over CURVE to schedulers of --ha-peers only: another key gets "
    "nothing of the store, and a standby follows no leader outside it",
    "[integration][ha]") {
  Etcd etcd;
  TempDir peers;
  const std::vector<std::string> ha{"--etcd",      etcd.url(),          "--ha-lease", "2s",
                                    "--ha-listen", "tcp://127.0.0.1:*", "--ha-peers", peers.path()};
  std::vector<std::string> a_args{"--ha-node", "a"};
  a_args.insert(a_args.end(), ha.begin(), ha.end());
  Cluster c(a_args, "", /*secure=*/true);
  REQUIRE(WaitForLeader(c, "a", 10000) > 0);
  CopyFile(c.keys().Public("scheduler"), peers.path() + "/a.cert");
  c.Trust("b", "scheduler");
  CopyFile(c.keys().Public("b"), peers.path() + "/b.cert");
  c.Trust("imposter", "scheduler");
  CopyFile(c.keys().Public("imposter"), peers.path() + "/imposter.cert");

  TempDir b_data;
  std::vector<std::string> b_argv{Bin("fm-scheduler"), "--broker",  c.broker(), "--data",
                                  b_data.path(),       "--ha-node", "b"};
  for (auto& f : c.keys().Flags("b", "scheduler")) b_argv.push_back(f);
  b_argv.insert(b_argv.end(), ha.begin(), ha.end());
  auto b = Process::Start(b_argv);
  REQUIRE(b->WaitFor("copied the leader's store", 15000, 1, true));
  REQUIRE(c.scheduler().WaitFor("standby b is in sync", 15000, 1, true));
  std::smatch m;
  const std::string said = b->Stderr();
  REQUIRE(std::regex_search(said, m, std::regex("following the leader at (tcp://[0-9.]+:[0-9]+)")));
  const std::string endpoint = m[1];

  // A client's key (trusted by the broker, not a scheduler of --ha-peers) asks to join:
  // the handshake is refused, nothing of the store comes back.
  c.Trust("mallory", "client");
  auto mallory = fm::bus::LoadCertificate(c.keys().Secret("mallory"), true);
  REQUIRE(mallory.ok());
  const std::string leader_key = fm::bus::LoadCertificate(c.keys().Public("scheduler"), false)->public_key;
  zmq::context_t ctx(1);
  auto imposter = fm::bus::LoadCertificate(c.keys().Secret("imposter"), true);
  REQUIRE(imposter.ok());
  auto ask = [&](const fm::bus::Certificate* as) {
    zmq::socket_t dealer(ctx, zmq::socket_type::dealer);
    dealer.set(zmq::sockopt::linger, 0);
    if (as != nullptr) {
      dealer.set(zmq::sockopt::curve_serverkey, leader_key);
      dealer.set(zmq::sockopt::curve_publickey, as->public_key);
      dealer.set(zmq::sockopt::curve_secretkey, as->secret_key);
    }
    dealer.connect(endpoint);
    std::string session(8, '\0');
    session[0] = 1;
    for (const std::string& frame : {std::string("join"), std::string("b"), std::string("x"), session}) {
      dealer.send(zmq::buffer(frame),
                  frame == session ? zmq::send_flags::dontwait : zmq::send_flags::sndmore | zmq::send_flags::dontwait);
    }
    zmq::pollitem_t item{dealer.handle(), 0, ZMQ_POLLIN, 0};
    return zmq::poll(&item, 1, std::chrono::milliseconds(3000)) > 0;
  };
  CHECK_FALSE(ask(&*mallory));
  CHECK_FALSE(ask(nullptr));  // nor without CURVE
  // Another scheduler of --ha-peers may follow, but only under its own name: its join as
  // b is refused (it would have dropped b from the set).
  CHECK_FALSE(ask(&*imposter));
  CHECK(c.scheduler().WaitFor("refused a join as b from the certificate of imposter", 5000, 1, true));
  // b, the real one, is still in the set (a spoofed join under its name did not drop it).
  CHECK(c.Ctl({"ha"}).out.find("in sync   a, b\n") != std::string::npos);

  // A standby whose --ha-peers lacks the leader's key does not follow it.
  TempDir c_data, c_peers;
  CopyFile(c.keys().Public("b"), c_peers.path() + "/b.cert");
  c.Trust("sched-c", "scheduler");
  std::vector<std::string> c_argv{Bin("fm-scheduler"), "--broker",   c.broker(),    "--data",   c_data.path(),
                                  "--ha-node",         "c",          "--etcd",      etcd.url(), "--ha-listen",
                                  "tcp://127.0.0.1:*", "--ha-peers", c_peers.path()};
  for (auto& f : c.keys().Flags("sched-c", "scheduler")) c_argv.push_back(f);
  auto third = Process::Start(c_argv);
  CHECK(third->WaitFor("is not a scheduler's certificate in --ha-peers", 15000, 1, true));
  third->Signal(SIGTERM);
  CHECK(third->Wait(10000) == 0);

  // Without --ha-peers a scheduler with a certificate refuses --ha-listen (exit 2, naming it).
  auto bad = Process::Start({Bin("fm-scheduler"), "--broker", c.broker(), "--data", c_data.path(), "--etcd", etcd.url(),
                             "--ha-listen", "tcp://127.0.0.1:*", "--cert", c.keys().Secret("sched-c"), "--broker-cert",
                             c.keys().Public("broker")});
  CHECK(bad->Wait(10000) == 2);
  bad->WaitClosed(2000);
  CHECK(bad->Stderr().find("name --ha-peers") != std::string::npos);
  b->Signal(SIGTERM);
  CHECK(b->Wait(10000) == 0);
}
