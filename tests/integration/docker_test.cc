// Ground truth and the docker executor against a real Docker Engine API: podman's
// service on a socket this test starts (scripts/podman-setup.sh prepares podman and the
// localhost/fm-busybox image; .ci/run runs it). Every test's worker has an id of its own:
// the services share podman's container storage, and a starting worker removes the
// containers labelled with its id (a previous process's orphans).
#include <signal.h>
#include <sys/stat.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>

#include "harness.h"

using namespace fm::test;
using Catch::Contains;

namespace {

// A podman service of the test's own and a cluster with one worker `id` on it.
struct DockerCluster {
  // The session probe is off unless `args` name a --session-image: these tests are about
  // docker tasks, and a capability appearing meanwhile would change what they compare.
  explicit DockerCluster(const std::string& id, std::vector<std::string> args = {})
      : socket(dir.path() + "/docker.sock"), podman(socket) {
    if (std::find(args.begin(), args.end(), "--session-image") == args.end()) {
      args.insert(args.begin(), {"--session-image", ""});
    }
    args.insert(args.begin(), {"--docker-socket", socket});
    cluster.StartWorker(id, args);
  }
  TempDir dir;
  std::string socket;
  Podman podman;
  Cluster cluster;
};

}  // namespace

TEST_CASE("a worker announces docker only while the Docker API answers /_ping, and withdraws it when it stops",
          "[integration][docker]") {
  DockerCluster docker("dockerized");
  Cluster& c = docker.cluster;
  c.StartWorker("nothing-behind", {"--docker-socket", docker.dir.path() + "/nobody.sock", "--session-image", ""});
  ToolRun table = c.Ctl({"workers"});
  REQUIRE(table.lines.size() == 3);
  CHECK_THAT(table.lines[1], Contains("dockerized") && Contains("docker"));
  CHECK_THAT(table.lines[2], Contains("nothing-behind") && !Contains("docker "));

  ToolRun run = c.Submit(R"({"command": ["true"], "requires": ["docker"]})"
                         "\n",
                         {"--wait"});
  CHECK_THAT(run.lines.at(0), Contains(R"("status": "succeeded","worker": "dockerized")"));

  docker.podman.Stop();
  REQUIRE(c.WaitEvent("worker.updated worker=dockerized: capabilities [docker] -> []", 15000));
  run = c.Submit(R"({"command": ["true"], "requires": ["docker"]})"
                 "\n");
  CHECK_THAT(run.lines.at(0), Contains("0/2 workers eligible: 2 lack capability docker"));
}

TEST_CASE("the docker executor runs the task's image in a real container and reports its output and exit status",
          "[integration][docker]") {
  DockerCluster docker("d1");
  Cluster& c = docker.cluster;
  ToolRun run =
      c.Submit(R"({"command": ["sh", "-c", "echo hello from a container"], "image": "localhost/fm-busybox:latest"})"
               "\n"
               R"({"command": ["sh", "-c", "exit 7"], "image": "localhost/fm-busybox:latest"})"
               "\n",
               {"--wait"});
  INFO(run.err);
  REQUIRE(run.lines.size() == 2);
  CHECK_THAT(run.lines[0], Contains(R"("status": "succeeded","worker": "d1")"));
  CHECK_THAT(run.lines[1],
             Contains(R"("status": "failed","reason": "exit_status","message": "container exit status 7")"));
  CHECK(c.WaitEvent("task.log task=t1 worker=d1 stream=stdout | hello from a container"));
  CHECK(c.WaitEvent("task.failed task=t2 worker=d1 exit=7 reason=exit_status"));
}

TEST_CASE(
    "a container's output streams as it comes, is cut at --max-output with a note, and a cancel ends it while it "
    "runs",
    "[integration][docker]") {
  DockerCluster docker("d2", {"--max-output", "1MiB", "--slots", "2"});
  Cluster& c = docker.cluster;
  // Its first line arrives while the container still runs (it sleeps a minute after;
  // its shell, PID 1, ignores SIGTERM, so the cancel's SIGKILL follows a second later).
  ToolRun run = c.Submit(R"({"command": ["sh", "-c", "echo first; sleep 60"], "image": "localhost/fm-busybox:latest",)"
                         R"( "kill_timeout": "1s"})"
                         "\n");
  REQUIRE(run.exit_code == 0);
  REQUIRE(c.WaitEvent("task.log task=t1 worker=d2 stream=stdout | first", 20000));
  CHECK(c.Ctl({"cancel", "t1"}).exit_code == 0);
  CHECK(c.WaitEvent("task.cancelled task=t1", 15000));
  // 12 MB of output: the first MiB is kept and the rest dropped, said in the stream and
  // in the result, never dropped whole.
  run = c.Submit(
      R"({"command": ["sh", "-c", "head -c 12000000 /dev/zero | tr '\\0' x"], "image": "localhost/fm-busybox:latest"})"
      "\n",
      {"--wait"});
  INFO(run.err);
  REQUIRE(run.lines.size() == 1);
  CHECK_THAT(run.lines[0],
             Contains(R"("status": "succeeded")") && Contains("output truncated: 10951424 bytes over 1 MiB dropped"));
  CHECK(c.WaitEvent("stream=fm | output truncated: this attempt wrote more than 1 MiB (--max-output)"));
  CHECK(c.WaitEvent("task.log task=t2 worker=d2 stream=stdout | xxxx"));
}

