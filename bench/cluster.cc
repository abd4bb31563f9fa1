// End-to-end figures through the real processes with durable state (fm-broker,
// fm-scheduler with RocksDB, fm-worker --noop-executor), with this program as the
// client speaking the real protocol:
//  - dispatch throughput, submit -> terminal, for 1, 4 and 16 workers;
//  - latency at fixed offered loads (open loop): submit -> queued / started / terminal;
//  - fail-fast latency: submit -> rejection with no_eligible_worker;
//  - a registration storm of 10k simulated workers, and the scheduler's peak RSS then;
//  - recovery: scheduler start with 100k and 1M tasks in the store, and its peak RSS;
//  - a backlog far above the fleet's slots on a mixed fleet where only one class can run
//    it: dispatch rate (against the no-backlog figure of the same run), the backlog's
//    peak, and how busy the scheduler is when nothing can be placed;
//  - task output (part "output"): four tasks printing 1 GiB each through a real worker,
//    against plain pipes in the same run, and the scheduler's memory meanwhile;
//  - a million waiting tasks (part "million"): intake through fm-submit, the scheduler's
//    memory, and how soon it answers after kill -9;
//  - fm-submit --wait end to end on 4 workers (part "wait"), with the CPU per task of
//    each process;
//  - a leader on etcd (part "takeover"): kill -9 or SIGTERM and a restart on its data
//    directory, until a submission is answered;
//  - the cost of CURVE: dispatch throughput and the one-task round trip on a cluster
//    with certificates on every link against the same cluster keyless, alternating
//    in the same run (part "curve").
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <thread>
#include <unordered_map>

#include "bench_util.h"
#include "harness.h"
#include "runtime/bus.h"
#include "runtime/policy.h"
#include "scheduler/engine.h"
#include "schemas/codec.h"
#include "schemas/vocabulary.h"
#include "store/store.h"

using namespace fm;
using namespace fm::bench;
using fm::test::Bin;
using fm::test::Process;
using fm::test::TempDir;

