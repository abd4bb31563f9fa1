// Ground truth and the docker executor against a real Docker Engine API: podman's
// service on a socket this test starts (scripts/podman-setup.sh prepares podman and the
// localhost/fm-busybox image; .ci/run runs it).
#include <catch2/catch.hpp>

#include "harness.h"

using namespace fm::test;
using Catch::Contains;

TEST_CASE("a worker announces docker only while the Docker API answers /_ping, and withdraws it when it stops",
          "[integration][docker]") {
  TempDir dir;
  std::string socket_path = dir.path() + "/docker.sock";
  Podman podman(socket_path);
  Cluster c;
  c.StartWorker("dockerized", {"--docker-socket", socket_path});
  c.StartWorker("nothing-behind", {"--docker-socket", dir.path() + "/nobody.sock"});
  ToolRun table = c.Ctl({"workers"});
  REQUIRE(table.lines.size() == 3);
  CHECK_THAT(table.lines[1], Contains("dockerized") && Contains("docker"));
  CHECK_THAT(table.lines[2], Contains("nothing-behind") && !Contains("docker "));

  ToolRun run = c.Submit(R"({"command": ["true"], "requires": ["docker"]})"
                         "\n",
                         {"--wait"});
  CHECK_THAT(run.lines.at(0), Contains(R"("status": "succeeded","worker": "dockerized")"));

  podman.Stop();
  REQUIRE(c.WaitEvent("worker.updated worker=dockerized: capabilities [docker] -> []", 15000));
  run = c.Submit(R"({"command": ["true"], "requires": ["docker"]})"
                 "\n");
  CHECK_THAT(run.lines.at(0), Contains("0/2 workers eligible: 2 lack capability docker"));
}

TEST_CASE("the docker executor runs the task's image in a real container and reports its output and exit status",
          "[integration][docker]") {
  TempDir dir;
  std::string socket_path = dir.path() + "/docker.sock";
  Podman podman(socket_path);
  Cluster c;
  c.StartWorker("d", {"--docker-socket", socket_path});
  ToolRun run =
      c.Submit(R"({"command": ["sh", "-c", "echo hello from a container"], "image": "localhost/fm-busybox:latest"})"
               "\n"
               R"({"command": ["sh", "-c", "exit 7"], "image": "localhost/fm-busybox:latest"})"
               "\n",
               {"--wait"});
  INFO(run.err);
  REQUIRE(run.lines.size() == 2);
  CHECK_THAT(run.lines[0], Contains(R"("status": "succeeded","worker": "d")"));
  CHECK_THAT(run.lines[1],
             Contains(R"("status": "failed","reason": "exit_status","message": "container exit status 7")"));
  CHECK(c.WaitEvent("task.log task=t1 worker=d stream=stdout | hello from a container"));
  CHECK(c.WaitEvent("task.failed task=t2 worker=d exit=7 reason=exit_status"));
}

TEST_CASE(
    "a container's output streams as it comes, is cut at --max-output with a note, and a cancel ends it while it "
    "runs",
    "[integration][docker]") {
  TempDir dir;
  std::string socket_path = dir.path() + "/docker.sock";
  Podman podman(socket_path);
  Cluster c;
  c.StartWorker("d", {"--docker-socket", socket_path, "--max-output", "1MiB", "--slots", "2"});
  // Its first line arrives while the container still runs (it sleeps a minute after).
  ToolRun run = c.Submit(R"({"command": ["sh", "-c", "echo first; sleep 60"], "image": "localhost/fm-busybox:latest"})"
                         "\n");
  REQUIRE(run.exit_code == 0);
  REQUIRE(c.WaitEvent("task.log task=t1 worker=d stream=stdout | first", 20000));
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
  CHECK(c.WaitEvent("task.log task=t2 worker=d stream=stdout | xxxx"));
}

TEST_CASE("a container printing 30 MB under a larger --max-output is paced by the output window and loses nothing",
          "[integration][docker]") {
  TempDir dir;
  std::string socket_path = dir.path() + "/docker.sock";
  Podman podman(socket_path);
  Cluster c;
  c.StartWorker("d", {"--docker-socket", socket_path, "--max-output", "64MiB"});
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
  TempDir dir;
  std::string socket_path = dir.path() + "/docker.sock";
  Podman podman(socket_path);
  Cluster c;
  c.StartWorker("d", {"--docker-socket", socket_path});
  ToolRun run =
      c.Submit(R"({"command": ["sh", "-c", "echo \"$GREETING|$FM_TASK_ID|$FM_ATTEMPT|$FM_WORKER_ID|$(pwd)\""],)"
               R"( "image": "localhost/fm-busybox:latest", "env": {"GREETING": "hi there"}, "cwd": "/tmp"})"
               "\n",
               {"--wait"});
  INFO(run.err);
  REQUIRE(run.lines.size() == 1);
  CHECK_THAT(run.lines[0], Contains(R"("status": "succeeded")"));
  CHECK(c.WaitEvent("hi there|t1|1|d|/tmp"));
}

TEST_CASE("cancelling a container stops it with SIGTERM first, so a task that traps it prints its message",
          "[integration][docker]") {
  TempDir dir;
  std::string socket_path = dir.path() + "/docker.sock";
  Podman podman(socket_path);
  Cluster c;
  c.StartWorker("d", {"--docker-socket", socket_path});
  c.Submit(R"({"command": ["sh", "-c", "trap 'echo container got TERM; exit 0' TERM; echo running;)"
           R"( while true; do sleep 1; done"], "image": "localhost/fm-busybox:latest", "kill_timeout": "5s"})"
           "\n");
  REQUIRE(c.WaitEvent("running", 30000));
  CHECK(c.Ctl({"cancel", "t1"}).exit_code == 0);
  CHECK(c.WaitEvent("container got TERM", 15000));
}

TEST_CASE("a task whose image is not on the worker fails at once with reason image_missing, naming the image",
          "[integration][docker]") {
  TempDir dir;
  std::string socket_path = dir.path() + "/docker.sock";
  Podman podman(socket_path);
  Cluster c;
  c.StartWorker("d", {"--docker-socket", socket_path});
  ToolRun run = c.Submit(R"({"command": ["true"], "image": "localhost/fm-no-such-image:latest"})"
                         "\n",
                         {"--wait"});
  REQUIRE(run.lines.size() == 1);
  CHECK_THAT(run.lines[0], Contains(R"("status": "failed")") && Contains(R"("reason": "image_missing")") &&
                               Contains("localhost/fm-no-such-image:latest"));
  CHECK(c.WaitEvent("task.failed"));
  CHECK(c.Ctl({"task", "t1"}).lines.size() > 2);
}
