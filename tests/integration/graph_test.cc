// Work as a graph with real processes: a JSONL graph piped through fm-submit --wait
// gives one result line per task with the statuses the dependencies imply, also when
// the scheduler is killed with SIGKILL in the middle of it.
#include <catch2/catch.hpp>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <thread>

#include "harness.h"

using namespace fm::test;
using Catch::Contains;

namespace {

// The graph: prep; two trainings and a bad step after it; eval after both trainings;
// report after eval and the bad step (so it fails dependency_failed), final after report
// (transitively), and one naming a key that no task has.
const char* kGraph = R"({"key": "prep", "command": ["sh", "-c", "echo prepared"]})"
                     "\n"
                     R"({"key": "train1", "after": ["prep"], "command": ["true"]})"
                     "\n"
                     R"({"key": "train2", "after": ["prep"], "command": ["true"]})"
                     "\n"
                     R"({"key": "bad", "after": ["prep"], "command": ["sh", "-c", "exit 4"]})"
                     "\n"
                     R"({"key": "eval", "after": ["train1", "train2"], "command": ["true"]})"
                     "\n"
                     R"({"key": "report", "after": ["eval", "bad"], "command": ["true"]})"
                     "\n"
                     R"({"key": "final", "after": ["report"], "command": ["true"]})"
                     "\n"
                     R"({"key": "ghost", "after": ["nope"], "command": ["true"]})"
                     "\n";

// line number -> "status reason" from fm-submit's output.
std::map<int, std::string> Results(const std::vector<std::string>& lines) {
  std::map<int, std::string> out;
  std::regex line_re(R"re("line": ([0-9]+))re"), status_re(R"re("status": "([a-z_]+)")re"),
      reason_re(R"re("reason": "([a-z_]+)")re");
  for (const auto& l : lines) {
    std::smatch m, s, r;
    if (!std::regex_search(l, m, line_re) || !std::regex_search(l, s, status_re)) continue;
    std::string v = s[1];
    if (std::regex_search(l, r, reason_re)) v += " " + std::string(r[1]);
    out[std::stoi(m[1])] = v;
  }
  return out;
}

const std::map<int, std::string> kExpected = {
    {1, "succeeded"},
    {2, "succeeded"},
    {3, "succeeded"},
    {4, "failed exit_status"},
    {5, "succeeded"},
    {6, "failed dependency_failed"},
    {7, "failed dependency_failed"},
    {8, "rejected invalid_task"},
};

}  // namespace

TEST_CASE("a JSONL graph through fm-submit --wait: one result per task, dependents of a failure fail at once",
          "[integration][graph]") {
  Cluster c;
  c.StartWorker("w", {"--slots", "2"});
  ToolRun run = c.Submit(kGraph, {"--wait"});
  CHECK(run.exit_code == 1);  // not all succeeded
  REQUIRE(run.lines.size() == kExpected.size());
  CHECK(Results(run.lines) == kExpected);
  CHECK_THAT(run.lines[6], Contains(R"(after \"report\")"));
  CHECK_THAT(run.lines[6], Contains(R"(\"bad\" ()"));  // the first failure, named through the chain
  CHECK_THAT(run.lines[7], Contains(R"(\"nope\")"));
  // No dependent of the failure ever started.
  for (const char* type : {"task.started", "task.queued"}) {
    for (const auto& l : c.tap().Lines()) {
      if (l.find(type) == std::string::npos) continue;
      CHECK_THAT(l, !Contains("task=" + TaskOf(run.lines[5]) + " ") && !Contains("task=" + TaskOf(run.lines[6]) + " "));
    }
  }
}