namespace {

uint64_t PeakRssKiB(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string key;
  while (in >> key) {
    if (key == "VmHWM:") {
      uint64_t kib = 0;
      in >> kib;
      return kib;
    }
    std::string rest;
    std::getline(in, rest);
  }
  return 0;
}

// CPU seconds (user + system) from a /proc/.../stat file: a process's, all its threads,
// or one thread's.
double StatCpuSeconds(const std::string& path) {
  std::ifstream in(path);
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t close = stat.rfind(')');  // the command name may hold spaces
  if (close == std::string::npos) return 0;
  std::istringstream fields(stat.substr(close + 2));
  std::string skip;
  for (int i = 3; i < 14; ++i) fields >> skip;  // fields 3..13
  double utime = 0, stime = 0;
  fields >> utime >> stime;
  return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double CpuSeconds(pid_t pid) { return StatCpuSeconds("/proc/" + std::to_string(pid) + "/stat"); }

// CPU seconds per thread of a process, by thread name (the loop thread carries the
// process's name; ZeroMQ's, RocksDB's and the commit thread have their own).
std::map<std::string, double> ThreadCpuSeconds(pid_t pid) {
  std::map<std::string, double> out;
  std::string dir = "/proc/" + std::to_string(pid) + "/task";
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    std::ifstream comm(entry.path() / "comm");
    std::string name;
    std::getline(comm, name);
    out[name + "#" + entry.path().filename().string()] = StatCpuSeconds(entry.path() / "stat");
  }
  return out;
}

// CPU seconds the whole machine has spent busy (not idle, not waiting for I/O).
double MachineBusySeconds() {
  std::ifstream in("/proc/stat");
  std::string cpu;
  double user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0;
  in >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal;
  return (user + nice + system + irq + softirq + steal) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

std::string SubmitBytes(int tasks, uint64_t correlation, bool watch, const char* requires_cap = nullptr,
                        Labels labels = {}) {
  flatbuffers::FlatBufferBuilder fbb(256 + 128 * tasks);
  std::vector<flatbuffers::Offset<wire::TaskSpec>> specs;
  TaskSpec s;
  s.command = {"true"};
  if (requires_cap) s.required_capabilities = {requires_cap};
  s.labels = std::move(labels);
  for (int i = 0; i < tasks; ++i) specs.push_back(codec::ToWire(fbb, s));
  return codec::Seal(fbb, wire::CreateSubmitRequest(fbb, fbb.CreateVector(specs), watch, correlation));
}

// A running cluster and a client on it; with `secure`, every process has a certificate
// and every link is CURVE (this client is an operator).
class Bench {
 public:
  Bench(int workers, std::vector<std::string> scheduler_args = {}, bool secure = false) {
    broker_ = "tcp://127.0.0.1:" + std::to_string(fm::test::PickPortBase());
    std::vector<std::string> broker_argv{Bin("fm-broker"), "--bind", broker_};
    auto with_cert = [&](std::vector<std::string> argv, const std::string& name, const std::string& role) {
      if (!secure) return argv;
      for (auto& f : keys_->Flags(name, role)) argv.push_back(f);
      return argv;
    };
    if (secure) {
      keys_ = std::make_unique<fm::test::Keys>(dir_.path() + "/keys");
      keys_->Make("broker", "broker");
      keys_->Make("scheduler", "scheduler");
      keys_->Make("bench", "operator");
      for (int i = 0; i < workers; ++i) keys_->Make("w" + std::to_string(i), "worker");
      for (const std::string& f :
           {std::string("--cert"), keys_->Secret("broker"), std::string("--trust"), keys_->dir()})
        broker_argv.push_back(f);
    }
    broker_proc_ = Process::Start(broker_argv);
    broker_proc_->WaitFor("broker on", 10000, 1, true);
    std::vector<std::string> argv{Bin("fm-scheduler"), "--broker", broker_, "--data", dir_.path() + "/data"};
    argv.insert(argv.end(), scheduler_args.begin(), scheduler_args.end());
    scheduler_argv_ = with_cert(argv, "scheduler", "scheduler");
    scheduler_ = Process::Start(scheduler_argv_);
    scheduler_->WaitFor("scheduler on broker", 60000, 1, true);
    for (int i = 0; i < workers; ++i) {
      std::string id = "w" + std::to_string(i);
      workers_.push_back(Process::Start(with_cert(
          {Bin("fm-worker"), "--broker", broker_, "--id", id, "--noop-executor", "--slots", "256"}, id, "worker")));
    }
    bus::Security security;
    std::string address = bus::UniqueAddress("bench");
    if (secure) {
      security = *bus::LoadSecurity(keys_->Secret("bench"), keys_->Public("broker"), "operator");
      address = bus::UniqueAddress(bus::AddressPrefix(bus::Role::kOperator, "bench") + "bench");
    }
    client_ = std::make_unique<bus::Client>(context_, *bus::ParseBrokerUrl(broker_), address, true, true, security);
    client_->Subscribe("task.");
    WaitForWorkers(workers);
  }

  bus::Client& client() { return *client_; }
  Process& scheduler() { return *scheduler_; }
  // kill -9 of the scheduler, and a new one on the same data directory (started, not
  // waited for).
  Process& CrashScheduler() { return RestartScheduler(SIGKILL); }
  // The scheduler ended by `signum` (waited for), and a new one on the same data
  // directory (started, not waited for).
  Process& RestartScheduler(int signum) {
    scheduler_->Signal(signum);
    scheduler_->Wait(30000);
    scheduler_ = Process::Start(scheduler_argv_);
    return *scheduler_;
  }
  // Starts one more noop worker (or one that runs its tasks) with these extra arguments.
  Process& AddWorker(const std::string& id, std::vector<std::string> args, bool noop = true) {
    std::vector<std::string> argv{Bin("fm-worker"), "--broker", broker_, "--id", id};
    if (noop) argv.push_back("--noop-executor");
    argv.insert(argv.end(), args.begin(), args.end());
    workers_.push_back(Process::Start(argv));
    return *workers_.back();
  }
  Process& broker_process() { return *broker_proc_; }
  std::string data_dir() const { return dir_.path() + "/data"; }
  double WorkersCpuSeconds() {
    double sum = 0;
    for (auto& w : workers_) sum += CpuSeconds(w->pid());
    return sum;
  }
  const std::string& broker() const { return broker_; }

  // Live workers as the scheduler sees them (and their ids into `ids`, when given).
  size_t CountWorkers(std::set<std::string>* ids = nullptr) {
    size_t live = 0;
    Control(wire::ControlOp::Workers, [&](const wire::ControlReply& r) {
      for (const auto* w : *r.workers()) {
        live += w->live();
        if (ids != nullptr && w->live() && w->id() != nullptr) ids->insert(w->id()->str());
      }
    });
    return live;
  }

  // The workers the scheduler knows, from its ping's answer ("...: N workers, ..."): a
  // few bytes, where the list of 10,000 workers is megabytes built for each asking.
  size_t PingWorkers() {
    size_t known = 0;
    Control(wire::ControlOp::Ping, [&](const wire::ControlReply& r) {
      const std::string m = r.message() ? r.message()->str() : "";
      const size_t colon = m.find(": ");
      if (colon != std::string::npos) known = std::strtoull(m.c_str() + colon + 2, nullptr, 10);
    });
    return known;
  }

  void WaitForWorkers(size_t n) {
    double deadline = NowSeconds() + 60;  // bounded
    while (CountWorkers() < n && NowSeconds() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }

 private:
  // One control request, its reply handed to `take` (nothing when none came in 10 s).
  void Control(wire::ControlOp op, const std::function<void(const wire::ControlReply&)>& take) {
    flatbuffers::FlatBufferBuilder fbb;
    const uint64_t correlation = ++correlation_;
    client_->Send(bus::kSchedulerAddress, codec::Seal(fbb, wire::CreateControlRequest(fbb, op, 0, correlation)));
    double deadline = NowSeconds() + 10;
    while (NowSeconds() < deadline) {
      zmq::pollitem_t item{client_->dealer().handle(), 0, ZMQ_POLLIN, 0};
      zmq::poll(&item, 1, std::chrono::milliseconds(100));
      while (auto msg = client_->Receive()) {
        auto env = codec::Decode(msg->payload.data(), msg->payload.size());
        if (env.ok() && (*env)->body_type() == wire::Body::ControlReply &&
            (*env)->body_as_ControlReply()->correlation() == correlation) {
          take(*(*env)->body_as_ControlReply());
          return;
        }
      }
    }
  }

  uint64_t correlation_ = 1000;
  TempDir dir_;
  std::unique_ptr<fm::test::Keys> keys_;
  std::string broker_;
  std::unique_ptr<Process> broker_proc_, scheduler_;
  std::vector<std::string> scheduler_argv_;
  std::vector<std::unique_ptr<Process>> workers_;
  zmq::context_t context_{1};
  std::unique_ptr<bus::Client> client_;
};

// Pipes `tasks` tasks (with `labels`) to the scheduler in batches of 1000, `window`
// batches awaiting their reply at a time, watching each to its end; stops after
// `limit_s` at the latest. Returns how many ended and the seconds it took; `progress`
// sees (accepted, ended) after every read.
struct Piped {
  int ended = 0;
  double seconds = 0;
};
Piped PipeTasks(Bench& b, int tasks, int window, const Labels& labels, double limit_s,
                const std::function<void(int, int)>& progress = {}) {
  const int batch = 1000;
  int sent = 0, accepted = 0, ended = 0;
  uint64_t correlation = 0;
  std::map<uint64_t, int> outstanding;
  double start = NowSeconds();
  while (ended < tasks && NowSeconds() - start < limit_s) {  // bounded: never waits forever
    while (sent < tasks && static_cast<int>(outstanding.size()) < window) {
      int n = std::min(batch, tasks - sent);
      b.client().Send(bus::kSchedulerAddress, SubmitBytes(n, ++correlation, true, nullptr, labels));
      outstanding[correlation] = n;
      sent += n;
    }
    zmq::pollitem_t item{b.client().dealer().handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, std::chrono::milliseconds(1000));
    while (auto msg = b.client().Receive()) {
      auto env = codec::Decode(msg->payload.data(), msg->payload.size());
      if (!env.ok()) continue;
      if ((*env)->body_type() == wire::Body::SubmitReply) {
        auto it = outstanding.find((*env)->body_as_SubmitReply()->correlation());
        if (it != outstanding.end()) {
          accepted += it->second;
          outstanding.erase(it);
        }
      } else if ((*env)->body_type() == wire::Body::TaskEnded) {
        const auto* results = (*env)->body_as_TaskEnded()->results();
        ended += results ? static_cast<int>(results->size()) : 1;
      }
    }
    if (progress) progress(accepted, ended);
  }
  return {ended, NowSeconds() - start};
}

void Throughput(int workers, int tasks) {
  Bench b(workers);
  double scheduler_cpu = CpuSeconds(b.scheduler().pid()), broker_cpu = CpuSeconds(b.broker_process().pid());
  double machine_busy = MachineBusySeconds();
  auto threads = ThreadCpuSeconds(b.scheduler().pid());
  double workers_cpu = b.WorkersCpuSeconds(), client_cpu = CpuSeconds(getpid());
  Piped piped = PipeTasks(b, tasks, /*window=*/20, {}, 120);
  const int ended = piped.ended;
  const double elapsed = piped.seconds;
  std::string w = std::to_string(workers);
  Report("dispatch_tasks_per_s_" + w + "_workers", ended / elapsed, "tasks/s");
  // Where the time goes: CPU per task in the scheduler (all its threads: the loop,
  // ZeroMQ's I/O thread, RocksDB's flushes) and the broker, and the share of the run
  // the scheduler was on a CPU (1.0 = one core busy all the time).
  if (ended > 0) {
    double s_cpu = CpuSeconds(b.scheduler().pid()) - scheduler_cpu;
    double b_cpu = CpuSeconds(b.broker_process().pid()) - broker_cpu;
    Report("dispatch_scheduler_cpu_us_per_task_" + w + "_workers", s_cpu * 1e6 / ended, "us");
    Report("dispatch_broker_cpu_us_per_task_" + w + "_workers", b_cpu * 1e6 / ended, "us");
    Report("dispatch_scheduler_cores_busy_" + w + "_workers", s_cpu / elapsed, "cores");
    Report("dispatch_machine_cores_busy_" + w + "_workers", (MachineBusySeconds() - machine_busy) / elapsed, "cores");
    std::printf("  workers: %.2f cores, this client: %.2f cores\n", (b.WorkersCpuSeconds() - workers_cpu) / elapsed,
                (CpuSeconds(getpid()) - client_cpu) / elapsed);
    for (const auto& [name, after] : ThreadCpuSeconds(b.scheduler().pid())) {
      double used = (after - threads[name]) / elapsed;
      if (used >= 0.01) std::printf("  scheduler thread %s: %.2f cores\n", name.c_str(), used);
    }
  }
}

void OpenLoop(int rate, double seconds) {
  Bench b(4);
  std::unordered_map<uint64_t, double> batch_sent;  // correlation -> time
  std::unordered_map<std::string, double> task_sent;
  std::vector<double> queued, started, terminal;
  int per_ms = std::max(1, rate / 1000);
  double start = NowSeconds();
  double next = start;
  uint64_t correlation = 0;
  int expected = 0, done = 0;
  double stop_sending = start + seconds;
  while (NowSeconds() < stop_sending || done < expected) {
    double now = NowSeconds();
    if (now > stop_sending + 30) break;  // bounded: never wait forever
    while (now >= next && next < stop_sending) {
      b.client().Send(bus::kSchedulerAddress, SubmitBytes(per_ms, ++correlation, false));
      batch_sent[correlation] = NowSeconds();
      expected += per_ms;
      next += 0.001;
    }
    zmq::pollitem_t items[] = {{b.client().dealer().handle(), 0, ZMQ_POLLIN, 0},
                               {b.client().sub().handle(), 0, ZMQ_POLLIN, 0}};
    zmq::poll(items, 2, std::chrono::milliseconds(1));
    while (auto msg = b.client().Receive()) {
      auto env = codec::Decode(msg->payload.data(), msg->payload.size());
      if (!env.ok() || (*env)->body_type() != wire::Body::SubmitReply) continue;
      const auto* reply = (*env)->body_as_SubmitReply();
      double sent_at = batch_sent[reply->correlation()];
      for (const auto* r : *reply->results()) task_sent[TaskName(r->task())] = sent_at;
    }
    while (auto event = b.client().ReceiveEvent()) {
      double t = NowSeconds();
      auto env = codec::Decode(event->payload.data(), event->payload.size());
      if (!env.ok()) continue;
      codec::ForEachEvent(**env, {}, [&](const wire::Event& e, std::string_view) {
        if (!e.task()) return true;
        auto it = task_sent.find(e.task()->str());
        if (it == task_sent.end()) return true;
        double ms = (t - it->second) * 1000;
        const wire::EventType type = ParseEventType(codec::Str(e.type()));
        if (type == wire::EventType::TaskQueued) queued.push_back(ms);
        if (type == wire::EventType::TaskStarted) started.push_back(ms);
        if (type == wire::EventType::TaskSucceeded) {
          terminal.push_back(ms);
          ++done;
        }
        return true;
      });
    }
  }
  std::string r = std::to_string(rate);
  for (auto [name, values] :
       {std::pair{"queued", &queued}, std::pair{"started", &started}, std::pair{"terminal", &terminal}}) {
    if (values->empty()) continue;
    Report("latency_" + r + "_per_s_submit_to_" + name + "_p50_ms", Percentile(*values, 50), "ms");
    Report("latency_" + r + "_per_s_submit_to_" + name + "_p99_ms", Percentile(*values, 99), "ms");
    Report("latency_" + r + "_per_s_submit_to_" + name + "_p999_ms", Percentile(*values, 99.9), "ms");
  }
  Report("latency_" + r + "_per_s_completed", static_cast<double>(done), "tasks");
}

void FailFast(int samples) {
  Bench b(2);
  std::vector<double> us;
  for (int i = 0; i < samples; ++i) {
    double t = NowSeconds();
    b.client().Send(bus::kSchedulerAddress, SubmitBytes(1, i + 1, false, "no-such-capability"));
    while (NowSeconds() - t < 10) {  // bounded
      zmq::pollitem_t item{b.client().dealer().handle(), 0, ZMQ_POLLIN, 0};
      zmq::poll(&item, 1, std::chrono::milliseconds(1000));
      auto msg = b.client().Receive();
      if (!msg) continue;
      auto env = codec::Decode(msg->payload.data(), msg->payload.size());
      if (env.ok() && (*env)->body_type() == wire::Body::SubmitReply) break;
    }
    us.push_back((NowSeconds() - t) * 1e6);
  }
  Report("fail_fast_p50_ms", Percentile(us, 50) / 1000, "ms");
  Report("fail_fast_p99_ms", Percentile(us, 99) / 1000, "ms");
}

void RegistrationStorm(int workers) {
  Bench b(0, {"--liveness", "120s"});
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the PUB's connection (slow joiner)
  // Every simulated worker announces itself at once, as a fleet does when its scheduler
  // comes back. Events past the queues' bound are dropped (they are soft state), so, as
  // real workers do on their next heartbeat, those the scheduler does not list yet announce
  // themselves again: the figures are for the whole fleet registered, whatever the speed
  // of the scheduler that takes it in (rounds bounded).
  auto announce = [&](int i) {
    flatbuffers::FlatBufferBuilder fbb(512);
    std::string id = "sim" + std::to_string(i);
    Hardware hw{4000, 8ull << 30, {}};
    std::vector<std::string> caps{i % 2 ? "docker" : "gpu"};
    auto reg = wire::CreateWorkerRegistration(fbb, fbb.CreateString(id), fbb.CreateString("w/" + id + "/1"),
                                              fbb.CreateString("sim"), 1, fbb.CreateString("bench"), 4,
                                              codec::ToWire(fbb, hw), 0, 0, codec::ToWire(fbb, caps));
    b.client().Publish("fleet.register", codec::Seal(fbb, reg));
  };
  double start = NowSeconds();
  std::set<std::string> registered;
  size_t seen = 0;
  int rounds = 0;
  for (; rounds < 50 && seen < static_cast<size_t>(workers); ++rounds) {
    for (int i = 0; i < workers; ++i) {
      if (registered.count("sim" + std::to_string(i)) == 0) announce(i);
    }
    // Until the scheduler's count stops growing (what was dropped will not come); then
    // which ones it has.
    size_t before = 0;
    for (int tries = 0; tries < 100; ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      seen = b.PingWorkers();
      if (seen >= static_cast<size_t>(workers) || (tries > 0 && seen == before)) break;
      before = seen;
    }
    if (seen < static_cast<size_t>(workers)) {
      registered.clear();
      seen = b.CountWorkers(&registered);
    }
  }
  double elapsed = NowSeconds() - start;
  Report("registration_storm_" + std::to_string(workers) + "_workers_s", elapsed, "s");
  Report("registration_storm_registered", static_cast<double>(seen), "workers");
  Report("registration_storm_rounds", rounds, "rounds");
  Report("scheduler_peak_rss_" + std::to_string(workers) + "_workers_mib", PeakRssKiB(b.scheduler().pid()) / 1024.0,
         "MiB");
}

// Fills a store with `tasks` pending tasks through the engine itself, then times how long
// fm-scheduler takes to start on it.
void Recovery(int tasks) {
  TempDir dir;
  {
    auto store = store::OpenRocksStore(dir.path() + "/store");
    sched::Engine engine({});
    (void)engine.Recover(store->get(), 1000);
    flatbuffers::FlatBufferBuilder fbb;
    Hardware hw{4000, 8ull << 30, {}};
    auto reg =
        wire::CreateWorkerRegistration(fbb, fbb.CreateString("only"), fbb.CreateString("w/only/1"),
                                       fbb.CreateString("n"), 1, fbb.CreateString("bench"), 1, codec::ToWire(fbb, hw));
    std::string bytes = codec::Seal(fbb, reg);
    engine.OnBus(*wire::GetEnvelope(bytes.data()), 1000);
    for (int done = 0; done < tasks; done += 10000) {
      std::string req = SubmitBytes(std::min(10000, tasks - done), 1, false);
      engine.OnDirected("bench", *wire::GetEnvelope(req.data()), 1000);
      engine.FinishTurn(1000);
      (void)(*store)->Write(engine.effects().writes, false);
      engine.effects().Clear();
    }
  }
  std::string broker = "tcp://127.0.0.1:" + std::to_string(fm::test::PickPortBase());
  double start = NowSeconds();
  auto scheduler = Process::Start({Bin("fm-scheduler"), "--broker", broker, "--data", dir.path()});
  scheduler->WaitFor("scheduler on broker", 600000, 1, true);
  double elapsed = NowSeconds() - start;
  std::string n = tasks >= 1000000 ? std::to_string(tasks / 1000000) + "M" : std::to_string(tasks / 1000) + "k";
  Report("recovery_start_s_" + n + "_tasks", elapsed, "s");
  Report("scheduler_peak_rss_" + n + "_tasks_mib", PeakRssKiB(scheduler->pid()) / 1024.0, "MiB");
}

void Backlog(int tasks) {
  // Class a (one noop worker, 256 slots) can run every task; class b idles. The liveness
  // window is long so that the stopped worker of the second part stays in the fleet.
  Bench b(0, {"--liveness", "600s"});
  Process& runner = b.AddWorker("a1", {"--slots", "256", "--label", "pool=a"});
  b.AddWorker("b1", {"--slots", "256", "--label", "pool=b"});
  b.WaitForWorkers(2);
  const Labels only_a{{"pool", "a"}};
  int64_t peak_backlog = 0;
  const double s_cpu = CpuSeconds(b.scheduler().pid());
  auto threads = ThreadCpuSeconds(b.scheduler().pid());
  // 100 batches awaiting replies: far more submitted than dispatched, a backlog.
  Piped piped = PipeTasks(b, tasks, /*window=*/100, only_a, 300, [&](int accepted, int ended) {
    peak_backlog = std::max<int64_t>(peak_backlog, accepted - ended);
  });
  const int ended = piped.ended;
  const double elapsed = piped.seconds;
  Report("backlog_dispatch_tasks_per_s", ended / elapsed, "tasks/s");
  Report("backlog_peak_waiting_tasks", static_cast<double>(peak_backlog), "tasks");
  if (ended > 0) {
    Report("backlog_scheduler_cpu_us_per_task", (CpuSeconds(b.scheduler().pid()) - s_cpu) * 1e6 / ended, "us");
    for (const auto& [name, after] : ThreadCpuSeconds(b.scheduler().pid())) {
      double used = (after - threads[name]) / elapsed;
      if (used >= 0.01) std::printf("  scheduler thread %s: %.2f cores\n", name.c_str(), used);
    }
  }

  // Nothing can be placed: class a's only worker is stopped with its slots full, the
  // rest waits; the scheduler should idle, however long the backlog.
  runner.Signal(SIGSTOP);
  const int batch = 1000, waiting = std::max(tasks / 10, 1000);
  uint64_t correlation = 1'000'000;
  int replies = 0;
  for (int i = 0; i < waiting; i += batch) {
    b.client().Send(bus::kSchedulerAddress,
                    SubmitBytes(std::min(batch, waiting - i), ++correlation, false, nullptr, only_a));
  }
  for (double t = NowSeconds(); replies * batch < waiting && NowSeconds() - t < 60;) {
    zmq::pollitem_t item{b.client().dealer().handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, std::chrono::milliseconds(1000));
    while (auto msg = b.client().Receive()) {
      auto env = codec::Decode(msg->payload.data(), msg->payload.size());
      if (env.ok() && (*env)->body_type() == wire::Body::SubmitReply) ++replies;
    }
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the last turns settle
  double cpu = CpuSeconds(b.scheduler().pid()), t0 = NowSeconds();
  std::this_thread::sleep_for(std::chrono::seconds(3));  // measured: nothing to do
  Report("backlog_idle_scheduler_cores", (CpuSeconds(b.scheduler().pid()) - cpu) / (NowSeconds() - t0), "cores");
  runner.Signal(SIGCONT);
}

// Waits up to `limit_s` for a directed message of body type `type` (with `correlation`
// when non-zero) on the bench client; false on timeout. Other messages are dropped.
bool AwaitReply(Bench& b, wire::Body type, uint64_t correlation, double limit_s) {
  for (double start = NowSeconds(); NowSeconds() - start < limit_s;) {
    zmq::pollitem_t item{b.client().dealer().handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, std::chrono::milliseconds(10));
    while (auto msg = b.client().Receive()) {
      auto env = codec::Decode(msg->payload.data(), msg->payload.size());
      if (!env.ok() || (*env)->body_type() != type) continue;
      if (correlation == 0) return true;
      if (type == wire::Body::ControlReply && (*env)->body_as_ControlReply()->correlation() == correlation) return true;
      if (type == wire::Body::SubmitReply && (*env)->body_as_SubmitReply()->correlation() == correlation) return true;
    }
  }
  return false;
}

// A million waiting tasks as a user makes them: one worker whose one slot is taken (it
// is stopped once registered, so the first task stays queued there and the rest wait),
// `tasks` no-op tasks piped through one fm-submit without --wait, then kill -9 of the
// scheduler and a start on the same data directory. Reports the durable intake rate
// (fm-submit exits once every batch is answered, each answered after its commit), the
// scheduler's peak RSS while taking them in, and after the restart: the seconds from its
// exec to its first answer to a ping, to an answered submission, to the first dispatch
// (the worker let go again), and to the whole backlog read; its peak RSS then.
void Million(int tasks) {
  Bench b(0, {"--liveness", "600s"});
  Process& runner = b.AddWorker("a1", {"--slots", "1"});
  b.WaitForWorkers(1);
  runner.Signal(SIGSTOP);
  TempDir dir;
  const std::string input = dir.path() + "/tasks.jsonl", output = dir.path() + "/submitted.jsonl";
  {
    std::ofstream out(input);
    for (int i = 0; i < tasks; ++i) out << "{\"command\": [\"true\"]}\n";
  }
  double start = NowSeconds();
  auto submit = Process::Start(
      {"/bin/sh", "-c", "exec " + Bin("fm-submit") + " --broker " + b.broker() + " < " + input + " > " + output});
  const int code = submit->Wait(1800 * 1000);
  const double intake_s = NowSeconds() - start;
  size_t accepted = 0;
  {
    std::ifstream in(output);
    for (std::string line; std::getline(in, line);) accepted += line.find("\"accepted\"") != std::string::npos;
  }
  std::printf("  fm-submit exit %d, %zu of %d accepted in %.1f s\n", code, accepted, tasks, intake_s);
  Report("million_intake_tasks_per_s", accepted / intake_s, "tasks/s");
  Report("million_intake_scheduler_peak_rss_mib", PeakRssKiB(b.scheduler().pid()) / 1024.0, "MiB");
  Report("million_waiting_scheduler_rss_mib", fm::test::ResidentBytes(b.scheduler().pid()) / 1048576.0, "MiB");

  const double restart = NowSeconds();
  Process& scheduler = b.CrashScheduler();
  uint64_t correlation = 5'000'000;
  bool pinged = false;
  while (!pinged && NowSeconds() - restart < 120) {
    flatbuffers::FlatBufferBuilder fbb;
    b.client().Send(bus::kSchedulerAddress,
                    codec::Seal(fbb, wire::CreateControlRequest(fbb, wire::ControlOp::Ping, 0, ++correlation)));
    pinged = AwaitReply(b, wire::Body::ControlReply, 0, 0.05);
  }
  Report("million_restart_ping_s", NowSeconds() - restart, "s");
  b.client().Send(bus::kSchedulerAddress, SubmitBytes(1, ++correlation, false));
  AwaitReply(b, wire::Body::SubmitReply, correlation, 120);
  Report("million_restart_submit_s", NowSeconds() - restart, "s");
  // The worker goes on: it runs the task it holds, and the next from the backlog is
  // dispatched to it (its second start event).
  while (b.client().ReceiveEvent()) {
  }
  runner.Signal(SIGCONT);
  int started = 0;
  while (started < 2 && NowSeconds() - restart < 120) {
    zmq::pollitem_t item{b.client().sub().handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, std::chrono::milliseconds(10));
    while (auto event = b.client().ReceiveEvent()) {
      auto env = codec::Decode(event->payload.data(), event->payload.size());
      if (!env.ok()) continue;
      codec::ForEachEvent(**env, {}, [&](const wire::Event& e, std::string_view) {
        started += codec::Str(e.type()) == "task.started";
        return true;
      });
    }
  }
  Report("million_restart_dispatch_s", NowSeconds() - restart, "s");
  // The backlog is read when a ping no longer says that more is being read. (A scheduler
  // from before the backlog left memory read everything before it answered at all.)
  for (bool reading = true; reading && NowSeconds() - restart < 600;) {
    flatbuffers::FlatBufferBuilder fbb;
    b.client().Send(bus::kSchedulerAddress,
                    codec::Seal(fbb, wire::CreateControlRequest(fbb, wire::ControlOp::Ping, 0, ++correlation)));
    for (double asked = NowSeconds(); NowSeconds() - asked < 5;) {
      zmq::pollitem_t item{b.client().dealer().handle(), 0, ZMQ_POLLIN, 0};
      zmq::poll(&item, 1, std::chrono::milliseconds(10));
      auto msg = b.client().Receive();
      if (!msg) continue;
      auto env = codec::Decode(msg->payload.data(), msg->payload.size());
      if (!env.ok() || (*env)->body_type() != wire::Body::ControlReply ||
          (*env)->body_as_ControlReply()->correlation() != correlation) {
        continue;
      }
      reading = codec::Str((*env)->body_as_ControlReply()->message()).find("being read") != std::string::npos;
      break;
    }
  }
  Report("million_restart_backlog_read_s", NowSeconds() - restart, "s");
  Report("million_restart_scheduler_peak_rss_mib", PeakRssKiB(scheduler.pid()) / 1024.0, "MiB");
}

// `fm-submit --wait` end to end as a user runs it: `tasks` no-op tasks piped through
// one fm-submit --wait on `workers` noop workers of 256 slots; the rate from its start
// to its exit (every task ended and said), and the CPU per task of each process (the
// client's is what the machine spent besides the daemons).
void SubmitWait(int workers, int tasks) {
  Bench b(workers);
  TempDir dir;
  const std::string input = dir.path() + "/tasks.jsonl", output = dir.path() + "/ended.jsonl";
  {
    std::ofstream out(input);
    for (int i = 0; i < tasks; ++i) out << "{\"command\": [\"true\"]}\n";
  }
  const double s_cpu = CpuSeconds(b.scheduler().pid()), b_cpu = CpuSeconds(b.broker_process().pid());
  const double w_cpu = b.WorkersCpuSeconds(), busy = MachineBusySeconds();
  const double start = NowSeconds();
  auto submit =
      Process::Start({"/bin/sh", "-c",
                      "exec " + Bin("fm-submit") + " --wait --broker " + b.broker() + " < " + input + " > " + output});
  const int code = submit->Wait(600 * 1000);
  const double elapsed = NowSeconds() - start;
  const double scheduler = CpuSeconds(b.scheduler().pid()) - s_cpu,
               broker = CpuSeconds(b.broker_process().pid()) - b_cpu;
  const double worker = b.WorkersCpuSeconds() - w_cpu, machine = MachineBusySeconds() - busy;
  size_t succeeded = 0;
  {
    std::ifstream in(output);
    for (std::string line; std::getline(in, line);) succeeded += line.find("\"succeeded\"") != std::string::npos;
  }
  std::printf("  fm-submit --wait exit %d, %zu of %d succeeded in %.2f s\n", code, succeeded, tasks, elapsed);
  const std::string w = std::to_string(workers);
  Report("submit_wait_tasks_per_s_" + w + "_workers", succeeded / elapsed, "tasks/s");
  if (succeeded == 0) return;
  Report("submit_wait_scheduler_cpu_us_per_task", scheduler * 1e6 / succeeded, "us");
  Report("submit_wait_broker_cpu_us_per_task", broker * 1e6 / succeeded, "us");
  Report("submit_wait_workers_cpu_us_per_task", worker * 1e6 / succeeded, "us");
  Report("submit_wait_client_cpu_us_per_task", std::max(0.0, machine - scheduler - broker - worker) * 1e6 / succeeded,
         "us");
  Report("submit_wait_machine_cores_busy", machine / elapsed, "cores");
}

// The price of CURVE: the same cluster with and without certificates, alternating so
// that the machine's noise falls on both alike. Dispatch throughput (4 workers) and the
// round trip of one task (submit -> TaskEnded, closed loop), medians of the rounds.
void CurveCost(int tasks, int samples, int rounds) {
  std::map<bool, std::vector<double>> rate, round_trip;
  for (int round = 0; round < rounds; ++round) {
    for (bool secure : {false, true}) {
      Bench b(4, {}, secure);
      double s_cpu = CpuSeconds(b.scheduler().pid()), b_cpu = CpuSeconds(b.broker_process().pid());
      double w_cpu = b.WorkersCpuSeconds(), c_cpu = CpuSeconds(getpid());
      Piped piped = PipeTasks(b, tasks, /*window=*/20, {}, 120);
      rate[secure].push_back(piped.ended / piped.seconds);
      if (piped.ended > 0) {
        auto per_task = [&](double before, double after) { return (after - before) * 1e6 / piped.ended; };
        std::printf("  cpu us/task: scheduler %.1f, broker %.1f, workers %.1f, client %.1f\n",
                    per_task(s_cpu, CpuSeconds(b.scheduler().pid())),
                    per_task(b_cpu, CpuSeconds(b.broker_process().pid())), per_task(w_cpu, b.WorkersCpuSeconds()),
                    per_task(c_cpu, CpuSeconds(getpid())));
      }
      std::vector<double> ms;
      for (int i = 0; i < samples; ++i) {
        double t = NowSeconds();
        b.client().Send(bus::kSchedulerAddress, SubmitBytes(1, 1000000 + i, true));
        bool ended = false;
        while (!ended && NowSeconds() - t < 10) {  // bounded
          zmq::pollitem_t item{b.client().dealer().handle(), 0, ZMQ_POLLIN, 0};
          zmq::poll(&item, 1, std::chrono::milliseconds(1000));
          while (auto msg = b.client().Receive()) {
            auto env = codec::Decode(msg->payload.data(), msg->payload.size());
            ended |= env.ok() && (*env)->body_type() == wire::Body::TaskEnded;
          }
        }
        ms.push_back((NowSeconds() - t) * 1000);
      }
      round_trip[secure].push_back(Percentile(ms, 50));
      std::printf("  round %d %s: %.0f tasks/s, round trip p50 %.2f ms\n", round + 1, secure ? "CURVE" : "plain",
                  rate[secure].back(), round_trip[secure].back());
    }
  }
  double plain = Percentile(rate[false], 50), curve = Percentile(rate[true], 50);
  Report("curve_off_dispatch_tasks_per_s_4_workers", plain, "tasks/s");
  Report("curve_on_dispatch_tasks_per_s_4_workers", curve, "tasks/s");
  Report("curve_dispatch_ratio_on_over_off", curve / plain, "x");
  double rt_plain = Percentile(round_trip[false], 50), rt_curve = Percentile(round_trip[true], 50);
  Report("curve_off_round_trip_p50_ms", rt_plain, "ms");
  Report("curve_on_round_trip_p50_ms", rt_curve, "ms");
  Report("curve_round_trip_ratio_on_over_off", rt_curve / rt_plain, "x");
}

// GET http://127.0.0.1:PORT/metrics; the body's size (0 on failure).
size_t Scrape(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr = fm::test::Loopback(port);
  size_t got = 0;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    const char req[] = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (write(fd, req, sizeof req - 1) == static_cast<ssize_t>(sizeof req - 1)) {
      char buf[65536];
      for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) got += static_cast<size_t>(n);
    }
  }
  close(fd);
  return got;
}

// The price of metrics: the same dispatch run with the scheduler's and workers'
// --metrics-listen scraped ten times a second, and without, alternating rounds.
void MetricsCost(int tasks, int rounds) {
  std::map<bool, std::vector<double>> rate;
  for (int round = 0; round < rounds; ++round) {
    for (bool metrics : {false, true}) {
      std::vector<std::string> args;
      if (metrics) args = {"--metrics-listen", "127.0.0.1:0"};
      Bench b(4, args);
      std::atomic<bool> done{false};
      std::atomic<int> scrapes{0};
      std::thread scraper;
      if (metrics) {
        if (!b.scheduler().WaitFor("metrics on http://", 10000, 1, true)) {
          std::fprintf(stderr, "the scheduler serves no metrics\n");
          std::exit(1);
        }
        std::string err = b.scheduler().Stderr();
        size_t at = err.find("metrics on http://127.0.0.1:");
        int port = std::atoi(err.c_str() + at + std::strlen("metrics on http://127.0.0.1:"));
        scraper = std::thread([&, port] {
          while (!done) {  // bounded by the run below
            if (Scrape(port) > 0) ++scrapes;
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
          }
        });
      }
      Piped piped = PipeTasks(b, tasks, /*window=*/20, {}, 120);
      done = true;
      if (scraper.joinable()) scraper.join();
      rate[metrics].push_back(piped.ended / piped.seconds);
      std::printf("  round %d metrics %s: %.0f tasks/s (%d scrapes)\n", round + 1, metrics ? "on" : "off",
                  rate[metrics].back(), scrapes.load());
    }
  }
  double off = Percentile(rate[false], 50), on = Percentile(rate[true], 50);
  Report("metrics_off_dispatch_tasks_per_s_4_workers", off, "tasks/s");
  Report("metrics_on_dispatch_tasks_per_s_4_workers", on, "tasks/s");
  Report("metrics_dispatch_ratio_on_over_off", on / off, "x");
}

// Task output: `tasks` tasks on one worker each writing `mib` MiB as fast as they can
// (with a --max-output that keeps it all), stored by the scheduler, from submission to
// the last end (an attempt's end is reported once its output is stored); against the
// same writers into a plain pipe in the same run, and the scheduler's peak RSS over its
// idle one.
void Output(int tasks, uint64_t mib) {
  const std::string writer = "yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c " + std::to_string(mib << 20);
  double start = NowSeconds();
  {
    std::vector<std::unique_ptr<Process>> raw;
    for (int i = 0; i < tasks; ++i) raw.push_back(Process::Start({"/bin/sh", "-c", writer + " | cat > /dev/null"}));
    for (auto& p : raw) p->Wait(600000);
  }
  const double raw_s = NowSeconds() - start;
  Bench b(0);
  std::vector<std::string> args{"--slots", std::to_string(tasks), "--max-output", std::to_string(2 * mib) + "MiB"};
  if (geteuid() == 0) args.insert(args.end(), {"--run-as", "root"});  // a bench machine's root: as the tests do
  b.AddWorker("out", args, false);
  b.WaitForWorkers(1);
  const uint64_t idle = fm::test::ResidentBytes(b.scheduler().pid());
  std::string lines;
  for (int i = 0; i < tasks; ++i) lines += R"({"command": ["sh", "-c", ")" + writer + "\"]}\n";
  start = NowSeconds();
  auto submit = Process::Start({Bin("fm-submit"), "--broker", b.broker(), "--wait"}, lines);
  const int code = submit->Wait(1800 * 1000);
  const double fm_s = NowSeconds() - start;
  if (code != 0) std::printf("  fm-submit: %s%s\n", submit->Stdout().c_str(), submit->Stderr().c_str());
  const double total_mib = static_cast<double>(tasks * mib);
  std::printf("  %d tasks x %llu MiB: fm-submit exit %d in %.1f s; raw pipes %.1f s\n", tasks,
              static_cast<unsigned long long>(mib), code, fm_s, raw_s);
  Report("output_mib_per_s_" + std::to_string(tasks) + "_tasks", total_mib / fm_s, "MiB/s");
  Report("output_raw_pipe_mib_per_s_" + std::to_string(tasks) + "_tasks", total_mib / raw_s, "MiB/s");
  Report("output_over_raw_pipe", raw_s / fm_s, "x");
  Report("output_scheduler_peak_rss_over_idle_mib",
         (PeakRssKiB(b.scheduler().pid()) * 1024.0 - static_cast<double>(idle)) / 1048576.0, "MiB");
}

uint64_t DirBytes(const std::string& dir) {
  uint64_t total = 0;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_regular_file(ec)) total += it->file_size(ec);
  }
  return total;
}

