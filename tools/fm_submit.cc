// fm-submit [--broker URL] [--wait | --attach] [--require CAP]... [--cpus N] [--memory SIZE]
//           [--gpus N] [-- COMMAND ARGS...]
//
// With a command: submits that one task (--attach: and prints its output as it comes,
// then exits with its exit status, as srun or docker run do). Without: reads one JSON task per line from
// stdin, submitting in batches as lines arrive. Prints one JSON line per input task,
// in input order: {"line", "task", "status", "reason", "message", "worker"}. Exit status
// 0 only if every task was accepted (with --wait: succeeded).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <deque>
#include <fstream>
#include <map>
#include <optional>
#include <set>
#include <tuple>
#include <unordered_map>

#include "runtime/logging.h"
#include "schemas/json.h"
#include "schemas/units.h"
#include "schemas/validate.h"
#include "schemas/vocabulary.h"
#include "tools/follow.h"
#include "tools/tool_client.h"

namespace {

// One task may take up to this much (a line of JSON); a submission message is sent before
// it passes kMaxBatchBytes: both well under the directed message limit (8 MiB).
constexpr size_t kMaxTaskBytes = 2u << 20;
constexpr size_t kMaxBatchBytes = 4u << 20;

using fm::wire::SubmitStatus;

// schemas/vocabulary.h spells them.
const char* StatusName(SubmitStatus s) { return fm::Name(s).empty() ? "unknown" : fm::Name(s).data(); }

// One input task, in input order, until its line is printed.
struct Entry {
  fm::SubmitLineFields fields;
  bool ready = false;
  bool ok = false;
  uint64_t task = 0;
};

// Submits in batches and survives a scheduler restart: every task carries a key (the
// user's, or one made from this process's address and the line number), so a batch
// that got no answer is sent again without creating a second task, and with --wait the
// tasks still running are asked about again by re-submitting their keys.
class Submitter {
 public:
  Submitter(fm::tools::ToolClient& client, bool wait, int timeout_ms, size_t batch_size)
      : client_(client), wait_(wait), timeout_ms_(timeout_ms), batch_size_(batch_size) {}

  // The key a task without one gets: resent after a lost reply, it is the same task.
  std::string AutoKey(uint64_t line) const { return "auto/" + client_.bus().address() + "/" + std::to_string(line); }

  void AddInvalid(uint64_t line, const std::string& message) {
    Entry e;
    e.fields.line = line;
    e.fields.status = "rejected";
    e.fields.reason = "invalid_task";
    e.fields.message = "line " + std::to_string(line) + ": " + message;
    e.ready = true;
    entries_.push_back(std::move(e));
  }

  // `bytes`: about what the task takes in a message (its line's length). A batch is sent
  // before it would grow past kMaxBatchBytes, so that no batch nears the message limit.
  void Add(uint64_t line, fm::TaskSpec spec, size_t bytes = 0) {
    if (batch_bytes_ + bytes > kMaxBatchBytes || batch_after_ + spec.after.size() > fm::kMaxAfterPerMessage) Flush();
    batch_bytes_ += bytes;
    batch_after_ += spec.after.size();
    if (spec.key.empty()) spec.key = AutoKey(line);
    Entry e;
    e.fields.line = line;
    entries_.push_back(std::move(e));
    batch_.indexes.push_back(first_index_ + entries_.size() - 1);
    batch_.specs.push_back(std::move(spec));
    batch_.bytes.push_back(bytes);
    if (batch_.specs.size() >= batch_size_) Flush();
  }

  // An array (`spec.array` set, element 0): `count` tasks of one group (the line's, or
  // one named after its key), element i keyed KEY[i], each printed on a line of its own
  // with the input line's number.
  void AddArray(uint64_t line, fm::TaskSpec spec, size_t bytes = 0) {
    const std::string key = spec.key.empty() ? AutoKey(line) : spec.key;
    if (spec.group.empty()) spec.group = "array/" + key.substr(0, fm::kMaxGroupBytes - 6);
    const uint32_t count = spec.array->count;
    for (uint32_t i = 0; i < count; ++i) {
      fm::TaskSpec element = spec;
      element.array->index = i;
      element.key = key + "[" + std::to_string(i) + "]";
      Add(line, std::move(element), bytes);
    }
  }

