// Integration harness: starts the real fm binaries as child processes on 127.0.0.1
// ports with temporary data directories, and waits on what they print (never a fixed
// sleep).
#pragma once

#include <netinet/in.h>
#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace fm::test {

std::string Bin(const std::string& name);

class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// What a test's fm-worker says about whom tasks run as when the test does not: as root
// ("--run-as root", which a root worker needs said) when the tests run as root, else
// nothing (the worker's own user).
std::vector<std::string> RunAsFlags();
// `argv` with RunAsFlags() after its fm-worker, unless it says --run-as or --task-uids.
std::vector<std::string> WorkerCommand(std::vector<std::string> argv);

// A base port P with P, P+1 and P+2 free on 127.0.0.1.
int PickPortBase();
// 127.0.0.1:PORT as a socket address.
sockaddr_in Loopback(int port);

class Process {
 public:
  // Starts argv[0] with the arguments; stdin gets `input` then EOF.
  static std::unique_ptr<Process> Start(const std::vector<std::string>& argv, const std::string& input = "");
  ~Process();

  // Waits until stdout (or, with `stderr`, stderr) holds a line containing `needle`;
  // `count` such lines. False on timeout.
  bool WaitFor(const std::string& needle, int timeout_ms = 10000, int count = 1, bool on_stderr = false);
  int Count(const std::string& needle, bool on_stderr = false) const;
  std::vector<std::string> Lines() const;
  std::string Stdout() const;
  std::string Stderr() const;
  // Exit status, or -1 if it is still running after timeout_ms. 128+N when killed by N.
  int Wait(int timeout_ms = 30000);
  void Signal(int signum);
  // Waits until both output pipes reached end of file.
  bool WaitClosed(int timeout_ms);
  bool running();
  pid_t pid() const { return pid_; }

 private:
  Process() = default;
  void ReadLoop(int out_fd, int err_fd);

  pid_t pid_ = -1;
  int status_ = -1;
  bool reaped_ = false;
  std::thread reader_, writer_;
  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::string out_, err_;
  bool closed_ = false;
};

struct ToolRun {
  int exit_code = -1;
  std::vector<std::string> lines;
  std::string err;
  std::string out;  // stdout as written, byte for byte
};

// The task id ("t42") of one line of fm-submit's output; empty when it has none.
std::string TaskOf(const std::string& line);

// The resident memory of process `pid` in bytes (VmRSS), 0 when unreadable.
uint64_t ResidentBytes(pid_t pid);

// Runs a tool to completion.
ToolRun RunTool(const std::vector<std::string>& argv, const std::string& input = "", int timeout_ms = 60000);

// podman's Docker Engine API service on a socket of its own (scripts/podman-setup.sh
// prepared podman). The constructor returns once GET /_ping answers.
class Podman {
 public:
  // `env`: NAME=VALUE for the service (e.g. CONTAINERS_CONF naming another runtime).
  explicit Podman(const std::string& socket_path, std::vector<std::string> env = {});
  // Stops the service and removes every container a worker or a probe made (labels
  // fm.worker, fm.probe): the docker tests run one at a time (ctest RESOURCE_LOCK
  // podman), so all of them are this test's; a worker the test killed leaves its own.
  ~Podman();
  void Stop();

 private:
  std::string socket_;
  std::unique_ptr<Process> process_;
};

// True when GET /_ping on the unix socket answers 200.
bool DockerPings(const std::string& socket_path);

// Certificates made by fm-keygen in one directory, which is also the brokers' trust
// directory (it reads only the public *.cert files).
class Keys {
 public:
  explicit Keys(std::string dir);
  // Makes NAME.cert and NAME.cert_secret (once per name). True when it made them now.
  bool Make(const std::string& name, const std::string& role);
  std::string Secret(const std::string& name) const { return dir_ + "/" + name + ".cert_secret"; }
  std::string Public(const std::string& name) const { return dir_ + "/" + name + ".cert"; }
  const std::string& dir() const { return dir_; }
  // --cert NAME's secret --broker-cert BROKER's public (made if need be, with `role`).
  std::vector<std::string> Flags(const std::string& name, const std::string& role,
                                 const std::string& broker = "broker");

