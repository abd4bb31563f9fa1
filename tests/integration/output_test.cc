// A task's output as its owner gets it back: fm-ctl logs, against the real binaries.
#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>

#include "tests/integration/harness.h"

using Catch::Matchers::Contains;
using namespace fm::test;

TEST_CASE(
    "fm-ctl logs prints what an attempt wrote byte for byte, stdout to stdout and stderr to stderr, and with --follow "
    "goes on until the attempt ends and exits with its status",
    "[integration][output]") {
  Cluster c;
  c.StartWorker("w1", {"--slots", "2"});
  // Bytes a terminal would not show, no newline at the end of a write, 3,000 lines in
  // many reads of the pipe, and stderr between.
  const std::string script =
      R"(printf 'a\001b\n\tno newline'; printf 'err line\n' >&2; i=0; while [ $i -lt 3000 ]; do echo "line $i"; )"
      R"(i=$((i+1)); done; printf 'last' >&2; exit 3)";
  std::string expected_out = "a\001b\n\tno newline";
  for (int i = 0; i < 3000; ++i) expected_out += "line " + std::to_string(i) + "\n";
  const std::string expected_err = "err line\nlast";
  std::string quoted;  // as a JSON string
  for (char ch : script) {
    if (ch == '\\' || ch == '"') quoted += '\\';
    quoted += ch;
  }
  ToolRun first = c.Submit(R"({"command": ["sh", "-c", ")" + quoted + "\"]}\n", {"--wait"});
  REQUIRE(first.lines.size() == 1);
  REQUIRE_THAT(first.lines[0], Contains(R"("status": "failed")"));

  ToolRun logs = c.Ctl({"logs", "t1"});
  CHECK(logs.exit_code == 0);
  CHECK(logs.out == expected_out);
  CHECK(logs.err == expected_err);
  ToolRun only_err = c.Ctl({"logs", "--stream", "stderr", "t1"});
  CHECK(only_err.exit_code == 0);
  CHECK(only_err.out.empty());
  CHECK(only_err.err == expected_err);
  // An ended attempt followed: its bytes, then its exit status as fm-ctl's own.
  ToolRun followed = c.Ctl({"logs", "--follow", "t1"});
  CHECK(followed.exit_code == 3);
  CHECK(followed.out == expected_out);
  ToolRun json = c.Ctl({"logs", "--json", "--stream", "stdout", "t1"});
  CHECK(json.exit_code == 0);
  REQUIRE_FALSE(json.lines.empty());
  CHECK_THAT(json.lines[0], Contains(R"("type": "task.log")") && Contains(R"("stream": "stdout")"));

  // A running task followed from before its first line to its end.
  TempDir dir;
  const std::string go = dir.path() + "/go";
  c.Submit(R"({"command": ["sh", "-c", "echo first; while [ ! -e )" + go +
           R"( ]; do sleep 0.05; done; echo second"]})"
           "\n");
  REQUIRE(c.WaitEvent("task.started task=t2"));
  auto follow = Process::Start({Bin("fm-ctl"), "--broker", c.broker(), "logs", "-f", "t2"});
  REQUIRE(follow->WaitFor("first", 15000));
  std::FILE* f = std::fopen(go.c_str(), "w");
  REQUIRE(f);
  std::fclose(f);
  CHECK(follow->Wait(15000) == 0);
  follow->WaitClosed(5000);
  CHECK(follow->Stdout() == "first\nsecond\n");

  // Clear errors, each naming what is wrong.
  ToolRun missing = c.Ctl({"logs", "t99"});
  CHECK(missing.exit_code == 1);
  CHECK_THAT(missing.err, Contains("no task t99"));
  ToolRun no_attempt = c.Ctl({"logs", "--attempt", "4", "t1"});
  CHECK(no_attempt.exit_code == 1);
  CHECK_THAT(no_attempt.err, Contains("t1 has no attempt 4"));
  ToolRun bad_stream = c.Ctl({"logs", "--stream", "stdin", "t1"});
  CHECK(bad_stream.exit_code != 0);
  CHECK_THAT(bad_stream.err, Contains("--stream"));
  ToolRun not_a_task = c.Ctl({"logs", "x1"});
  CHECK(not_a_task.exit_code == 1);
  CHECK_THAT(not_a_task.err, Contains("is not a task id"));
}