  void Flush() {
    if (batch_.specs.empty()) return;
    uint64_t correlation = next_correlation_++;
    batch_.payload = Encode(batch_.specs, correlation);
    Send(batch_);
    in_flight_bytes_ += batch_.payload.size();
    in_flight_[correlation] = std::move(batch_);
    batch_ = Batch();
    batch_bytes_ = 0;
    batch_after_ = 0;
    last_progress_ = std::chrono::steady_clock::now();
  }

  // Handles every waiting message.
  void Receive() {
    while (auto msg = client_.bus().Receive()) {
      auto env = fm::codec::Decode(msg->payload.data(), msg->payload.size());
      if (!env.ok()) {
        std::fprintf(stderr, "fm-submit: ignoring an unreadable message from %s: %s\n", msg->from.c_str(),
                     env.status().message().c_str());
        continue;
      }
      const fm::wire::Envelope& e = **env;
      if (e.body_type() == fm::wire::Body::Error) {
        const auto* error = e.body_as_Error();
        if (fm::ParseErrorCode(fm::codec::Str(error->code())) == fm::wire::ErrorCode::Storage) {
          RefuseBatch(error);  // the scheduler persisted nothing of that batch
        } else {
          // Typically: no scheduler connected right now. Batches are sent again until
          // the reply timeout says otherwise.
          last_error_ = client_.Explain(*error);
        }
      } else if (e.body_type() == fm::wire::Body::SubmitReply) {
        OnReply(*e.body_as_SubmitReply());
      } else if (e.body_type() == fm::wire::Body::TaskEnded) {
        OnEnded(*e.body_as_TaskEnded());
      } else if (e.body_type() == fm::wire::Body::TaskReady && msg->from == fm::bus::kSchedulerAddress) {
        OnSessionReady(*e.body_as_TaskReady());
      }
    }
    PrintReady();
  }

  // Sends again what got no answer, and (--wait) asks about tasks that have not ended.
  void Retry() {
    auto now = std::chrono::steady_clock::now();
    for (auto& [correlation, batch] : in_flight_) {
      if (now - batch.sent >= kResendAfter) Send(batch);
    }
    if (wait_ && !waiting_.empty() && now - last_poll_ >= kPollAfter) {
      last_poll_ = now;
      // In batches like the submissions, at most kPollBatches a round, each round going
      // on (in task order) from where the last one stopped: a long wait is asked about a
      // part at a time, never in one message the size of everything waited for.
      if (polls_.size() > 4 * kPollBatches) polls_.clear();  // answers lost on the way
      auto it = waiting_.upper_bound(poll_cursor_);
      size_t asked = 0;
      size_t round_bytes = 0;
      for (size_t round = 0; round < kPollBatches && asked < waiting_.size() && round_bytes < kMaxInFlightBytes;
           ++round) {
        std::vector<fm::TaskSpec> specs;
        size_t bytes = 0;
        while (specs.size() < batch_size_ && asked < waiting_.size()) {
          if (it == waiting_.end()) it = waiting_.begin();
          if (!specs.empty() && bytes + it->second.bytes > kMaxBatchBytes) break;
          specs.push_back(it->second.spec);
          bytes += it->second.bytes;
          poll_cursor_ = it->first;
          ++it;
          ++asked;
        }
        round_bytes += bytes;
        uint64_t correlation = next_correlation_++;
        polls_.insert(correlation);
        client_.bus().Send(fm::bus::kSchedulerAddress, Encode(specs, correlation));
      }
    }
  }

  bool Done() const { return in_flight_.empty() && batch_.specs.empty() && waiting_.empty(); }
  // As many batches as may wait for their answers: no more input is read meanwhile, so
  // that neither this process nor the scheduler's intake holds more than a few of them
  // however fast the input comes.
  bool Full() const { return in_flight_.size() >= kMaxInFlight || in_flight_bytes_ >= kMaxInFlightBytes; }
  bool TimedOut() const {
    return !in_flight_.empty() &&
           std::chrono::steady_clock::now() - last_progress_ > std::chrono::milliseconds(timeout_ms_);
  }
  const std::string& last_error() const { return last_error_; }

