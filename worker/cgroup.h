// Limits for exec attempts: a cgroup leaf per attempt, under a cgroup the worker was
// given (delegated). cgroup v2 (one hierarchy: cpu.max, memory.max, pids.max) or v1 (the
// memory, pids and cpu hierarchies: memory.limit_in_bytes, pids.max, cpu.cfs_quota_us).
// The attempt's process joins its leaf before it runs the command (the exec shim
// fm-cgexec), so nothing it starts escapes; a timeout or cancel kills every process in
// the leaf; a kill by the kernel for the memory limit is told apart (memory_limit).
//
// v2: the worker needs a cgroup it may write (systemd's Delegate=yes): it moves itself
// into a "supervisor" child of it (a cgroup with children holds no processes) and makes
// the attempts' leaves beside that. v1: it makes "fm-<worker id>" under its own cgroup in
// each hierarchy (as root). Neither: limits are off, and the worker says so.
//
// Thread: the loop thread (the shim runs in the attempt's process before exec).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "schemas/status.h"

namespace fm::worker {

struct CgroupLimits {
  uint32_t cpus_milli = 0;  // 0: no cpu limit
  uint64_t memory = 0;      // 0: no memory limit
  int64_t pids = 4096;
};

class Cgroups {
 public:
  // Finds and prepares the delegated cgroup. `root`: the cgroup mount to look in
  // (/sys/fs/cgroup; tests may give another); `want`: "auto", "off", "v1" or "v2".
  static Cgroups Detect(const std::string& worker_id, const std::string& want,
                        const std::string& root = "/sys/fs/cgroup");
  static Cgroups Off(std::string why) {
    Cgroups c;
    c.why_off_ = std::move(why);
    return c;
  }

  // "cgroup2", "cgroup1" or "off" (announced; fm-ctl workers shows "limits: off").
  const std::string& mode() const { return mode_; }
  // Why limits are off (empty when on), for the worker's log.
  const std::string& why_off() const { return why_off_; }
  bool on() const { return mode_ != "off"; }

  // Makes attempt `name`'s leaf with `limits`. Returns the files the attempt's process
  // writes its pid to (cgroup.procs of each hierarchy) before it runs the command.
  Result<std::vector<std::string>> MakeLeaf(const std::string& name, const CgroupLimits& limits);
  // SIGKILLs every process in the leaf. Returns how many it signalled.
  int KillLeaf(const std::string& name);
  // Whether the kernel killed a process of the leaf for its memory limit.
  bool OomKilled(const std::string& name) const;
  // Removes the leaf (what still runs in it killed); one still busy is retried by Sweep.
  void RemoveLeaf(const std::string& name);
  // Retries the removal of leaves that were busy, and removes leaves a previous worker
  // process left (at start). Returns how many are left.
  size_t Sweep();
  // Leaves left by a previous process of this worker (before this one made any).
  size_t RemoveStale();
  // At exit: removes what is left of the leaves and (v1) this process's directories.
  void Close();

 private:
  std::vector<std::string> Dirs(const std::string& name) const;  // the leaf, per hierarchy

  std::string mode_ = "off";
  std::string why_off_;
  // v2: one base; v1: memory, pids and (when there) cpu bases.
  std::vector<std::string> bases_;
  std::string memory_base_, cpu_base_;
  std::vector<std::string> busy_;  // leaves whose removal was refused (processes still exiting)
};

// The exec shim is fm-cgexec (worker/cgexec.cc), installed beside fm-worker.
constexpr const char* kExecShimName = "fm-cgexec";

// Parsers, exposed for tests. /proc/self/cgroup -> the path of `controller` in v1 ("" if absent).
std::string ParseCgroupV1Path(const std::string& proc_self_cgroup, const std::string& controller);

}  // namespace fm::worker