// The store over a long run: `tasks` tasks through one noop worker with the task
// retention at `keep`; the store's size on disk as the run goes. Bounded means the size
// stops growing once the retention is reached, however many tasks follow.
void StoreGrowth(int tasks, int keep) {
  Bench b(1, {"--task-retention", std::to_string(keep), "--event-retention", std::to_string(keep)});
  int next_mark = tasks / 10;
  std::vector<std::pair<int, uint64_t>> marks;
  Piped piped = PipeTasks(b, tasks, /*window=*/20, {}, 900, [&](int, int ended) {
    if (ended >= next_mark) {
      marks.emplace_back(ended, DirBytes(b.data_dir()));
      std::printf("  %d tasks ended: store %.1f MiB, scheduler rss %.0f MiB\n", ended, marks.back().second / 1048576.0,
                  fm::test::ResidentBytes(b.scheduler().pid()) / 1048576.0);
      next_mark += tasks / 10;
    }
  });
  Report("store_growth_tasks_ended", piped.ended, "tasks");
  Report("store_growth_dispatch_tasks_per_s", piped.ended / piped.seconds, "tasks/s");
  if (marks.size() >= 2) {
    Report("store_bytes_at_first_tenth", static_cast<double>(marks.front().second), "bytes");
    Report("store_bytes_at_end", static_cast<double>(marks.back().second), "bytes");
    Report("store_growth_end_over_first_tenth", static_cast<double>(marks.back().second) / marks.front().second, "x");
  }
  Report("store_growth_scheduler_rss", static_cast<double>(fm::test::ResidentBytes(b.scheduler().pid())), "bytes");
}

