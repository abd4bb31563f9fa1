// fm-test-v1-worker --broker URL --id ID
// A worker as the first published schema wrote it: its registration and heartbeats have
// no capabilities field. It completes every task it receives at once and prints
// "received tN" for each, so a test can see what it was given.
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <string>

#include "compat/fm_v1_generated.h"
#include "runtime/bus.h"
#include "schemas/codec.h"

namespace {
volatile std::sig_atomic_t g_stop = 0;

std::string Bytes(flatbuffers::FlatBufferBuilder& fbb) {
  return std::string(reinterpret_cast<const char*>(fbb.GetBufferPointer()), fbb.GetSize());
}
}  // namespace

int main(int argc, char** argv) {
  std::string broker = fm::bus::DefaultBrokerUrl(), id = "v1";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i];
    if (flag == "--broker") broker = argv[i + 1];
    if (flag == "--id") id = argv[i + 1];
  }
  auto endpoints = fm::bus::ParseBrokerUrl(broker);
  if (!endpoints.ok()) {
    std::fprintf(stderr, "%s\n", endpoints.status().message().c_str());
    return 2;
  }
  std::signal(SIGTERM, [](int) { g_stop = 1; });
  std::signal(SIGINT, [](int) { g_stop = 1; });
  zmq::context_t context(1);
  const std::string address = "w/" + id + "/1";
  fm::bus::Client client(context, *endpoints, address, true, true);
  client.Subscribe("scheduler.started");

  auto registration = [&] {
    flatbuffers::FlatBufferBuilder fbb;
    auto hw = fm::v1::CreateHardware(fbb, 2000, 1ull << 30);
    auto reg = fm::v1::CreateWorkerRegistrationDirect(fbb, id.c_str(), address.c_str(), "old-node", 1, "0.0.1", 4, hw);
    fbb.Finish(fm::v1::CreateEnvelope(fbb, fm::v1::Body::WorkerRegistration, reg.Union()));
    client.Publish("fleet.register", Bytes(fbb));
  };
  auto heartbeat = [&] {
    flatbuffers::FlatBufferBuilder fbb;
    auto hb = fm::v1::CreateWorkerHeartbeatDirect(fbb, id.c_str(), address.c_str(), 1);
    fbb.Finish(fm::v1::CreateEnvelope(fbb, fm::v1::Body::WorkerHeartbeat, hb.Union()));
    client.Publish("fleet.heartbeat", Bytes(fbb));
  };
  registration();
  auto next_heartbeat = std::chrono::steady_clock::now();
  while (!g_stop) {
    if (std::chrono::steady_clock::now() >= next_heartbeat) {
      heartbeat();
      next_heartbeat = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
    }
    zmq::pollitem_t items[] = {{client.dealer().handle(), 0, ZMQ_POLLIN, 0}, {client.sub().handle(), 0, ZMQ_POLLIN, 0}};
    try {
      zmq::poll(items, 2, std::chrono::milliseconds(100));
    } catch (const zmq::error_t&) {
      continue;
    }
    while (auto event = client.ReceiveEvent()) registration();
    while (auto msg = client.Receive()) {
      auto env = fm::codec::Decode(msg->payload.data(), msg->payload.size());
      if (!env.ok()) continue;
      if ((*env)->body_type() == fm::wire::Body::ReRegister) registration();
      if ((*env)->body_type() != fm::wire::Body::Dispatch) continue;
      for (const auto* a : *(*env)->body_as_Dispatch()->assignments()) {
        std::printf("received t%llu\n", static_cast<unsigned long long>(a->task()));
        std::fflush(stdout);
        flatbuffers::FlatBufferBuilder fbb;
        auto ref = fm::wire::CreateTaskRef(fbb, a->task(), a->attempt());
        client.Send(fm::bus::kSchedulerAddress,
                    fm::codec::Seal(fbb, fm::wire::CreateTaskFinished(fbb, ref, fbb.CreateString(id),
                                                                      fm::wire::Outcome::Succeeded, 0, 0)));
      }
    }
  }
  return 0;
}
