#include "worker/cgroup.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <set>
#include <sstream>

#include "worker/probe.h"

namespace fm::worker {
namespace {

std::string Read(const std::string& path) { return ReadFile(path); }

Status Write(const std::string& path, const std::string& value) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return Status::Io(path + ": " + std::strerror(errno));
  ssize_t n = ::write(fd, value.data(), value.size());
  int err = errno;
  ::close(fd);
  if (n != static_cast<ssize_t>(value.size()))
    return Status::Io("write " + value + " to " + path + ": " + std::strerror(err));
  return Status::Ok();
}

bool IsDir(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

Status MakeDir(const std::string& path) {
  if (mkdir(path.c_str(), 0755) == 0 || errno == EEXIST) return Status::Ok();
  return Status::Io("mkdir " + path + ": " + std::strerror(errno));
}

std::vector<pid_t> Procs(const std::string& dir) {
  std::vector<pid_t> pids;
  std::istringstream in(Read(dir + "/cgroup.procs"));
  long pid;
  while (in >> pid) {
    if (pid > 0) pids.push_back(static_cast<pid_t>(pid));
  }
  return pids;
}

// SIGKILLs what runs in `dir`, a few rounds for processes forked meanwhile.
int KillIn(const std::string& dir) {
  (void)Write(dir + "/cgroup.kill", "1");  // v2 on kernels that have it: all at once
  int killed = 0;
  for (int round = 0; round < 3; ++round) {
    auto pids = Procs(dir);
    if (pids.empty()) break;
    for (pid_t pid : pids) killed += kill(pid, SIGKILL) == 0;
  }
  return killed;
}

uint64_t Counter(const std::string& text, const std::string& key) {
  std::istringstream in(text);
  std::string k;
  uint64_t v = 0;
  while (in >> k >> v) {
    if (k == key) return v;
  }
  return 0;
}

// cpus as a CFS quota per 100 ms period; the kernel's least is 1 ms (0.01 cpus).
uint64_t QuotaUs(uint32_t cpus_milli) { return std::max<uint64_t>(cpus_milli * 100ull, 1000); }

bool ProcessAlive(pid_t pid) { return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM); }

}  // namespace

std::string ParseCgroupV1Path(const std::string& proc_self_cgroup, const std::string& controller) {
  std::istringstream in(proc_self_cgroup);
  std::string line;
  while (std::getline(in, line)) {
    size_t a = line.find(':');
    size_t b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    std::istringstream names(line.substr(a + 1, b - a - 1));
    std::string name;
    while (std::getline(names, name, ',')) {
      if (name == controller) return line.substr(b + 1);
    }
  }
  return {};
}

