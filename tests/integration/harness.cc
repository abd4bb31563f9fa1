#include "harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <regex>
#include <stdexcept>

namespace fm::test {

std::string Bin(const std::string& name) {
  // FM_TEST_BIN_DIR: the same tests against another build's binaries (an attack test
  // shown failing on the commit before its fix).
  const char* other = getenv("FM_TEST_BIN_DIR");
  return std::string(other && *other ? other : FM_BIN_DIR) + "/" + name;
}

TempDir::TempDir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "fm-test-XXXXXX").string();
  if (!mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

sockaddr_in Loopback(int port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

namespace {
bool PortFree(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr = Loopback(port);
  bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  close(fd);
  return ok;
}
}  // namespace

namespace {
// The first port the kernel hands out to outgoing connections: a port picked below it is
// never taken by one of the suite's own connects between the pick and the bind.
int EphemeralLow() {
  std::ifstream in("/proc/sys/net/ipv4/ip_local_port_range");
  int low = 0;
  if (in >> low && low > 12000) return low;
  return 32768;  // Linux's default floor (a floor set below 12000 leaves no room under it)
}
}  // namespace

int PickPortBase() {
  static std::mt19937 rng(std::random_device{}() ^ static_cast<unsigned>(getpid()));
  static const int span = EphemeralLow() - 3 - 10000;
  for (int i = 0; i < 1000; ++i) {
    int base = 10000 + static_cast<int>(rng() % span);
    if (PortFree(base) && PortFree(base + 1) && PortFree(base + 2)) return base;
  }
  throw std::runtime_error("no free port triple on 127.0.0.1");
}

std::unique_ptr<Process> Process::Start(const std::vector<std::string>& argv, const std::string& input) {
  int in[2], out[2], err[2];
  if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) throw std::runtime_error("pipe");
  std::unique_ptr<Process> p(new Process());
  p->pid_ = fork();
  if (p->pid_ == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    dup2(err[1], 2);
    setpgid(0, 0);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    std::fprintf(stderr, "exec %s: %s\n", args[0], std::strerror(errno));
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  close(err[1]);
  int write_fd = in[1];
  p->writer_ = std::thread([write_fd, input] {
    size_t done = 0;
    while (done < input.size()) {
      ssize_t n = write(write_fd, input.data() + done, input.size() - done);
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    close(write_fd);
  });
  p->reader_ = std::thread([raw = p.get(), o = out[0], e = err[0]] { raw->ReadLoop(o, e); });
  return p;
}

void Process::ReadLoop(int out_fd, int err_fd) {
  pollfd fds[2] = {{out_fd, POLLIN, 0}, {err_fd, POLLIN, 0}};
  int open = 2;
  char buf[65536];
  while (open > 0) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      ssize_t n = read(fds[i].fd, buf, sizeof buf);
      if (n <= 0) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open;
        continue;
      }
      std::lock_guard<std::mutex> lock(mutex_);
      (i == 0 ? out_ : err_).append(buf, static_cast<size_t>(n));
      changed_.notify_all();
    }
  }
  std::lock_guard<std::mutex> lock(mutex_);
  closed_ = true;
  changed_.notify_all();
}

Process::~Process() {
  if (running()) {
    kill(-pid_, SIGKILL);
    kill(pid_, SIGKILL);
  }
  Wait(10000);
  // Children of the process (e.g. a task's shell) hold the pipes open: end the group.
  kill(-pid_, SIGKILL);
  if (reader_.joinable()) reader_.join();
  if (writer_.joinable()) writer_.join();
}

namespace {
int CountIn(const std::string& text, const std::string& needle) {
  int n = 0;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) break;  // only whole lines count
    if (text.compare(start, end - start, needle) == 0 ||
        std::string_view(text).substr(start, end - start).find(needle) != std::string_view::npos) {
      ++n;
    }
    start = end + 1;
  }
  return n;
}
}  // namespace

bool Process::WaitFor(const std::string& needle, int timeout_ms, int count, bool on_stderr) {
  std::unique_lock<std::mutex> lock(mutex_);
  return changed_.wait_for(lock, std::chrono::milliseconds(timeout_ms),
                           [&] { return CountIn(on_stderr ? err_ : out_, needle) >= count; });
}

