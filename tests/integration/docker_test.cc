// Ground truth and the docker executor against a real Docker Engine API: podman's
// service on a socket this test starts (scripts/podman-setup.sh prepares podman and the
// localhost/fm-busybox image; .ci/run runs it). Every test's worker has an id of its own:
// the services share podman's container storage, and a starting worker removes the
// containers labelled with its id (a previous process's orphans).
#include <signal.h>

#include <catch2/catch.hpp>

#include "harness.h"

using namespace fm::test;
using Catch::Contains;

namespace {

// A podman service of the test's own and a cluster with one worker `id` on it.
struct DockerCluster {
  explicit DockerCluster(const std::string& id, std::vector<std::string> args = {})
      : socket(dir.path() + "/docker.sock"), podman(socket) {
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
  c.StartWorker("nothing-behind", {"--docker-socket", docker.dir.path() + "/nobody.sock"});
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

  // While it runs, the daemon knows whose it is. (It ends by itself: a container
  // stopping holds its lock, and other services here would wait on it.)
  c.Submit(R"({"command": ["sh", "-c", "echo up; sleep 2"], "image": "localhost/fm-busybox:latest"})"
           "\n");
  REQUIRE(c.WaitEvent("| up", 30000));
  ToolRun labelled = RunTool({"/usr/bin/podman", "ps", "-q", "--filter", "label=fm.task=t2", "--filter",
                              "label=fm.attempt=1", "--filter", "label=fm.worker=d7"});
  CHECK(labelled.lines.size() == 1);
  CHECK(c.WaitEvent("task.succeeded task=t2", 30000));

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