Cgroups Cgroups::Detect(const std::string& worker_id, const std::string& want, const std::string& root) {
  (void)worker_id;
  Cgroups c;
  if (want == "off") {
    c.why_off_ = "--cgroup off";
    return c;
  }
  const std::string self = Read("/proc/self/cgroup");
  std::string v2_why, v1_why;
  if (want == "auto" || want == "v2") {
    // v2: our own cgroup, writable, with the memory and pids controllers.
    const std::string path = ParseCgroupV2Path(self);
    const std::string dir = root + (path == "/" ? "" : path);
    std::istringstream listed(Read(dir + "/cgroup.controllers"));
    std::set<std::string> controllers{std::istream_iterator<std::string>(listed), std::istream_iterator<std::string>()};
    auto has = [&](const char* name) { return controllers.count(name) > 0; };
    if (access((root + "/cgroup.controllers").c_str(), R_OK) != 0) {
      v2_why = "no cgroup v2 hierarchy at " + root;
    } else if (path.empty()) {
      v2_why = "not in a cgroup v2 cgroup";
    } else if (!has("memory") || !has("pids")) {
      v2_why = "cgroup " + dir + " lacks the memory and pids controllers";
    } else if (access((dir + "/cgroup.subtree_control").c_str(), W_OK) != 0 ||
               access((dir + "/cgroup.procs").c_str(), W_OK) != 0) {
      v2_why = "cgroup " + dir + " is not delegated to this worker (not writable; systemd: Delegate=yes)";
    } else {
      // A cgroup with children holds no processes: the worker moves into "supervisor",
      // the attempts' leaves go beside it.
      Status s = MakeDir(dir + "/supervisor");
      if (s.ok()) s = Write(dir + "/supervisor/cgroup.procs", std::to_string(getpid()));
      std::string enable = "+memory +pids";
      if (has("cpu")) enable += " +cpu";
      if (s.ok()) s = Write(dir + "/cgroup.subtree_control", enable);
      if (s.ok()) {
        c.mode_ = "cgroup2";
        c.bases_ = {dir};
        c.memory_base_ = dir;
        c.cpu_base_ = has("cpu") ? dir : "";
        return c;
      }
      v2_why = "cannot use cgroup " + dir + ": " + s.message();
    }
  }
  if (want == "auto" || want == "v1") {
    // v1: a directory of this process's own under its cgroup in each hierarchy.
    auto base_for = [&](const std::string& controller) -> std::string {
      const std::string mount = root + "/" + controller;
      if (!IsDir(mount)) return {};
      const std::string own = ParseCgroupV1Path(self, controller);
      std::string base = mount + (own.empty() || own == "/" ? "" : own);
      if (!IsDir(base)) base = mount;  // our cgroup's path is not visible here (another namespace)
      return base + "/fm-w" + std::to_string(getpid());
    };
    std::string memory = base_for("memory"), pids = base_for("pids"), cpu = base_for("cpu");
    if (memory.empty() || pids.empty()) {
      v1_why = "no cgroup v1 memory and pids hierarchies under " + root;
    } else {
      Status s = MakeDir(memory);
      if (s.ok()) s = MakeDir(pids);
      if (s.ok() && !cpu.empty() && !MakeDir(cpu).ok()) cpu.clear();
      if (s.ok()) {
        c.mode_ = "cgroup1";
        c.bases_ = {memory, pids};
        if (!cpu.empty()) c.bases_.push_back(cpu);
        c.memory_base_ = memory;
        c.cpu_base_ = cpu;
        return c;
      }
      (void)rmdir(memory.c_str());
      v1_why = "cannot make cgroups (" + s.message() + ")";
    }
  }
  c.why_off_ = v2_why.empty() ? v1_why : v1_why.empty() ? v2_why : v2_why + "; " + v1_why;
  return c;
}

std::vector<std::string> Cgroups::Dirs(const std::string& name) const {
  std::vector<std::string> dirs;
  for (const auto& base : bases_) dirs.push_back(base + "/" + name);
  return dirs;
}

Result<std::vector<std::string>> Cgroups::MakeLeaf(const std::string& name, const CgroupLimits& limits) {
  if (!on()) return Status::Unavailable("limits are off");
  Sweep();
  std::vector<std::string> procs;
  auto fail = [&](const Status& s) -> Result<std::vector<std::string>> {
    for (const auto& dir : Dirs(name)) (void)rmdir(dir.c_str());
    return s;
  };
  for (const auto& dir : Dirs(name)) {
    if (Status s = MakeDir(dir); !s.ok()) return fail(s);
    procs.push_back(dir + "/cgroup.procs");
  }
  const std::string memory = memory_base_ + "/" + name, cpu = cpu_base_.empty() ? "" : cpu_base_ + "/" + name;
  if (mode_ == "cgroup2") {
    if (limits.memory > 0) {
      if (Status s = Write(memory + "/memory.max", std::to_string(limits.memory)); !s.ok()) return fail(s);
      (void)Write(memory + "/memory.swap.max", "0");  // no swap beyond the limit (absent without swap accounting)
    }
    if (Status s = Write(memory + "/pids.max", std::to_string(limits.pids)); !s.ok()) return fail(s);
    if (limits.cpus_milli > 0 && !cpu.empty()) {
      if (Status s = Write(cpu + "/cpu.max", std::to_string(QuotaUs(limits.cpus_milli)) + " 100000"); !s.ok()) {
        return fail(s);
      }
    }
  } else {
    if (limits.memory > 0) {
      if (Status s = Write(memory + "/memory.limit_in_bytes", std::to_string(limits.memory)); !s.ok()) return fail(s);
      (void)Write(memory + "/memory.memsw.limit_in_bytes", std::to_string(limits.memory));  // with swap accounting
    }
    if (Status s = Write(bases_[1] + "/" + name + "/pids.max", std::to_string(limits.pids)); !s.ok()) return fail(s);
    if (limits.cpus_milli > 0 && !cpu.empty()) {
      Status s = Write(cpu + "/cpu.cfs_period_us", "100000");
      if (s.ok()) s = Write(cpu + "/cpu.cfs_quota_us", std::to_string(QuotaUs(limits.cpus_milli)));
      if (!s.ok()) return fail(s);
    }
  }
  return procs;
}

