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
#include "tools/tool_client.h"

namespace {

volatile std::sig_atomic_t g_stop = 0;

class Tap {
 public:
  Tap(fm::tools::ToolClient& client, bool json, std::vector<std::string> prefixes, int64_t count, std::string task)
      : client_(client),
        json_(json),
        prefixes_(std::move(prefixes)),
        task_(std::move(task)),
        remaining_(count),
        sealed_(client.bus().sealed()) {}

  // Asks for stored events from `since`.
  void RequestReplay(uint64_t since) {
    flatbuffers::FlatBufferBuilder fbb(64);
    client_.bus().Send(fm::bus::kSchedulerAddress,
                       fm::codec::Seal(fbb, fm::wire::CreateReplayRequest(fbb, since, ++correlation_)));
    replay_in_flight_ = true;
    last_request_ = std::chrono::steady_clock::now();
  }

  void Start(int64_t since) {
    if (since >= 0) {
      next_ = std::max<uint64_t>(static_cast<uint64_t>(since), 1);
      RequestReplay(next_);
    }
  }

  // Returns false once --count events were printed.
  bool OnDirected() {
    while (auto msg = client_.bus().Receive()) {
      auto env = fm::codec::Decode(msg->payload.data(), msg->payload.size());
      if (!env.ok()) continue;
      if ((*env)->body_type() == fm::wire::Body::Error) {
        // The scheduler is not (yet) connected: say so once, ask again shortly.
        if (!warned_) std::fprintf(stderr, "fm-tap: %s; waiting\n", client_.Explain(*(*env)->body_as_Error()).c_str());
        warned_ = true;
        retry_at_ = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
        continue;
      }
      if ((*env)->body_type() != fm::wire::Body::ReplayBatch) continue;
      const auto* batch = (*env)->body_as_ReplayBatch();
      if (batch->correlation() != correlation_) continue;
      if (batch->error()) Fail(batch->error()->str());
      uint64_t last = 0;
      if (batch->events()) {
        for (const auto* e : *batch->events()) {
          last = e->seq();
          Offer(e);
          if (remaining_ == 0) return false;
        }
      }
      // Past the events looked at (a client is not shown other owners' tasks).
      const uint64_t resume = batch->next() > 0 ? batch->next() : last + 1;
      if (batch->next() > next_ && batch->done()) next_ = batch->next();
      if (!batch->done() && resume > 1) {
        RequestReplay(resume);
      } else {
        replay_in_flight_ = false;
        // Whatever is still missing below the buffered live events is not in the store
        // (retention): move on to what we have.
        if (!buffered_.empty() && buffered_.begin()->first > next_) next_ = buffered_.begin()->first;
        Drain();
      }
    }
    return remaining_ != 0;
  }

  // Re-asks for a replay that the broker could not deliver, and fills in what was
  // published while the subscription was down (the broker restarted or reconnected it).
  void OnIdle() {
    if (retry_at_ && std::chrono::steady_clock::now() >= *retry_at_) {
      retry_at_.reset();
      RequestReplay(next_);
    }
    // (Taken only when no replay is in flight: one in flight may have been asked before
    // the gap, and the flag would be lost with it.)
    if (!replay_in_flight_ && next_ > 0 && client_.bus().TakeResubscribed()) RequestReplay(next_);
    // Sealed: a hint the node broker dropped is made up for within a second.
    const auto now = std::chrono::steady_clock::now();
    if (sealed_ && !replay_in_flight_ && next_ > 0 && now - last_request_ > std::chrono::seconds(1)) {
      RequestReplay(next_);
    }
  }

  bool OnEvents() {
    while (auto event = client_.bus().ReceiveEvent()) {
      auto env = fm::codec::Decode(event->payload.data(), event->payload.size());
      if (!env.ok()) continue;
      // One event, or a turn's events of one class in a block.
      fm::codec::ForEachEvent(**env,
                              std::string_view(static_cast<const char*>(event->payload.data()), event->payload.size()),
                              [&](const fm::wire::Event& e, std::string_view bytes) {
                                OnEvent(&e, bytes);
                                return remaining_ != 0;
                              });
      if (remaining_ == 0) return false;
    }
    return true;
  }

 private:
  void OnEvent(const fm::wire::Event* e, std::string_view bytes) {
    if (sealed_) {
      // Only a hint: fetch what is new from the store, sealed.
      if (!replay_in_flight_) RequestReplay(next_ > 0 ? next_ : std::max<uint64_t>(e->seq(), 1));
      return;
    }
    if (next_ == 0) next_ = e->seq();  // following live from now
    if (e->seq() < next_) return;      // already printed
    if (e->seq() == next_ && !replay_in_flight_) {
      Print(e);
      ++next_;
      Drain();
    } else {
      // Ahead of what we have: keep it and fetch the gap from the store.
      buffered_.emplace(e->seq(), std::string(bytes));
      if (!replay_in_flight_) RequestReplay(next_);
    }
  }