int Process::Count(const std::string& needle, bool on_stderr) const {
  std::lock_guard<std::mutex> lock(mutex_);
  return CountIn(on_stderr ? err_ : out_, needle);
}

std::vector<std::string> Process::Lines() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::string> lines;
  size_t start = 0;
  for (size_t end; (end = out_.find('\n', start)) != std::string::npos; start = end + 1) {
    lines.push_back(out_.substr(start, end - start));
  }
  return lines;
}

std::string Process::Stdout() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return out_;
}

std::string Process::Stderr() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return err_;
}

bool Process::running() {
  if (reaped_) return false;
  int status = 0;
  pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    reaped_ = true;
    status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return false;
  }
  return true;
}

int Process::Wait(int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (running()) {
    if (std::chrono::steady_clock::now() > deadline) return -1;
    usleep(5000);  // polling a child's exit: there is no event to wait on without a signal handler
  }
  return status_;
}

void Process::Signal(int signum) {
  if (!reaped_) kill(pid_, signum);
}

bool Process::WaitClosed(int timeout_ms) {
  std::unique_lock<std::mutex> lock(mutex_);
  return changed_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return closed_; });
}

ToolRun RunTool(const std::vector<std::string>& argv, const std::string& input, int timeout_ms) {
  auto p = Process::Start(argv, input);
  ToolRun run;
  run.exit_code = p->Wait(timeout_ms);
  p->WaitClosed(5000);
  run.lines = p->Lines();
  run.err = p->Stderr();
  run.out = p->Stdout();
  return run;
}

Keys::Keys(std::string dir) : dir_(std::move(dir)) { std::filesystem::create_directories(dir_); }

bool Keys::Make(const std::string& name, const std::string& role) {
  if (made_.count(name)) return false;
  ToolRun run = RunTool({Bin("fm-keygen"), name, "--role", role, "--out", dir_});
  if (run.exit_code != 0) throw std::runtime_error("fm-keygen " + name + ": " + run.err);
  made_[name] = role;
  return true;
}

void Cluster::Trust(const std::string& name, const std::string& role) {
  const std::string admitted = "certificates admitted";
  int before = broker_proc_->Count(admitted, true);
  if (!keys_->Make(name, role)) return;
  if (!broker_proc_->WaitFor(admitted, 5000, before + 1, true)) {
    throw std::runtime_error("the broker did not admit certificate " + name + ": " + broker_proc_->Stderr());
  }
}

std::vector<std::string> Keys::Flags(const std::string& name, const std::string& role, const std::string& broker) {
  Make(name, role);
  return {"--cert", Secret(name), "--broker-cert", Public(broker)};
}

Etcd::Etcd() {
  const std::string binary = "/usr/bin/etcd";
  if (access(binary.c_str(), X_OK) != 0) {
    throw std::runtime_error(binary + " is missing: scripts/install-deps.sh installs Debian's etcd-server");
  }
  for (int attempt = 0; attempt < 10; ++attempt) {
    const int base = PickPortBase();
    const std::string client = "http://127.0.0.1:" + std::to_string(base);
    const std::string peer = "http://127.0.0.1:" + std::to_string(base + 1);
    process_ = Process::Start({binary, "--name", "m1", "--data-dir", dir_.path() + "/m1", "--listen-client-urls",
                               client, "--advertise-client-urls", client, "--listen-peer-urls", peer,
                               "--initial-advertise-peer-urls", peer, "--initial-cluster", "m1=" + peer,
                               "--heartbeat-interval", "100", "--election-timeout", "1000"});
    if (process_->WaitFor("ready to serve client requests", 15000, 1, true)) {
      url_ = client;
      return;
    }
    process_.reset();  // a port taken meanwhile: another pair
  }
  throw std::runtime_error("etcd did not start on loopback");
}

namespace {
int Sh(const std::string& command) { return std::system(command.c_str()); }
}  // namespace

