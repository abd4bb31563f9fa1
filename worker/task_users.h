// Whom an exec attempt runs as, decided once at the worker's start and asked per attempt.
//
// Three ways:
//   own    the worker is not root: attempts run as the worker's own user (there is no
//          privilege to keep from them, and no other user to switch to);
//   fixed  --run-as USER: every attempt as USER (root only when said: --run-as root);
//   range  --task-uids FIRST-LAST: each owner (the certificate name that submitted the
//          task) a uid of its own from the range, given on its first task here and kept,
//          in --state-dir when one is given, so that two owners never share a uid on this
//          worker, not even across the worker's restarts. gid = uid; no supplementary
//          groups; HOME a 0700 directory of the uid's own under the state directory.
// A worker running as root with none of these refuses to start: a root worker never runs
// a task as root unless its command line says so.
//
// Thread: the loop thread. The range's map is written through (temporary file, rename)
// before a uid is handed out.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>

#include "schemas/status.h"

namespace fm::worker {

struct TaskUser {
  bool switch_user = false;  // the attempt's process switches to uid/gid before the command
  uint32_t uid = 0, gid = 0;
  std::string name;  // USER and LOGNAME
  std::string home;  // HOME
};

class TaskUsers {
 public:
  struct Options {
    std::string run_as;      // --run-as
    std::string task_uids;   // --task-uids FIRST-LAST
    std::string state_dir;   // --state-dir: where a range's map and homes live ("": memory only)
    bool runs_tasks = true;  // false (a noop executor): nothing runs, nothing to decide
  };
  TaskUsers() = default;
  // Checks the options against this process's effective user `euid`. Error names the
  // option: a root worker told nothing, both ways at once, an unknown user, a range that
  // holds uid 0 or a user of the system, a map file that is not the worker's own.
  static Result<TaskUsers> Configure(const Options& options, uid_t euid);

  // Whom `owner`'s attempt runs as ("" is the keyless owner "-"). Error: the range is
  // used up, or the map could not be written (then no uid is handed out).
  Result<TaskUser> For(const std::string& owner);

  // A line for the log: "exec tasks run as ...".
  std::string Describe() const;
  // The attempt's process starts as root and switches (the exec shim does it).
  bool privileged() const { return privileged_; }

 private:
  Status Load();
  Status Save() const;

  bool privileged_ = false;
  TaskUser fixed_;  // own or fixed
  uint32_t first_ = 0, last_ = 0;
  std::string state_dir_;
  std::map<std::string, uint32_t> ranged_;  // owner -> uid
};

}  // namespace fm::worker