  [[noreturn]] void Fail(const std::string& message) {
    std::fprintf(stderr, "fm-tap: %s\n", message.c_str());
    std::exit(1);
  }

  void Offer(const fm::wire::Event* e) {
    if (e->seq() < next_) return;
    Print(e);  // a hole in the store itself can only be retention: skip it
    next_ = e->seq() + 1;
    buffered_.erase(buffered_.begin(), buffered_.lower_bound(next_));
  }

  void Drain() {
    while (!buffered_.empty() && buffered_.begin()->first <= next_) {
      auto node = buffered_.extract(buffered_.begin());
      if (node.key() == next_) {
        auto env = fm::codec::Decode(node.mapped().data(), node.mapped().size());
        if (env.ok()) Print((*env)->body_as_Event());
        ++next_;
      }
    }
  }

  bool Wanted(const std::string& type) const {
    if (prefixes_.empty()) return true;
    for (const auto& p : prefixes_) {
      if (type.rfind(p, 0) == 0) return true;
    }
    return false;
  }

  void Print(const fm::wire::Event* e) {
    std::string type = fm::codec::Str(e->type());
    if (!task_.empty() && fm::codec::Str(e->task()) != task_) return;
    // One task followed: its end (succeeded, failed, cancelled: nothing follows those)
    // is the last line.
    const auto t = fm::ParseEventType(type);
    const bool last =
        !task_.empty() && (t == fm::wire::EventType::TaskSucceeded || t == fm::wire::EventType::TaskFailed ||
                           t == fm::wire::EventType::TaskCancelled);
    if (!Wanted(type)) {
      if (last) remaining_ = 0;
      return;
    }
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
    if (last) remaining_ = 0;
  }

  fm::tools::ToolClient& client_;
  fm::JsonCodec codec_;
  bool json_;
  std::vector<std::string> prefixes_;
  std::string task_;   // --task, as the events name it ("t42"); empty: every task
  int64_t remaining_;  // -1: unlimited
  uint64_t next_ = 0;  // the next sequence to print; 0 before the first
  uint64_t correlation_ = 0;
  bool replay_in_flight_ = false;
  bool warned_ = false;
  std::optional<std::chrono::steady_clock::time_point> retry_at_;
  std::map<uint64_t, std::string> buffered_;
  const bool sealed_;
  std::chrono::steady_clock::time_point last_request_{};
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
    task = fm::TaskName(id);
    // The task as the scheduler has it, and with it the sequence of its first event
    // (the client's own tasks only; an operator's all).
    flatbuffers::FlatBufferBuilder fbb(128);
    std::string request =
        fm::codec::Seal(fbb, fm::wire::CreateControlRequestDirect(fbb, fm::wire::ControlOp::Task, task.c_str(), 1));
    zmq::message_t storage;
    auto reply = (*client)->Call(request, fm::wire::Body::ControlReply, 10000, &storage);
    if (!reply.ok()) {
      std::fprintf(stderr, "fm-tap: %s\n", reply.status().message().c_str());
      return 1;
    }
    const auto* r = (*reply)->body_as_ControlReply();
    if (!r->ok()) {
      std::fprintf(stderr, "fm-tap: --task: %s\n", fm::codec::Str(r->message()).c_str());
      return 1;
    }
    if (since < 0) {
      if (r->events() && r->events()->size() > 0) {
        since = static_cast<int64_t>(r->events()->Get(0)->seq());
      } else {
        std::fprintf(stderr, "fm-tap: no stored event of %s is left (retention); following it live\n", task.c_str());
      }
    }
  }
  for (const auto& topic : (*client)->StreamTopics()) {
    if (!task.empty() && topic.rfind("task.", 0) != 0) continue;  // one task's events: task topics only
    (*client)->bus().Subscribe(topic);
  }
  std::signal(SIGINT, [](int) { g_stop = 1; });
  std::signal(SIGTERM, [](int) { g_stop = 1; });
  std::signal(SIGPIPE, SIG_DFL);

  Tap tap(**client, json, prefixes, count, task);
  tap.Start(since);
  if (count == 0) return 0;
  while (!g_stop) {
    int woke = (*client)->Wait(200, -1, true);
    if (woke == 1 && !tap.OnDirected()) break;
    if (woke == 3 && !tap.OnEvents()) break;
    tap.OnIdle();
  }
  return 0;
}