  // --attach: nothing on stdout but the task's output; a refusal on stderr.
  void Attach() { attach_ = true; }
  const std::string& attached_task() const { return attached_task_; }

  void PrintReady() {
    while (!entries_.empty() && entries_.front().ready) {
      Entry& e = entries_.front();
      if (!e.ok) all_ok_ = false;
      if (attach_) {
        if (e.ok) {
          attached_task_ = e.fields.task;
        } else {
          std::string why = e.fields.task.empty() ? "the task" : e.fields.task;
          why += e.fields.status == "rejected" ? " was rejected" : " " + e.fields.status;
          if (!e.fields.reason.empty()) why += " (" + e.fields.reason + ")";
          if (!e.fields.message.empty()) why += ": " + e.fields.message;
          std::fprintf(stderr, "fm-submit: %s\n", why.c_str());
        }
        entries_.pop_front();
        ++first_index_;
        continue;
      }
      std::string line = codec_.SubmitLineToJson(e.fields);
      std::fwrite(line.data(), 1, line.size(), stdout);
      std::fputc('\n', stdout);
      entries_.pop_front();
      ++first_index_;
    }
    std::fflush(stdout);
  }
  bool all_ok() const { return all_ok_; }

  // Ends the program when batches went unanswered for the reply timeout.
  void GiveUpIfUnanswered(const std::string& broker, uint64_t reply_ms) {
    if (!TimedOut()) return;
    Fatal(last_error_.empty()
              ? "no answer from the scheduler through broker " + broker + " within " + fm::FormatDuration(reply_ms)
              : last_error_ + "; gave up after " + fm::FormatDuration(reply_ms));
  }

  [[noreturn]] void Fatal(const std::string& message) {
    PrintReady();
    std::fprintf(stderr, "fm-submit: %s\n", message.c_str());
    std::exit(1);
  }

 private:
  static constexpr auto kResendAfter = std::chrono::seconds(2);
  static constexpr size_t kMaxInFlight = 16;
  static constexpr size_t kMaxInFlightBytes = 8u << 20;  // under the scheduler's 16 MiB per sender
  static constexpr size_t kPollBatches = 8;
  static constexpr auto kPollAfter = std::chrono::seconds(3);

  struct Batch {
    std::vector<size_t> indexes;  // entry index of each task
    std::vector<fm::TaskSpec> specs;
    std::vector<size_t> bytes;  // about what each task takes in a message
    std::string payload;
    std::chrono::steady_clock::time_point sent;
  };
  struct Waiting {
    std::vector<size_t> indexes;
    fm::TaskSpec spec;
    size_t bytes = 0;
  };
  struct Ended {
    SubmitStatus status;
    std::string reason, message, worker;
  };

  std::string Encode(const std::vector<fm::TaskSpec>& specs, uint64_t correlation) {
    flatbuffers::FlatBufferBuilder fbb(1024 + 256 * specs.size());
    std::vector<flatbuffers::Offset<fm::wire::TaskSpec>> offsets;
    offsets.reserve(specs.size());
    for (const auto& s : specs) offsets.push_back(fm::codec::ToWire(fbb, s));
    return fm::codec::Seal(fbb, fm::wire::CreateSubmitRequest(fbb, fbb.CreateVector(offsets), wait_, correlation));
  }

  void Send(Batch& batch) {
    batch.sent = std::chrono::steady_clock::now();
    if (!client_.bus().Send(fm::bus::kSchedulerAddress, batch.payload)) {
      last_error_ = "cannot queue a submission for broker " + client_.broker();
    }
  }

  Entry& At(size_t index) { return entries_[index - first_index_]; }

