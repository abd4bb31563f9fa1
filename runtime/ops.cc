#include "runtime/ops.h"

#include <prometheus/collectable.h>
#include <prometheus/exposer.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace fm::ops {

prometheus::MetricFamily& Sheet::Family(const std::string& name, const std::string& help, prometheus::MetricType type) {
  auto [it, added] = index_.try_emplace(name, families_.size());
  if (added) families_.push_back(prometheus::MetricFamily{"fm_" + name, help, type, {}});
  return families_[it->second];
}

static prometheus::ClientMetric Sample(const Labels& labels) {
  prometheus::ClientMetric m;
  for (const auto& [k, v] : labels) m.label.push_back({k, v});
  return m;
}

void Sheet::Counter(const std::string& name, const std::string& help, double value, const Labels& labels) {
  auto m = Sample(labels);
  m.counter.value = value;
  Family(name, help, prometheus::MetricType::Counter).metric.push_back(std::move(m));
}

void Sheet::Gauge(const std::string& name, const std::string& help, double value, const Labels& labels) {
  auto m = Sample(labels);
  m.gauge.value = value;
  Family(name, help, prometheus::MetricType::Gauge).metric.push_back(std::move(m));
}

void Sheet::Histogram(const std::string& name, const std::string& help,
                      const std::vector<std::pair<double, uint64_t>>& buckets, uint64_t count, double sum) {
  prometheus::ClientMetric m;
  for (const auto& [bound, n] : buckets) m.histogram.bucket.push_back({n, bound});
  m.histogram.bucket.push_back({count, std::numeric_limits<double>::infinity()});
  m.histogram.sample_count = count;
  m.histogram.sample_sum = sum;
  Family(name, help, prometheus::MetricType::Histogram).metric.push_back(std::move(m));
}

std::vector<prometheus::MetricFamily> Sheet::Take() {
  index_.clear();
  return std::move(families_);
}

LatencyHistogram::LatencyHistogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void LatencyHistogram::Observe(double value) {
  size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  ++counts_[i];
  ++count_;
  sum_ += value;
}

void LatencyHistogram::Write(Sheet& sheet, const std::string& name, const std::string& help) const {
  std::vector<std::pair<double, uint64_t>> buckets;
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    buckets.emplace_back(bounds_[i], cumulative);
  }
  sheet.Histogram(name, help, buckets, count_, sum_);
}

class MetricsServer::Endpoint : public prometheus::Collectable {
 public:
  explicit Endpoint(MetricsServer* server) : server_(server) {}
  std::vector<prometheus::MetricFamily> Collect() const override { return server_->Scrape(); }

 private:
  MetricsServer* server_;
};

MetricsServer::MetricsServer(bus::Loop& loop, Collect collect) : collect_(std::move(collect)) {
  async_ = new uv_async_t;
  uv_async_init(loop.uv(), async_, [](uv_async_t* h) { static_cast<MetricsServer*>(h->data)->Serve(); });
  async_->data = this;
  uv_unref(reinterpret_cast<uv_handle_t*>(async_));
  // A scrape waits for the loop: a loop busy with input answers between rounds.
  loop.EachRound([self = self_] {
    if (*self) (*self)->Serve();
  });
}

Status CheckListen(const std::string& listen) {
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == listen.size() || listen.size() - colon > 6 ||
      listen.find_first_not_of("0123456789", colon + 1) != std::string::npos ||
      std::stoul(listen.substr(colon + 1)) > 65535) {
    return Status::Invalid("--metrics-listen \"" + listen + "\": use HOST:PORT, e.g. 127.0.0.1:9102");
  }
  return Status::Ok();
}

Result<std::unique_ptr<MetricsServer>> MetricsServer::Start(bus::Loop& loop, const std::string& listen,
                                                            Collect collect) {
  if (Status s = CheckListen(listen); !s.ok()) return s;
  std::unique_ptr<MetricsServer> server(new MetricsServer(loop, std::move(collect)));
  try {
    server->exposer_ = std::make_unique<prometheus::Exposer>(
        std::vector<std::string>{"listening_ports", listen, "num_threads", "2", "request_timeout_ms", "5000"});
  } catch (const std::exception& e) {
    return Status::Unavailable("--metrics-listen " + listen + ": cannot listen (" + e.what() + ")");
  }
  auto ports = server->exposer_->GetListeningPorts();
  if (ports.empty()) return Status::Unavailable("--metrics-listen " + listen + ": cannot listen");
  server->port_ = ports.front();
  server->endpoint_ = std::make_shared<Endpoint>(server.get());
  server->exposer_->RegisterCollectable(server->endpoint_);
  return server;
}

Result<std::unique_ptr<MetricsServer>> MetricsServer::Serve(bus::Loop& loop, const std::string& listen,
                                                            Collect collect) {
  if (listen.empty()) return std::unique_ptr<MetricsServer>();
  auto server = Start(loop, listen, std::move(collect));
  if (server.ok()) {
    spdlog::info("metrics on http://{}:{}/metrics", listen.substr(0, listen.rfind(':')), (*server)->port());
  }
  return server;
}

MetricsServer::~MetricsServer() {
  *self_ = nullptr;
  {
    std::lock_guard lock(mu_);
    closing_ = true;
  }
  cv_.notify_all();
  exposer_.reset();  // joins the HTTP threads; none waits on the loop any more
  uv_close(reinterpret_cast<uv_handle_t*>(async_), [](uv_handle_t* h) { delete reinterpret_cast<uv_async_t*>(h); });
}

