#include "worker/task_users.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <vector>

#include "runtime/policy.h"

namespace fm::worker {
namespace {

constexpr const char* kMapFile = "task-uids";

Result<uint32_t> ParseUid(const std::string& text) {
  if (text.empty() || text.size() > 10 || text.find_first_not_of("0123456789") != std::string::npos) {
    return Status::Invalid("\"" + text + "\" is not a uid");
  }
  uint64_t v = std::stoull(text);
  if (v >= 0xffffffffull) return Status::Invalid("\"" + text + "\" is not a uid");
  return static_cast<uint32_t>(v);
}

// A directory of root's own, not writable by others: what the map and the homes live in.
Status CheckOwnDirectory(const std::string& dir) {
  std::error_code ignored;
  std::filesystem::create_directories(std::filesystem::path(dir).parent_path(), ignored);
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Status::Invalid("--state-dir " + dir + ": " + strerror(errno));
  }
  struct stat st {};
  if (lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return Status::Invalid("--state-dir " + dir + ": not a directory");
  }
  if (st.st_uid != geteuid() || (st.st_mode & 022) != 0) {
    return Status::Invalid("--state-dir " + dir + ": must belong to the worker's user and be writable by it alone");
  }
  return Status::Ok();
}

}  // namespace

Result<TaskUsers> TaskUsers::Configure(const Options& options, uid_t euid) {
  TaskUsers users;
  if (!options.run_as.empty() && !options.task_uids.empty()) {
    return Status::Invalid("--run-as and --task-uids: give one (a user for every task, or a uid per owner)");
  }
  if (!options.task_uids.empty()) {
    if (euid != 0) return Status::Invalid("--task-uids: the worker must run as root to run tasks as other uids");
    size_t dash = options.task_uids.find('-');
    auto first = ParseUid(options.task_uids.substr(0, dash));
    auto last = dash == std::string::npos ? first : ParseUid(options.task_uids.substr(dash + 1));
    if (!first.ok() || !last.ok() || *last < *first) {
      return Status::Invalid("--task-uids " + options.task_uids + ": not a range FIRST-LAST of uids");
    }
    if (*first < 1000) {
      return Status::Invalid("--task-uids " + options.task_uids +
                             ": starts below 1000, among the system's own users; take a range no user has (e.g. "
                             "200000-265535)");
    }
    // A uid of the range that a user of this system has would give an owner's tasks that
    // user's files.
    setpwent();
    while (struct passwd* pw = getpwent()) {
      if (pw->pw_uid >= *first && pw->pw_uid <= *last) {
        std::string name = pw->pw_name;
        uint32_t uid = pw->pw_uid;
        endpwent();
        return Status::Invalid("--task-uids " + options.task_uids + ": uid " + std::to_string(uid) + " is user " +
                               name + "'s; take a range no user has");
      }
    }
    endpwent();
    users.first_ = *first;
    users.last_ = *last;
    users.privileged_ = true;
    users.state_dir_ = options.state_dir;
    if (!users.state_dir_.empty()) {
      if (Status s = CheckOwnDirectory(users.state_dir_); !s.ok()) return s;
      if (Status s = CheckOwnDirectory(users.state_dir_ + "/homes"); !s.ok()) return s;
      if (Status s = users.Load(); !s.ok()) return s;
    }
    return users;
  }
  if (!options.run_as.empty()) {
    struct passwd pw {};
    struct passwd* found = nullptr;
    std::vector<char> buf(16384);
    if (getpwnam_r(options.run_as.c_str(), &pw, buf.data(), buf.size(), &found) != 0 || !found) {
      return Status::Invalid("--run-as " + options.run_as + ": no such user");
    }
    if (euid != 0 && euid != found->pw_uid) {
      return Status::Invalid("--run-as " + options.run_as +
                             ": the worker must run as root to run tasks as another user");
    }
    users.fixed_ = {true, found->pw_uid, found->pw_gid, options.run_as, found->pw_dir ? found->pw_dir : "/"};
    users.privileged_ = euid == 0;
    return users;
  }
  if (euid == 0 && options.runs_tasks) {
    return Status::Invalid(
        "the worker runs as root and would run every task as root: say whom tasks run as, --task-uids FIRST-LAST "
        "(a uid per owner, e.g. 200000-265535), --run-as USER, or --run-as root to run them as root");
  }
  struct passwd* pw = getpwuid(euid);
  users.fixed_ = {false, euid, getegid(), pw ? pw->pw_name : std::to_string(euid),
                  getenv("HOME") ? getenv("HOME") : "/"};
  return users;
}

