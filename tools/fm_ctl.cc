// fm-ctl [--broker URL] [--json] workers | tasks [--state S] [--worker W] [--owner O] [--limit N] | task TASK
//        | drain (WORKER... | --node NODE) [--reason TEXT] [--wait [--deadline D]] | undrain WORKER
//        | cancel TASK | ping | ha | snapshot DIR | ssh TASK | logs TASK [--attempt N] [--stream S] [--follow]
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <set>
#include <thread>

#include "runtime/logging.h"
#include "schemas/json.h"
#include "schemas/text.h"
#include "schemas/units.h"
#include "schemas/vocabulary.h"
#include "tools/follow.h"
#include "tools/tool_client.h"

namespace {

std::string Join(const std::vector<std::string>& parts, const char* sep) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : sep) + p;
  return out;
}

void PrintTable(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> widths;
  for (const auto& row : rows) {
    widths.resize(std::max(widths.size(), row.size()));
    for (size_t i = 0; i < row.size(); ++i) widths[i] = std::max(widths[i], row[i].size());
  }
  for (const auto& row : rows) {
    std::string line;
    for (size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(widths[i] - row[i].size() + 2, ' ');
    }
    std::printf("%s\n", line.c_str());
  }
}

std::string Gpus(const fm::wire::Hardware* hw) {
  if (!hw || !hw->gpus() || hw->gpus()->size() == 0) return "-";
  std::vector<std::string> parts;
  for (const auto* g : *hw->gpus()) parts.push_back(fm::codec::Str(g->model()) + " " + fm::FormatSize(g->memory()));
  return std::to_string(parts.size()) + "x [" + Join(parts, ", ") + "]";
}

// One JSON array, one element per line, through the FlatBuffers printer.
template <typename T>
void PrintJsonArray(fm::JsonCodec& codec, const flatbuffers::Vector<flatbuffers::Offset<T>>* items,
                    const char* table_name) {
  std::printf("[");
  if (items) {
    for (flatbuffers::uoffset_t i = 0; i < items->size(); ++i) {
      std::printf("%s%s", i ? ",\n" : "", codec.TableToJson(items->Get(i), table_name).c_str());
    }
  }
  std::printf("]\n");
}

// One control request and its reply (kept in `storage`). Error: no answer in time, or
// the scheduler said no (its message).
fm::Result<const fm::wire::ControlReply*> Control(fm::tools::ToolClient& client, fm::wire::ControlOp op,
                                                  const std::string& target, int timeout_ms,
                                                  std::deque<zmq::message_t>* storage, const std::string& reason = "",
                                                  const std::string& worker = "") {
  static uint64_t correlation = 1000;
  flatbuffers::FlatBufferBuilder fbb(256);
  std::string request = fm::codec::Seal(
      fbb, fm::wire::CreateControlRequestDirect(fbb, op, target.empty() ? nullptr : target.c_str(), ++correlation, 0, 0,
                                                nullptr, worker.empty() ? nullptr : worker.c_str(), nullptr,
                                                reason.empty() ? nullptr : reason.c_str()));
  const uint64_t mine = correlation;
  auto reply =
      client.Call(request, fm::wire::Body::ControlReply, timeout_ms, &storage->emplace_back(),
                  [mine](const fm::wire::Envelope& e) { return e.body_as_ControlReply()->correlation() == mine; });
  if (!reply.ok()) return reply.status();
  const auto* r = (*reply)->body_as_ControlReply();
  if (!r->ok()) return fm::Status::Invalid(fm::codec::Str(r->message()));
  return r;
}

