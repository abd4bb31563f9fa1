#include "tools/follow.h"

#include <cstdio>
#include <cstdlib>

#include "schemas/vocabulary.h"

namespace fm::tools {

EventFollower::EventFollower(ToolClient& client, std::string tool, Sink sink)
    : client_(client), tool_(std::move(tool)), sink_(std::move(sink)), sealed_(client.bus().sealed()) {}

void EventFollower::Subscribe(bool tasks_only) {
  for (const auto& topic : client_.StreamTopics()) {
    if (tasks_only && topic.rfind("task.", 0) != 0) continue;
    client_.bus().Subscribe(topic);
  }
}

void EventFollower::RequestReplay(uint64_t since) {
  flatbuffers::FlatBufferBuilder fbb(64);
  client_.bus().Send(bus::kSchedulerAddress, codec::Seal(fbb, wire::CreateReplayRequest(fbb, since, ++correlation_)));
  replay_in_flight_ = true;
  last_request_ = std::chrono::steady_clock::now();
}

void EventFollower::Start(int64_t since) {
  if (since >= 0) {
    next_ = std::max<uint64_t>(static_cast<uint64_t>(since), 1);
    RequestReplay(next_);
  } else {
    replayed_ = true;  // nothing stored to catch up with
  }
}

void EventFollower::Run(const volatile std::sig_atomic_t* stop, bool until_caught_up) {
  while (!stopped_ && !(stop && *stop)) {
    if (until_caught_up && replayed_ && !replay_in_flight_) return;
    int woke = client_.Wait(200, -1, true);
    if (woke == 1 && !OnDirected()) return;
    if (woke == 3 && !OnEvents()) return;
    OnIdle();
  }
}

bool EventFollower::OnDirected() {
  while (auto msg = client_.bus().Receive()) {
    auto env = codec::Decode(msg->payload.data(), msg->payload.size());
    if (!env.ok()) continue;
    if ((*env)->body_type() == wire::Body::Error) {
      // The scheduler is not (yet) connected: say so once, ask again shortly.
      if (!warned_) {
        std::fprintf(stderr, "%s: %s; waiting\n", tool_.c_str(), client_.Explain(*(*env)->body_as_Error()).c_str());
      }
      warned_ = true;
      retry_at_ = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
      continue;
    }
    if ((*env)->body_type() != wire::Body::ReplayBatch) continue;
    const auto* batch = (*env)->body_as_ReplayBatch();
    if (batch->correlation() != correlation_) continue;
    if (batch->error()) Fail(batch->error()->str());
    uint64_t last = 0;
    if (batch->events()) {
      for (const auto* e : *batch->events()) {
        last = e->seq();
        if (!Offer(*e)) return false;
      }
    }
    // Past the events looked at (a client is not shown other owners' tasks).
    const uint64_t resume = batch->next() > 0 ? batch->next() : last + 1;
    if (batch->next() > next_ && batch->done()) next_ = batch->next();
    if (!batch->done() && resume > 1) {
      RequestReplay(resume);
    } else {
      replay_in_flight_ = false;
      // Still missing below the buffered live events: the replay may have been read
      // before they were stored (a live event comes only after its commit), so once more
      // from there; what is missing after that is not in the store (retention).
      if (!buffered_.empty() && buffered_.begin()->first > next_) {
        if (hole_asked_ != next_) {
          hole_asked_ = next_;
          RequestReplay(next_);
          continue;
        }
        next_ = buffered_.begin()->first;
      }
      replayed_ = true;
      if (!Drain()) return false;
    }
  }
  return true;
}

void EventFollower::OnIdle() {
  // Re-asks for a replay that the broker could not deliver, and fills in what was
  // published while the subscription was down (the broker restarted or reconnected it).
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

bool EventFollower::OnEvents() {
  while (auto event = client_.bus().ReceiveEvent()) {
    auto env = codec::Decode(event->payload.data(), event->payload.size());
    if (!env.ok()) continue;
    // One event, or a turn's events of one class in a block.
    bool go_on = true;
    codec::ForEachEvent(**env, std::string_view(static_cast<const char*>(event->payload.data()), event->payload.size()),
                        [&](const wire::Event& e, std::string_view bytes) { return go_on = OnEvent(e, bytes); });
    if (!go_on) return false;
  }
  return true;
}

bool EventFollower::OnEvent(const wire::Event& e, std::string_view bytes) {
  if (sealed_) {
    // Only a hint: fetch what is new from the store, sealed.
    if (!replay_in_flight_) RequestReplay(next_ > 0 ? next_ : std::max<uint64_t>(e.seq(), 1));
    return true;
  }
  if (Fenced(e)) return true;
  if (next_ == 0) next_ = e.seq();   // following live from now
  if (e.seq() < next_) return true;  // already handed on
  if (e.seq() == next_ && !replay_in_flight_) {
    ++next_;
    if (!sink_(e)) {
      stopped_ = true;
      return false;
    }
    return Drain();
  }
  // Ahead of what we have: keep it and fetch the gap from the store.
  buffered_.emplace(e.seq(), std::string(bytes));
  if (!replay_in_flight_) RequestReplay(next_);
  return true;
}

void EventFollower::Fail(const std::string& message) {
  std::fprintf(stderr, "%s: %s\n", tool_.c_str(), message.c_str());
  std::exit(1);
}

bool EventFollower::Fenced(const wire::Event& e) {
  if (e.epoch() == 0) return false;  // a scheduler without etcd: nothing to fence by
  if (e.epoch() > epoch_) {
    const uint64_t older = epoch_;
    epoch_ = e.epoch();
    epoch_floor_ = e.seq();
    if (next_ > 0 && e.seq() < next_) {
      // Below what was handed on: a stream of its own (a standby promoted by force, from
      // seq 1). Followed from its start, fetched as a gap; what its store holds of older
      // leaderships is not this stream and is dropped.
      std::fprintf(stderr,
                   "%s: epoch %llu leads with a stream of its own (a scheduler promoted by force): "
                   "following it from its start\n",
                   tool_.c_str(), static_cast<unsigned long long>(e.epoch()));
      next_ = 1;
      epoch_floor_ = 0;
      buffered_.clear();
    } else if (older != 0) {
      // Held back ahead of a gap: an older leadership's from here on are a stale leader's.
      for (auto it = buffered_.lower_bound(e.seq()); it != buffered_.end();) {
        auto env = codec::Decode(it->second.data(), it->second.size());
        const bool stale = !env.ok() || (*env)->body_as_Event() == nullptr ||
                           ((*env)->body_as_Event()->epoch() != 0 && (*env)->body_as_Event()->epoch() < epoch_);
        it = stale ? buffered_.erase(it) : std::next(it);
      }
    }
    return false;
  }
  if (e.epoch() == epoch_) {
    epoch_floor_ = std::min(epoch_floor_, e.seq());
    return false;
  }
  return e.seq() >= epoch_floor_;
}

bool EventFollower::Offer(const wire::Event& e) {
  // (Replays come from the leader the root broker routes to: not fenced.)
  if (e.seq() < next_) return true;
  next_ = e.seq() + 1;  // a hole in the store itself can only be retention: skip it
  buffered_.erase(buffered_.begin(), buffered_.lower_bound(next_));
  if (!sink_(e)) {
    stopped_ = true;
    return false;
  }
  return true;
}

bool EventFollower::Drain() {
  while (!buffered_.empty() && buffered_.begin()->first <= next_) {
    auto node = buffered_.extract(buffered_.begin());
    if (node.key() != next_) continue;
    ++next_;
    auto env = codec::Decode(node.mapped().data(), node.mapped().size());
    if (env.ok() && !sink_(*(*env)->body_as_Event())) {
      stopped_ = true;
      return false;
    }
  }
  return true;
}

Result<FollowedTask> LookUpTask(ToolClient& client, const std::string& task, int timeout_ms) {
  uint64_t id = 0;
  if (!ParseTaskName(task, &id)) return Status::Invalid("\"" + task + "\" is not a task id (t42)");
  FollowedTask out;
  out.name = TaskName(id);
  // The task as the scheduler has it, and with it the sequence of its first event (the
  // client's own tasks only; an operator's all).
  flatbuffers::FlatBufferBuilder fbb(128);
  std::string request =
      codec::Seal(fbb, wire::CreateControlRequestDirect(fbb, wire::ControlOp::Task, out.name.c_str(), 1));
  zmq::message_t storage;
  auto reply = client.Call(request, wire::Body::ControlReply, timeout_ms, &storage);
  if (!reply.ok()) return reply.status();
  const auto* r = (*reply)->body_as_ControlReply();
  if (!r->ok()) return Status::Invalid(codec::Str(r->message()));
  if (r->tasks() && r->tasks()->size() == 1) {
    out.attempt = r->tasks()->Get(0)->attempt();
    out.state = codec::Str(r->tasks()->Get(0)->state());
    out.task_first_seq = r->tasks()->Get(0)->first_seq();
  }
  if (r->events() && r->events()->size() > 0) out.first_seq = r->events()->Get(0)->seq();
  out.output_removed_through = r->output_removed_through();
  return out;
}

bool IsTaskEnd(const wire::Event& e) {
  const auto t = ParseEventType(codec::Str(e.type()));
  return t == wire::EventType::TaskSucceeded || t == wire::EventType::TaskFailed || t == wire::EventType::TaskCancelled;
}

void OutputPrinter::Note(const std::string& text) const {
  std::fprintf(stderr, "%s: %s: %s\n", o_.tool.c_str(), o_.task.c_str(), text.c_str());
}

bool OutputPrinter::Take(const wire::Event& e) {
  if (codec::Str(e.task()) != o_.task) return true;
  const auto type = ParseEventType(codec::Str(e.type()));
  if (o_.attempt > 0) {
    // A later attempt began (task.retrying carries the next one): this one is over.
    if (e.attempt() > o_.attempt) return End(e);
    if (e.attempt() != o_.attempt) return true;
  } else if (type == wire::EventType::TaskRetrying) {
    std::string why = codec::Str(e.reason());
    if (e.message() && e.message()->size()) why += (why.empty() ? "" : ": ") + e.message()->str();
    Note("attempt " + std::to_string(e.attempt() > 0 ? e.attempt() - 1 : 0) + " ended (" + why + ")");
    return true;
  }
  if (IsTaskEnd(e)) return End(e);
  if (type != wire::EventType::TaskLog) return true;
  const std::string_view from = e.stream() ? e.stream()->string_view() : std::string_view();
  const std::string_view data = e.data() ? e.data()->string_view() : std::string_view();
  if (o_.json) {
    if (o_.stream.empty() || from == o_.stream) std::printf("%s\n", codec_.EventToJson(&e).c_str());
  } else if (from == "stdout" || from == "stderr") {
    if (o_.stream.empty() || from == o_.stream) {
      std::FILE* out = from == "stdout" ? stdout : stderr;
      std::fwrite(data.data(), 1, data.size(), out);
      std::fflush(out);
    }
  } else {
    Note(std::string(data));  // the worker's own (stream "fm")
  }
  return true;
}

bool OutputPrinter::End(const wire::Event& e) {
  ended_ = true;
  std::fflush(stdout);
  const std::string message = codec::Str(e.message());
  if (auto cut = message.find("output truncated"); cut != std::string::npos) Note(message.substr(cut));
  const auto type = ParseEventType(codec::Str(e.type()));
  const std::string reason = codec::Str(e.reason());
  const bool own_status = type == wire::EventType::TaskFailed && e.exit_code() > 0 && e.exit_code() < 256;
  if (type == wire::EventType::TaskSucceeded) {
    status_ = 0;
  } else if (own_status && (reason.empty() || reason == Name(wire::Reason::ExitStatus))) {
    status_ = e.exit_code();  // it exited so: nothing more to say
  } else {
    // Killed (a timeout: 143), or ended with no status of its own: 1. Either way, why.
    status_ = own_status ? e.exit_code() : 1;
    std::string why = codec::Str(e.reason());
    if (!message.empty()) why += (why.empty() ? "" : ": ") + message;
    const char* how = type == wire::EventType::TaskCancelled ? "cancelled"
                      : type == wire::EventType::TaskFailed  ? "failed"
                                                             : "ended";
    Note((o_.attempt > 0 ? "attempt " + std::to_string(o_.attempt) + " " : std::string()) + how +
         (why.empty() ? "" : " (" + why + ")"));
  }
  return false;
}

}  // namespace fm::tools