  void RefuseBatch(const fm::wire::Error* error) {
    uint64_t correlation = 0;
    try {
      correlation = std::stoull(fm::codec::Str(error->about()));
    } catch (...) {
      return;
    }
    auto it = in_flight_.find(correlation);
    if (it == in_flight_.end()) return;
    last_progress_ = std::chrono::steady_clock::now();
    for (size_t index : it->second.indexes) {
      Entry& e = At(index);
      e.fields.status = "rejected";
      e.fields.reason = "storage_unavailable";
      e.fields.message = fm::codec::Str(error->message());
      e.ready = true;
    }
    in_flight_bytes_ -= it->second.payload.size();
    in_flight_.erase(it);
  }

  void OnReply(const fm::wire::SubmitReply& reply) {
    size_t n = reply.results() ? reply.results()->size() : 0;
    if (polls_.erase(reply.correlation())) {
      // Answers about tasks still waited for: the ended ones are done.
      for (size_t i = 0; i < n; ++i) {
        const auto* r = reply.results()->Get(static_cast<flatbuffers::uoffset_t>(i));
        if (r->status() != SubmitStatus::Accepted) {
          ApplyEnded(r->task(), {r->status(), fm::codec::Str(r->reason()), fm::codec::Str(r->message()),
                                 fm::codec::Str(r->worker())});
        }
      }
      return;
    }
    auto it = in_flight_.find(reply.correlation());
    if (it == in_flight_.end()) return;  // a duplicate answer to a batch sent twice
    last_progress_ = std::chrono::steady_clock::now();
    Batch& batch = it->second;
    for (size_t i = 0; i < batch.indexes.size(); ++i) {
      Entry& e = At(batch.indexes[i]);
      if (i >= n) {
        e.fields.status = "rejected";
        e.fields.reason = "no_result";
        e.fields.message = "the scheduler's reply held no result for this task";
        e.ready = true;
        continue;
      }
      const auto* r = reply.results()->Get(static_cast<flatbuffers::uoffset_t>(i));
      e.task = r->task();
      e.fields.task = r->task() ? fm::TaskName(r->task()) : "";
      e.fields.status = StatusName(r->status());
      e.fields.reason = fm::codec::Str(r->reason());
      e.fields.message = fm::codec::Str(r->message());
      e.fields.worker = fm::codec::Str(r->worker());
      if (wait_ && r->status() == SubmitStatus::Accepted) {
        Waiting& w = waiting_[r->task()];
        w.indexes.push_back(batch.indexes[i]);
        w.spec = batch.specs[i];
        w.bytes = batch.bytes[i];
        if (auto early = ended_early_.find(r->task()); early != ended_early_.end()) {
          Ended ended = early->second;
          ended_early_.erase(early);
          ApplyEnded(r->task(), ended);
        }
      } else {
        e.ok = wait_ ? r->status() == SubmitStatus::Succeeded : r->status() == SubmitStatus::Accepted;
        e.ready = true;
      }
    }
    in_flight_bytes_ -= it->second.payload.size();
    in_flight_.erase(it);
  }

  // A session's sshd answers: said at once, in a line of its own (status "ready"),
  // before the task's own line comes when it ends.
  void OnSessionReady(const fm::wire::TaskReady& ready) {
    if (!ready.ref() || !ready.endpoint()) return;
    auto it = waiting_.find(ready.ref()->task());
    if (it == waiting_.end()) return;
    fm::Endpoint endpoint = fm::codec::FromWire(ready.endpoint());
    for (size_t index : it->second.indexes) {
      fm::SubmitLineFields fields;
      fields.line = At(index).fields.line;
      fields.task = fm::TaskName(ready.ref()->task());
      fields.status = "ready";
      fields.worker = fm::codec::Str(ready.worker());
      fields.endpoint = endpoint.user + "@" + endpoint.host + ":" + std::to_string(endpoint.port);
      fields.message = "ssh -p " + std::to_string(endpoint.port) + " " + endpoint.user + "@" + endpoint.host;
      std::string line = codec_.SubmitLineToJson(fields);
      std::fwrite(line.data(), 1, line.size(), stdout);
      std::fputc('\n', stdout);
    }
    std::fflush(stdout);
  }