Hosts::Hosts(std::vector<std::string> names) : suffix_(std::to_string(getpid() % 100000)), names_(std::move(names)) {
  if (geteuid() != 0) throw std::runtime_error("network namespaces need root");
  sw_ = "fmsw" + suffix_;
  auto must = [](const std::string& command) {
    if (Sh(command) != 0) throw std::runtime_error("failed: " + command);
  };
  try {
    must("ip netns add " + sw_);
    must("ip -n " + sw_ + " link add br0 type bridge && ip -n " + sw_ + " link set br0 up");
    int n = 1;
    for (const std::string& host : names_) {
      const std::string ns = Ns(host), veth = "v" + host + suffix_;
      address_[host] = "10.99.0." + std::to_string(n++);
      must("ip netns add " + ns);
      must("ip link add " + veth + " type veth peer name eth0 netns " + ns);
      must("ip link set " + veth + " netns " + sw_);
      must("ip -n " + sw_ + " link set " + veth + " master br0 up");
      must("ip -n " + ns + " addr add " + address_[host] + "/24 dev eth0");
      must("ip -n " + ns + " link set eth0 up && ip -n " + ns + " link set lo up");
    }
  } catch (...) {
    Remove();  // no destructor runs for a constructor that throws
    throw;
  }
}

Hosts::~Hosts() {
  processes_.clear();
  Remove();
}

void Hosts::Remove() {
  for (const std::string& host : names_) {
    Sh("ip netns del " + Ns(host) + " 2>/dev/null");
    Sh("ip link del v" + host + suffix_ + " 2>/dev/null");  // one not yet moved into the switch
  }
  Sh("ip netns del " + sw_ + " 2>/dev/null");
}

std::vector<std::string> Hosts::On(const std::string& host, std::vector<std::string> argv) const {
  argv.insert(argv.begin(), {"/usr/sbin/ip", "netns", "exec", Ns(host)});
  return argv;
}

Process& Hosts::Run(const std::string& name, const std::string& host, std::vector<std::string> argv) {
  processes_.erase(name);
  return *(processes_[name] = Process::Start(On(host, WorkerCommand(std::move(argv)))));
}

void Hosts::Kill(const std::string& name) {
  auto it = processes_.find(name);
  if (it == processes_.end()) return;
  it->second->Signal(SIGKILL);
  it->second->Wait(10000);
}

void Hosts::Link(const std::string& host, bool up) {
  const std::string command = "ip -n " + sw_ + " link set v" + host + suffix_ + (up ? " up" : " down");
  if (Sh(command) != 0) throw std::runtime_error("failed: " + command);
}

void Hosts::Block(const std::string& host, int port, bool blocked) {
  const std::string table = "fmblock" + std::to_string(port);
  const std::string command = "ip netns exec " + Ns(host) + " nft '" +
                              (blocked ? "add table inet " + table + "; add chain inet " + table +
                                             " out { type filter hook output priority 0; }; add rule inet " + table +
                                             " out tcp dport " + std::to_string(port) + " drop"
                                       : "delete table inet " + table) +
                              "'";
  if (Sh(command) != 0) throw std::runtime_error("failed: " + command);
}

ToolRun Hosts::Tool(const std::string& host, std::vector<std::string> argv, const std::string& input) const {
  return RunTool(On(host, std::move(argv)), input);
}

EtcdCluster::EtcdCluster(Hosts& hosts, std::vector<std::string> on) : hosts_(hosts), on_(std::move(on)) {
  std::string initial;
  for (const std::string& host : on_) {
    initial += (initial.empty() ? "" : ",") + ("m" + host + "=http://" + hosts_.Address(host) + ":2380");
  }
  for (const std::string& host : on_) {
    const std::string address = hosts_.Address(host);
    hosts_.Run("etcd-" + host, host,
               {"/usr/bin/etcd", "--name", "m" + host, "--data-dir", dir_.path() + "/" + host, "--listen-client-urls",
                "http://" + address + ":2379", "--advertise-client-urls", "http://" + address + ":2379",
                "--listen-peer-urls", "http://" + address + ":2380", "--initial-advertise-peer-urls",
                "http://" + address + ":2380", "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--heartbeat-interval", "100", "--election-timeout", "1000",
                // A member back from a partition would otherwise call an election with its
                // raised term, and the others would stall while the leader's lease runs out.
                "--pre-vote"});
  }
  for (const std::string& host : on_) {
    if (!member(host).WaitFor("ready to serve client requests", 20000, 1, true)) {
      const std::string said = member(host).Stderr();
      for (const std::string& h : on_) hosts_.Kill("etcd-" + h);  // before their directories go
      throw std::runtime_error("etcd member on " + host + " did not start: " + said);
    }
  }
}