// Seconds from `start` until some scheduler answers a submission (one sent every 50 ms
// until one is answered; bounded to a minute).
double SecondsUntilAnswered(Bench& b, double start, uint64_t* correlation) {
  while (NowSeconds() - start < 60) {
    b.client().Send(bus::kSchedulerAddress, SubmitBytes(1, ++*correlation, false));
    if (AwaitReply(b, wire::Body::SubmitReply, *correlation, 0.05)) break;
  }
  return NowSeconds() - start;
}

// A leader elected through etcd (one member on loopback, --ha-lease 3s), stopped and
// started again at once on its data directory as systemd would: how long until a
// submission is answered. After kill -9 its old lease must run out first; after a clean
// stop (SIGTERM) the lease is revoked and the new process leads at once. (A standby of
// another store taking over: Failover.)
void Takeover(int rounds) {
  fm::test::Etcd etcd;
  Bench b(0, {"--etcd", etcd.url(), "--ha-node", "a", "--ha-lease", "3s"});
  uint64_t correlation = 7'000'000;
  auto answered = [&](double start) { return SecondsUntilAnswered(b, start, &correlation); };
  answered(NowSeconds());
  std::vector<double> killed, stopped;
  for (int i = 0; i < rounds; ++i) {
    double start = NowSeconds();
    b.CrashScheduler();
    killed.push_back(answered(start));
    start = NowSeconds();
    b.RestartScheduler(SIGTERM);
    stopped.push_back(answered(start));
  }
  Report("takeover_same_node_after_kill9_p50_s", Percentile(killed, 50), "s");
  Report("takeover_same_node_after_kill9_max_s", Percentile(killed, 100), "s");
  Report("takeover_same_node_after_sigterm_p50_s", Percentile(stopped, 50), "s");
  Report("takeover_same_node_after_sigterm_max_s", Percentile(stopped, 100), "s");
}