TEST_CASE("a container printing 30 MB under a larger --max-output is paced by the output window and loses nothing",
          "[integration][docker]") {
  DockerCluster docker("d3", {"--max-output", "64MiB"});
  Cluster& c = docker.cluster;
  ToolRun run = c.Submit(
      R"({"command": ["sh", "-c", "head -c 30000000 /dev/zero | tr '\\0' x; echo; echo the-end"], "image": "localhost/fm-busybox:latest"})"
      "\n",
      {"--wait"});
  INFO(run.err);
  REQUIRE(run.lines.size() == 1);
  CHECK_THAT(run.lines[0], Contains(R"("status": "succeeded")") && !Contains("truncated"));
  CHECK(c.WaitEvent("the-end", 20000));
  CHECK(c.tap().Count("stream=fm") == 0);  // no note of output lost or missing
}

TEST_CASE("a container gets the task's env and cwd and the FM_ variables naming its task, attempt and worker",
          "[integration][docker]") {
  DockerCluster docker("d4");
  Cluster& c = docker.cluster;
  ToolRun run =
      c.Submit(R"({"command": ["sh", "-c", "echo \"$GREETING|$FM_TASK_ID|$FM_ATTEMPT|$FM_WORKER_ID|$(pwd)\""],)"
               R"( "image": "localhost/fm-busybox:latest", "env": {"GREETING": "hi there"}, "cwd": "/tmp"})"
               "\n",
               {"--wait"});
  INFO(run.err);
  REQUIRE(run.lines.size() == 1);
  CHECK_THAT(run.lines[0], Contains(R"("status": "succeeded")"));
  CHECK(c.WaitEvent("hi there|t1|1|d4|/tmp"));
}

TEST_CASE("cancelling a container stops it with SIGTERM first, so a task that traps it prints its message",
          "[integration][docker]") {
  DockerCluster docker("d5");
  Cluster& c = docker.cluster;
  c.Submit(R"({"command": ["sh", "-c", "trap 'echo container got TERM; exit 0' TERM; echo running;)"
           R"( while true; do sleep 1; done"], "image": "localhost/fm-busybox:latest", "kill_timeout": "5s"})"
           "\n");
  REQUIRE(c.WaitEvent("running", 30000));
  CHECK(c.Ctl({"cancel", "t1"}).exit_code == 0);
  CHECK(c.WaitEvent("container got TERM", 15000));
}

TEST_CASE("a task whose image is not on the worker fails at once with reason image_missing, naming the image",
          "[integration][docker]") {
  DockerCluster docker("d6");
  Cluster& c = docker.cluster;
  ToolRun run = c.Submit(R"({"command": ["true"], "image": "localhost/fm-no-such-image:latest"})"
                         "\n",
                         {"--wait"});
  REQUIRE(run.lines.size() == 1);
  CHECK_THAT(run.lines[0], Contains(R"("status": "failed")") && Contains(R"("reason": "image_missing")") &&
                               Contains("localhost/fm-no-such-image:latest"));
  CHECK(c.WaitEvent("task.failed"));
  CHECK(c.Ctl({"task", "t1"}).lines.size() > 2);
}

