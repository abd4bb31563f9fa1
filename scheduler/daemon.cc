#include "scheduler/daemon.h"

#include <chrono>
#include <filesystem>

#include "schemas/codec.h"

namespace fm::sched {
namespace {
constexpr size_t kBudget = 4096;
}

SchedulerDaemon::SchedulerDaemon(zmq::context_t& context, SchedulerOptions options)
    : options_(std::move(options)), context_(context), engine_(options_.engine) {
  if (!options_.logger) options_.logger = spdlog::default_logger();
}

Status SchedulerDaemon::Open() {
  auto endpoints = bus::ParseBrokerUrl(options_.broker);
  if (!endpoints.ok()) return endpoints.status();
  std::error_code ec;
  std::filesystem::create_directories(options_.data_dir, ec);
  if (ec) return Status::Io("cannot create data directory " + options_.data_dir + ": " + ec.message());
  auto store = store::OpenRocksStore(options_.data_dir + "/store");
  if (!store.ok()) return store.status();
  store_ = std::move(*store);
  auto started = std::chrono::steady_clock::now();
  if (Status s = engine_.Recover(store_.get(), bus::WallClockMs()); !s.ok()) return s;
  options_.logger->info(
      "recovered {} tasks not ended ({} pending) from {} in {} ms", engine_.active_count(), engine_.pending_count(),
      options_.data_dir,
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started).count());
  client_ = std::make_unique<bus::Client>(context_, *endpoints, bus::kSchedulerAddress, true, true);
  client_->Subscribe("fleet.");
  return Status::Ok();
}

void SchedulerDaemon::Attach(bus::Loop& loop) {
  loop_ = &loop;
  loop.Watch(client_->dealer(), [this] { return DrainDirected(); });
  loop.Watch(client_->sub(), [this] { return DrainBus(); });
  loop.Every(options_.tick_ms, [this] {
    // Heartbeats that queued up while a long turn ran are taken first: liveness is
    // judged on what arrived, not on what was read so far.
    while (DrainBus() > 0) {
    }
    engine_.Tick(bus::WallClockMs());
  });
  loop.OnTurnEnd([this] { TurnEnd(); });
  engine_.Start(bus::WallClockMs());
  loop.MarkWork();
  options_.logger->info("scheduler on broker {}, data {}", options_.broker, options_.data_dir);
}

size_t SchedulerDaemon::DrainDirected() {
  size_t n = 0;
  uint64_t now = bus::WallClockMs();
  while (n < kBudget) {
    auto msg = client_->Receive();
    if (!msg) break;
    ++n;
    auto envelope = codec::Decode(msg->payload.data(), msg->payload.size());
    if (!envelope.ok()) {
      options_.logger->warn("rejected message from {}: {}", msg->from, envelope.status().message());
      if (msg->from != bus::kBrokerAddress) {
        client_->Send(msg->from, codec::EncodeError("malformed", envelope.status().message()));
      }
      continue;
    }
    if ((*envelope)->body_type() == wire::Body::Error) {
      const auto* error = (*envelope)->body_as_Error();
      options_.logger->debug("error from {}: {} {} ({})", msg->from, codec::Str(error->code()),
                             codec::Str(error->message()), codec::Str(error->about()));
      continue;
    }
    engine_.OnDirected(msg->from, **envelope, now);
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
    auto envelope = codec::Decode(event->payload.data(), event->payload.size());
    if (!envelope.ok()) {
      options_.logger->warn("rejected bus message on {}: {}", event->topic, envelope.status().message());
      continue;
    }
    engine_.OnBus(**envelope, now);
  }
  return n;
}

void SchedulerDaemon::TurnEnd() {
  if (failed_) return;
  engine_.FinishTurn(bus::WallClockMs());
  Effects& effects = engine_.effects();
  if (effects.empty()) return;
  if (!effects.writes.empty()) {
    Status s = store_->Write(effects.writes, /*sync=*/true);
    if (!s.ok()) {
      // Nothing derived from this turn leaves the process: a restart recovers from what
      // was committed, and submitters retry what was never acknowledged.
      options_.logger->critical("storage failure, stopping without sending this turn's {} messages: {}",
                                effects.directed.size(), s.message());
      failed_ = true;
      effects.Clear();
      if (loop_) loop_->Stop();
      return;
    }
  }
  for (auto& d : effects.directed) {
    if (!client_->Send(d.to, d.payload)) {
      options_.logger->warn("could not queue a message to {} (high-water mark); it will be re-sent", d.to);
    }
  }
  for (auto& e : effects.events) client_->Publish(e.topic, e.payload);
  effects.Clear();
}

}  // namespace fm::sched
