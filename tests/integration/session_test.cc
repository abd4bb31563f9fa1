// Sessions, step one: capability `session` is judged by doing. A worker announces it only
// once a container of its session image (scripts/session-image.sh builds the default,
// localhost/fm-session:latest, from this machine's sshd) started and sshd answered in it
// with an "SSH-" banner; it withdraws it when that stops working. A worker with docker
// but without the image, or with an image lacking sshd, never announces it.
#include <signal.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>

#include "harness.h"

using namespace fm::test;
using Catch::Contains;

namespace {

std::string LineOf(Cluster& c, const std::string& worker) {
  for (const auto& line : c.Ctl({"workers"}).lines) {
    if (line.rfind(worker + " ", 0) == 0) return line;
  }
  return {};
}

}  // namespace

TEST_CASE(
    "a worker announces session only after its session image started and sshd answered in it, without the image or "
    "sshd it does not, and a task needing a session fails at once on such a fleet",
    "[integration][docker][session]") {
  TempDir dir;
  const std::string socket = dir.path() + "/docker.sock";
  Podman podman(socket);
  Cluster c;
  const std::vector<std::string> common = {"--docker-socket", socket, "--session-probe", "1s"};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.begin(), common.begin(), common.end());
    return extra;
  };
  c.StartWorker("no-sshd", with({"--session-image", "localhost/fm-busybox:latest"}));
  c.StartWorker("no-image", with({"--session-image", "localhost/fm-no-such-session:latest"}));
  // Scenario A: no worker can start a session: a task needing one fails at once, per predicate.
  REQUIRE(c.Ctl({"workers"}).lines.size() == 3);
  const std::string session_line =
      R"({"session": {"ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPlaceholderKeyForTheTest0000000000000 t"]}})"
      "\n";
  ToolRun run = c.Submit(session_line);
  REQUIRE(run.lines.size() == 1);
  CHECK_THAT(run.lines[0], Contains(R"("status": "rejected")") && Contains(R"("reason": "no_eligible_worker")") &&
                               Contains("0/2 workers eligible: 2 lack capability session"));

  c.StartWorker("sess", with({"--session-image", "localhost/fm-session:latest"}));
  REQUIRE(c.WaitEvent("worker.updated worker=sess: capabilities [docker] -> [docker,session]", 30000));
  CHECK_THAT(LineOf(c, "sess"), Contains("docker,session"));
  CHECK_THAT(c.worker("sess").Stderr(), Contains("capability session announced: session image "
                                                 "localhost/fm-session:latest started and sshd answered (SSH-2.0-"));
  // The others tried and said why not; they never announce it.
  CHECK_THAT(c.worker("no-sshd").Stderr(), Contains("capability session not announced: session image "
                                                    "localhost/fm-busybox:latest"));
  CHECK_THAT(c.worker("no-image").Stderr(), Contains("capability session not announced: session image "
                                                     "localhost/fm-no-such-session:latest did not start"));
  CHECK_THAT(LineOf(c, "no-sshd"), !Contains("session"));
  CHECK_THAT(LineOf(c, "no-image"), !Contains("session"));
  // Now a session has a worker for it, and that one only.
  run = c.Submit(session_line);
  REQUIRE(run.lines.size() == 1);
  CHECK_THAT(run.lines[0], Contains(R"("status": "accepted")"));
  CHECK(c.WaitEvent("task.queued task=t2 worker=sess"));

  // The daemon gone: docker and session are withdrawn together.
  podman.Stop();
  CHECK(c.WaitEvent("worker.updated worker=sess: capabilities [docker,session] -> []", 30000));
}

