// fm-tap [--broker URL] [--since SEQ] [--task TASK] [--json] [TOPIC-PREFIX]...
//
// Follows the scheduler's event stream. With --task, one task's events only: from its
// first stored event (unless --since), until its end. Events carry strictly increasing sequence
// numbers; fm-tap prints each once, in order. With --since it first replays stored
// events from SEQ, then follows live. A gap in the live stream (ZeroMQ drops on slow
// joins or overload) is filled from the store, so nothing is skipped or repeated.
//
// Sealed (--root-cert, behind node brokers): the live stream is as authentic as the node
// broker it comes through, so it is only a hint that there is more; what is printed comes
// from replays, which are sealed directed messages from the root (runtime/seal.h).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <map>
#include <optional>

#include "runtime/logging.h"
#include "schemas/json.h"
#include "schemas/text.h"
#include "schemas/vocabulary.h"
#include "tools/follow.h"
#include "tools/tool_client.h"

namespace {

volatile std::sig_atomic_t g_stop = 0;

// What fm-tap prints of each event, in order (tools/follow.h hands them on).
class Printer {
 public:
  Printer(bool json, std::vector<std::string> prefixes, int64_t count, std::string task)
      : json_(json), prefixes_(std::move(prefixes)), task_(std::move(task)), remaining_(count) {}

  // Returns false once --count events were printed, or the followed task ended.
  bool Print(const fm::wire::Event& ev) {
    const fm::wire::Event* e = &ev;
    std::string type = fm::codec::Str(e->type());
    if (!task_.empty() && fm::codec::Str(e->task()) != task_) return true;
    // One task followed: its end (nothing follows it) is the last line.
    const bool last = !task_.empty() && fm::tools::IsTaskEnd(ev);
    if (!Wanted(type)) return !last;
    std::string line;
    if (json_) {
      line = codec_.EventToJson(e);
    } else {
      // Every string from the stream is escaped for the terminal (task output and worker
      // names are any bytes).
      auto text = [](const flatbuffers::String* s) { return s ? fm::Printable(s->string_view()) : std::string(); };
      line = std::to_string(e->seq()) + " " + text(e->time()) + " " + fm::Printable(type);
      auto field = [&](const char* name, const flatbuffers::String* s) {
        if (s && s->size()) line += std::string(" ") + name + "=" + text(s);
      };
      field("task", e->task());
      field("worker", e->worker());
      if (e->attempt() > 1) line += " attempt=" + std::to_string(e->attempt());
      if (auto t = fm::ParseEventType(type);
          t == fm::wire::EventType::TaskSucceeded || t == fm::wire::EventType::TaskFailed)
        line += " exit=" + std::to_string(e->exit_code());
      field("reason", e->reason());
      field("stream", e->stream());
      if (e->gpus() && e->gpus()->size()) {
        line += " gpus=";
        for (flatbuffers::uoffset_t i = 0; i < e->gpus()->size(); ++i) {
          line += (i ? "," : "") + text(e->gpus()->Get(i));
        }
      }
      if (e->message() && e->message()->size()) line += ": " + text(e->message());
      if (e->data() && e->data()->size()) {
        std::string_view data = e->data()->string_view();
        while (!data.empty() && data.back() == '\n') data.remove_suffix(1);
        line += " | " + fm::Printable(data);
      }
    }
    line.push_back('\n');
    std::fwrite(line.data(), 1, line.size(), stdout);
    std::fflush(stdout);
    if (remaining_ > 0) --remaining_;
    return remaining_ != 0 && !last;
  }

 private:
  bool Wanted(const std::string& type) const {
    if (prefixes_.empty()) return true;
    for (const auto& p : prefixes_) {
      if (type.rfind(p, 0) == 0) return true;
    }
    return false;
  }

  fm::JsonCodec codec_;
  bool json_;
  std::vector<std::string> prefixes_;
  std::string task_;   // --task, as the events name it ("t42"); empty: every task
  int64_t remaining_;  // -1: unlimited
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"fm-tap: follows fm's event stream"};
  std::string broker = fm::bus::DefaultBrokerUrl();
  int64_t since = -1, count = -1;
  bool json = false;
  std::vector<std::string> prefixes;
  app.add_option("--broker", broker, "broker (default $FM_BROKER or tcp://127.0.0.1:5550)")->capture_default_str();
  std::string cert, broker_cert, root_cert;
  fm::tools::ToolClient::AddSecurityOptions(app, &cert, &broker_cert, &root_cert);
  app.add_option("--since", since, "replay stored events from this sequence number, then follow");
  app.add_flag("--json", json, "one JSON object per event");
  app.add_option("--count", count, "exit after printing this many events");
  std::string task;
  app.add_option("--task", task,
                 "only this task's events (e.g. t42): from its first stored one unless --since, until it ends");
  app.add_option("prefix", prefixes, "only events whose type starts with one of these (e.g. task.failed)");
  if (int rc = fm::bus::ParseCommandLine(app, "fm-tap", argc, argv); rc >= 0) return rc;

  auto client = fm::tools::ToolClient::Connect(broker, "fm-tap", true, cert, broker_cert, root_cert);
  if (!client.ok()) {
    std::fprintf(stderr, "fm-tap: %s\n", client.status().message().c_str());
    return 2;
  }
  if (!task.empty()) {
    uint64_t id = 0;
    if (!fm::ParseTaskName(task, &id)) {
      std::fprintf(stderr, "fm-tap: --task: \"%s\" is not a task id (t42)\n", task.c_str());
      return 2;
    }
    auto followed = fm::tools::LookUpTask(**client, task, 10000);
    if (!followed.ok()) {
      std::fprintf(stderr, "fm-tap: --task: %s\n", followed.status().message().c_str());
      return 1;
    }
    task = followed->name;
    if (since < 0) {
      if (followed->first_seq > 0) {
        since = static_cast<int64_t>(followed->first_seq);
      } else {
        std::fprintf(stderr, "fm-tap: no stored event of %s is left (retention); following it live\n", task.c_str());
      }
    }
  }
  std::signal(SIGINT, [](int) { g_stop = 1; });
  std::signal(SIGTERM, [](int) { g_stop = 1; });
  std::signal(SIGPIPE, SIG_DFL);

  if (count == 0) return 0;
  Printer printer(json, prefixes, count, task);
  fm::tools::EventFollower follower(**client, "fm-tap", [&](const fm::wire::Event& e) { return printer.Print(e); });
  follower.Subscribe(!task.empty());  // one task's events: task topics only
  follower.Start(since);
  follower.Run(&g_stop, false);
  return 0;
}