TEST_CASE(
    "a container gets the limits placement reserved and labels naming its task, and one past its memory fails with "
    "memory_limit",
    "[integration][docker]") {
  DockerCluster docker("d7");
  Cluster& c = docker.cluster;
  // The memory limit as the container's own cgroup says it (v1 or v2).
  ToolRun limits = c.Submit(
      R"x({"command": ["sh", "-c", "echo limit=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/memory.max 2>/dev/null)"],)x"
      R"( "image": "localhost/fm-busybox:latest", "resources": {"memory": "64MiB", "cpus": 0.5}})"
      "\n",
      {"--wait"});
  REQUIRE(limits.lines.size() == 1);
  CHECK_THAT(limits.lines[0], Contains(R"("status": "succeeded")"));
  CHECK(c.WaitEvent("limit=67108864"));

  // While it runs, the daemon knows whose it is. It runs until cancelled, so a slow
  // `podman ps` under load still finds it (it once ended after 2 s, before a loaded
  // machine's ps asked), and it traps SIGTERM so it stops at once: a container stopping
  // holds its lock, and other services here would wait on it.
  c.Submit(R"({"command": ["sh", "-c", "trap 'exit 0' TERM; echo up; while :; do sleep 0.2; done"],)"
           R"( "image": "localhost/fm-busybox:latest"})"
           "\n");
  REQUIRE(c.WaitEvent("| up", 30000));
  ToolRun labelled = RunTool({"/usr/bin/podman", "ps", "-q", "--filter", "label=fm.task=t2", "--filter",
                              "label=fm.attempt=1", "--filter", "label=fm.worker=d7"});
  CHECK(labelled.lines.size() == 1);
  CHECK(c.Ctl({"cancel", "t2"}).exit_code == 0);
  CHECK(c.WaitEvent("task.cancelled task=t2", 30000));

  ToolRun hog = c.Submit(R"({"command": ["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"],)"
                         R"( "image": "localhost/fm-busybox:latest", "resources": {"memory": "64MiB"}})"
                         "\n",
                         {"--wait"});
  REQUIRE(hog.lines.size() == 1);
  CHECK_THAT(hog.lines[0],
             Contains(R"("status": "failed")") && Contains(R"("reason": "memory_limit")") && Contains("64 MiB"));
}

TEST_CASE("a restarted worker removes the containers its previous process left running", "[integration][docker]") {
  DockerCluster docker("orphans");
  Cluster& c = docker.cluster;
  c.Submit(R"({"command": ["sh", "-c", "echo up; sleep 120"], "image": "localhost/fm-busybox:latest"})"
           "\n");
  REQUIRE(c.WaitEvent("| up", 30000));  // its container runs
  c.KillWorker("orphans", SIGKILL);
  // The first attempt's container (the scheduler runs the task again on the restarted worker).
  std::vector<std::string> ps = {
      "/usr/bin/podman", "ps", "-a", "-q", "--filter", "label=fm.worker=orphans", "--filter", "label=fm.attempt=1"};
  CHECK(RunTool(ps).lines.size() == 1);  // left running by the killed process
  c.RestartWorker("orphans");
  CHECK(c.worker("orphans").WaitFor("removed 1 containers a previous worker orphans left", 30000, 1, true));
  CHECK(RunTool(ps).lines.empty());
}

namespace {

// A podman service whose OCI runtime is a script: runc while `broken` does not exist, a
// failure ("OCI runtime error") while it does. /_ping answers either way: a daemon that
// answers and cannot start a container (shared/ENVIRONMENT.md).
struct BreakablePodman {
  BreakablePodman() : socket(dir.path() + "/broken.sock"), flag(dir.path() + "/broken") {
    const std::string runtime = dir.path() + "/badrt";
    std::ofstream(runtime) << "#!/bin/sh\nif [ -e " << flag
                           << " ]; then echo 'fm test: this runtime is broken' >&2; exit 1; fi\nexec runc \"$@\"\n";
    chmod(runtime.c_str(), 0755);
    const std::string conf = dir.path() + "/containers.conf";
    std::ofstream(conf) << "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\n"
                        << "[engine]\nruntime = \"fmbad\"\n\n[engine.runtimes]\nfmbad = [\"" << runtime << "\"]\n";
    Break();
    podman = std::make_unique<Podman>(socket, std::vector<std::string>{"CONTAINERS_CONF=" + conf});
  }
  void Break() { std::ofstream(flag) << "broken\n"; }
  void Mend() { std::remove(flag.c_str()); }

  TempDir dir;
  std::string socket, flag;
  std::unique_ptr<Podman> podman;
};

// Tap lines holding `a` and `b` and not `but`.
size_t CountLines(Cluster& c, const std::string& a, const std::string& b, const std::string& but) {
  size_t n = 0;
  for (const auto& line : c.tap().Lines()) {
    n += line.find(a) != std::string::npos && line.find(b) != std::string::npos && line.find(but) == std::string::npos;
  }
  return n;
}

}  // namespace