// Submissions answered one at a time (each waits for its batch to be durable): the round
// trip's median, in ms.
double RoundTripMs(Bench& b, int samples) {
  std::vector<double> ms;
  uint64_t correlation = 8'000'000;
  for (int i = 0; i < samples; ++i) {
    const double start = NowSeconds();
    b.client().Send(bus::kSchedulerAddress, SubmitBytes(1, ++correlation, false));
    if (AwaitReply(b, wire::Body::SubmitReply, correlation, 5)) ms.push_back((NowSeconds() - start) * 1000);
  }
  return ms.empty() ? 0 : Percentile(ms, 50);
}

std::vector<std::string> StandbyArgv(Bench& b, const std::string& etcd, const std::string& node,
                                     const std::string& data) {
  return {Bin("fm-scheduler"), "--broker", b.broker(),    "--data",           data, "--etcd", etcd,
          "--ha-node",         node,       "--ha-listen", "tcp://127.0.0.1:*"};
}

// What one in-sync standby costs: dispatch and the submission round trip of a lone
// scheduler, then of a leader on etcd whose every batch waits for its standby's ack
// (both on this machine: the standby's fsyncs share its disk and its 2 cores).
void Replicated(int workers, int tasks, int samples) {
  double lone_rate = 0, lone_rt = 0, ha_rate = 0, ha_rt = 0;
  {
    Bench b(workers);
    Piped piped = PipeTasks(b, tasks, /*window=*/20, {}, 120);
    lone_rate = piped.ended / piped.seconds;
    lone_rt = RoundTripMs(b, samples);
  }
  {
    fm::test::Etcd etcd;
    fm::test::TempDir standby_data;
    Bench b(workers, {"--etcd", etcd.url(), "--ha-node", "a", "--ha-listen", "tcp://127.0.0.1:*"});
    auto standby = Process::Start(StandbyArgv(b, etcd.url(), "b", standby_data.path()));
    if (!b.scheduler().WaitFor("standby b is in sync", 60000, 1, true)) {
      std::fprintf(stderr, "the standby never got in sync: %s\n", standby->Stderr().c_str());
      return;
    }
    Piped piped = PipeTasks(b, tasks, /*window=*/20, {}, 120);
    ha_rate = piped.ended / piped.seconds;
    ha_rt = RoundTripMs(b, samples);
    if (b.scheduler().Count("left the in-sync set", true) > 0) std::fprintf(stderr, "the standby fell out of sync\n");
    // The standby killed and started again: back in sync (a whole copy of the store that
    // the run above filled, then the batches since) while submissions go on.
    standby->Signal(SIGKILL);
    standby->Wait(10000);
    const double gone = NowSeconds();
    standby = Process::Start(StandbyArgv(b, etcd.url(), "b", standby_data.path()));
    uint64_t correlation = 8'500'000;
    while (NowSeconds() - gone < 120 && b.scheduler().Count("standby b is in sync", true) < 2) {
      b.client().Send(bus::kSchedulerAddress, SubmitBytes(10, ++correlation, false));
      AwaitReply(b, wire::Body::SubmitReply, correlation, 0.05);
    }
    Report("replicated_standby_back_in_sync_s", NowSeconds() - gone, "s");
    Report("replicated_store_mib", static_cast<double>(DirBytes(b.data_dir() + "/store")) / 1048576.0, "MiB");
  }
  Report("replicated_dispatch_tasks_per_s_lone", lone_rate, "tasks/s");
  Report("replicated_dispatch_tasks_per_s_with_standby", ha_rate, "tasks/s");
  Report("replicated_dispatch_ratio", lone_rate > 0 ? ha_rate / lone_rate : 0, "x");
  Report("replicated_submit_round_trip_p50_ms_lone", lone_rt, "ms");
  Report("replicated_submit_round_trip_p50_ms_with_standby", ha_rt, "ms");
}