// fm-ctl drain: the workers named (or every worker of --node), then with --wait until
// they hold no task; past --deadline the tasks still there are cancelled.
int Drain(fm::tools::ToolClient& client, std::vector<std::string> targets, const std::string& node,
          const std::string& reason, bool wait, int64_t deadline_ms, int timeout_ms) {
  std::deque<zmq::message_t> storage;  // replies of the drains (printed below)
  auto held = [&](std::map<std::string, uint32_t>* tasks) -> fm::Status {
    std::deque<zmq::message_t> poll;  // one reply per poll, dropped after it
    auto r = Control(client, fm::wire::ControlOp::Workers, "", timeout_ms, &poll);
    if (!r.ok()) return r.status();
    tasks->clear();
    if ((*r)->workers()) {
      for (const auto* w : *(*r)->workers()) {
        if (!node.empty() && fm::codec::Str(w->node()) != node) continue;
        (*tasks)[fm::codec::Str(w->id())] = w->tasks();
      }
    }
    return fm::Status::Ok();
  };
  std::map<std::string, uint32_t> tasks;
  if (!node.empty()) {
    if (fm::Status s = held(&tasks); !s.ok()) {
      std::fprintf(stderr, "fm-ctl: %s\n", s.message().c_str());
      return 1;
    }
    if (tasks.empty()) {
      std::fprintf(stderr, "fm-ctl: no live worker on node \"%s\"\n", node.c_str());
      return 1;
    }
    for (const auto& [id, n] : tasks) targets.push_back(id);
  }
  for (const auto& id : targets) {
    auto r = Control(client, fm::wire::ControlOp::Drain, id, timeout_ms, &storage, reason);
    if (!r.ok()) {
      std::fprintf(stderr, "fm-ctl: %s\n", r.status().message().c_str());
      return 1;
    }
    std::printf("%s\n", fm::codec::Str((*r)->message()).c_str());
  }
  if (!wait) return 0;
  auto start = std::chrono::steady_clock::now();
  std::set<std::string> told;  // tasks already said cancelled
  for (;;) {
    if (fm::Status s = held(&tasks); !s.ok()) {
      std::fprintf(stderr, "fm-ctl: %s\n", s.message().c_str());
      return 1;
    }
    size_t left = 0;
    for (const auto& id : targets) left += tasks.count(id) ? tasks[id] : 0;  // a worker gone holds nothing
    if (left == 0) break;
    auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
    // Past the deadline, what is still there is cancelled, polled again until gone (a
    // page that failed or a cancel that timed out is tried again at the next poll).
    if (deadline_ms >= 0 && waited.count() >= deadline_ms) {
      for (const auto& id : targets) {
        std::deque<zmq::message_t> poll;
        auto page = Control(client, fm::wire::ControlOp::Tasks, "", timeout_ms, &poll, "", id);
        if (!page.ok() || !(*page)->tasks()) continue;
        for (const auto* t : *(*page)->tasks()) {
          std::string state = fm::codec::Str(t->state()), task = fm::codec::Str(t->task());
          if (state != "queued" && state != "running") continue;
          auto c = Control(client, fm::wire::ControlOp::Cancel, task, timeout_ms, &poll);
          if (c.ok() && told.insert(task).second) {
            std::printf("deadline passed: %s on %s: %s\n", task.c_str(), id.c_str(),
                        fm::codec::Str((*c)->message()).c_str());
          }
        }
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // polling the scheduler, not a test
  }
  for (const auto& id : targets) std::printf("drained %s: no task left\n", id.c_str());
  return 0;
}

// fm-ctl ssh: waits (polling the task) until the session's sshd answers, then runs ssh
// to it (or prints the command). Fails when the task ends first or is not a session.
int Ssh(fm::tools::ToolClient& client, const std::string& task, const std::string& identity, bool print,
        const std::vector<std::string>& extra, int timeout_ms, int wait_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(wait_ms);
  uint64_t correlation = 0;
  for (;;) {
    flatbuffers::FlatBufferBuilder fbb(256);
    std::string request = fm::codec::Seal(
        fbb, fm::wire::CreateControlRequestDirect(fbb, fm::wire::ControlOp::Task, task.c_str(), ++correlation));
    zmq::message_t storage;
    auto reply = client.Call(request, fm::wire::Body::ControlReply, timeout_ms, &storage);
    if (!reply.ok()) {
      std::fprintf(stderr, "fm-ctl: %s\n", reply.status().message().c_str());
      return 1;
    }
    const auto* r = (*reply)->body_as_ControlReply();
    if (!r->ok() || !r->tasks() || r->tasks()->size() != 1) {
      std::fprintf(stderr, "fm-ctl: %s\n", fm::codec::Str(r->message()).c_str());
      return 1;
    }
    const auto* t = r->tasks()->Get(0);
    if (!t->spec() || !t->spec()->session()) {
      std::fprintf(stderr, "fm-ctl: %s is not a session (submit one with fm-submit --session)\n", task.c_str());
      return 2;
    }
    const std::string state = fm::codec::Str(t->state());
    if (t->endpoint() && t->endpoint()->port() != 0 && state == "running") {
      fm::Endpoint e = fm::codec::FromWire(t->endpoint());
      std::vector<std::string> argv = {"ssh", "-p", std::to_string(e.port)};
      if (!identity.empty()) argv.insert(argv.end(), {"-i", identity});
      // Each session has host keys of its own image on a port of its own: accept a new one.
      argv.insert(argv.end(), {"-o", "StrictHostKeyChecking=accept-new"});
      // The scheduler took only a plain host and user (ValidateEndpoint); "--" anyway, so
      // that nothing from the cluster is ever read as an option of ssh.
      argv.push_back("--");
      argv.push_back(e.user + "@" + e.host);
      argv.insert(argv.end(), extra.begin(), extra.end());
      if (print) {
        std::string line;
        for (const auto& a : argv) line += (line.empty() ? "" : " ") + a;
        std::printf("%s\n", line.c_str());
        return 0;
      }
      std::vector<char*> args;
      for (auto& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      execvp("ssh", args.data());
      std::fprintf(stderr, "fm-ctl: cannot run ssh: %s\n", std::strerror(errno));
      return 1;
    }
    if (state != "pending" && state != "queued" && state != "running") {
      std::fprintf(stderr, "fm-ctl: %s is %s%s%s\n", task.c_str(), state.c_str(),
                   t->message() && t->message()->size() ? ": " : "", fm::codec::Str(t->message()).c_str());
      return 1;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      std::fprintf(stderr, "fm-ctl: %s is %s and not ready yet\n", task.c_str(), state.c_str());
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // polling the scheduler, not a test
  }
}

// fm-ctl logs: what an attempt of a task wrote, byte for byte, stdout to stdout and
// stderr to stderr: the stored output (replays), then with --follow the live stream until
// the attempt ends, whose exit status it returns. The worker's notes (output cut by
// --max-output) go to stderr after "fm-ctl: ".
volatile std::sig_atomic_t g_stop = 0;

int Logs(fm::tools::ToolClient& client, const std::string& task, uint32_t attempt, const std::string& stream,
         bool follow, bool json, int timeout_ms) {
  auto followed = fm::tools::LookUpTask(client, task, timeout_ms);
  if (!followed.ok()) {
    std::fprintf(stderr, "fm-ctl: logs: %s\n", followed.status().message().c_str());
    return 1;
  }
  const std::string& name = followed->name;
  const uint32_t wanted = attempt > 0 ? attempt : followed->attempt;
  if (wanted > followed->attempt) {
    std::fprintf(stderr, "fm-ctl: logs: %s has no attempt %u yet (it is at attempt %u)\n", name.c_str(), wanted,
                 followed->attempt);
    return 1;
  }
  if (followed->first_seq == 0) {
    std::fprintf(stderr, "fm-ctl: logs: no stored event of %s is left (the event retention removed them)\n",
                 name.c_str());
    return 1;
  }
  fm::tools::OutputPrinter printer({"fm-ctl", name, wanted, stream, json});
  // Where the attempt began: its output all comes after its first event (task.dispatched).
  uint64_t attempt_from = 0;
  fm::tools::EventFollower follower(client, "fm-ctl", [&](const fm::wire::Event& e) {
    if (attempt_from == 0 && e.attempt() == wanted && fm::codec::Str(e.task()) == name) attempt_from = e.seq();
    return printer.Take(e);
  });
  std::signal(SIGINT, [](int) { g_stop = 1; });
  std::signal(SIGTERM, [](int) { g_stop = 1; });
  follower.Subscribe(true);
  follower.Start(static_cast<int64_t>(followed->first_seq));
  follower.Run(&g_stop, !follow);
  std::fflush(stdout);
  // Output older than the log retention's cut is gone though the task is not: said, and
  // not a success, rather than a silent gap. The attempt began at its first event seen, or
  // (that event gone with the event retention) no later than the task's first.
  const uint64_t began = attempt_from != 0               ? attempt_from
                         : followed->task_first_seq != 0 ? followed->task_first_seq
                                                         : followed->first_seq;
  const bool cut = began <= followed->output_removed_through;
  if (cut) {
    std::fprintf(stderr,
                 "fm-ctl: logs: %s's output may be incomplete: the log retention (--log-retention) removed the "
                 "stored task output up to event seq %llu, and attempt %u of %s began at seq %llu\n",
                 name.c_str(), static_cast<unsigned long long>(followed->output_removed_through), wanted, name.c_str(),
                 static_cast<unsigned long long>(began));
  }
  if (follow && printer.ended()) return printer.status();
  return follow ? 130 : cut ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"fm-ctl: inspects and steers an fm cluster"};
  std::string broker = fm::bus::DefaultBrokerUrl(), target;
  uint64_t timeout_ms = 10000, wait_ms = 300000;
  bool json = false;
  app.add_option("--broker", broker, "broker (default $FM_BROKER or tcp://127.0.0.1:5550)")->capture_default_str();
  std::string cert, broker_cert, root_cert;
  fm::tools::ToolClient::AddSecurityOptions(app, &cert, &broker_cert, &root_cert);
  app.add_flag("--json", json, "print JSON instead of a table");
  fm::bus::AddDurationFlag(app, "--timeout", &timeout_ms, "how long to wait for the scheduler");
  app.require_subcommand(1);
  auto* workers = app.add_subcommand("workers", "each worker's capabilities, hardware, slots in use and liveness");
  auto* tasks = app.add_subcommand("tasks", "tasks not ended and the most recently ended, by id");
  std::string state_filter, worker_filter, owner_filter;
  uint64_t limit = 0;
  tasks->add_option("--state", state_filter, "only tasks in this state (pending, queued, running, succeeded, ...)");
  tasks->add_option("--worker", worker_filter, "only tasks on this worker");
  tasks->add_option("--owner", owner_filter, "only tasks this certificate name submitted");
  tasks->add_option("--limit", limit, "at most this many tasks (default: all)");
  std::string group_filter;
  tasks->add_option("--group", group_filter, "only the tasks of this group");
  auto* group = app.add_subcommand("group", "a group's tasks counted per state");
  group->add_option("group", group_filter, "the group's name")->required();
  group->add_option("--owner", owner_filter, "an operator: the group of this certificate name (default: yours)");
  auto* task = app.add_subcommand("task", "one task: its spec, attempts, why it waits, and its events");
  task->add_option("task", target, "task id (t42)")->required();
  auto* drain = app.add_subcommand("drain", "stop new work to a worker; its running tasks finish");
  std::vector<std::string> drain_workers;
  std::string drain_node, drain_reason, drain_deadline;
  bool drain_wait = false;
  drain->add_option("worker", drain_workers, "worker ids");
  drain->add_option("--node", drain_node, "every worker on this node");
  drain->add_option("--reason", drain_reason, "why (shown by fm-ctl workers and on the event stream)");
  drain->add_flag("--wait", drain_wait, "return once the workers hold no task");
  drain->add_option("--deadline", drain_deadline,
                    "with --wait: cancel the tasks still there after this long (e.g. 10m)");
  auto* snapshot = app.add_subcommand(
      "snapshot", "write a consistent copy of the scheduler's store into a new directory on the scheduler's host");
  snapshot->add_option("dir", target, "absolute path of a directory that does not exist yet")->required();
  auto* undrain = app.add_subcommand("undrain", "let a drained worker take new work again");
  undrain->add_option("worker", target, "worker id")->required();
  auto* cancel = app.add_subcommand("cancel", "cancel a task");
  cancel->add_option("task", target, "task id (t42)");
  cancel->add_option("--group", group_filter, "every task of this group not ended, at once");
  cancel->add_option("--owner", owner_filter, "with --group, an operator: that certificate name's group");
  auto* ping = app.add_subcommand("ping", "exits 0 when the scheduler answers (within --timeout), 1 when not");
  auto* ha = app.add_subcommand("ha", "the leadership through etcd: leader, epoch, since when, the in-sync set");
  auto* ssh = app.add_subcommand("ssh", "wait until a session task's sshd answers, then ssh into it");
  std::string ssh_identity;
  bool ssh_print = false;
  std::vector<std::string> ssh_extra;
  ssh->add_option("task", target, "the session task (t42)")->required();
  ssh->add_option("-i,--identity", ssh_identity, "the private key (passed to ssh -i)");
  ssh->add_flag("--print", ssh_print, "print the ssh command instead of running it");
  fm::bus::AddDurationFlag(*ssh, "--wait", &wait_ms, "how long to wait for the session to be ready");
  ssh->add_option("command", ssh_extra, "a command to run there (after --) instead of a shell");
  auto* logs = app.add_subcommand("logs", "what an attempt of a task wrote, stdout to stdout and stderr to stderr");
  uint32_t logs_attempt = 0;
  std::string logs_stream;
  bool logs_follow = false;
  logs->add_option("task", target, "task id (t42)")->required();
  logs->add_option("--attempt", logs_attempt, "this attempt (1, 2, ...; default: the latest)");
  logs->add_option("--stream", logs_stream, "only stdout or only stderr")->check(CLI::IsMember({"stdout", "stderr"}));
  logs->add_flag("-f,--follow", logs_follow,
                 "go on as it writes until the attempt ends, then exit with its exit status");
  for (auto* sub : {workers, tasks, task, logs, ha, group}) sub->add_flag("--json", json, "print JSON");
  if (int rc = fm::bus::ParseCommandLine(app, "fm-ctl", argc, argv); rc >= 0) return rc;

  if (drain->parsed() && drain_workers.empty() == drain_node.empty()) {
    std::fprintf(stderr, "fm-ctl: drain: name workers or --node NODE (one of the two)\n");
    return 2;
  }
  if (cancel->parsed() && target.empty() == group_filter.empty()) {
    std::fprintf(stderr, "fm-ctl: cancel: name a task or --group GROUP (one of the two)\n");
    return 2;
  }
  if (drain->parsed() && !drain_deadline.empty() && !drain_wait) {
    std::fprintf(stderr, "fm-ctl: drain: --deadline needs --wait\n");
    return 2;
  }
  int64_t deadline_ms = -1;
  if (!drain_deadline.empty()) {
    auto d = fm::ParseDurationMs(drain_deadline);
    if (!d.ok()) {
      std::fprintf(stderr, "fm-ctl: --deadline: %s\n", d.status().message().c_str());
      return 2;
    }
    deadline_ms = static_cast<int64_t>(*d);
  }
  if (snapshot->parsed() && (target.empty() || target[0] != '/')) {
    std::fprintf(stderr, "fm-ctl: snapshot: \"%s\" is not an absolute path (the scheduler writes it on its host)\n",
                 target.c_str());
    return 2;
  }
  fm::wire::ControlOp op = ping->parsed()       ? fm::wire::ControlOp::Ping
                           : ha->parsed()       ? fm::wire::ControlOp::Ha
                           : snapshot->parsed() ? fm::wire::ControlOp::Snapshot
                           : workers->parsed()  ? fm::wire::ControlOp::Workers
                           : tasks->parsed()    ? fm::wire::ControlOp::Tasks
                           : task->parsed()     ? fm::wire::ControlOp::Task
                           : drain->parsed()    ? fm::wire::ControlOp::Drain
                           : undrain->parsed()  ? fm::wire::ControlOp::Undrain
                           : group->parsed()    ? fm::wire::ControlOp::Group
                                                : fm::wire::ControlOp::Cancel;
  auto client = fm::tools::ToolClient::Connect(broker, "fm-ctl", logs->parsed(), cert, broker_cert, root_cert);
  if (!client.ok()) {
    std::fprintf(stderr, "fm-ctl: %s\n", client.status().message().c_str());
    return 2;
  }
  if (logs->parsed()) {
    return Logs(**client, target, logs_attempt, logs_stream, logs_follow, json, static_cast<int>(timeout_ms));
  }
  if (ssh->parsed()) {
    return Ssh(**client, target, ssh_identity, ssh_print, ssh_extra, static_cast<int>(timeout_ms),
               static_cast<int>(wait_ms));
  }
  if (drain->parsed()) {
    return Drain(**client, drain_workers, drain_node, drain_reason, drain_wait, deadline_ms,
                 static_cast<int>(timeout_ms));
  }
  // One request; for tasks, pages follow one another until the last (or --limit).
  uint64_t after = 0, correlation = 0;
  std::deque<zmq::message_t> pages;  // replies point into these: no relocation
  std::vector<const fm::wire::ControlReply*> replies;
  size_t listed = 0;
  for (;;) {
    flatbuffers::FlatBufferBuilder fbb(256);
    uint32_t page_limit = limit ? static_cast<uint32_t>(std::min<uint64_t>(limit - listed, UINT32_MAX)) : 0;
    std::string request = fm::codec::Seal(
        fbb,
        fm::wire::CreateControlRequestDirect(fbb, op, target.empty() ? nullptr : target.c_str(), ++correlation, after,
                                             page_limit, state_filter.empty() ? nullptr : state_filter.c_str(),
                                             worker_filter.empty() ? nullptr : worker_filter.c_str(),
                                             owner_filter.empty() ? nullptr : owner_filter.c_str(), nullptr,
                                             group_filter.empty() ? nullptr : group_filter.c_str()));
    zmq::message_t& storage = pages.emplace_back();
    auto reply = (*client)->Call(request, fm::wire::Body::ControlReply, static_cast<int>(timeout_ms), &storage);
    if (!reply.ok()) {
      std::fprintf(stderr, "fm-ctl: %s\n", reply.status().message().c_str());
      return 1;
    }
    const auto* page = (*reply)->body_as_ControlReply();
    if (!page->ok()) {
      std::fprintf(stderr, "fm-ctl: %s\n", fm::codec::Str(page->message()).c_str());
      return 1;
    }
    replies.push_back(page);
    listed += page->tasks() ? page->tasks()->size() : 0;
    if (op != fm::wire::ControlOp::Tasks || page->next() == 0 || (limit && listed >= limit)) break;
    after = page->next();
  }
  const auto* r = replies.front();
  if (op == fm::wire::ControlOp::Ping) {
    std::printf("%s\n", fm::codec::Str(r->message()).c_str());
    return 0;
  }
  fm::JsonCodec codec;
  if (op == fm::wire::ControlOp::Ha) {
    const fm::wire::HaView* h = r->ha();
    if (h == nullptr) {
      if (json) {
        std::printf("{}\n");
      } else {
        std::printf("%s\n", fm::Printable(fm::codec::Str(r->message())).c_str());
      }
      return 0;
    }
    if (json) {
      std::printf("%s\n", codec.TableToJson(h, "fm.wire.HaView").c_str());
      return 0;
    }
    auto text = [](const flatbuffers::String* s) { return fm::Printable(fm::codec::Str(s)); };
    std::string in_sync;
    for (const auto& m : fm::codec::Strings(h->in_sync())) in_sync += (in_sync.empty() ? "" : ", ") + fm::Printable(m);
    std::printf("cluster   %s\nleader    %s (%s)%s\nepoch     %llu\nsince     %s\nin sync   %s\n",
                text(h->name()).c_str(), text(h->leader()).c_str(), text(h->describe()).c_str(),
                h->forced() ? ", promoted by force" : "", static_cast<unsigned long long>(h->epoch()),
                fm::FormatTimeMs(h->since_ms()).c_str(), in_sync.c_str());
    if (h->standbys() == nullptr || h->standbys()->size() == 0) {
      std::printf("standbys  none following (standbys follow a leader started with --ha-listen)\n");
      return 0;
    }
    std::printf("batches   %llu\n", static_cast<unsigned long long>(h->batches()));
    std::vector<std::vector<std::string>> rows{{"STANDBY", "STATE", "ACKED", "BEHIND"}};
    for (const auto* s : *h->standbys()) {
      rows.push_back({text(s->node()), text(s->state()), std::to_string(s->acked()), std::to_string(s->behind())});
    }
    PrintTable(rows);
    return 0;
  }
  if (op == fm::wire::ControlOp::Group) {
    const fm::wire::GroupView* g = r->group();
    if (g == nullptr) {
      std::fprintf(stderr, "fm-ctl: the scheduler sent no group\n");
      return 1;
    }
    if (json) {
      std::printf("%s\n", codec.TableToJson(g, "fm.wire.GroupView").c_str());
      return 0;
    }
    std::vector<std::vector<std::string>> rows{
        {"GROUP", "PENDING", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"}};
    rows.push_back({fm::Printable(fm::codec::Str(g->name())), std::to_string(g->pending()), std::to_string(g->queued()),
                    std::to_string(g->running()), std::to_string(g->succeeded()), std::to_string(g->failed()),
                    std::to_string(g->cancelled())});
    PrintTable(rows);
    if (r->message() && r->message()->size()) std::fprintf(stderr, "fm-ctl: %s\n", r->message()->c_str());
    return 0;
  }
  if (op == fm::wire::ControlOp::Workers) {
    if (json) {
      PrintJsonArray(codec, r->workers(), "fm.wire.WorkerView");
      return 0;
    }
    std::vector<std::vector<std::string>> rows{
        {"WORKER", "NODE", "CAPABILITIES", "CPUS", "MEMORY", "GPUS", "LABELS", "SLOTS", "LIVENESS"}};
    if (r->workers()) {
      for (const auto* w : *r->workers()) {
        auto caps = fm::codec::Strings(w->capabilities());
        std::vector<std::string> labels;
        if (w->labels()) {
          for (const auto* kv : *w->labels())
            labels.push_back(fm::codec::Str(kv->key()) + "=" + fm::codec::Str(kv->value()));
        }
        const auto* hw = w->hardware();
        std::string liveness = w->live() ? "live" : "unconfirmed";
        liveness += " (" + std::to_string(w->last_seen_ms_ago()) + " ms ago)";
        if (w->draining()) {
          liveness += ", draining";
          if (w->drain_reason() && w->drain_reason()->size()) liveness += " (" + w->drain_reason()->str() + ")";
        }
        if (w->noop_executor()) liveness += ", NOOP EXECUTOR (runs nothing)";
        for (const auto& [capability, reason] : fm::codec::FromWire(w->quarantined())) {
          liveness += ", " + capability + " quarantined (" + reason + ")";
        }
        if (fm::codec::Str(w->limits()) == "off") liveness += ", limits: off";
        rows.push_back({fm::codec::Str(w->id()), fm::codec::Str(w->node()), caps.empty() ? "-" : Join(caps, ","),
                        fm::FormatCpus(w->cpus_milli_used()) + "/" + fm::FormatCpus(hw ? hw->cpus_milli() : 0),
                        fm::FormatSize(w->memory_used()) + "/" + fm::FormatSize(hw ? hw->memory() : 0), Gpus(hw),
                        labels.empty() ? "-" : Join(labels, ","),
                        std::to_string(w->slots_used()) + "/" + std::to_string(w->slots()), liveness});
      }
    }
    PrintTable(rows);
  } else if (op == fm::wire::ControlOp::Tasks) {
    if (json) {
      std::printf("[");
      bool first = true;
      for (const auto* page : replies) {
        if (!page->tasks()) continue;
        for (const auto* t : *page->tasks()) {
          std::printf("%s%s", first ? "" : ",\n", codec.TableToJson(t, "fm.wire.TaskView").c_str());
          first = false;
        }
      }
      std::printf("]\n");
      return 0;
    }
    std::vector<std::vector<std::string>> rows{{"TASK", "STATE", "ATTEMPT", "WORKER", "OWNER", "REASON", "MESSAGE"}};
    for (const auto* page : replies) {
      if (!page->tasks()) continue;
      for (const auto* t : *page->tasks()) {
        rows.push_back({fm::codec::Str(t->task()), fm::codec::Str(t->state()), std::to_string(t->attempt()),
                        t->worker() && t->worker()->size() ? t->worker()->str() : "-",
                        t->owner() && t->owner()->size() ? t->owner()->str() : "-",
                        t->reason() && t->reason()->size() ? t->reason()->str() : "-", fm::codec::Str(t->message())});
      }
    }
    PrintTable(rows);
  } else if (op == fm::wire::ControlOp::Task) {
    if (!r->tasks() || r->tasks()->size() != 1) {
      std::fprintf(stderr, "fm-ctl: the scheduler sent no task\n");
      return 1;
    }
    const auto* t = r->tasks()->Get(0);
    if (json) {
      std::printf("%s\n", codec.TableToJson(r, "fm.wire.ControlReply").c_str());
      return 0;
    }
    auto field = [](const char* name, const std::string& value) {
      if (!value.empty()) std::printf("%-10s %s\n", name, fm::Printable(value).c_str());
    };
    field("task", fm::codec::Str(t->task()));
    field("state", fm::codec::Str(t->state()));
    field("attempt", std::to_string(t->attempt()));
    field("worker", fm::codec::Str(t->worker()));
    field("gpus", Join(fm::codec::Strings(t->gpus()), ","));
    if (t->endpoint() && t->endpoint()->port()) {
      fm::Endpoint e = fm::codec::FromWire(t->endpoint());
      field("endpoint",
            e.user + "@" + e.host + ":" + std::to_string(e.port) + " (fm-ctl ssh " + fm::codec::Str(t->task()) + ")");
    }
    field("owner", fm::codec::Str(t->owner()));
    field("waiting", fm::codec::Str(t->waiting()));
    field("reason", fm::codec::Str(t->reason()));
    field("message", fm::codec::Str(t->message()));
    if (t->spec()) field("spec", codec.TableToJson(t->spec(), "fm.wire.TaskSpec"));
    if (r->events()) {
      std::printf("events:\n");
      for (const auto* e : *r->events()) {
        std::string line =
            "  " + std::to_string(e->seq()) + " " + fm::codec::Str(e->time()) + " " + fm::codec::Str(e->type());
        if (e->worker()) line += " worker=" + e->worker()->str();
        if (e->attempt()) line += " attempt=" + std::to_string(e->attempt());
        if (e->reason()) line += " reason=" + e->reason()->str();
        if (e->message()) line += ": " + e->message()->str();
        std::printf("%s\n", line.c_str());
      }
    }
  } else {
    std::printf("%s\n", fm::codec::Str(r->message()).c_str());
  }
  return 0;
}