TEST_CASE("a waiting dependent says what it waits for, and a graph survives a scheduler SIGKILL in its middle",
          "[integration][graph][crash]") {
  Cluster c;
  c.StartWorker("w", {"--slots", "2"});
  // The graph runs behind a gate: prep waits for a file that the test makes after the
  // scheduler was killed and started again.
  TempDir gate;
  const std::string open = gate.path() + "/open";
  std::string input = std::string(R"({"key": "gate", "command": ["sh", "-c", "while [ ! -e )") + open +
                      R"( ]; do sleep 0.05; done"]})" + "\n" + kGraph;
  // Each key once more, after the gate: the graph's prep waits for it too.
  input = std::regex_replace(input, std::regex(R"re(\{"key": "prep", )re"), R"({"key": "prep", "after": ["gate"], )");
  auto submit = Process::Start({Bin("fm-submit"), "--broker", c.broker(), "--wait"}, input);
  REQUIRE(c.WaitEvent("task.started task=t1 "));
  REQUIRE(c.WaitEvent("task.submitted task=t8"));
  ToolRun shown = c.Ctl({"task", "t2"});
  CHECK_THAT(shown.out, Contains("after: waits for t1 \"gate\" (running on w) to succeed"));

  c.KillScheduler();
  c.RestartScheduler();
  for (int i = 0; i < 200; ++i) {  // polling the restart, bounded (its started event comes with the next)
    shown = c.Ctl({"task", "t3"});
    if (shown.exit_code == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  INFO(shown.err << c.scheduler().Stderr());
  CHECK_THAT(shown.out, Contains("after: waits for t2 \"prep\" (pending) to succeed"));
  { std::ofstream(open.c_str()) << "go"; }
  REQUIRE(submit->Wait(60000) == 1);
  submit->WaitClosed(5000);
  std::map<int, std::string> expected{{1, "succeeded"}};
  for (const auto& [line, status] : kExpected) expected[line + 1] = status;
  CHECK(Results(submit->Lines()) == expected);
}

TEST_CASE("fm-ctl counts, lists and cancels a group that fm-submit made", "[integration][graph]") {
  Cluster c;
  c.StartWorker("w", {"--slots", "1"});
  std::string lines;
  for (int i = 0; i < 30; ++i)
    lines += R"({"group": "sweep", "command": ["sleep", "30"]})"
             "\n";
  ToolRun run = c.Submit(lines);
  REQUIRE(run.exit_code == 0);
  ToolRun one = c.Submit("", {"--group", "solo", "--", "true"});
  REQUIRE(one.exit_code == 0);
  REQUIRE(c.WaitEvent("task.started task=t1 "));
  ToolRun counted = c.Ctl({"group", "sweep"});
  REQUIRE(counted.exit_code == 0);
  CHECK_THAT(counted.out, Contains("GROUP") && Contains("PENDING"));
  std::regex row(R"(sweep\s+29\s+0\s+1\s+0\s+0\s+0)");
  CHECK(std::regex_search(counted.out, row));
  ToolRun listed = c.Ctl({"tasks", "--group", "solo"});
  REQUIRE(listed.lines.size() == 2);  // the header and t31
  CHECK_THAT(listed.lines[1], Contains("t31"));
  ToolRun cancelled = c.Ctl({"cancel", "--group", "sweep"});
  CHECK(cancelled.exit_code == 0);
  CHECK_THAT(cancelled.out, Contains("cancelled 30 tasks of group \"sweep\""));
  REQUIRE(c.WaitEvent("task.cancelled", 10000, 30));
  counted = c.Ctl({"group", "sweep", "--json"});
  CHECK_THAT(counted.out, Contains(R"("cancelled": 30)"));
  ToolRun both = c.Ctl({"cancel", "t1", "--group", "sweep"});
  CHECK(both.exit_code == 2);
  CHECK_THAT(both.err, Contains("one of the two"));
}

namespace {

// The most tasks of `tasks` queued or running at once, from the stream's order of
// task.queued and the ends (a retry goes back to pending).
int MostAtOnce(const std::vector<std::string>& tap, const std::set<std::string>& tasks) {
  std::regex event_re(R"(^[0-9]+ \S+ (task\.[a-z]+) task=(t[0-9]+))");
  std::set<std::string> flying;
  size_t most = 0;
  for (const auto& line : tap) {
    std::smatch m;
    if (!std::regex_search(line, m, event_re) || !tasks.count(m[2])) continue;
    const std::string type = m[1];
    if (type == "task.queued") flying.insert(m[2]);
    if (type == "task.succeeded" || type == "task.failed" || type == "task.cancelled" || type == "task.retrying") {
      flying.erase(m[2]);
    }
    most = std::max(most, flying.size());
  }
  return static_cast<int>(most);
}

}  // namespace

TEST_CASE("fm-submit --array runs N tasks with FM_ARRAY_INDEX, at most the bound at once, also across a SIGKILL",
          "[integration][graph][crash]") {
  Cluster c;
  c.StartWorker("w", {"--slots", "6"});
  auto submit = Process::Start({Bin("fm-submit"), "--broker", c.broker(), "--wait", "--array", "8%2", "--group", "ix",
                                "--", "sh", "-c", "echo index=$FM_ARRAY_INDEX of $FM_ARRAY_COUNT; sleep 0.4"});
  REQUIRE(c.WaitEvent("task.succeeded", 20000, 2));
  c.KillScheduler();
  c.RestartScheduler();
  REQUIRE(submit->Wait(60000) == 0);
  submit->WaitClosed(5000);
  std::set<std::string> tasks;
  for (const auto& line : submit->Lines()) {
    CHECK_THAT(line, Contains(R"("status": "succeeded")"));
    tasks.insert(TaskOf(line));
  }
  REQUIRE(tasks.size() == 8);
  for (int i = 0; i < 8; ++i) {
    CHECK(c.WaitEvent("index=" + std::to_string(i) + " of 8"));
  }
  CHECK(MostAtOnce(c.tap().Lines(), tasks) == 2);
  ToolRun counted = c.Ctl({"group", "ix", "--json"});
  CHECK_THAT(counted.out, Contains(R"("succeeded": 8)"));
  // As a task line: one output line per element, each with the input line's number;
  // its group named after its key.
  ToolRun lines = c.Submit(R"({"key": "j", "array": {"count": 3}, "command": ["true"]})"
                           "\n",
                           {"--wait"});
  CHECK(lines.exit_code == 0);
  REQUIRE(lines.lines.size() == 3);
  for (const auto& l : lines.lines) CHECK_THAT(l, Contains(R"("line": 1,)") && Contains(R"("status": "succeeded")"));
  CHECK_THAT(c.Ctl({"group", "array/j", "--json"}).out, Contains(R"("succeeded": 3)"));
  ToolRun bad = c.Submit("", {"--array", "3%4", "--", "true"});
  CHECK(bad.exit_code == 2);
  CHECK_THAT(bad.err, Contains("--array"));
}