  void OnEnded(const fm::wire::TaskEnded& ended) {
    auto one = [&](const fm::wire::SubmitResult& r) {
      Ended e{r.status(), fm::codec::Str(r.reason()), fm::codec::Str(r.message()), fm::codec::Str(r.worker())};
      if (!waiting_.count(r.task())) {
        ended_early_[r.task()] = e;  // its submit reply is still on its way
        return;
      }
      ApplyEnded(r.task(), e);
    };
    if (ended.results()) {
      for (const auto* r : *ended.results()) one(*r);
    } else if (ended.result()) {
      one(*ended.result());  // a scheduler from before batched results
    }
  }

  void ApplyEnded(uint64_t task, const Ended& ended) {
    auto it = waiting_.find(task);
    if (it == waiting_.end()) return;
    for (size_t index : it->second.indexes) {
      Entry& e = At(index);
      e.fields.status = StatusName(ended.status);
      e.fields.reason = ended.reason;
      e.fields.message = ended.message;
      e.fields.worker = ended.worker;
      e.ok = ended.status == SubmitStatus::Succeeded;
      e.ready = true;
    }
    waiting_.erase(it);
  }

  fm::tools::ToolClient& client_;
  fm::JsonCodec codec_;
  bool wait_;
  bool attach_ = false;
  std::string attached_task_;
  int timeout_ms_;
  size_t batch_size_;
  std::deque<Entry> entries_;
  size_t first_index_ = 0;               // index of entries_.front() since the start
  Batch batch_;                          // being filled
  size_t batch_bytes_ = 0;               // about what batch_ takes in a message
  size_t batch_after_ = 0;               // after keys in batch_ (the scheduler takes kMaxAfterPerMessage)
  std::map<uint64_t, Batch> in_flight_;  // by correlation
  size_t in_flight_bytes_ = 0;           // their payloads
  std::map<uint64_t, Waiting> waiting_;  // by task (--wait)
  std::unordered_map<uint64_t, Ended> ended_early_;
  uint64_t next_correlation_ = 1;
  std::set<uint64_t> polls_;  // correlations of the questions about waited tasks
  uint64_t poll_cursor_ = 0;  // the last task asked about
  bool all_ok_ = true;
  std::string last_error_;
  std::chrono::steady_clock::time_point last_progress_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point last_poll_ = std::chrono::steady_clock::now();
};

volatile std::sig_atomic_t g_stop = 0;

// --attach: submits `spec` and prints its output as it comes, from its first event (the
// stream is subscribed before the submission, and what came before the lookup is
// replayed from the store), until it ends; its exit status becomes ours.
int Attach(fm::tools::ToolClient& client, Submitter& submitter, fm::TaskSpec spec, const std::string& broker,
           int reply_ms) {
  std::optional<fm::tools::OutputPrinter> printer;
  fm::tools::EventFollower follower(client, "fm-submit", [&](const fm::wire::Event& e) { return printer->Take(e); });
  follower.Subscribe(true);
  submitter.Attach();
  submitter.Add(1, std::move(spec));
  submitter.Flush();
  while (!submitter.Done()) {
    if (client.Wait(250) == 1) submitter.Receive();
    submitter.Retry();
    submitter.GiveUpIfUnanswered(broker, reply_ms);
  }
  submitter.PrintReady();
  if (!submitter.all_ok() || submitter.attached_task().empty()) return 1;
  auto followed = fm::tools::LookUpTask(client, submitter.attached_task(), reply_ms);
  if (!followed.ok()) {
    std::fprintf(stderr, "fm-submit: %s\n", followed.status().message().c_str());
    return 1;
  }
  printer.emplace(fm::tools::OutputPrinter::Options{"fm-submit", followed->name, 0, "", false});
  std::signal(SIGINT, [](int) { g_stop = 1; });
  std::signal(SIGTERM, [](int) { g_stop = 1; });
  follower.Start(followed->first_seq > 0 ? static_cast<int64_t>(followed->first_seq) : -1);
  follower.Run(&g_stop, false);
  if (!printer->ended()) {
    std::fprintf(stderr, "fm-submit: detached; %s goes on (fm-ctl logs -f %s, fm-ctl cancel %s)\n",
                 followed->name.c_str(), followed->name.c_str(), followed->name.c_str());
    return 130;
  }
  return printer->status();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"fm-submit: submits tasks to fm and prints one JSON line per task"};
  std::string broker = fm::bus::DefaultBrokerUrl();
  bool wait = false;
  std::vector<std::string> requires_, labels, command, env, after;
  std::vector<int32_t> retry_codes;
  std::string cwd, kill_timeout, retry_backoff, cpus, memory, gpu_memory, gpu_model, image, timeout, key, group;
  uint64_t reply_ms = 30000;
  bool session = false;
  std::vector<std::string> ssh_keys;
  std::string ttl, idle_timeout;
  int64_t gpus = 0, max_attempts = 0;
  int32_t priority = 0;
  size_t batch = 1000;
  app.add_option("--broker", broker, "broker (default $FM_BROKER or tcp://127.0.0.1:5550)")->capture_default_str();
  std::string cert, broker_cert, root_cert;
  fm::tools::ToolClient::AddSecurityOptions(app, &cert, &broker_cert, &root_cert);
  app.add_flag("--wait", wait, "wait until each task ends; exit 0 only if all succeeded");
  app.add_option("--require", requires_, "capability the task needs (repeatable)");
  app.add_option("--cpus", cpus, "cpus the task needs");
  app.add_option("--memory", memory, "memory the task needs (e.g. 8GiB)");
  app.add_option("--gpus", gpus, "GPUs the task needs");
  app.add_option("--gpu-memory", gpu_memory, "memory per GPU");
  app.add_option("--gpu-model", gpu_model, "GPU model (substring, e.g. H100)");
  app.add_option("--label", labels, "K=V the worker must carry (repeatable)");
  app.add_option("--image", image, "run in this container image (needs capability docker)");
  app.add_option("--env", env, "NAME=VALUE in the task's environment (repeatable)");
  app.add_option("--cwd", cwd, "the task's working directory (absolute)");
  app.add_option("--retry-exit-code", retry_codes, "an exit status worth another attempt (repeatable)");
  app.add_option("--retry-backoff", retry_backoff, "the first retry's delay, doubled each attempt (1s)");
  app.add_option("--kill-timeout", kill_timeout, "on cancel or timeout: SIGTERM, then SIGKILL this much later (10s)");
  app.add_option("--timeout", timeout, "kill the task after this long (e.g. 30s)");
  app.add_option("--max-attempts", max_attempts, "attempts before the task fails");
  app.add_option("--priority", priority, "higher runs first");
  app.add_option("--key", key, "idempotency key: the same key is the same task");
  app.add_option("--after", after, "run only after your task with this key succeeded (repeatable)");
  app.add_option("--group", group, "a group name: fm-ctl tasks --group, fm-ctl group, fm-ctl cancel --group");
  std::string array;
  app.add_option("--array", array,
                 "N[%M]: N tasks of one group, FM_ARRAY_INDEX 0..N-1 each, at most M queued or running at once");
  fm::bus::AddDurationFlag(app, "--reply-timeout", &reply_ms,
                           "give up when the scheduler does not answer for this long");
  app.add_option("--batch", batch, "tasks per submission message")->capture_default_str();
  app.add_flag("--session", session,
               "an interactive session: a container running sshd for --ssh-key's holder (needs capability session); "
               "with --wait, its endpoint is printed as soon as sshd answers");
  app.add_option("--ssh-key", ssh_keys, "a public key file (.pub) allowed into the session (repeatable)");
  app.add_option("--ttl", ttl, "the session ends after this long (default 1h, at most the worker's maximum)");
  app.add_option("--idle-timeout", idle_timeout, "the session ends after this long with no connection (default 15m)");
  bool attach = false;
  app.add_flag("--attach", attach,
               "run the command as one task, print its output as it comes (stdout to stdout, stderr to stderr) and "
               "exit with its exit status");
  app.add_option("command", command, "the command to run (after --); without it, JSON lines from stdin");
  if (int rc = fm::bus::ParseCommandLine(app, "fm-submit", argc, argv); rc >= 0) return rc;
  if (attach && (command.empty() || session)) {
    std::fprintf(stderr, "fm-submit: --attach runs one command (after --), not a session or JSON lines\n");
    return 2;
  }