EtcdCluster::~EtcdCluster() {
  for (const std::string& host : on_) hosts_.Kill("etcd-" + host);
}

std::string EtcdCluster::Urls(const std::string& first) const {
  std::string urls = "http://" + hosts_.Address(first) + ":2379";
  for (const std::string& host : on_) {
    if (host != first) urls += ",http://" + hosts_.Address(host) + ":2379";
  }
  return urls;
}

HaHosts::HaHosts() : hosts_({"a", "b", "c", "cl"}), keys_(data_.path() + "/keys"), peers_(data_.path() + "/peers") {
  keys_.Make("cl", "broker");
  std::filesystem::create_directories(peers_);
  for (const char* s : {"a", "b"}) {
    keys_.Make(s, "scheduler");
    std::filesystem::copy_file(keys_.Public(s), peers_ + "/" + s + ".cert");
  }
  keys_.Make("ops", "operator");
  keys_.Make("w1", "worker");
  Process& broker = hosts_.Run(
      "broker", "cl",
      {Bin("fm-broker"), "--bind", "tcp://0.0.0.0:5550", "--cert", keys_.Secret("cl"), "--trust", keys_.dir()});
  if (!broker.WaitFor("broker on", 10000, 1, true)) throw std::runtime_error("broker: " + broker.Stderr());
  etcd_ = std::make_unique<EtcdCluster>(hosts_, std::vector<std::string>{"a", "b", "c"});
}

Process& HaHosts::Scheduler(const std::string& host) {
  std::vector<std::string> argv{Bin("fm-scheduler"),
                                "--broker",
                                "tcp://" + hosts_.Address("cl") + ":5550",
                                "--data",
                                data_.path() + "/" + host,
                                "--ha-node",
                                host,
                                "--etcd",
                                etcd_->Urls(host),
                                "--ha-lease",
                                "2s",
                                "--ha-listen",
                                "tcp://" + hosts_.Address(host) + ":5560",
                                "--ha-peers",
                                peers_,
                                "--ha-lag-max",
                                "1s",
                                "--liveness",
                                "5s"};
  for (auto& f : keys_.Flags(host, "scheduler", "cl")) argv.push_back(f);
  return hosts_.Run(host, host, argv);
}

ToolRun HaHosts::Ctl(std::vector<std::string> args) const {
  std::vector<std::string> argv{Bin("fm-ctl"),   "--broker",        kLocal, "--cert", keys_.Secret("ops"),
                                "--broker-cert", keys_.Public("cl")};
  argv.insert(argv.end(), args.begin(), args.end());
  return hosts_.Tool("cl", argv);
}

std::string HaHosts::Leader(const std::string& timeout) const {
  ToolRun ping = Ctl({"--timeout", timeout, "ping"});
  static const std::regex leads("leader of fm as ([a-z]+), epoch");
  std::smatch m;
  const std::string out = ping.out;
  if (ping.exit_code != 0 || !std::regex_search(out, m, leads)) return "";
  return m[1];
}

double HaHosts::UntilLeads(const std::string& node, std::chrono::steady_clock::time_point since, double limit_s) const {
  auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count(); };
  while (seconds() < limit_s) {
    if (Leader("300ms") == node) return seconds();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -1;
}

Cluster::Cluster(std::vector<std::string> scheduler_args, std::string data_dir, bool secure)
    : data_dir_(data_dir.empty() ? data_.path() + "/scheduler" : std::move(data_dir)),
      scheduler_args_(std::move(scheduler_args)) {
  int base = PickPortBase();
  broker_ = "tcp://127.0.0.1:" + std::to_string(base);
  if (secure) {
    keys_ = std::make_unique<Keys>(data_.path() + "/keys");
    keys_->Make("broker", "broker");
    keys_->Make("scheduler", "scheduler");
    keys_->Make("ops", "operator");
    keys_->Make("tap", "operator");  // the whole stream: a client's tap shows its own tasks only
  }
  RestartBroker();
  RestartScheduler();
  std::vector<std::string> tap{Bin("fm-tap"), "--broker", broker_, "--since", "1"};
  if (keys_) {
    for (auto& f : keys_->Flags("tap", "operator")) tap.push_back(f);
  }
  tap_ = Process::Start(tap);
  if (!WaitEvent("scheduler.started", 15000)) {
    throw std::runtime_error("no scheduler.started on the tap; the scheduler said: " + scheduler_->Stderr() +
                             "; the tap said: " + tap_->Stderr() + "; the broker said: " + broker_proc_->Stderr());
  }
}