// Failovers to an in-sync standby, `rounds` of each kind: the leader killed (-9), and the
// leader stopped (SIGSTOP) past its lease, then resumed (it must exit, fenced). The time
// from the fault to the first submission answered by the new leader; the old one is
// started again, follows, and is back in sync before the next round.
void Failover(int rounds) {
  fm::test::Etcd etcd;
  fm::test::TempDir b_data;
  Bench b(0, {"--etcd", etcd.url(), "--ha-node", "a", "--ha-listen", "tcp://127.0.0.1:*", "--ha-lease", "3s"});
  const std::vector<std::string> b_argv = StandbyArgv(b, etcd.url(), "b", b_data.path());
  auto other = Process::Start(b_argv);
  if (!b.scheduler().WaitFor("standby b is in sync", 60000, 1, true)) return;
  uint64_t correlation = 9'000'000;
  auto answered = [&](double start) { return SecondsUntilAnswered(b, start, &correlation); };
  std::vector<double> killed, stopped;
  bool a_leads = true;
  for (int i = 0; i < 2 * rounds; ++i) {
    const bool kill = i < rounds;
    Process& leader = a_leads ? b.scheduler() : *other;
    double start = NowSeconds();
    if (kill) {
      leader.Signal(SIGKILL);
    } else {
      leader.Signal(SIGSTOP);
    }
    const double took = answered(start);
    (kill ? killed : stopped).push_back(took);
    if (!kill) {
      leader.Signal(SIGCONT);  // it finds its lease gone and exits 3
      if (leader.Wait(20000) != 3) std::fprintf(stderr, "round %d: the stopped leader did not exit 3\n", i);
    }
    // The old leader comes back as the new one's standby.
    if (a_leads) {
      if (kill) b.scheduler().Wait(10000);
      b.RestartScheduler(SIGKILL);
      if (!other->WaitFor("standby a is in sync", 60000, 1, true)) break;  // (each new leader's first)
    } else {
      other->Wait(10000);
      other = Process::Start(b_argv);
      if (!b.scheduler().WaitFor("standby b is in sync", 60000, 1, true)) break;
    }
    a_leads = !a_leads;
  }
  for (auto [name, v] : {std::pair{"kill9", &killed}, std::pair{"sigstop", &stopped}}) {
    if (v->empty()) continue;
    Report(std::string("failover_after_") + name + "_p50_s", Percentile(*v, 50), "s");
    Report(std::string("failover_after_") + name + "_p99_s", Percentile(*v, 99), "s");
    Report(std::string("failover_after_") + name + "_max_s", Percentile(*v, 100), "s");
    Report(std::string("failover_after_") + name + "_rounds", static_cast<double>(v->size()), "rounds");
  }
}