int Cgroups::KillLeaf(const std::string& name) {
  if (!on()) return 0;
  int killed = 0;
  for (const auto& dir : Dirs(name)) killed += KillIn(dir);
  return killed;
}

bool Cgroups::OomKilled(const std::string& name) const {
  if (!on()) return false;
  const std::string dir = memory_base_ + "/" + name;
  if (mode_ == "cgroup2") return Counter(Read(dir + "/memory.events"), "oom_kill") > 0;
  const std::string control = Read(dir + "/memory.oom_control");
  if (control.find("oom_kill ") != std::string::npos) return Counter(control, "oom_kill") > 0;
  // Kernels before 4.13 do not count kills: the limit was hit.
  return std::strtoull(Read(dir + "/memory.failcnt").c_str(), nullptr, 10) > 0;
}

void Cgroups::RemoveLeaf(const std::string& name) {
  if (!on()) return;
  // The attempt's processes were killed when its command exited (or at its timeout or
  // cancel): an empty leaf goes at once; only one still busy is swept again.
  for (const auto& dir : Dirs(name)) {
    if (rmdir(dir.c_str()) == 0 || errno == ENOENT) continue;
    KillIn(dir);
    if (rmdir(dir.c_str()) != 0 && errno != ENOENT) busy_.push_back(dir);
  }
}

size_t Cgroups::Sweep() {
  std::vector<std::string> still;
  for (const auto& dir : busy_) {
    KillIn(dir);
    if (rmdir(dir.c_str()) != 0 && errno != ENOENT) still.push_back(dir);
  }
  busy_ = std::move(still);
  return busy_.size();
}

size_t Cgroups::RemoveStale() {
  if (!on()) return 0;
  size_t removed = 0;
  auto clear = [&](const std::string& dir) {
    DIR* d = opendir(dir.c_str());
    if (!d) return;
    std::vector<std::string> leaves;
    while (dirent* e = readdir(d)) {
      if (std::strncmp(e->d_name, "fm-t", 4) == 0) leaves.push_back(dir + "/" + e->d_name);
    }
    closedir(d);
    for (const auto& leaf : leaves) {
      KillIn(leaf);
      if (rmdir(leaf.c_str()) == 0) ++removed;
    }
  };
  if (mode_ == "cgroup2") {
    clear(bases_[0]);  // the delegated cgroup is this worker's: every leaf in it is an orphan
    return removed;
  }
  // v1: the directories of fm-worker processes that are gone (fm-w<pid>), beside ours.
  for (const auto& base : bases_) {
    const std::string parent = base.substr(0, base.rfind('/'));
    DIR* d = opendir(parent.c_str());
    if (!d) continue;
    std::vector<std::string> gone;
    while (dirent* e = readdir(d)) {
      if (std::strncmp(e->d_name, "fm-w", 4) != 0) continue;
      pid_t pid = static_cast<pid_t>(std::atol(e->d_name + 4));
      if (pid != getpid() && !ProcessAlive(pid)) gone.push_back(parent + "/" + e->d_name);
    }
    closedir(d);
    for (const auto& dir : gone) {
      clear(dir);
      (void)rmdir(dir.c_str());
    }
  }
  return removed;
}

void Cgroups::Close() {
  if (!on()) return;
  Sweep();
  if (mode_ == "cgroup1") {
    for (const auto& base : bases_) (void)rmdir(base.c_str());
  }
}

}  // namespace fm::worker