namespace {

// A podman service, a cluster and two workers: "plain" (docker, no session image) and
// "sess" (the session image, published and advertised on 127.0.0.1).
struct SessionCluster {
  explicit SessionCluster(std::vector<std::string> scheduler_args = {"--liveness", "2s"})
      : socket(dir.path() + "/docker.sock"), podman(socket), cluster(std::move(scheduler_args)) {
    cluster.StartWorker("plain", {"--docker-socket", socket, "--session-image", ""});
    cluster.StartWorker(
        "sess", {"--docker-socket", socket, "--session-image", "localhost/fm-session:latest", "--session-probe", "1s",
                 "--advertise-host", "127.0.0.1", "--session-bind", "127.0.0.1"});
    if (!cluster.WaitEvent("worker.updated worker=sess: capabilities [docker] -> [docker,session]", 30000)) {
      throw std::runtime_error("worker sess did not announce session: " + cluster.worker("sess").Stderr());
    }
    for (const char* name : {"good", "bad"}) {
      ToolRun made = RunTool({"/usr/bin/ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", std::string(name) + "-key",
                              "-f", dir.path() + "/" + name});
      if (made.exit_code != 0) throw std::runtime_error("ssh-keygen failed: " + made.err);
    }
  }
  std::string Key(const std::string& name) const { return dir.path() + "/" + name; }
  // ssh -i KEY -p PORT fm@127.0.0.1 COMMAND..., non-interactive, no known_hosts.
  ToolRun Ssh(const std::string& key, int port, std::vector<std::string> command) {
    std::vector<std::string> argv = {"/usr/bin/ssh",
                                     "-i",
                                     Key(key),
                                     "-p",
                                     std::to_string(port),
                                     "-o",
                                     "StrictHostKeyChecking=no",
                                     "-o",
                                     "UserKnownHostsFile=/dev/null",
                                     "-o",
                                     "BatchMode=yes",
                                     "-o",
                                     "ConnectTimeout=10",
                                     "fm@127.0.0.1"};
    argv.insert(argv.end(), command.begin(), command.end());
    return RunTool(argv, "", 30000);
  }
  // The port of task `task`'s endpoint, from its task.ready event (0: none yet).
  int Port(const std::string& task) {
    for (const auto& line : cluster.tap().Lines()) {
      const std::string needle = "task.ready task=" + task + " ";
      if (line.find(needle) == std::string::npos) continue;
      size_t at = line.find("ssh -p ");
      if (at != std::string::npos) return std::atoi(line.c_str() + at + 7);
    }
    return 0;
  }

  TempDir dir;
  std::string socket;
  Podman podman;
  Cluster cluster;
};

}  // namespace

TEST_CASE(
    "on a mixed fleet a session goes to the worker that can start one, only the submitted key gets in, and "
    "fm-submit --wait and fm-ctl ssh say where",
    "[integration][docker][session]") {
  SessionCluster s;
  Cluster& c = s.cluster;
  auto submit = Process::Start({Bin("fm-submit"), "--broker", c.broker(), "--wait", "--session", "--ssh-key",
                                s.Key("good") + ".pub", "--idle-timeout", "5m", "--cpus", "0.5", "--memory", "128MiB"});
  REQUIRE(submit->WaitFor(R"("status": "ready")", 60000));
  REQUIRE(c.WaitEvent("task.ready task=t1 worker=sess"));
  const int port = s.Port("t1");
  REQUIRE(port > 0);
  CHECK_THAT(submit->Stdout(), Contains(R"("endpoint": "fm@127.0.0.1:)" + std::to_string(port) + "\""));

  ToolRun printed = c.Ctl({"ssh", "t1", "--print", "-i", s.Key("good")});
  REQUIRE(printed.lines.size() == 1);
  CHECK(printed.lines[0] == "ssh -p " + std::to_string(port) + " -i " + s.Key("good") +
                                " -o StrictHostKeyChecking=accept-new -- fm@127.0.0.1");
  ToolRun hi = s.Ssh("good", port, {"echo", "hi"});
  INFO(hi.err);
  CHECK(hi.exit_code == 0);
  CHECK(hi.lines == std::vector<std::string>{"hi"});
  // It holds what it asked for, like any task: placed and enforced as a container's limits.
  CHECK_THAT(LineOf(c, "sess"), Contains("0.5/") && Contains("128 MiB/") && Contains("1/2"));
  ToolRun limit =
      s.Ssh("good", port,
            {"cat /sys/fs/cgroup/memory.max 2>/dev/null ||", "cat /sys/fs/cgroup/memory/memory.limit_in_bytes"});
  CHECK(limit.lines == std::vector<std::string>{"134217728"});
  ToolRun refused = s.Ssh("bad", port, {"echo", "hi"});
  CHECK(refused.exit_code == 255);
  CHECK_THAT(refused.err, Contains("Permission denied"));

  // The keys never appear in events, logs or fm-ctl task: only their type and comment.
  std::ifstream pub(s.Key("good") + ".pub");
  std::string type, material;
  pub >> type >> material;
  REQUIRE(material.size() > 20);
  CHECK_THAT(c.tap().Stdout(), !Contains(material));
  CHECK_THAT(c.worker("sess").Stderr(), !Contains(material));
  CHECK_THAT(c.scheduler().Stderr(), !Contains(material));
  ToolRun shown = c.Ctl({"task", "t1"});
  std::string all;
  for (const auto& line : shown.lines) all += line + "\n";
  CHECK_THAT(all, !Contains(material) && Contains("ssh-ed25519 ... good-key") && Contains("endpoint"));

  // Cancelled: the session ends, its container goes, fm-submit reports it.
  CHECK(c.Ctl({"cancel", "t1"}).exit_code == 0);
  CHECK(submit->WaitFor(R"("status": "cancelled")", 30000));
  CHECK(submit->Wait(30000) != 0);
  // Its container stopped and removed, the port stops answering (polled: no event says so).
  bool closed = false;
  for (int i = 0; i < 40 && !closed; ++i) {
    closed = s.Ssh("good", port, {"true"}).exit_code == 255;
    if (!closed) usleep(250 * 1000);
  }
  CHECK(closed);
}