TEST_CASE(
    "a worker whose daemon answers /_ping but cannot start containers is quarantined after 3 failed starts, its tasks "
    "run elsewhere, and it comes back when the daemon is mended",
    "[integration][docker]") {
  DockerCluster docker("healthy", {"--slots", "2", "--label", "host=healthy"});
  Cluster& c = docker.cluster;
  BreakablePodman broken;
  c.StartWorker("broken", {"--docker-socket", broken.socket, "--session-image", "", "--slots", "4", "--label",
                           "host=broken", "--quarantine-probe", "500ms"});
  ToolRun table = c.Ctl({"workers"});
  REQUIRE(table.lines.size() == 3);
  CHECK_THAT(table.lines[1], Contains("broken") && Contains("docker"));  // it answers /_ping

  std::string lines;
  for (int i = 0; i < 20; ++i) {
    lines += R"({"command": ["true"], "image": "localhost/fm-busybox:latest", "retry_backoff": "100ms"})"
             "\n";
  }
  ToolRun run = c.Submit(lines, {"--wait"});
  INFO(run.err);
  INFO("the stream:\n" + c.tap().Stdout());
  INFO("broken worker:\n" + c.worker("broken").Stderr());
  REQUIRE(run.lines.size() == 20);
  for (const auto& line : run.lines) CHECK_THAT(line, Contains(R"("status": "succeeded","worker": "healthy")"));
  // The broken one failed at most 3 starts (one at a time until a start works), then
  // withdrew docker with the reason.
  CHECK(c.WaitEvent("worker.quarantined worker=broken: capability docker withdrawn: docker start failed 3x in a row"));
  // (Attempts dispatched there meanwhile are handed back unstarted, "is quarantined".)
  size_t failed_starts = CountLines(c, "task.retrying", "docker start: ", "is quarantined");
  CHECK(failed_starts <= 3);
  CHECK(failed_starts >= 1);
  table = c.Ctl({"workers"});
  REQUIRE(table.lines.size() == 3);
  CHECK_THAT(table.lines[1], Contains("broken") && Contains("docker quarantined (docker start failed 3x"));
  // The breakdown says why the broken one cannot take a docker task meant for it.
  run = c.Submit(R"({"command": ["true"], "image": "localhost/fm-busybox:latest", "labels": {"host": "broken"}})"
                 "\n");
  REQUIRE(run.lines.size() == 1);
  CHECK_THAT(run.lines[0], Contains("0/2 workers eligible") &&
                               Contains("1 quarantined: docker start failed 3x in a row: docker start: ") &&
                               Contains("1 lacks label host=broken"));

  // Mended: a re-probe starts a container and docker is announced again.
  broken.Mend();
  REQUIRE(c.WaitEvent("worker.recovered worker=broken: capability docker announced again", 30000));
  run = c.Submit(R"({"command": ["sh", "-c", "echo mended"], "image": "localhost/fm-busybox:latest",)"
                 R"( "labels": {"host": "broken"}})"
                 "\n",
                 {"--wait"});
  REQUIRE(run.lines.size() == 1);
  CHECK_THAT(run.lines[0], Contains(R"("status": "succeeded","worker": "broken")"));
}

TEST_CASE("with 8 containers running, a cancel and a timeout still take effect within a second",
          "[integration][docker]") {
  DockerCluster docker("busy", {"--slots", "10"});
  Cluster& c = docker.cluster;
  const std::string loop = R"("sh", "-c", "trap 'echo stopping; exit 0' TERM; echo up; while :; do sleep 0.2; done")";
  std::string lines;
  for (int i = 0; i < 8; ++i) {
    lines += R"({"command": [)" + loop +
             R"(], "image": "localhost/fm-busybox:latest"})"
             "\n";
  }
  c.Submit(lines);
  REQUIRE(c.WaitEvent("stdout | up", 60000, 8));
  // A ninth with a 3 s timeout, and a cancel of the first while all eight run.
  c.Submit(R"({"command": [)" + loop +
           R"(], "image": "localhost/fm-busybox:latest", "timeout": "3s"})"
           "\n");
  REQUIRE(c.WaitEvent("task.started task=t9", 20000));
  REQUIRE(c.WaitEvent("stdout | up", 20000, 9));
  auto timeout_from = std::chrono::steady_clock::now();
  auto cancelled_at = std::chrono::steady_clock::now();
  CHECK(c.Ctl({"cancel", "t1"}).exit_code == 0);
  REQUIRE(c.WaitEvent("task.cancelled task=t1", 10000));
  auto cancel_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - cancelled_at).count();
  REQUIRE(c.WaitEvent("task.failed task=t9", 20000));
  auto timeout_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - timeout_from).count();
  // Timing is reported, and bounded loosely (shared 2-core machines): the cancel's SIGTERM
  // reached the container (it said so) and its end came back well under the kill timeout.
  std::printf(
      "8 containers running: task.cancelled %lld ms after fm-ctl cancel; the 3 s timeout's task.failed %lld ms after "
      "its output began\n",
      static_cast<long long>(cancel_ms), static_cast<long long>(timeout_ms));
  CHECK(c.WaitEvent("task=t1 worker=busy stream=stdout | stopping"));
  CHECK(cancel_ms < 5000);
  CHECK(timeout_ms < 3000 + 5000);
  CHECK(CountLines(c, "task.failed task=t9 worker=busy", "reason=timeout", "\x01") == 1);
  CHECK(c.WaitEvent("task=t9 worker=busy stream=stdout | stopping"));
  for (int i = 2; i <= 8; ++i) c.Ctl({"cancel", "t" + std::to_string(i)});
  CHECK(c.WaitEvent("task.cancelled", 30000, 8));
}
