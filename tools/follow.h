// Following the event stream in order, for the tools that print it (fm-tap) or a task's
// output (fm-ctl logs, fm-submit --attach).
//
// Events carry strictly increasing sequence numbers; an EventFollower hands each to its
// sink once, in order: first the stored ones from `since` (replays, page by page), then
// the live stream. A gap in the live stream (ZeroMQ drops on slow joins or overload, a
// broker restart) is filled from the store, so nothing is skipped or repeated.
//
// Sealed (--root-cert, behind node brokers): the live stream is as authentic as the node
// broker it comes through, so it is only a hint that there is more; what is handed on
// comes from replays, which are sealed directed messages from the root (runtime/seal.h).
#pragma once

#include <chrono>
#include <csignal>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>

#include "schemas/json.h"
#include "schemas/status.h"
#include "tools/tool_client.h"

namespace fm::tools {

class EventFollower {
 public:
  // Returns false to stop following.
  using Sink = std::function<bool(const wire::Event&)>;
  // `tool` names the program in messages ("fm-tap").
  EventFollower(ToolClient& client, std::string tool, Sink sink);

  // Subscribes to the stream: every topic this tool may follow, or (`tasks_only`) the
  // task topics among them. Call before Start, so that nothing falls between.
  void Subscribe(bool tasks_only);
  // From stored event `since` (>= 1), or (`since` < 0) live from now.
  void Start(int64_t since);
  // Waits for and handles what arrives until the sink says stop, `stop` is set (a
  // signal), or (`until_caught_up`) the stored events up to now were all handed on.
  void Run(const volatile std::sig_atomic_t* stop, bool until_caught_up);

 private:
  void RequestReplay(uint64_t since);
  bool OnDirected();
  void OnIdle();
  bool OnEvents();
  bool OnEvent(const wire::Event& e, std::string_view bytes);
  [[noreturn]] void Fail(const std::string& message);
  bool Offer(const wire::Event& e);
  // Live events carry the leadership (etcd epoch) that wrote them. True for an event to
  // drop: an older leadership's in the era of a newer one (a stale leader's). A newer
  // one below what was handed on has a stream of its own (a standby promoted by force):
  // followed from its start. Epoch 0 (no etcd) is never dropped.
  bool Fenced(const wire::Event& e);
  bool Drain();

  ToolClient& client_;
  std::string tool_;
  Sink sink_;
  bool stopped_ = false;
  uint64_t next_ = 0;         // the next sequence to hand on; 0 before the first
  uint64_t epoch_ = 0;        // the greatest leadership seen
  uint64_t epoch_floor_ = 0;  // the least sequence seen from it
  uint64_t correlation_ = 0;
  bool replay_in_flight_ = false;
  bool replayed_ = false;    // a replay ran to its end
  uint64_t hole_asked_ = 0;  // a hole below the buffered events was asked for again from here
  bool warned_ = false;
  std::optional<std::chrono::steady_clock::time_point> retry_at_;
  std::map<uint64_t, std::string> buffered_;
  const bool sealed_;
  std::chrono::steady_clock::time_point last_request_{};
};

// One task as a tool follows it: its name as events carry it ("t42"), its current
// attempt and state, and the sequence number of its first event still stored (0: none
// is left, retention removed them).
struct FollowedTask {
  std::string name;
  uint32_t attempt = 0;
  std::string state;
  uint64_t first_seq = 0;               // its first event still retained (where to replay from)
  uint64_t task_first_seq = 0;          // its very first event's, retained or not
  uint64_t output_removed_through = 0;  // the log retention removed task output up to this seq
};
// Asks the scheduler for task `task` (t42 or 42; a client's own tasks only). Errors: not
// a task id, no such task, not the caller's, no answer.
Result<FollowedTask> LookUpTask(ToolClient& client, const std::string& task, int timeout_ms);

// task.succeeded, task.failed or task.cancelled: nothing follows them.
bool IsTaskEnd(const wire::Event& e);

// A sink for an EventFollower that prints what a task wrote: stdout to stdout and stderr
// to stderr, byte for byte (or, `json`, each task.log event as a JSON line on stdout);
// the worker's notes (output cut by --max-output) and how the task ended, when it has no
// exit status of its own, on stderr after "TOOL: TASK: ".
class OutputPrinter {
 public:
  struct Options {
    std::string tool;    // "fm-ctl"
    std::string task;    // "t42"
    uint32_t attempt;    // this attempt only (it ends when a later one begins); 0: every one
    std::string stream;  // "stdout" or "stderr" only; empty: both
    bool json = false;
  };
  explicit OutputPrinter(Options options) : o_(std::move(options)) {}
  // Returns false once the attempt (or, every attempt followed, the task) ended.
  bool Take(const wire::Event& e);
  // Its exit status once ended: the task's own, or 1 when it has none (said on stderr).
  int status() const { return status_; }
  bool ended() const { return ended_; }

 private:
  bool End(const wire::Event& e);
  void Note(const std::string& text) const;

  Options o_;
  JsonCodec codec_;
  int status_ = 0;
  bool ended_ = false;
};

}  // namespace fm::tools