void Cluster::RestartBroker() {
  if (broker_proc_) {
    broker_proc_->Signal(SIGKILL);
    broker_proc_->Wait(10000);
  }
  // The ports may take a moment to be free again after a kill: retry the bind.
  for (int attempt = 0; attempt < 50; ++attempt) {
    std::vector<std::string> argv{Bin("fm-broker"), "--bind", broker_};
    if (keys_) {
      for (const std::string& f :
           {std::string("--cert"), keys_->Secret("broker"), std::string("--trust"), keys_->dir()})
        argv.push_back(f);
    }
    broker_proc_ = Process::Start(argv);
    if (broker_proc_->WaitFor("broker on", 10000, 1, true)) return;
    if (broker_proc_->Wait(100) >= 0) continue;  // bind failed; try again
  }
  throw std::runtime_error("fm-broker did not start: " + broker_proc_->Stderr());
}

void Cluster::KillScheduler() {
  scheduler_->Signal(SIGKILL);
  scheduler_->Wait(10000);
}

void Cluster::RestartScheduler() {
  if (scheduler_) KillScheduler();
  std::vector<std::string> argv{Bin("fm-scheduler"), "--broker", broker_, "--data", data_dir_};
  if (keys_) {
    for (auto& f : keys_->Flags("scheduler", "scheduler")) argv.push_back(f);
  }
  argv.insert(argv.end(), scheduler_args_.begin(), scheduler_args_.end());
  scheduler_ = Process::Start(argv);
}

Cluster::~Cluster() {
  tap_.reset();
  workers_.clear();
  scheduler_.reset();
  broker_proc_.reset();
}

Process& Cluster::StartCustomWorker(const std::string& id, std::vector<std::string> argv) {
  argv = WorkerCommand(std::move(argv));
  if (std::find(argv.begin(), argv.end(), "--broker") == argv.end()) {
    argv.push_back("--broker");  // the root broker unless the caller named one
    argv.push_back(broker_);
  }
  int before = tap_->Count("worker.registered worker=" + id + ":");
  for (auto it = workers_.begin(); it != workers_.end(); ++it) {
    if (it->first == id) {
      workers_.erase(it);  // a restart of the same worker id
      break;
    }
  }
  worker_argv_[id] = argv;
  workers_.emplace_back(id, Process::Start(argv));
  Process& p = *workers_.back().second;
  if (!WaitEvent("worker.registered worker=" + id + ":", 15000, before + 1)) {
    throw std::runtime_error("worker " + id + " did not register: " + p.Stderr());
  }
  return p;
}

std::vector<std::string> RunAsFlags() {
  if (geteuid() == 0) return {"--run-as", "root"};
  return {};
}

std::vector<std::string> WorkerCommand(std::vector<std::string> argv) {
  if (std::find(argv.begin(), argv.end(), "--run-as") != argv.end() ||
      std::find(argv.begin(), argv.end(), "--task-uids") != argv.end()) {
    return argv;
  }
  auto worker = std::find_if(argv.begin(), argv.end(), [](const std::string& a) {
    return a.size() >= 10 && a.compare(a.size() - 10, 10, "/fm-worker") == 0;
  });
  if (worker != argv.end()) {
    auto flags = RunAsFlags();
    argv.insert(worker + 1, flags.begin(), flags.end());
  }
  return argv;
}

Process& Cluster::StartWorker(const std::string& id, std::vector<std::string> args) {
  std::vector<std::string> argv{Bin("fm-worker"), "--id", id, "--heartbeat", "200ms"};
  if (keys_ && std::find(args.begin(), args.end(), "--cert") == args.end()) {
    Trust(id, "worker");
    for (auto& f : keys_->Flags(id, "worker")) argv.push_back(f);
  }
  argv.insert(argv.end(), args.begin(), args.end());
  return StartCustomWorker(id, argv);
}

Process& Cluster::worker(const std::string& id) {
  for (auto& [wid, p] : workers_) {
    if (wid == id) return *p;
  }
  throw std::runtime_error("no worker " + id);
}

