// fm-scheduler's shell around the engine: sockets, the store, the clock. Each loop turn
// it feeds the engine what arrived, commits the turn's writes as one synced WriteBatch,
// and only then sends the replies, dispatches and events derived from them.
#pragma once

#include <spdlog/spdlog.h>

#include <memory>
#include <string>
#include <zmq.hpp>

#include "broker/bus.h"
#include "broker/loop.h"
#include "scheduler/core.h"
#include "store/store.h"

namespace fm::sched {

struct SchedulerOptions {
  std::string broker = bus::DefaultBrokerUrl();
  std::string data_dir = "fm-data";
  uint64_t tick_ms = 100;
  EngineOptions engine;
  store::RocksOptions store;
  std::shared_ptr<spdlog::logger> logger;
};

class SchedulerDaemon {
 public:
  SchedulerDaemon(zmq::context_t& context, SchedulerOptions options);
  // Opens the store under data_dir, recovers, connects. Error names what failed.
  Status Open();
  // REQUIRES: Open() succeeded.
  void Attach(bus::Loop& loop);

 private:
  size_t DrainDirected();
  size_t DrainBus();
  void TurnEnd();

  SchedulerOptions options_;
  zmq::context_t& context_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<bus::Client> client_;
  std::unique_ptr<SchedulerCore> core_;
};

}  // namespace fm::sched