TEST_CASE("a session ends at its ttl, and after its idle timeout only once nobody is connected",
          "[integration][docker][session]") {
  SessionCluster s;
  Cluster& c = s.cluster;
  // A ttl well above the time sshd takes to answer, even under sanitizers: a session
  // never ready before its ttl fails instead (that is another case).
  ToolRun run = c.Submit("", {"--session", "--ssh-key", s.Key("good") + ".pub", "--ttl", "15s"});
  REQUIRE(run.lines.size() == 1);
  INFO(c.tap().Stdout());
  INFO(c.worker("sess").Stderr());
  REQUIRE(c.WaitEvent("task.ready task=t1", 60000));
  CHECK(c.WaitEvent("task.succeeded task=t1 worker=sess exit=", 60000));
  CHECK(c.WaitEvent("reason=session_ttl: session ended: its ttl of 15 s passed"));

  run = c.Submit("", {"--session", "--ssh-key", s.Key("good") + ".pub", "--idle-timeout", "3s"});
  REQUIRE(run.lines.size() == 1);
  REQUIRE(c.WaitEvent("task.ready task=t2", 60000));
  const int port = s.Port("t2");
  // Connected for 7 s, past the 3 s idle timeout: never reaped meanwhile.
  ToolRun held = s.Ssh("good", port, {"sleep", "7", ";", "echo", "still-here"});
  CHECK(held.exit_code == 0);
  CHECK(held.lines == std::vector<std::string>{"still-here"});
  CHECK(c.tap().Count("task.succeeded task=t2") == 0);
  // Nobody connected: it ends after its idle timeout.
  CHECK(c.WaitEvent("task.succeeded task=t2 worker=sess", 30000));
  CHECK(c.WaitEvent("reason=session_idle: session ended: no connection for 3 s (its idle timeout)"));
}

TEST_CASE("a session whose worker is lost fails with worker_lost and is never run again elsewhere",
          "[integration][docker][session]") {
  SessionCluster s({"--liveness", "2s", "--reconnect-grace", "1s"});
  Cluster& c = s.cluster;
  c.StartWorker("sess2",
                {"--docker-socket", s.socket, "--session-image", "localhost/fm-session:latest", "--session-probe", "1s",
                 "--advertise-host", "127.0.0.1", "--session-bind", "127.0.0.1", "--label", "spare=yes"});
  REQUIRE(c.WaitEvent("worker.updated worker=sess2: capabilities [docker] -> [docker,session]", 30000));
  c.Submit("", {"--session", "--ssh-key", s.Key("good") + ".pub"});
  REQUIRE(c.WaitEvent("task.ready task=t1", 60000));
  std::string on = c.tap().Count("task.ready task=t1 worker=sess:") ? "sess" : "sess2";
  c.KillWorker(on, SIGKILL);
  REQUIRE(c.WaitEvent("task.failed task=t1", 30000));
  CHECK(c.WaitEvent("reason=worker_lost"));
  CHECK_THAT(c.tap().Stdout(), Contains("a session is never re-run elsewhere"));
  CHECK(c.tap().Count("task.queued task=t1") == 1);
}