void Cluster::RestartWorker(const std::string& id) { StartCustomWorker(id, worker_argv_.at(id)); }

void Cluster::KillWorker(const std::string& id, int signum) {
  Process& p = worker(id);
  p.Signal(signum);
  p.Wait(10000);
}

ToolRun Cluster::Submit(const std::string& lines, std::vector<std::string> args) {
  if (keys_) return SubmitAs("ops", "operator", lines, std::move(args));
  std::vector<std::string> argv{Bin("fm-submit"), "--broker", broker_};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunTool(argv, lines);
}

ToolRun Cluster::Ctl(std::vector<std::string> args) {
  if (keys_) return CtlAs("ops", "operator", std::move(args));
  std::vector<std::string> argv{Bin("fm-ctl"), "--broker", broker_};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunTool(argv);
}

ToolRun Cluster::SubmitAs(const std::string& name, const std::string& role, const std::string& lines,
                          std::vector<std::string> args) {
  std::vector<std::string> argv{Bin("fm-submit"), "--broker", broker_};
  Trust(name, role);
  for (auto& f : keys_->Flags(name, role)) argv.push_back(f);
  argv.insert(argv.end(), args.begin(), args.end());
  return RunTool(argv, lines);
}

ToolRun Cluster::CtlAs(const std::string& name, const std::string& role, std::vector<std::string> args) {
  std::vector<std::string> argv{Bin("fm-ctl"), "--broker", broker_};
  Trust(name, role);
  for (auto& f : keys_->Flags(name, role)) argv.push_back(f);
  argv.insert(argv.end(), args.begin(), args.end());
  return RunTool(argv);
}

bool DockerPings(const std::string& socket_path) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, socket_path.c_str(), sizeof addr.sun_path - 1);
  bool ok = false;
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    const char req[] = "GET /_ping HTTP/1.1\r\nHost: d\r\nConnection: close\r\n\r\n";
    if (write(fd, req, sizeof req - 1) > 0) {
      char buf[512] = {0};
      ok = read(fd, buf, sizeof buf - 1) > 0 && std::strstr(buf, " 200 ") != nullptr;
    }
  }
  close(fd);
  return ok;
}

Podman::Podman(const std::string& socket_path, std::vector<std::string> env) : socket_(socket_path) {
  // In the socket's directory: conmon writes a file "oom" into its working directory when
  // a container is OOM-killed (that is how one came to be committed at the root once).
  std::vector<std::string> argv = {"/usr/bin/env", "-C", std::filesystem::path(socket_).parent_path().string()};
  argv.insert(argv.end(), env.begin(), env.end());
  for (const char* a : {"/usr/bin/podman", "system", "service", "--time=0"}) argv.push_back(a);
  argv.push_back("unix://" + socket_);
  process_ = Process::Start(argv);
  for (int i = 0; i < 300 && !DockerPings(socket_); ++i) {
    if (!process_->running()) throw std::runtime_error("podman exited: " + process_->Stderr());
    usleep(50000);  // no event tells when the service listens: poll its socket
  }
  if (!DockerPings(socket_)) throw std::runtime_error("podman's API did not answer on " + socket_);
}

Podman::~Podman() {
  if (process_->running()) Stop();
  std::vector<std::string> rm = {"/usr/bin/podman", "rm", "--force", "--time", "0"};
  for (const char* label : {"label=fm.worker", "label=fm.probe"}) {
    for (const auto& id : RunTool({"/usr/bin/podman", "ps", "--all", "--quiet", "--filter", label}).lines) {
      if (!id.empty()) rm.push_back(id);
    }
  }
  if (rm.size() > 5) RunTool(rm);
}

void Podman::Stop() {
  process_->Signal(SIGTERM);
  process_->Wait(10000);
}

bool Cluster::WaitEvent(const std::string& needle, int timeout_ms, int count) {
  return tap_->WaitFor(needle, timeout_ms, count);
}

}  // namespace fm::test

namespace fm::test {

std::string TaskOf(const std::string& line) {
  std::smatch m;
  if (std::regex_search(line, m, std::regex(R"re("task": "(t[0-9]+)")re"))) return m[1];
  return "";
}

uint64_t ResidentBytes(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  }
  return 0;
}

}  // namespace fm::test
