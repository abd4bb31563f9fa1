#include "scheduler/daemon.h"

#include <chrono>
#include <filesystem>

namespace fm::sched {
namespace {
constexpr size_t kBudget = 4096;
}

SchedulerDaemon::SchedulerDaemon(zmq::context_t& context, SchedulerOptions options)
    : options_(std::move(options)), context_(context) {
  if (!options_.logger) options_.logger = spdlog::default_logger();
}

Status SchedulerDaemon::Open() {
  auto endpoints = bus::ParseBrokerUrl(options_.broker);
  if (!endpoints.ok()) return endpoints.status();
  std::error_code ec;
  std::filesystem::create_directories(options_.data_dir, ec);
  if (ec) return Status::Io("cannot create data directory " + options_.data_dir + ": " + ec.message());
  auto store = store::OpenRocksStore(options_.data_dir + "/store", options_.store);
  if (!store.ok()) return store.status();
  store_ = std::move(*store);
  auto started = std::chrono::steady_clock::now();
  core_ = std::make_unique<SchedulerCore>(options_.engine, store_.get(), options_.logger);
  if (Status s = core_->Open(bus::WallClockMs()); !s.ok()) return s;
  options_.logger->info(
      "recovered {} tasks not ended ({} pending) from {} in {} ms", core_->engine().active_count(),
      core_->engine().pending_count(), options_.data_dir,
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started).count());
  client_ = std::make_unique<bus::Client>(context_, *endpoints, bus::kSchedulerAddress, true, true);
  client_->Subscribe("fleet.");
  return Status::Ok();
}

void SchedulerDaemon::Attach(bus::Loop& loop) {
  loop.Watch(client_->dealer(), [this] { return DrainDirected(); });
  loop.Watch(client_->sub(), [this] { return DrainBus(); });
  loop.Every(options_.tick_ms, [this] {
    // Heartbeats that queued up while a long turn ran are taken first: liveness is
    // judged on what arrived, not on what was read so far.
    while (DrainBus() > 0) {
    }
    core_->Tick(bus::WallClockMs());
  });
  loop.OnTurnEnd([this] { TurnEnd(); });
  client_->Hello();
  loop.Every(1000, [this] { client_->Hello(); });
  loop.MarkWork();  // the first turn sends scheduler.started
  options_.logger->info("scheduler on broker {}, data {}", options_.broker, options_.data_dir);
}

size_t SchedulerDaemon::DrainDirected() {
  size_t n = 0;
  uint64_t now = bus::WallClockMs();
  while (n < kBudget) {
    auto msg = client_->Receive();
    if (!msg) break;
    ++n;
    core_->OnDirected(msg->from, msg->payload.data(), msg->payload.size(), now);
  }
  return n;
}

size_t SchedulerDaemon::DrainBus() {
  size_t n = 0;
  uint64_t now = bus::WallClockMs();
  while (n < kBudget) {
    auto event = client_->ReceiveEvent();
    if (!event) break;
    ++n;
    core_->OnBus(event->payload.data(), event->payload.size(), now);
  }
  return n;
}

void SchedulerDaemon::TurnEnd() {
  Outbox out = core_->EndTurn(bus::WallClockMs());
  for (auto& d : out.directed) {
    if (!client_->Send(d.to, d.payload)) {
      options_.logger->warn("could not queue a message to {} (high-water mark); it will be re-sent", d.to);
    }
  }
  for (auto& e : out.events) client_->Publish(e.topic, e.payload);
}

}  // namespace fm::sched