  auto client = fm::tools::ToolClient::Connect(broker, "fm-submit", attach, cert, broker_cert, root_cert);
  if (!client.ok()) {
    std::fprintf(stderr, "fm-submit: %s\n", client.status().message().c_str());
    return 2;
  }
  Submitter submitter(**client, wait, static_cast<int>(reply_ms), std::max<size_t>(batch, 1));

  if (!session && (!ssh_keys.empty() || !ttl.empty() || !idle_timeout.empty())) {
    std::fprintf(stderr, "fm-submit: --ssh-key, --ttl and --idle-timeout are for a --session\n");
    return 2;
  }
  if (!command.empty() || session) {
    fm::TaskSpec spec;
    if (session) {
      fm::SessionSpec s;
      for (const auto& path : ssh_keys) {
        std::ifstream in(path);
        std::string key;
        if (!in || !std::getline(in, key)) {
          std::fprintf(stderr, "fm-submit: --ssh-key %s: cannot read it\n", path.c_str());
          return 2;
        }
        while (!key.empty() && (key.back() == '\r' || key.back() == ' ')) key.pop_back();
        s.ssh_keys.push_back(key);
      }
      for (auto [flag, text, out] :
           {std::tuple{"--ttl", &ttl, &s.ttl_ms}, std::tuple{"--idle-timeout", &idle_timeout, &s.idle_timeout_ms}}) {
        if (text->empty()) continue;
        auto ms = fm::ParseDurationMs(*text);
        if (!ms.ok() || *ms < 1000) {
          std::fprintf(stderr, "fm-submit: %s: %s\n", flag, ms.ok() ? "at least 1s" : ms.status().message().c_str());
          return 2;
        }
        *out = *ms;
      }
      spec.session = std::move(s);
    }
    spec.command = command;
    spec.required_capabilities = requires_;
    fm::Normalize(&spec.required_capabilities);
    auto fail = [](const std::string& what, const fm::Status& s) {
      std::fprintf(stderr, "fm-submit: %s: %s\n", what.c_str(), s.message().c_str());
      return 2;
    };
    if (!cpus.empty()) {
      auto v = fm::ParseCpus(cpus);
      if (!v.ok()) return fail("--cpus", v.status());
      spec.resources.cpus_milli = *v;
    }
    if (!memory.empty()) {
      auto v = fm::ParseSize(memory);
      if (!v.ok()) return fail("--memory", v.status());
      spec.resources.memory = *v;
    }
    if (!gpu_memory.empty()) {
      auto v = fm::ParseSize(gpu_memory);
      if (!v.ok()) return fail("--gpu-memory", v.status());
      spec.resources.gpu_memory = *v;
    }
    if (gpus < 0 || max_attempts < 0) return fail("--gpus/--max-attempts", fm::Status::Invalid("cannot be negative"));
    spec.resources.gpus = static_cast<uint32_t>(gpus);
    spec.resources.gpu_model = gpu_model;
    for (const auto& l : labels) {
      auto parsed = fm::ParseLabel(l);
      if (!parsed.ok()) return fail("--label", parsed.status());
      spec.labels.push_back(std::move(*parsed));
    }
    fm::Normalize(&spec.labels);
    for (const auto& e : env) {
      size_t eq = e.find('=');
      if (eq == std::string::npos) {
        return fail("--env", fm::Status::Invalid("\"" + e + "\" is not NAME=VALUE"));
      }
      spec.env.emplace_back(e.substr(0, eq), e.substr(eq + 1));
    }
    fm::Normalize(&spec.env);
    spec.cwd = cwd;
    spec.retry_exit_codes = retry_codes;
    fm::Normalize(&spec.retry_exit_codes);
    if (!retry_backoff.empty()) {
      auto v = fm::ParseDurationMs(retry_backoff);
      if (!v.ok() || *v == 0) {
        return fail("--retry-backoff", v.ok() ? fm::Status::Invalid("must be at least 1ms") : v.status());
      }
      spec.retry_backoff_ms = *v;
    }
    if (!kill_timeout.empty()) {
      auto v = fm::ParseDurationMs(kill_timeout);
      if (!v.ok() || *v == 0) {
        return fail("--kill-timeout", v.ok() ? fm::Status::Invalid("must be at least 1ms") : v.status());
      }
      spec.kill_timeout_ms = *v;
    }
    spec.image = image;
    if (!timeout.empty()) {
      auto v = fm::ParseDurationMs(timeout);
      if (!v.ok()) return fail("--timeout", v.status());
      spec.timeout_ms = *v;
    }
    spec.max_attempts = static_cast<uint32_t>(max_attempts);
    spec.priority = priority;
    spec.key = key;
    spec.after = after;
    fm::Normalize(&spec.after);
    spec.group = group;
    if (!array.empty()) {
      // N or N%M, as Slurm's --array takes a bound.
      char* end = nullptr;
      const unsigned long long count = std::strtoull(array.c_str(), &end, 10);
      unsigned long long bound = 0;
      bool ok = end != array.c_str() && count >= 1 && count <= fm::kMaxArrayCount;
      if (ok && *end == '%') {
        const char* m = end + 1;
        bound = std::strtoull(m, &end, 10);
        ok = end != m && bound >= 1 && bound <= count;
      }
      if (!ok || *end != '\0') {
        return fail("--array", fm::Status::Invalid("\"" + array + "\" is not N or N%M with 1 <= M <= N <= " +
                                                   std::to_string(fm::kMaxArrayCount)));
      }
      if (session || attach) return fail("--array", fm::Status::Invalid("is for commands, not --session or --attach"));
      spec.array = fm::TaskSpec::Array{0, static_cast<uint32_t>(count), static_cast<uint32_t>(bound)};
    }
    if (fm::Status s = fm::ValidateTaskSpec(spec); !s.ok()) return fail("task", s);
    if (attach) return Attach(**client, submitter, std::move(spec), broker, static_cast<int>(reply_ms));
    if (spec.array) {
      submitter.AddArray(1, std::move(spec));
    } else {
      submitter.Add(1, std::move(spec));
    }
    submitter.Flush();
  }