Result<TaskUser> TaskUsers::For(const std::string& owner_name) {
  if (last_ == 0) return fixed_;
  const std::string owner = owner_name.empty() ? "-" : owner_name;
  if (owner != "-") {
    if (Status s = bus::ValidateName(owner); !s.ok()) return Status::Invalid("owner: " + s.message());
  }
  auto it = ranged_.find(owner);
  if (it == ranged_.end()) {
    std::set<uint32_t> taken;
    for (const auto& [o, uid] : ranged_) taken.insert(uid);
    uint32_t uid = first_;
    while (taken.count(uid) && uid < last_) ++uid;
    if (taken.count(uid)) {
      return Status::Unavailable("every uid of --task-uids " + std::to_string(first_) + "-" + std::to_string(last_) +
                                 " has an owner already");
    }
    it = ranged_.emplace(owner, uid).first;
    if (Status s = Save(); !s.ok()) {
      ranged_.erase(it);
      return s;
    }
  }
  TaskUser user{true, it->second, it->second, owner == "-" ? "fm-task" : owner, "/"};
  if (!state_dir_.empty()) {
    user.home = state_dir_ + "/homes/" + std::to_string(user.uid);
    // Made by root for the uid, mode 0700: nobody else's tasks see into it.
    if (mkdir(user.home.c_str(), 0700) == 0) {
      if (chown(user.home.c_str(), user.uid, user.gid) != 0) {
        return Status::Unavailable("cannot give " + user.home + " to uid " + std::to_string(user.uid) + ": " +
                                   strerror(errno));
      }
    } else if (errno != EEXIST) {
      return Status::Unavailable("cannot make " + user.home + ": " + strerror(errno));
    }
  }
  return user;
}

Status TaskUsers::Load() {
  const std::string path = state_dir_ + "/" + kMapFile;
  std::ifstream in(path);
  if (!in) return Status::Ok();  // none yet
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    std::istringstream fields(line);
    std::string uid_text, owner;
    if (!(fields >> uid_text >> owner)) continue;
    auto uid = ParseUid(uid_text);
    if (!uid.ok() || *uid < first_ || *uid > last_) continue;  // a range since narrowed: that owner gets a new uid
    if (owner != "-" && !bus::ValidateName(owner).ok()) {
      return Status::Invalid(path + " line " + std::to_string(number) + ": \"" + owner + "\" is no owner");
    }
    ranged_[owner] = *uid;
  }
  return Status::Ok();
}

Status TaskUsers::Save() const {
  if (state_dir_.empty()) return Status::Ok();
  const std::string path = state_dir_ + "/" + kMapFile, temporary = path + ".new";
  std::string text = "# uid owner: written by fm-worker (--task-uids); a uid is never given to two owners\n";
  for (const auto& [owner, uid] : ranged_) text += std::to_string(uid) + " " + owner + "\n";
  int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  bool ok = fd >= 0 && ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && fsync(fd) == 0;
  if (fd >= 0) ::close(fd);
  if (!ok || rename(temporary.c_str(), path.c_str()) != 0) {
    return Status::Unavailable("cannot write " + path + ": " + strerror(errno));
  }
  return Status::Ok();
}

std::string TaskUsers::Describe() const {
  if (last_ > 0) {
    return "exec tasks run as a uid per owner from " + std::to_string(first_) + "-" + std::to_string(last_) +
           (state_dir_.empty() ? " (kept in memory only: without --state-dir an owner may get another's former uid "
                                 "after a restart)"
                               : " (kept in " + state_dir_ + "/" + kMapFile + ")");
  }
  if (!fixed_.switch_user) return "exec tasks run as this worker's own user " + fixed_.name;
  return "exec tasks run as user " + fixed_.name + " (uid " + std::to_string(fixed_.uid) + ")";
}

}  // namespace fm::worker
