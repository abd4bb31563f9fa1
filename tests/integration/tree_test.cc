// Broker trees on loopback: a node broker joined to the root carries directed messages
// both ways and bridges the event bus, so tools and workers attached to the node see and
// reach the whole cluster. (Across real hosts: network namespaces, a later step.)
#include <catch2/catch.hpp>

#include "harness.h"

using namespace fm::test;
using Catch::Contains;

namespace {

struct Tree {
  Cluster cluster;  // root broker, scheduler, a tap on the root
  std::string node;
  std::unique_ptr<Process> node_broker;
  Tree() {
    node = "tcp://127.0.0.1:" + std::to_string(PickPortBase());
    node_broker = Process::Start({Bin("fm-broker"), "--bind", node, "--upstream", cluster.broker()});
    REQUIRE(node_broker->WaitFor("upstream " + cluster.broker(), 10000, 1, true));
  }
};

}  // namespace

TEST_CASE("a node broker carries directed messages between its peers and the root both ways", "[integration][tree]") {
  Tree t;
  t.cluster.StartWorker("on-root", {"--label", "where=root"});
  t.cluster.StartWorker("on-node", {"--broker", t.node, "--label", "where=node"});
  // Submitted through the node broker: routed up to the scheduler, dispatched down to
  // the node's worker, and the result comes back down to the submitter.
  ToolRun run =
      RunTool({Bin("fm-submit"), "--broker", t.node, "--wait"}, R"({"command": ["true"], "labels": {"where": "node"}})"
                                                                "\n"
                                                                R"({"command": ["true"], "labels": {"where": "root"}})"
                                                                "\n");
  INFO(run.err);
  REQUIRE(run.exit_code == 0);
  CHECK_THAT(run.lines.at(0), Contains(R"("status": "succeeded","worker": "on-node")"));
  CHECK_THAT(run.lines.at(1), Contains(R"("status": "succeeded","worker": "on-root")"));
  ToolRun workers = RunTool({Bin("fm-ctl"), "--broker", t.node, "workers"});
  REQUIRE(workers.exit_code == 0);
  CHECK(workers.lines.size() == 3);
}

TEST_CASE("fm-tap on a node broker sees the whole cluster's stream, each event once", "[integration][tree]") {
  Tree t;
  t.cluster.StartWorker("on-node", {"--broker", t.node});
  ToolRun run = t.cluster.Submit(R"({"command": ["true"]})"
                                 "\n"
                                 R"({"command": ["true"], "requires": ["gpu"]})"
                                 "\n",
                                 {"--wait"});
  REQUIRE(t.cluster.WaitEvent("task.failed"));
  REQUIRE(t.cluster.WaitEvent("task.succeeded"));
  size_t on_root = t.cluster.tap().Lines().size();
  ToolRun node_tap = RunTool({Bin("fm-tap"), "--broker", t.node, "--since", "1", "--count", std::to_string(on_root)});
  REQUIRE(node_tap.exit_code == 0);
  REQUIRE(node_tap.lines.size() == on_root);
  for (size_t i = 0; i < on_root; ++i) CHECK(node_tap.lines[i] == t.cluster.tap().Lines()[i]);
  // Live, too: a follower on the node sees a new event once.
  auto follower = Process::Start({Bin("fm-tap"), "--broker", t.node});
  ToolRun more = RunTool({Bin("fm-submit"), "--broker", t.node, "--wait", "--", "true"});
  REQUIRE(more.exit_code == 0);
  REQUIRE(follower->WaitFor("task.succeeded task=t3 "));
  CHECK(follower->Count("task.succeeded task=t3 ") == 1);
}
