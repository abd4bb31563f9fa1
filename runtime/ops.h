// What every fm daemon offers an operator besides its work: Prometheus metrics, the
// systemd notify protocol (readiness, watchdog, stopping) and the log formats
// (text, json, journald with priorities and fields).
//
// Thread: MetricsServer's HTTP threads (prometheus-cpp's civetweb) never touch a
// daemon's state; a scrape asks the loop thread to fill a Sheet and waits for it (at
// most 2 s). Everything else runs on the loop thread.
#pragma once

#include <prometheus/metric_family.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "runtime/loop.h"
#include "schemas/status.h"

namespace prometheus {
class Exposer;
}

namespace fm::ops {

using Labels = std::vector<std::pair<std::string, std::string>>;

// The metrics of one scrape, built on the loop thread. Names get the "fm_" prefix
// from the caller; a family is declared by its first sample.
class Sheet {
 public:
  void Counter(const std::string& name, const std::string& help, double value, const Labels& labels = {});
  void Gauge(const std::string& name, const std::string& help, double value, const Labels& labels = {});
  // `buckets`: upper bounds ascending with the count of samples at most each bound
  // (cumulative); `count` and `sum` over every sample.
  void Histogram(const std::string& name, const std::string& help,
                 const std::vector<std::pair<double, uint64_t>>& buckets, uint64_t count, double sum);
  std::vector<prometheus::MetricFamily> Take();

 private:
  prometheus::MetricFamily& Family(const std::string& name, const std::string& help, prometheus::MetricType type);
  std::vector<prometheus::MetricFamily> families_;
  std::map<std::string, size_t> index_;
};

// A latency histogram kept by the loop thread: fixed bounds in seconds.
class LatencyHistogram {
 public:
  explicit LatencyHistogram(std::vector<double> bounds);
  void Observe(double value);
  void Write(Sheet& sheet, const std::string& name, const std::string& help) const;

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bucket (not cumulative), +Inf last
  uint64_t count_ = 0;
  double sum_ = 0;
};

// Serves GET /metrics in the Prometheus text format. `collect` runs on the loop
// thread at each scrape. Destroy it on the loop thread before the loop ends.
class MetricsServer {
 public:
  using Collect = std::function<void(Sheet&)>;
  // `listen`: HOST:PORT (port 0: any free one). Error: a bad address or a port in use.
  static Result<std::unique_ptr<MetricsServer>> Start(bus::Loop& loop, const std::string& listen, Collect collect);
  // Start, and say where it serves in the log; an empty `listen` serves nothing (null).
  static Result<std::unique_ptr<MetricsServer>> Serve(bus::Loop& loop, const std::string& listen, Collect collect);
  ~MetricsServer();
  // The port it listens on (the one chosen, for port 0).
  int port() const { return port_; }

 private:
  class Endpoint;
  MetricsServer(bus::Loop& loop, Collect collect);
  // On a civetweb thread: asks the loop for a sheet and waits for it.
  std::vector<prometheus::MetricFamily> Scrape();
  void Serve();  // on the loop thread

  Collect collect_;
  uv_async_t* async_ = nullptr;  // freed by its close callback
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t asked_ = 0, answered_ = 0;             // guarded by mu_
  std::vector<prometheus::MetricFamily> answer_;  // guarded by mu_
  bool closing_ = false;                          // guarded by mu_
  std::atomic<bool> waiting_{false};              // a scrape asked since the last Serve
  // The loop's round hook reaches the server through this; null once destroyed.
  std::shared_ptr<MetricsServer*> self_ = std::make_shared<MetricsServer*>(this);
  std::shared_ptr<Endpoint> endpoint_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

// HOST:PORT as --metrics-listen takes it. Error names the flag.
Status CheckListen(const std::string& listen);

// --check-config: `own` is the daemon's check of its options and files; --metrics-listen
// is checked too. Says "NAME: configuration OK" and returns 0, or logs the error and
// returns 2.
int CheckConfig(const std::string& name, const std::string& metrics_listen, const Status& own);

// The end of every daemon's main: serves metrics when `metrics_listen` is set, tells
// systemd READY=1 with `status`, runs `loop` until SIGINT or SIGTERM (STOPPING=1).
// Returns 0, or the exit status when the metrics cannot be served (2: a bad address).
int RunDaemon(bus::Loop& loop, const std::string& metrics_listen, MetricsServer::Collect collect,
              const std::string& status);

// The systemd notify protocol ($NOTIFY_SOCKET); does nothing when not under systemd.
// Ready() says READY=1 and, when the unit has WatchdogSec=, pings the watchdog from a
// loop timer at half the interval, so a loop that stops turning is restarted.
class Systemd {
 public:
  explicit Systemd(bus::Loop& loop) : loop_(loop) {}
  void Ready(const std::string& status);
  void Status(const std::string& status);
  void Stopping();

 private:
  bus::Loop& loop_;
  bool watchdog_ = false;
  uint64_t last_ping_ms_ = 0;
};

enum class LogFormat { kText, kJson, kJournal };
// "text", "json", "journal" or "auto" (journal when stderr is the journal: systemd's
// $JOURNAL_STREAM names it; text otherwise). False for another name.
bool ParseLogFormat(const std::string& name, LogFormat* format);

// The log fields of a message, for journald and json: FM_TASK from "task N" and
// FM_WORKER from "worker ID" where a message names them.
struct LogFields {
  std::string task, worker;
};
LogFields FieldsOf(const std::string& message);

}  // namespace fm::ops
