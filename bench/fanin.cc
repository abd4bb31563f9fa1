// Fan-in: the root broker and scheduler serving 1,000 workers spread over 4 node brokers.
// The workers are simulated by this program speaking the real protocol (a DEALER each
// with its own identity, registrations and heartbeats on the bus, results for every
// dispatch at once). Reports how long registration takes, whether heartbeats keep all of
// them live, and dispatch throughput through the tree.
#include <signal.h>
#include <sys/resource.h>

#include <thread>
#include <zmq.hpp>

#include "bench_util.h"
#include "harness.h"
#include "runtime/bus.h"
#include "schemas/codec.h"

using namespace fm;
using namespace fm::bench;
using fm::test::Bin;
using fm::test::Process;
using fm::test::TempDir;

namespace {

struct SimWorker {
  std::string id, address;
  std::unique_ptr<zmq::socket_t> dealer;
  int node = 0;
};

std::string Registration(const SimWorker& w) {
  flatbuffers::FlatBufferBuilder fbb(512);
  Hardware hw{4000, 8ull << 30, {}};
  std::vector<std::string> caps{w.node % 2 ? "docker" : "gpu"};
  Labels labels{{"node", std::to_string(w.node)}};
  auto reg = wire::CreateWorkerRegistration(
      fbb, fbb.CreateString(w.id), fbb.CreateString(w.address), fbb.CreateString("sim" + std::to_string(w.node)), 1,
      fbb.CreateString("bench"), 8, codec::ToWire(fbb, hw), codec::ToWire(fbb, labels), 0, codec::ToWire(fbb, caps));
  return codec::Seal(fbb, reg);
}

std::string Heartbeat(const SimWorker& w) {
  flatbuffers::FlatBufferBuilder fbb(256);
  std::vector<std::string> caps{w.node % 2 ? "docker" : "gpu"};
  auto hb = wire::CreateWorkerHeartbeat(fbb, fbb.CreateString(w.id), fbb.CreateString(w.address), 1, 0,
                                        codec::ToWire(fbb, caps));
  return codec::Seal(fbb, hb);
}

void Publish(zmq::socket_t& pub, const std::string& topic, const std::string& payload) {
  pub.send(zmq::buffer(topic), zmq::send_flags::sndmore);
  pub.send(zmq::buffer(payload), zmq::send_flags::none);
}

void Send(zmq::socket_t& dealer, const std::string& to, const std::string& payload) {
  dealer.send(zmq::buffer(to), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
  dealer.send(zmq::buffer(payload), zmq::send_flags::dontwait);
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  bool tiny = Tiny(argc, argv);
  const int nodes = tiny ? 2 : 4;
  const int workers = tiny ? 20 : 1000;
  const int tasks = tiny ? 100 : 20000;
  rlimit limit{};
  getrlimit(RLIMIT_NOFILE, &limit);
  limit.rlim_cur = limit.rlim_max;
  setrlimit(RLIMIT_NOFILE, &limit);

  TempDir dir;
  std::string root = "tcp://127.0.0.1:" + std::to_string(fm::test::PickPortBase());
  auto root_broker = Process::Start({Bin("fm-broker"), "--bind", root});
  root_broker->WaitFor("broker on", 10000, 1, true);
  auto scheduler = Process::Start({Bin("fm-scheduler"), "--broker", root, "--data", dir.path(), "--liveness", "5s"});
  scheduler->WaitFor("scheduler on broker", 30000, 1, true);
  std::vector<std::string> node_urls;
  std::vector<std::unique_ptr<Process>> node_brokers;
  for (int n = 0; n < nodes; ++n) {
    node_urls.push_back("tcp://127.0.0.1:" + std::to_string(fm::test::PickPortBase()));
    node_brokers.push_back(Process::Start({Bin("fm-broker"), "--bind", node_urls.back(), "--upstream", root}));
    node_brokers.back()->WaitFor("upstream", 10000, 1, true);
  }

  zmq::context_t ctx(2);
  std::vector<zmq::socket_t> pubs;
  for (int n = 0; n < nodes; ++n) {
    pubs.emplace_back(ctx, zmq::socket_type::pub);
    pubs.back().set(zmq::sockopt::sndhwm, 0);
    pubs.back().connect(bus::ParseBrokerUrl(node_urls[n])->events_in);
  }
  std::vector<SimWorker> sims(workers);
  for (int i = 0; i < workers; ++i) {
    SimWorker& w = sims[i];
    w.node = i % nodes;
    w.id = "sim" + std::to_string(i);
    w.address = "w/" + w.id + "/1";
    w.dealer = std::make_unique<zmq::socket_t>(ctx, zmq::socket_type::dealer);
    w.dealer->set(zmq::sockopt::linger, 0);
    w.dealer->connect(node_urls[w.node]);
  }
  // Each simulated worker claims its address on its connection (as bus::Client does).
  auto hello_of = [](const SimWorker& w) {
    flatbuffers::FlatBufferBuilder fbb;
    return codec::Seal(fbb, wire::CreateBrokerHello(fbb, fbb.CreateString(w.address)));
  };

  // The client: submits through the root, counts results.
  bus::Client client(ctx, *bus::ParseBrokerUrl(root), bus::UniqueAddress("fanin"), false, false);
  auto count_live = [&]() -> size_t {
    flatbuffers::FlatBufferBuilder fbb;
    client.Send(bus::kSchedulerAddress,
                codec::Seal(fbb, wire::CreateControlRequest(fbb, wire::ControlOp::Workers, 0, 1)));
    double deadline = NowSeconds() + 5;
    while (NowSeconds() < deadline) {
      zmq::pollitem_t item{client.dealer().handle(), 0, ZMQ_POLLIN, 0};
      zmq::poll(&item, 1, std::chrono::milliseconds(100));
      while (auto msg = client.Receive()) {
        auto env = codec::Decode(msg->payload.data(), msg->payload.size());
        if (env.ok() && (*env)->body_type() == wire::Body::ControlReply) {
          size_t live = 0;
          for (const auto* v : *(*env)->body_as_ControlReply()->workers()) live += v->live();
          return live;
        }
      }
    }
    return 0;
  };

  std::vector<zmq::pollitem_t> items;
  for (auto& w : sims) items.push_back({w.dealer->handle(), 0, ZMQ_POLLIN, 0});
  uint64_t results = 0;
  // One pass of the simulated workers: answer what arrived.
  auto serve = [&](int timeout_ms) {
    zmq::poll(items.data(), items.size(), std::chrono::milliseconds(timeout_ms));
    for (size_t i = 0; i < items.size(); ++i) {
      if (!(items[i].revents & ZMQ_POLLIN)) continue;
      SimWorker& w = sims[i];
      for (;;) {
        zmq::message_t from, payload;
        if (!w.dealer->recv(from, zmq::recv_flags::dontwait)) break;
        if (!from.more() || !w.dealer->recv(payload, zmq::recv_flags::dontwait)) continue;
        auto env = codec::Decode(payload.data(), payload.size());
        if (!env.ok()) continue;
        if ((*env)->body_type() == wire::Body::ReRegister) Publish(pubs[w.node], "fleet.register", Registration(w));
        if ((*env)->body_type() != wire::Body::Dispatch) continue;
        for (const auto* a : *(*env)->body_as_Dispatch()->assignments()) {
          flatbuffers::FlatBufferBuilder fbb(128);
          auto ref = wire::CreateTaskRef(fbb, a->task(), a->attempt());
          Send(*w.dealer, bus::kSchedulerAddress,
               codec::Seal(fbb,
                           wire::CreateTaskFinished(fbb, ref, fbb.CreateString(w.id), wire::Outcome::Succeeded, 0, 0)));
          ++results;
        }
      }
    }
  };
  double last_heartbeat = 0;
  auto heartbeats = [&] {
    if (NowSeconds() - last_heartbeat < 1.0) return;
    last_heartbeat = NowSeconds();
    for (auto& w : sims) {
      Send(*w.dealer, bus::kBrokerAddress, hello_of(w));
      Publish(pubs[w.node], "fleet.heartbeat", Heartbeat(w));
    }
  };

  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // connections up (slow joiners)
  double start = NowSeconds();
  for (auto& w : sims) {
    Send(*w.dealer, bus::kBrokerAddress, hello_of(w));
    Publish(pubs[w.node], "fleet.register", Registration(w));
  }
  size_t live = 0;
  for (int round = 0; round < 600 && (live = count_live()) < static_cast<size_t>(workers); ++round) {
    heartbeats();
    serve(20);
  }
  Report("fanin_registration_" + std::to_string(workers) + "_workers_s", NowSeconds() - start, "s");
  Report("fanin_registered", static_cast<double>(live), "workers");

  // Dispatch through the tree while heartbeats go on.
  flatbuffers::FlatBufferBuilder fbb(1 << 20);
  TaskSpec spec;
  spec.command = {"true"};
  std::vector<flatbuffers::Offset<wire::TaskSpec>> specs;
  for (int i = 0; i < 1000 && i < tasks; ++i) specs.push_back(codec::ToWire(fbb, spec));
  std::string batch = codec::Seal(fbb, wire::CreateSubmitRequest(fbb, fbb.CreateVector(specs), false, 9));
  double t0 = NowSeconds();
  for (int sent = 0; sent < tasks; sent += static_cast<int>(specs.size())) client.Send(bus::kSchedulerAddress, batch);
  while (results < static_cast<uint64_t>(tasks) && NowSeconds() - t0 < 120) {
    heartbeats();
    serve(5);
    while (client.Receive()) {
    }
  }
  Report("fanin_dispatch_tasks_per_s_" + std::to_string(workers) + "_workers", results / (NowSeconds() - t0),
         "tasks/s");
  // Heartbeats through the tree keep every worker live for a few more liveness windows.
  double hold = NowSeconds();
  while (NowSeconds() - hold < (tiny ? 0.5 : 6.0)) {
    heartbeats();
    serve(20);
  }
  Report("fanin_live_after_heartbeats", static_cast<double>(count_live()), "workers");
  return 0;
}