 private:
  std::string dir_;
  std::map<std::string, std::string> made_;
};

// One etcd member (Debian's etcd-server) on loopback ports of its own with a temporary
// data directory, electing fast (heartbeat 100 ms, election 1 s).
class Etcd {
 public:
  Etcd();
  const std::string& url() const { return url_; }  // http://127.0.0.1:PORT
  Process& process() { return *process_; }

 private:
  TempDir dir_;
  std::string url_;
  std::unique_ptr<Process> process_;
};

// Hosts on this machine: a network namespace each ("fm" HOST PID), joined by veth pairs
// to a bridge in a namespace of its own, addressed 10.99.0.N in the order named. Nothing
// is routed anywhere else. Needs root. Gone, with every process run on them, when the
// object is.
class Hosts {
 public:
  explicit Hosts(std::vector<std::string> names);
  ~Hosts();
  std::string Ns(const std::string& host) const { return "fm" + host + suffix_; }
  const std::string& Address(const std::string& host) const { return address_.at(host); }
  // `argv` as run on `host`.
  std::vector<std::string> On(const std::string& host, std::vector<std::string> argv) const;
  // Starts (or restarts) a named process on a host.
  Process& Run(const std::string& name, const std::string& host, std::vector<std::string> argv);
  Process& Get(const std::string& name) { return *processes_.at(name); }
  void Kill(const std::string& name);
  // Takes a host's link to the bridge down or up: the host is cut off, or back.
  void Link(const std::string& host, bool up);
  // Drops (or stops dropping) what processes on `host` send to TCP port `port` of any
  // host, itself included (nftables in its namespace): one service out of its reach only.
  void Block(const std::string& host, int port, bool blocked);
  ToolRun Tool(const std::string& host, std::vector<std::string> argv, const std::string& input = "") const;
  // Kills every process run on the hosts.
  void StopAll() { processes_.clear(); }

 private:
  void Remove();  // the namespaces and links, whatever was made of them
  std::string suffix_, sw_;
  std::vector<std::string> names_;
  std::map<std::string, std::string> address_;
  std::map<std::string, std::unique_ptr<Process>> processes_;
};

// A three-member etcd cluster, a member on each of three Hosts (client port 2379, peer port
// 2380 of the host's address), electing fast (heartbeat 100 ms, election 1 s), with
// pre-vote (a member back from a partition does not disrupt the others).
class EtcdCluster {
 public:
  EtcdCluster(Hosts& hosts, std::vector<std::string> on);
  ~EtcdCluster();  // the members stopped before their data directories go
  // The client URLs, `first`'s member first (a process asks its own host's member first).
  std::string Urls(const std::string& first) const;
  Process& member(const std::string& host) { return hosts_.Get("etcd-" + host); }

 private:
  Hosts& hosts_;
  std::vector<std::string> on_;
  TempDir dir_;
};

// A scheduler that outlives its host, on Hosts a, b, c and cl: a three-member etcd on a,
// b and c, the root broker on cl ("cl" its certificate), schedulers "a" and "b" (each on
// its host, --ha-lease 2s, --ha-listen on its address, --ha-peers both), every link CURVE.
// Tools run on cl as the operator "ops"; the worker key "w1" is made too.
class HaHosts {
 public:
  HaHosts();
  ~HaHosts() { hosts_.StopAll(); }
  static constexpr const char* kLocal = "tcp://127.0.0.1:5550";  // the broker, from cl
  Hosts& hosts() { return hosts_; }
  EtcdCluster& etcd() { return *etcd_; }
  // --cert NAME --broker-cert of the broker (a key made with `role` if need be).
  std::vector<std::string> Flags(const std::string& name, const std::string& role) {
    return keys_.Flags(name, role, "cl");
  }
  // `argv` with those flags after it.
  std::vector<std::string> As(std::vector<std::string> argv, const std::string& name, const std::string& role) {
    for (auto& f : Flags(name, role)) argv.push_back(f);
    return argv;
  }
  // fm-tap --since 1 on cl as the operator.
  Process& Tap() {
    return hosts_.Run("tap", "cl", As({Bin("fm-tap"), "--broker", kLocal, "--since", "1"}, "ops", "operator"));
  }
  // Starts (or restarts) the scheduler named after its host, on its own data directory.
  Process& Scheduler(const std::string& host);
  ToolRun Ctl(std::vector<std::string> args) const;
  // The node fm-ctl ping names as the leader; "" when nobody answers within `timeout`.
  std::string Leader(const std::string& timeout = "1s") const;
  // Seconds from `since` until ping names `node` (pings of 300 ms each: a ping nobody
  // answers would otherwise make the figure a multiple of its timeout); -1 past `limit_s`.
  double UntilLeads(const std::string& node, std::chrono::steady_clock::time_point since, double limit_s = 20) const;

