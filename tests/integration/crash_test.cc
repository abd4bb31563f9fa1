// Nothing lost: thousands of tasks stream in through fm-submit and run on workers while
// a scheduler, a worker or the broker is killed with SIGKILL and started again. Every
// task fm-submit reported accepted reaches exactly one terminal event in the stream, and
// the stream itself has no gap and no duplicate.
#include <signal.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <set>
#include <thread>

#include "harness.h"

using namespace fm::test;

namespace {

constexpr int kTasks = 2000;

struct Accounting {
  int accepted = 0;
  int ended_once = 0;
  int ended_twice = 0;
  int ran_again = 0;  // started more than once (e.g. running when something crashed)
};

Accounting StreamWithCrash(Cluster& c, const std::function<void()>& crash) {
  std::string input;
  for (int i = 0; i < kTasks; ++i)
    input += R"({"command": ["true"]})"
             "\n";
  auto submit = Process::Start({Bin("fm-submit"), "--broker", c.broker(), "--batch", "25"}, input);
  // Crash once a good part of the work is under way.
  REQUIRE(c.WaitEvent("task.succeeded", 60000, kTasks / 5));
  crash();
  REQUIRE(submit->Wait(120000) == 0);
  submit->WaitClosed(5000);

  std::set<std::string> accepted;
  std::regex task_re(R"re("task": "(t[0-9]+)","status": "accepted")re");
  for (const auto& line : submit->Lines()) {
    std::smatch m;
    if (std::regex_search(line, m, task_re)) accepted.insert(m[1]);
  }
  Accounting a;
  a.accepted = static_cast<int>(accepted.size());
  REQUIRE(a.accepted == kTasks);
  // Wait for every accepted task to end.
  bool all_ended = c.WaitEvent("task.succeeded", 60000, kTasks);
  if (!all_ended) {
    ToolRun tasks = c.Ctl({"tasks"});
    std::string not_ended;
    for (const auto& l : tasks.lines) {
      if (l.find("succeeded") == std::string::npos) not_ended += l + "\n";
    }
    FAIL("not every task succeeded; fm-ctl tasks shows:\n" << not_ended.substr(0, 3000));
  }

  // The stream: contiguous sequence numbers, each once; then one end per task.
  std::map<std::string, int> ends, starts;
  std::regex event_re(R"(^([0-9]+) \S+ (\S+) task=(t[0-9]+))");
  uint64_t expected = 1;
  for (const auto& line : c.tap().Lines()) {
    uint64_t seq = std::stoull(line.substr(0, line.find(' ')));
    INFO(line);
    REQUIRE(seq == expected);
    ++expected;
    std::smatch m;
    if (!std::regex_search(line, m, event_re)) continue;
    std::string type = m[2], task = m[3];
    if (type == "task.succeeded" || type == "task.failed" || type == "task.cancelled") ++ends[task];
    if (type == "task.started") ++starts[task];
  }
  for (const auto& task : accepted) {
    INFO(task);
    CHECK(ends[task] == 1);
    if (ends[task] == 1) ++a.ended_once;
    if (ends[task] > 1) ++a.ended_twice;
    if (starts[task] > 1) ++a.ran_again;
  }
  WARN("accepted " << a.accepted << ", ended exactly once " << a.ended_once << ", ran more than once " << a.ran_again);
  return a;
}

}  // namespace

TEST_CASE("a scheduler killed with SIGKILL mid-stream and restarted loses no accepted task and ends none twice",
          "[integration][crash]") {
  Cluster c({"--liveness", "3s"});
  c.StartWorker("a", {"--slots", "4"});
  c.StartWorker("b", {"--slots", "4"});
  Accounting a = StreamWithCrash(c, [&] {
    c.KillScheduler();
    c.RestartScheduler();
  });
  CHECK(a.ended_once == kTasks);
  CHECK(a.ended_twice == 0);
}

TEST_CASE("a worker killed with SIGKILL mid-stream and restarted loses no accepted task and ends none twice",
          "[integration][crash]") {
  Cluster c({"--liveness", "1s"});
  c.StartWorker("a", {"--slots", "4"});
  c.StartWorker("b", {"--slots", "4"});
  Accounting a = StreamWithCrash(c, [&] {
    c.KillWorker("a", SIGKILL);
    REQUIRE(c.WaitEvent("worker.lost worker=a", 15000));
    c.RestartWorker("a");
  });
  CHECK(a.ended_once == kTasks);
}

TEST_CASE("a broker killed with SIGKILL mid-stream and restarted loses no accepted task and ends none twice",
          "[integration][crash]") {
  Cluster c({"--liveness", "5s"});
  c.StartWorker("a", {"--slots", "4"});
  c.StartWorker("b", {"--slots", "4"});
  Accounting a = StreamWithCrash(c, [&] { c.RestartBroker(); });
  CHECK(a.ended_once == kTasks);
}