TEST_CASE(
    "fm-ctl logs of an attempt cut by --max-output prints the part kept, exactly, and says on stderr how many bytes "
    "were dropped, and each attempt's output is its own",
    "[integration][output]") {
  Cluster c;
  c.StartWorker("w1", {"--max-output", "1KiB"});
  // 5,000 bytes: the first 1,024 are kept.
  ToolRun run =
      c.Submit(R"({"command": ["sh", "-c", "i=0; while [ $i -lt 500 ]; do echo 123456789; i=$((i+1)); done"]})"
               "\n",
               {"--wait"});
  REQUIRE(run.exit_code == 0);
  std::string all;
  for (int i = 0; i < 500; ++i) all += "123456789\n";
  ToolRun logs = c.Ctl({"logs", "t1"});
  CHECK(logs.exit_code == 0);
  CHECK(logs.out == all.substr(0, 1024));
  CHECK_THAT(logs.err, Contains("output truncated") && Contains("3976 bytes"));

  // Two attempts (the first exits 1 and is retried): each prints its own.
  ToolRun retried =
      c.Submit(R"({"command": ["sh", "-c", "echo attempt $FM_ATTEMPT; [ $FM_ATTEMPT -ge 2 ]"], "max_attempts": 2, )"
               R"("retry_exit_codes": [1], )"
               R"("retry_backoff": "1ms"})"
               "\n",
               {"--wait"});
  REQUIRE(retried.lines.size() == 1);
  REQUIRE_THAT(retried.lines[0], Contains(R"("status": "succeeded")"));
  ToolRun latest = c.Ctl({"logs", "t2"});
  CHECK(latest.out == "attempt 2\n");
  ToolRun earlier = c.Ctl({"logs", "--attempt", "1", "--follow", "t2"});
  CHECK(earlier.out == "attempt 1\n");
  CHECK(earlier.exit_code == 1);  // it ended by a retry: no status of its own
  CHECK_THAT(earlier.err, Contains("attempt 1"));
}

TEST_CASE(
    "fm-submit --attach runs one command, prints its output as it comes, stdout to stdout and stderr to stderr, and "
    "exits with the task's exit status, or 1 with the reason when it has none",
    "[integration][output]") {
  Cluster c;
  c.StartWorker("w1");
  const std::vector<std::string> submit{Bin("fm-submit"), "--broker", c.broker(), "--attach"};
  auto with = [&](std::vector<std::string> args) {
    std::vector<std::string> argv = submit;
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  };
  ToolRun ok = RunTool(with({"--", "sh", "-c", "echo out; echo err >&2; printf 'no newline'"}));
  CHECK(ok.exit_code == 0);
  CHECK(ok.out == "out\nno newline");
  CHECK(ok.err == "err\n");
  ToolRun seven = RunTool(with({"--", "sh", "-c", "echo before; exit 7"}));
  CHECK(seven.exit_code == 7);
  CHECK(seven.out == "before\n");
  // Live: the first line is printed while the task still runs.
  TempDir dir;
  const std::string go = dir.path() + "/go";
  auto live = Process::Start(
      with({"--", "sh", "-c", "echo first; while [ ! -e " + go + " ]; do sleep 0.05; done; echo second"}));
  REQUIRE(live->WaitFor("first", 15000));
  CHECK(live->Stdout() == "first\n");
  std::FILE* f = std::fopen(go.c_str(), "w");
  REQUIRE(f);
  std::fclose(f);
  CHECK(live->Wait(15000) == 0);
  live->WaitClosed(5000);
  CHECK(live->Stdout() == "first\nsecond\n");
  // Killed at its timeout: the status a shell gives (128 + SIGTERM), and why on stderr.
  ToolRun timed_out = RunTool(with({"--timeout", "200ms", "--kill-timeout", "100ms", "--", "sleep", "30"}));
  CHECK(timed_out.exit_code == 143);
  CHECK_THAT(timed_out.err, Contains("failed (timeout"));
  // No status of its own (cancelled while it runs): 1, and why.
  auto cancelled = Process::Start(with({"--", "sleep", "30"}));
  REQUIRE(c.WaitEvent("task.started task=t5"));
  CHECK(c.Ctl({"cancel", "t5"}).exit_code == 0);
  CHECK(cancelled->Wait(15000) == 1);
  cancelled->WaitClosed(5000);
  CHECK_THAT(cancelled->Stderr(), Contains("t5: cancelled") && Contains("by fm-ctl"));
  ToolRun never = RunTool(with({"--require", "docker", "--", "true"}));
  CHECK(never.exit_code == 1);
  CHECK_THAT(never.err, Contains("docker"));
  CHECK(never.out.empty());
  ToolRun no_command = RunTool({Bin("fm-submit"), "--broker", c.broker(), "--attach"});
  CHECK(no_command.exit_code == 2);
  CHECK_THAT(no_command.err, Contains("--attach runs one command"));
}

namespace {
// The SHA-256 of what `command` prints, as sha256sum says it.
std::string Sha256Of(const std::string& command) {
  ToolRun run = RunTool({"/bin/sh", "-c", command + " | sha256sum"});
  REQUIRE(run.exit_code == 0);
  REQUIRE(!run.lines.empty());
  return run.lines[0].substr(0, 64);
}
}  // namespace