// Failovers across hosts (HaHosts: network namespaces, a three-member etcd with a member
// on each scheduler's host and a third, CURVE; needs root), `rounds` of each kind: the
// leader's host cut off (its link down), etcd cut from the leader only (what it sends to
// port 2379 dropped), and etcd's quorum lost (the members on the standby's host and the
// third stopped) and back. The time until fm-ctl ping on the client host names the
// standby: from the fault, and for the quorum from its return (while it is gone nobody
// may lead); for the quorum also how long the leader took to stop. The old leader is
// started again and back in sync before the next round.
void FailoverHosts(int rounds) {
  if (geteuid() != 0) {
    std::fprintf(stderr, "failover-hosts: needs root (network namespaces); skipped\n");
    return;
  }
  fm::test::HaHosts ha;
  fm::test::Hosts& h = ha.hosts();
  if (!ha.Scheduler("a").WaitFor("leading fm as a (epoch", 20000, 1, true)) return;
  ha.Scheduler("b");
  if (!h.Get("a").WaitFor("standby b is in sync", 60000, 1, true)) return;
  std::string leader = "a", standby = "b";
  std::vector<double> cut, etcd_cut, quorum_back, quorum_stop;
  int unclean = 0;
  for (int i = 0; i < 3 * rounds; ++i) {
    const int kind = i / rounds;
    auto start = std::chrono::steady_clock::now();
    double took = -1;
    if (kind == 0) {
      h.Link(leader, false);
      took = ha.UntilLeads(standby, start);
      if (h.Get(leader).Wait(10000) != 3) ++unclean;
      h.Link(leader, true);
    } else if (kind == 1) {
      h.Block(leader, 2379, true);
      took = ha.UntilLeads(standby, start);
      if (h.Get(leader).Wait(10000) != 3) ++unclean;
      h.Block(leader, 2379, false);
    } else {
      const std::string third = "c";
      ha.etcd().member(standby).Signal(SIGSTOP);
      ha.etcd().member(third).Signal(SIGSTOP);
      if (h.Get(leader).Wait(10000) != 3) ++unclean;
      quorum_stop.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      if (!ha.Leader().empty()) ++unclean;  // nobody may lead without the quorum
      ha.etcd().member(standby).Signal(SIGCONT);
      ha.etcd().member(third).Signal(SIGCONT);
      took = ha.UntilLeads(standby, std::chrono::steady_clock::now());
    }
    if (took < 0) {
      std::fprintf(stderr, "round %d: %s did not lead\n", i, standby.c_str());
      break;
    }
    (kind == 0 ? cut : kind == 1 ? etcd_cut : quorum_back).push_back(took);
    std::fprintf(stderr, "round %d (%s): %s leads after %.2f s\n", i,
                 kind == 0   ? "host cut off"
                 : kind == 1 ? "etcd cut from the leader"
                             : "quorum back",
                 standby.c_str(), took);
    std::swap(leader, standby);
    ha.Scheduler(standby);  // the old leader, back as the new one's standby
    if (!h.Get(leader).WaitFor("standby " + standby + " is in sync", 60000, 1, true)) {
      std::fprintf(stderr, "round %d: %s did not get in sync\n", i, standby.c_str());
      break;
    }
  }
  for (auto [name, v] :
       {std::pair{"host_cut_off", &cut}, std::pair{"etcd_cut_from_leader", &etcd_cut},
        std::pair{"quorum_back", &quorum_back}, std::pair{"quorum_lost_leader_stopped", &quorum_stop}}) {
    if (v->empty()) continue;
    Report(std::string("failover_hosts_") + name + "_p50_s", Percentile(*v, 50), "s");
    Report(std::string("failover_hosts_") + name + "_p99_s", Percentile(*v, 99), "s");
    Report(std::string("failover_hosts_") + name + "_max_s", Percentile(*v, 100), "s");
    Report(std::string("failover_hosts_") + name + "_rounds", static_cast<double>(v->size()), "rounds");
  }
  Report("failover_hosts_unclean", unclean, "faults");
}

}  // namespace