TEST_CASE("a scheduler paused past the liveness window declares no worker lost and fails nothing", "[integration]") {
  Cluster c({"--liveness", "2s"});
  c.StartWorker("p1", {"--slots", "1"});
  c.StartWorker("p2", {"--slots", "1"});
  auto submit = Process::Start({Bin("fm-submit"), "--broker", c.broker(), "--wait"},
                               R"({"command": ["sleep", "4"], "max_attempts": 1})"
                               "\n");
  REQUIRE(c.WaitEvent("task.started task=t1 "));
  c.scheduler().Signal(SIGSTOP);
  // The fault itself: the scheduler does not run for 3.5 s (longer than the window).
  std::this_thread::sleep_for(std::chrono::milliseconds(3500));
  c.scheduler().Signal(SIGCONT);
  REQUIRE(c.WaitEvent("task.succeeded task=t1 ", 15000));
  CHECK(submit->Wait() == 0);
  CHECK(c.tap().Count("worker.lost") == 0);
  CHECK(c.tap().Count("task.retrying") == 0);
  CHECK(c.scheduler().WaitFor("every worker gets a fresh liveness window", 1000, 1, true));
}

TEST_CASE(
    "a backlog that waits at q/ is read back after a kill -9, listed, and placed in line order: priority first, then "
    "submission",
    "[integration][crash]") {
  // Five of the waiting tasks whole in memory (at a/), the other 25 at q/ only.
  Cluster c({"--liveness", "5s", "--waiting-in-memory", "5"});
  c.StartWorker("w", {"--slots", "1"});
  ToolRun blocker = c.Submit(R"({"command": ["sleep", "60"]})"
                             "\n");
  REQUIRE(blocker.exit_code == 0);
  REQUIRE(c.WaitEvent("task.started task=t1 "));
  std::string lines;
  for (int i = 0; i < 30; ++i) lines += R"({"command": ["true"], "priority": )" + std::to_string(i % 3) + "}\n";
  REQUIRE(c.Submit(lines).exit_code == 0);  // t2..t31 wait behind t1
  c.RestartScheduler();
  // Answers, and lists the waiting tasks from the store.
  ToolRun pending;
  for (int i = 0; i < 100; ++i) {
    pending = c.Ctl({"tasks", "--state", "pending"});
    if (pending.exit_code == 0 && pending.lines.size() >= 30) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // polling the restart, bounded
  }
  int listed = 0;
  for (const auto& l : pending.lines) listed += l.find("pending") != std::string::npos;
  CHECK(listed == 30);
  REQUIRE(c.Ctl({"cancel", "t1"}).exit_code == 0);
  REQUIRE(c.WaitEvent("task.succeeded", 30000, 30));
  std::vector<int> started;
  std::regex start_re(R"(task\.started task=t([0-9]+) )");
  for (const auto& line : c.tap().Lines()) {
    std::smatch m;
    if (std::regex_search(line, m, start_re) && m[1] != "1") started.push_back(std::stoi(m[1]));
  }
  std::vector<int> expected;
  for (int p = 2; p >= 0; --p) {
    for (int id = 2; id <= 31; ++id) {
      if ((id - 2) % 3 == p) expected.push_back(id);
    }
  }
  CHECK(started == expected);
}

TEST_CASE("fm-submit reads no further ahead than its window while the scheduler does not answer", "[integration]") {
  Cluster c({"--liveness", "5s"});
  c.StartWorker("w", {"--slots", "4"});
  TempDir dir;
  const std::string input = dir.path() + "/tasks.jsonl";
  {
    std::ofstream out(input);
    for (int i = 0; i < 100000; ++i)
      out << R"({"command": ["true"]})"
          << "\n";  // 2.3 MB
  }
  c.scheduler().Signal(SIGSTOP);
  auto submit =
      Process::Start({"/bin/sh", "-c", "exec " + Bin("fm-submit") + " --broker " + c.broker() + " < " + input});
  // How far fm-submit has read its input (the file offset of its standard input).
  auto offset = [&]() -> long {
    std::ifstream info("/proc/" + std::to_string(submit->pid()) + "/fdinfo/0");
    std::string key;
    long pos = -1;
    while (info >> key) {
      if (key == "pos:") info >> pos;
    }
    return pos;
  };
  long most = 0;
  // Watched for 3 s while nothing is answered: 16 batches of 1,000 lines and a read
  // chunk are ~0.5 MB of the 2.3 MB (before the window it read everything at once).
  for (int i = 0; i < 30; ++i) {
    most = std::max(most, offset());
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  CHECK(most > 0);
  CHECK(most < 1'000'000);
  c.scheduler().Signal(SIGCONT);
  REQUIRE(submit->Wait(120000) == 0);
  submit->WaitClosed(5000);
  int accepted = 0;
  for (const auto& line : submit->Lines()) accepted += line.find(R"("status": "accepted")") != std::string::npos;
  CHECK(accepted == 100000);
}