TEST_CASE(
    "output is delivered at least once and stored exactly once: a task writing 20 MB of numbered lines, with the "
    "scheduler killed and the broker restarted in the middle, gives back what it wrote, byte for byte",
    "[integration][output]") {
  // 2,600,000 numbered lines: 20.4 MB, past the default --max-output.
  const std::string lines = "seq 1 2600000";
  const std::string expected = Sha256Of(lines);
  for (const char* fault : {"scheduler", "broker"}) {
    DYNAMIC_SECTION(fault) {
      Cluster c;
      c.StartWorker("w1", {"--max-output", "64MiB"});
      // It writes in two halves, waiting for a file between them: the fault comes as the
      // first half's output begins to arrive, the second half after it.
      TempDir dir;
      const std::string go = dir.path() + "/go";
      c.Submit(R"({"command": ["sh", "-c", "seq 1 1300000; while [ ! -e )" + go +
               R"( ]; do sleep 0.05; done; seq 1300001 2600000"]})"
               "\n");
      REQUIRE(c.WaitEvent("task.log task=t1", 60000));
      if (std::string(fault) == "scheduler") {
        c.RestartScheduler();  // kill -9, then the same data directory
      } else {
        c.RestartBroker();
      }
      std::FILE* f = std::fopen(go.c_str(), "w");
      REQUIRE(f);
      std::fclose(f);
      REQUIRE(c.WaitEvent("task.succeeded task=t1", 120000));
      const std::string got = Sha256Of(Bin("fm-ctl") + " --broker " + c.broker() + " logs t1");
      CHECK(got == expected);
    }
  }
}

TEST_CASE("fm-ctl logs of a task the task retention removed says so, never an empty answer", "[integration][output]") {
  Cluster c({"--task-retention", "1"});
  c.StartWorker("w1");
  for (int i = 0; i < 3; ++i) {
    REQUIRE(c.Submit(R"({"command": ["echo", "kept for a while"]})"
                     "\n",
                     {"--wait"})
                .exit_code == 0);
  }
  // Retention deletes the records on the scheduler's tick; the newest ended tasks stay
  // in its memory for fm-ctl until it restarts (bounded wait).
  ToolRun gone;
  for (int i = 0; i < 20; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    c.RestartScheduler();
    for (int j = 0; j < 100 && c.Ctl({"ping"}).exit_code != 0; ++j) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    gone = c.Ctl({"logs", "t1"});
    if (gone.err.find("removed") != std::string::npos) break;
  }
  CHECK(gone.exit_code == 1);
  CHECK(gone.out.empty());
  CHECK_THAT(gone.err, Contains("no task t1 any more") && Contains("task retention"));
  ToolRun kept = c.Ctl({"logs", "t3"});
  CHECK(kept.exit_code == 0);
  CHECK(kept.out == "kept for a while\n");
  ToolRun never = c.Ctl({"logs", "t9"});
  CHECK(never.exit_code == 1);
  CHECK_THAT(never.err, Contains("no task t9") && !Contains("retention"));
}

TEST_CASE(
    "fm-ctl logs of a task whose output the log retention removed prints what is kept and says the rest is gone, "
    "also after a restart",
    "[integration][output]") {
  Cluster c({"--log-retention", "1MiB"});
  c.StartWorker("w1", {"--max-output", "64MiB"});
  // t1 prints 1.8 MB, over the whole retention, in four parts a second apart, so that
  // they are stored in blocks of their own however slow the scheduler (a sanitized one
  // once gathered all of it in one block, which the retention then removed whole): its
  // first blocks go; t2 after it is whole.
  const char* parts = "for i in 1 2 3 4; do seq 1 75000; sleep 1; done";
  REQUIRE(c.Submit(std::string(R"({"command": ["sh", "-c", ")") + parts + "\"]}\n", {"--wait"}).exit_code == 0);
  REQUIRE(c.Submit(R"({"command": ["echo", "kept"]})"
                   "\n",
                   {"--wait"})
              .exit_code == 0);
  std::string all;
  for (int i = 0; i < 4; ++i) all += RunTool({"/usr/bin/seq", "1", "75000"}).out;
  for (bool restarted : {false, true}) {
    INFO((restarted ? "after a restart" : "before a restart"));
    if (restarted) {
      c.RestartScheduler();
      for (int j = 0; j < 100 && c.Ctl({"ping"}).exit_code != 0; ++j) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    }
    // (The retention runs on the scheduler's tick: until it has.)
    ToolRun cut;
    for (int i = 0; i < 50; ++i) {
      cut = c.Ctl({"logs", "t1"});
      if (cut.err.find("log retention") != std::string::npos) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    CHECK(cut.exit_code == 1);
    CHECK_THAT(cut.err, Contains("t1's output may be incomplete") && Contains("--log-retention"));
    // What is kept is the end of what it wrote, byte for byte.
    CHECK(cut.out.size() > 0);
    CHECK(cut.out.size() < all.size());
    CHECK((all.compare(all.size() - std::min(all.size(), cut.out.size()), std::string::npos, cut.out) == 0));
    ToolRun whole = c.Ctl({"logs", "t2"});
    CHECK(whole.exit_code == 0);
    CHECK(whole.out == "kept\n");
    CHECK(whole.err.empty());
  }
}