 private:
  Hosts hosts_;
  TempDir data_;
  Keys keys_;
  std::string peers_;
  std::unique_ptr<EtcdCluster> etcd_;
};

// A root broker, a scheduler with a temporary data directory, and an fm-tap --since 1
// following the whole stream.
class Cluster {
 public:
  // With `data_dir`, the scheduler keeps its store there instead of a temporary directory.
  // With `secure`, every process has a certificate (Keys in DATA/keys): the broker
  // "broker", the scheduler "scheduler", the tap "tap" (an operator: the whole stream), workers by their ids,
  // Submit and Ctl the operator "ops" (SubmitAs/CtlAs for others).
  explicit Cluster(std::vector<std::string> scheduler_args = {"--liveness", "2s"}, std::string data_dir = "",
                   bool secure = false);
  ~Cluster();

  const std::string& broker() const { return broker_; }
  const std::string& data_dir() const { return data_.path(); }
  Process& tap() { return *tap_; }
  Process& scheduler() { return *scheduler_; }
  Process& broker_process() { return *broker_proc_; }

  // Starts an fm-worker and waits for its worker.registered event.
  Process& StartWorker(const std::string& id, std::vector<std::string> args = {});
  // Starts any worker-like program (given argv without --broker; an fm-worker in it gets
  // WorkerCommand) and waits for id's registration.
  Process& StartCustomWorker(const std::string& id, std::vector<std::string> argv);
  Process& worker(const std::string& id);
  void KillWorker(const std::string& id, int signum);

  ToolRun Submit(const std::string& lines, std::vector<std::string> args = {});
  ToolRun Ctl(std::vector<std::string> args);
  // As certificate NAME of role ROLE (made if need be). REQUIRES: secure.
  ToolRun SubmitAs(const std::string& name, const std::string& role, const std::string& lines,
                   std::vector<std::string> args = {});
  ToolRun CtlAs(const std::string& name, const std::string& role, std::vector<std::string> args);
  Keys& keys() { return *keys_; }
  // Makes certificate NAME if need be and waits until the broker admits it (it re-reads
  // its trust directory every second). REQUIRES: secure.
  void Trust(const std::string& name, const std::string& role);
  bool secure() const { return keys_ != nullptr; }
  // Waits for `count` events on the tap whose line contains `needle`.
  bool WaitEvent(const std::string& needle, int timeout_ms = 10000, int count = 1);
  void RestartScheduler();  // SIGKILL, then start on the same data directory
  void KillScheduler();
  void RestartBroker();                       // SIGKILL, then start on the same ports
  void RestartWorker(const std::string& id);  // start again with the same arguments

 private:
  TempDir data_;
  std::string data_dir_;
  std::string broker_;
  std::vector<std::string> scheduler_args_;
  std::unique_ptr<Keys> keys_;
  std::unique_ptr<Process> broker_proc_, scheduler_, tap_;
  std::vector<std::pair<std::string, std::unique_ptr<Process>>> workers_;
  std::map<std::string, std::vector<std::string>> worker_argv_;
};

}  // namespace fm::test