// Sends `specs` in messages of 1000 (each answered before the next goes), the last
// correlation `*correlation`; false when one was not answered within a minute.
bool SubmitSpecs(Bench& b, const std::vector<TaskSpec>& specs, uint64_t* correlation) {
  for (size_t i = 0; i < specs.size(); i += 1000) {
    flatbuffers::FlatBufferBuilder fbb(1 << 16);
    std::vector<flatbuffers::Offset<wire::TaskSpec>> wire_specs;
    for (size_t j = i; j < std::min(specs.size(), i + 1000); ++j) wire_specs.push_back(codec::ToWire(fbb, specs[j]));
    b.client().Send(
        bus::kSchedulerAddress,
        codec::Seal(fbb, wire::CreateSubmitRequest(fbb, fbb.CreateVector(wire_specs), false, ++*correlation)));
    if (!AwaitReply(b, wire::Body::SubmitReply, *correlation, 60)) return false;
  }
  return true;
}

// Seconds from sending a control request to its reply (sent after the turn's commit);
// negative when none came within a minute.
double TimedControl(Bench& b, wire::ControlOp op, const char* target, const char* group, uint64_t correlation) {
  flatbuffers::FlatBufferBuilder fbb;
  const double start = NowSeconds();
  b.client().Send(bus::kSchedulerAddress,
                  codec::Seal(fbb, wire::CreateControlRequestDirect(fbb, op, target, correlation, 0, 0, nullptr,
                                                                    nullptr, nullptr, nullptr, group)));
  for (double waited = NowSeconds(); NowSeconds() - waited < 60;) {
    zmq::pollitem_t item{b.client().dealer().handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, std::chrono::milliseconds(10));
    while (auto msg = b.client().Receive()) {
      auto env = codec::Decode(msg->payload.data(), msg->payload.size());
      if (!env.ok() || (*env)->body_type() != wire::Body::ControlReply) continue;
      const auto* reply = (*env)->body_as_ControlReply();
      if (reply->correlation() != correlation) continue;
      const double took = NowSeconds() - start;
      std::printf("  %s: %s\n", reply->ok() ? "done" : "REFUSED", codec::Str(reply->message()).c_str());
      if (const auto* g = reply->group()) {
        std::printf("  group %s: %llu pending, %llu failed, %llu cancelled\n", codec::Str(g->name()).c_str(),
                    static_cast<unsigned long long>(g->pending()), static_cast<unsigned long long>(g->failed()),
                    static_cast<unsigned long long>(g->cancelled()));
      }
      return reply->ok() ? took : -1;
    }
  }
  return -1;
}

// Work as a graph at scale, nothing able to run (the one worker's slot is taken and it
// is stopped): `tasks` waiting tasks of one group cancelled with one cancel --group, and
// `tasks` tasks after one root ended dependency_failed when the root is cancelled. Each
// is one turn and one commit; reported: the seconds from request to reply (the reply
// goes after the commit), and the scheduler's CPU seconds for it.
void Graph(int tasks, int rounds) {
  std::vector<double> cancel_s, fail_s;
  for (int round = 0; round < rounds; ++round) {
    Bench b(0, {"--liveness", "600s", "--max-blocked", std::to_string(std::max(tasks, 200000))});
    Process& runner = b.AddWorker("a1", {"--slots", "1"});
    b.WaitForWorkers(1);
    runner.Signal(SIGSTOP);
    uint64_t correlation = 7'000'000;
    std::vector<TaskSpec> specs(tasks);
    for (auto& s : specs) {
      s.command = {"true"};
      s.group = "sweep";
    }
    if (!SubmitSpecs(b, specs, &correlation)) {
      std::printf("  round %d: the group was not taken in within a minute per message\n", round);
      return;
    }
    cancel_s.push_back(TimedControl(b, wire::ControlOp::Cancel, nullptr, "sweep", ++correlation));
    TaskSpec root;
    root.command = {"true"};
    root.key = "root";
    std::vector<TaskSpec> after(tasks);
    for (auto& s : after) {
      s.command = {"true"};
      s.after = {"root"};
      s.group = "after-root";
    }
    if (!SubmitSpecs(b, {root}, &correlation) || !SubmitSpecs(b, after, &correlation)) {
      std::printf("  round %d: the dependents were not taken in within a minute per message\n", round);
      return;
    }
    const std::string root_id = "t" + std::to_string(tasks + 1);  // ids count from 1, the group first
    fail_s.push_back(TimedControl(b, wire::ControlOp::Cancel, root_id.c_str(), nullptr, ++correlation));
    TimedControl(b, wire::ControlOp::Group, nullptr, "after-root", ++correlation);  // says how they ended
    std::printf(
        "  round %d: cancel --group of %d: %.3f s; root cancelled, %d dependents failed: %.3f s; "
        "scheduler peak RSS %.0f MiB\n",
        round, tasks, cancel_s.back(), tasks, fail_s.back(), PeakRssKiB(b.scheduler().pid()) / 1024.0);
    runner.Signal(SIGCONT);
  }
  std::sort(cancel_s.begin(), cancel_s.end());
  std::sort(fail_s.begin(), fail_s.end());
  Report("graph_cancel_group_s", cancel_s[cancel_s.size() / 2], "s (median)");
  Report("graph_dependents_fail_s", fail_s[fail_s.size() / 2], "s (median)");
}

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  bool tiny = Tiny(argc, argv);
  std::string only = argc > 1 && argv[argc - 1][0] != '-' ? argv[argc - 1] : "";
  auto want = [&](const char* part) { return only.empty() || only == part; };
  if (want("throughput")) {
    for (int workers : {1, 4, 16}) {
      if (tiny && workers > 1) break;
      Throughput(workers, tiny ? 200 : 50000);
    }
  }
  if (want("latency")) {
    OpenLoop(1000, tiny ? 0.05 : 2.0);
    if (!tiny) OpenLoop(10000, 2.0);
  }
  if (want("failfast")) FailFast(tiny ? 20 : 2000);
  if (want("storm")) RegistrationStorm(tiny ? 100 : 10000);
  if (want("recovery")) {
    Recovery(tiny ? 1000 : 100000);
    if (!tiny) Recovery(1000000);
  }
  if (want("backlog")) Backlog(tiny ? 2000 : 1000000);
  if (want("million")) Million(tiny ? 5000 : 1000000);
  if (want("wait")) SubmitWait(4, tiny ? 2000 : 50000);
  if (want("curve")) CurveCost(tiny ? 200 : 50000, tiny ? 5 : 200, tiny ? 1 : 3);
  if (want("metrics")) MetricsCost(tiny ? 200 : 50000, tiny ? 1 : 3);
  if (want("store")) StoreGrowth(tiny ? 5000 : 1000000, tiny ? 1000 : 100000);
  if (want("output")) Output(4, tiny ? 4 : 1024);
  if (want("takeover")) Takeover(tiny ? 2 : 20);
  if (want("replicated")) Replicated(tiny ? 1 : 4, tiny ? 200 : 50000, tiny ? 20 : 500);
  if (want("failover")) Failover(tiny ? 2 : 20);
  if (want("graph")) Graph(tiny ? 2000 : 100000, tiny ? 1 : 3);
  // Not in the smoke run: the namespace test covers each kind once.
  if (want("failover-hosts") && !tiny) FailoverHosts(20);
  return 0;
}