  fm::JsonCodec codec;
  bool stdin_open = command.empty() && !session;
  uint64_t line_number = 0;
  std::string buffer;
  while (stdin_open || !submitter.Done()) {
    const bool reading = stdin_open && !submitter.Full();
    int woke = (*client)->Wait(reading ? 1000 : 250, reading ? STDIN_FILENO : -1);
    if (woke == 1) submitter.Receive();
    submitter.Retry();
    if (woke == 2) {
      char chunk[65536];
      ssize_t n = read(STDIN_FILENO, chunk, sizeof chunk);
      if (n <= 0) {
        stdin_open = false;
        if (!buffer.empty()) buffer.push_back('\n');  // a last line without newline
      } else {
        buffer.append(chunk, static_cast<size_t>(n));
      }
      size_t start = 0;
      for (size_t nl; (nl = buffer.find('\n', start)) != std::string::npos; start = nl + 1) {
        ++line_number;
        std::string_view line(buffer.data() + start, nl - start);
        if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;  // blank: not a task
        if (line.size() > kMaxTaskBytes) {  // refused alone, before anything is sent
          submitter.AddInvalid(line_number, "the task is " + fm::FormatSize(line.size()) + ", over the limit of " +
                                                fm::FormatSize(kMaxTaskBytes) + " for one task");
          continue;
        }
        auto spec = codec.ParseTaskLine(line);
        if (spec.ok() && spec->array) {
          submitter.AddArray(line_number, std::move(*spec), line.size());
        } else if (spec.ok()) {
          submitter.Add(line_number, std::move(*spec), line.size());
        } else {
          submitter.AddInvalid(line_number, spec.status().message());
        }
      }
      buffer.erase(0, start);
      submitter.Flush();
      submitter.PrintReady();
    }
    submitter.GiveUpIfUnanswered(broker, reply_ms);
  }
  submitter.PrintReady();
  return submitter.all_ok() ? 0 : 1;
}