std::vector<prometheus::MetricFamily> MetricsServer::Scrape() {
  std::unique_lock lock(mu_);
  if (closing_) return {};
  uint64_t mine = ++asked_;
  waiting_.store(true, std::memory_order_release);
  uv_async_send(async_);
  cv_.wait_for(lock, std::chrono::seconds(2), [&] { return closing_ || answered_ >= mine; });
  if (answered_ < mine) return {};  // the loop did not answer in time: an empty scrape
  return answer_;
}

void MetricsServer::Serve() {
  // Called after every round of a busy loop: no lock unless a scrape waits.
  if (!waiting_.exchange(false, std::memory_order_acq_rel)) return;
  uint64_t asked;
  {
    std::lock_guard lock(mu_);
    asked = asked_;
    if (answered_ >= asked) return;
  }
  Sheet sheet;
  collect_(sheet);
  {
    std::lock_guard lock(mu_);
    answer_ = sheet.Take();
    answered_ = asked;
  }
  cv_.notify_all();
}

int CheckConfig(const std::string& name, const std::string& metrics_listen, const Status& own) {
  Status s = metrics_listen.empty() ? own : CheckListen(metrics_listen);
  if (s.ok()) s = own;
  if (!s.ok()) {
    spdlog::error("{}", s.message());
    return 2;
  }
  std::printf("%s: configuration OK\n", name.c_str());
  return 0;
}

int RunDaemon(bus::Loop& loop, const std::string& metrics_listen, MetricsServer::Collect collect,
              const std::string& status) {
  auto metrics = MetricsServer::Serve(loop, metrics_listen, std::move(collect));
  if (!metrics.ok()) {
    spdlog::error("{}", metrics.status().message());
    return metrics.status().code() == Status::Code::kInvalid ? 2 : 1;
  }
  Systemd systemd(loop);
  systemd.Ready(status);
  loop.StopOnSignals([&systemd](int signum) {
    systemd.Stopping();
    spdlog::info("signal {}: stopping", signum);
  });
  loop.Run();
  metrics->reset();  // on the loop's thread, before the loop goes
  return 0;
}

void Systemd::Ready(const std::string& status) {
  sd_notifyf(0, "READY=1\nSTATUS=%s", status.c_str());
  uint64_t usec = 0;
  if (!watchdog_ && sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
    watchdog_ = true;
    // From the loop: a loop that stops turning stops the pings, and systemd restarts it.
    // A timer when idle, and after each round when input never lets it go idle.
    const uint64_t every_ms = std::max<uint64_t>(usec / 2000, 1);
    auto ping = [this, every_ms] {
      uint64_t now = uv_now(loop_.uv());
      if (now - last_ping_ms_ < every_ms / 2) return;
      last_ping_ms_ = now;
      sd_notify(0, "WATCHDOG=1");
    };
    loop_.Background(every_ms, ping);
    loop_.EachRound([this, ping] {
      uv_update_time(loop_.uv());
      ping();
    });
  }
}

void Systemd::Status(const std::string& status) { sd_notifyf(0, "STATUS=%s", status.c_str()); }

void Systemd::Stopping() { sd_notify(0, "STOPPING=1"); }

bool ParseLogFormat(const std::string& name, LogFormat* format) {
  if (name == "text") {
    *format = LogFormat::kText;
  } else if (name == "json") {
    *format = LogFormat::kJson;
  } else if (name == "journal") {
    *format = LogFormat::kJournal;
  } else if (name == "auto") {
    // systemd sets $JOURNAL_STREAM to "DEV:INODE" of the stream it connected.
    *format = LogFormat::kText;
    const char* stream = std::getenv("JOURNAL_STREAM");
    struct stat st {};
    if (stream != nullptr && fstat(2, &st) == 0) {
      std::string mine = std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
      if (mine == stream) *format = LogFormat::kJournal;
    }
  } else {
    return false;
  }
  return true;
}

// The token after `word` at a word boundary, made of `allowed` characters.
static std::string TokenAfter(const std::string& message, const std::string& word, const char* allowed) {
  for (size_t at = message.find(word); at != std::string::npos; at = message.find(word, at + 1)) {
    if (at > 0 && std::isalnum(static_cast<unsigned char>(message[at - 1]))) continue;
    size_t begin = at + word.size();
    size_t end = message.find_first_not_of(allowed, begin);
    if (end == std::string::npos) end = message.size();
    // Not a trailing sentence dot or colon.
    while (end > begin && (message[end - 1] == '.' || message[end - 1] == ':')) --end;
    if (end > begin) return message.substr(begin, std::min<size_t>(end - begin, 128));
  }
  return "";
}

LogFields FieldsOf(const std::string& message) {
  LogFields f;
  // Tasks are named t42 (and "task 42" in places).
  f.task = TokenAfter(message, "task t", "0123456789");
  if (f.task.empty()) f.task = TokenAfter(message, "task ", "0123456789");
  const char* id_chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:@-";
  // A quoted id, or a bare word that looks like one (a digit or a separator in it), so
  // that "every worker gets" names no worker "gets".
  f.worker = TokenAfter(message, "worker \"", id_chars);
  if (f.worker.empty()) {
    std::string bare = TokenAfter(message, "worker ", id_chars);
    if (bare.find_first_of("0123456789._:@-") != std::string::npos) f.worker = bare;
  }
  return f;
}

}  // namespace fm::ops
