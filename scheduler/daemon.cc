#include "scheduler/daemon.h"

#include <sys/stat.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>

#include "schemas/codec.h"
#include "schemas/vocabulary.h"
#include "store/keys.h"

namespace fm::sched {
namespace {
constexpr size_t kBudget = 4096;
constexpr size_t kReadBudget = 16384;  // directed messages read into the intake per call
constexpr int kTurnMs = 50;            // handling them stops after this, and the socket is read again
// Commits up to this many writes are done on the loop thread (no hand-off latency).
constexpr size_t kInlineOps = 256;
// While a commit is in flight, turns gather up to this many writes (or bytes); then the loop waits
// for the commit (and ZeroMQ's high-water marks push back on the senders). Enough to take
// the cost of a sync over tens of thousands of tasks, and small beside the memory a
// backlog may have (the gathered batch, the one in flight and RocksDB's copy of it).
constexpr size_t kMaxGatheredOps = 1 << 16;
constexpr size_t kMaxGatheredBytes = 16u << 20;  // (task output above all)

// A store epoch: random, never 0.
uint64_t RandomEpoch() {
  std::random_device rd;
  return ((static_cast<uint64_t>(rd()) << 32) | rd()) | 1;
}
}  // namespace

Committer::Committer(store::Store* store, uv_loop_t* loop, std::function<void(Status)> done)
    : store_(store), done_(std::move(done)), async_(new uv_async_t) {
  uv_async_init(loop, async_, [](uv_async_t* h) {
    if (h->data) static_cast<Committer*>(h->data)->Deliver();
  });
  async_->data = this;
  thread_ = std::thread([this] { Run(); });
}

Committer::~Committer() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();  // a batch being written is finished, not cut
  async_->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(async_), [](uv_handle_t* h) { delete reinterpret_cast<uv_async_t*>(h); });
}

void Committer::Start(const store::WriteBatch* batch) {
  busy_ = true;
  {
    std::lock_guard lock(mu_);
    batch_ = batch;
  }
  cv_.notify_all();
}

void Committer::Run() {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return stop_ || batch_ != nullptr; });
    if (batch_ == nullptr) return;  // stopping, nothing in flight
    const store::WriteBatch* batch = batch_;
    lock.unlock();
    Status s = store_->Write(*batch, /*sync=*/true);
    lock.lock();
    batch_ = nullptr;
    result_ = std::move(s);
    cv_.notify_all();
    uv_async_send(async_);
  }
}

void Committer::Wait() {
  {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [this] { return result_.has_value(); });
  }
  Deliver();  // only this thread takes the result: it is still there
}

void Committer::Deliver() {
  Status s;
  {
    std::lock_guard lock(mu_);
    if (!result_) return;  // already delivered (through Wait)
    s = std::move(*result_);
    result_.reset();
  }
  busy_ = false;
  done_(s);
}

SchedulerDaemon::SchedulerDaemon(zmq::context_t& context, SchedulerOptions options)
    : options_(std::move(options)), context_(context) {
  if (!options_.logger) options_.logger = spdlog::default_logger();
}

Status SchedulerDaemon::Check() {
  auto endpoints = bus::ParseBrokerUrl(options_.broker);
  if (!endpoints.ok()) return Status::Invalid("--broker: " + endpoints.status().message());
  auto security = bus::LoadSecurity(options_.cert, options_.broker_cert, "scheduler");
  if (!security.ok()) return security.status();
  security_ = std::move(*security);
  return Status::Ok();
}

Status SchedulerDaemon::Open() {
  if (Status s = Check(); !s.ok()) return s;
  auto endpoints = bus::ParseBrokerUrl(options_.broker);
  // With CURVE the broker checks every claim, so an address says who sent a message:
  // the engine enforces roles and ownership by it.
  options_.engine.authenticate = security_.on();
  // A leader elected through etcd connects (and claims fm-scheduler) before it reads its
  // store: it takes the address from a stale leader at once, not after its recovery;
  // what arrives meanwhile waits in the socket.
  if (options_.leadership != nullptr) Connect(*endpoints);
  std::error_code ec;
  std::filesystem::create_directories(options_.data_dir, ec);
  if (ec) return Status::Io("cannot create data directory " + options_.data_dir + ": " + ec.message());
  // Task specs (their env) are in it: the scheduler's alone, however it was made.
  if (::chmod(options_.data_dir.c_str(), 0700) != 0) {
    return Status::Io("cannot make data directory " + options_.data_dir +
                      " its owner's alone (mode 0700): " + std::strerror(errno));
  }
  auto store = store::OpenRocksStore(options_.data_dir + "/store", options_.store);
  if (!store.ok()) return store.status();
  store_ = options_.replicator != nullptr ? options_.replicator->Wrap(std::move(*store)) : std::move(*store);
  struct stat identity {};
  if (stat((options_.data_dir + "/store/IDENTITY").c_str(), &identity) == 0) {
    store_dev_ = identity.st_dev;
    store_ino_ = identity.st_ino;
  }
  options_.engine.fresh_epoch = RandomEpoch();
  started_ = std::chrono::steady_clock::now();
  const auto started = started_;
  core_ = std::make_unique<SchedulerCore>(options_.engine, store_.get(), options_.logger);
  if (Status s = core_->Open(bus::WallClockMs()); !s.ok()) return s;
  options_.logger->info(
      "recovered {} tasks placed or retrying ({} pending) from {} in {} ms; the waiting ones are read next",
      core_->engine().active_count(), core_->engine().pending_count(), options_.data_dir,
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started).count());
  if (!client_) Connect(*endpoints);
  return Status::Ok();
}

void SchedulerDaemon::Connect(const bus::Endpoints& endpoints) {
  client_ = std::make_unique<bus::Client>(context_, endpoints, bus::kSchedulerAddress, true, true, security_,
                                          options_.leadership != nullptr ? options_.leadership->epoch() : 0);
  client_->Subscribe("fleet.");
}

void SchedulerDaemon::Attach(bus::Loop& loop) {
  committer_ = std::make_unique<Committer>(store_.get(), loop.uv(), [this](const Status& s) { Committed(s); });
  loop.Watch(
      client_->dealer(), [this] { return DrainDirected(); }, [this] { return !intake_.empty(); });
  loop.Watch(client_->sub(), [this] { return DrainBus(); });
  loop.Every(options_.tick_ms, [this] {
    // Heartbeats that queued up while a long turn ran are taken first: liveness is
    // judged on what arrived, not on what was read so far.
    while (DrainBus() > 0) {
    }
    if (options_.replicator != nullptr) {
      for (const auto& notice : options_.replicator->TakeNotices()) {
        core_->engine().Notice(wire::EventType::SchedulerStandby, notice, bus::WallClockMs());
      }
    }
    core_->Tick(bus::WallClockMs());
  });
  loop.OnTurnEnd([this] { TurnEnd(); });
  loop_ = &loop;
  if (store_ino_ != 0) loop.Every(1000, [this] { CheckStoreIdentity(); });
  client_->Hello();
  loop.Every(1000, [this] {
    bus::TendLink(*client_, link_log_, bus::WallClockMs());
    if (const std::string& problem = client_->UnpinnedRoot(); !problem.empty() && exit_code_ == 0) {
      options_.logger->error("{}", problem);
      exit_code_ = 2;
      loop_->Stop();
    }
  });
  loop.MarkWork();  // the first turn sends scheduler.started
  options_.logger->info("scheduler on broker {}, data {}", options_.broker, options_.data_dir);
}

size_t SchedulerDaemon::DrainDirected() {
  // Everything waiting is read into the intake at once (no decoding), so that nothing a
  // flooder sent stands in the broker's queue ahead of another peer's message; then the
  // intake is served one message per sender in turn, for at most kBudget messages or
  // kTurnMs, and the socket is read again on the next round.
  size_t read = 0;
  uint64_t now = bus::WallClockMs();
  while (read < kReadBudget) {
    auto msg = client_->Receive();
    if (!msg) break;
    ++read;
    if (std::string fenced = bus::BrokerFencing(*msg); !fenced.empty()) {
      // Another scheduler was elected after this one: stop before anything more leaves.
      if (options_.leadership != nullptr) options_.leadership->Fence("the root broker says: " + fenced);
      options_.logger->critical("the root broker says: {}; a scheduler elected through etcd leads: stopping", fenced);
      exit_code_ = ha::Leadership::kFencedExitCode;
      loop_->Stop();
      return read;
    }
    if (std::string refusal = bus::BrokerRefusal(*msg); !refusal.empty()) {
      link_log_.Warn("refused", now, "the broker refused the scheduler: " + refusal + "; retrying");
      continue;
    }
    std::string payload(static_cast<const char*>(msg->payload.data()), msg->payload.size());
    if (intake_.Add(msg->from, std::move(payload))) continue;
    ++intake_refused_;
    // Said once a second per sender (one that does not read its replies would only
    // queue more of them at its broker).
    uint64_t& told = busy_told_ms_[msg->from];
    if (now < told + 1000) continue;
    told = now;
    if (busy_told_ms_.size() > 4096) busy_told_ms_.clear();
    intake_log_.Warn(msg->from, now,
                     "refused a message from " + msg->from +
                         ": it has a full queue of messages waiting here (the scheduler serves every peer in "
                         "turn); it must wait for answers");
    if (msg->from != bus::kBrokerAddress) {
      CheckLease();
      client_->Send(msg->from, codec::EncodeError(wire::ErrorCode::Busy,
                                                  "the scheduler holds too many of your messages; send fewer at "
                                                  "once (wait for answers)"));
    }
  }
  size_t handled = 0;
  const auto started = std::chrono::steady_clock::now();
  // One message at a time: one may be costly (a replay builds up to 1 MiB of events).
  while (handled < kBudget && !intake_.empty()) {
    for (auto& m : intake_.Take(1)) {
      std::string storage;
      std::string_view bytes = codec::AlignedBytes(m.payload, &storage);
      core_->OnDirected(m.from, bytes.data(), bytes.size(), now);
      ++handled;
    }
    if (std::chrono::steady_clock::now() - started > std::chrono::milliseconds(kTurnMs)) break;
  }
  return read + handled;
}

size_t SchedulerDaemon::DrainBus() {
  size_t n = 0;
  uint64_t now = bus::WallClockMs();
  while (n < kBudget) {
    auto event = client_->ReceiveEvent();
    if (!event) break;
    ++n;
    core_->OnBus(event->payload.data(), event->payload.size(), now);
  }
  return n;
}

void SchedulerDaemon::TurnEnd() {
  const bool loading = !core_->engine().waiting_loaded();
  Outbox now = core_->CloseTurn(bus::WallClockMs());
  SendOut(now);
  if (loading) {
    // The backlog is read a batch per turn (engine.h): turns go on until it is all read.
    if (!core_->engine().waiting_loaded()) {
      // (Not while the store cannot be read: the ticks retry, not a tight loop.)
      if (!core_->degraded()) loop_->MarkWork();
    } else {
      options_.logger->info(
          "read {} waiting tasks in {} ms since the start", core_->engine().pending_count(),
          std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started_).count());
    }
  }
  if (committer_->busy() && (core_->gathered_ops() > kMaxGatheredOps || core_->gathered_bytes() > kMaxGatheredBytes)) {
    committer_->Wait();
  }
  Commit();
}

void SchedulerDaemon::Commit() {
  if (committer_->busy() || !core_->has_gathered()) return;
  commit_started_ = std::chrono::steady_clock::now();
  batch_ops_.Observe(static_cast<double>(core_->gathered_ops()));
  if (core_->gathered_ops() <= kInlineOps) {
    Outbox out = core_->CommitGathered(bus::WallClockMs());
    CommitTimed();
    SendOut(out);
    return;
  }
  committer_->Start(&core_->StartCommit());
}

void SchedulerDaemon::CommitTimed() {
  commit_seconds_.Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - commit_started_).count());
}

void SchedulerDaemon::Committed(const Status& status) {
  CommitTimed();
  Outbox out = core_->FinishCommit(status, bus::WallClockMs());
  SendOut(out);
  Commit();  // what gathered meanwhile
}

void SchedulerDaemon::CheckStoreIdentity() {
  struct stat now {};
  std::string path = options_.data_dir + "/store/IDENTITY";
  if (stat(path.c_str(), &now) == 0 && static_cast<uint64_t>(now.st_dev) == store_dev_ &&
      static_cast<uint64_t>(now.st_ino) == store_ino_) {
    return;
  }
  options_.logger->error(
      "the store in {} was removed or replaced while the scheduler ran; stopping rather than acknowledging writes "
      "that would not survive (restart the scheduler on the data directory to use)",
      options_.data_dir);
  exit_code_ = 1;
  loop_->Stop();
}

void SchedulerDaemon::CheckLease() const {
  // A leader that may have lost its lease (a stall, etcd out of reach) sends nothing: a
  // standby may lead by now.
  if (options_.leadership != nullptr && !options_.leadership->Valid()) {
    options_.leadership->Fence("its lease in etcd may have expired before this turn's output was sent");
  }
}

void SchedulerDaemon::SendOut(Outbox& out) {
  CheckLease();
  for (auto& d : out.directed) {
    if (!client_->Send(d.to, d.payload)) {
      options_.logger->warn("could not queue a message to {} (high-water mark); it will be re-sent", d.to);
    }
  }
  for (auto& [topic, payload] : EventLog::Messages(out.events)) client_->Publish(topic, payload);
  for (const auto& snapshot : out.snapshots) Snapshot(snapshot);
}

// A scheduler started from a copy must not be taken for this one: task ids after the
// copy will be given again, and a worker that remembers an id from this store would
// answer a new task with an old result. A new epoch makes workers drop that memory
// (tasks running at the copy run again: at least once).
Status SchedulerDaemon::NewEpoch(const std::string& store_dir) {
  auto copy = store::OpenRocksStore(store_dir, options_.store);
  if (!copy.ok()) return copy.status();
  store::WriteBatch batch;
  batch.Put(store::keys::kMetaEpoch, store::keys::EncodeU64(RandomEpoch()));
  return (*copy)->Write(batch, /*sync=*/true);
}

void SchedulerDaemon::Snapshot(const SnapshotRequest& request) {
  auto started = std::chrono::steady_clock::now();
  std::string dir = request.dir;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  std::error_code ec;
  Status s;
  if (std::filesystem::exists(dir, ec)) {
    s = Status::Invalid(dir + " exists already: name a new directory");
  } else if (std::filesystem::create_directories(std::filesystem::path(dir).parent_path(), ec), ec) {
    s = Status::Io("cannot make the directories above " + dir + ": " + ec.message());
  } else if (!std::filesystem::create_directory(dir, ec)) {
    s = Status::Io("cannot make " + dir + ": " + (ec ? ec.message() : std::string("it appeared meanwhile")));
  } else if (::chmod(dir.c_str(), 0700) != 0) {
    s = Status::Io("cannot make " + dir + " its owner's alone (mode 0700): " + std::strerror(errno));
  } else {
    s = store_->Checkpoint(dir + "/store");
    if (s.ok()) s = NewEpoch(dir + "/store");
    if (!s.ok()) std::filesystem::remove_all(dir, ec);
  }
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started).count();
  std::string message = s.ok() ? "snapshot written to " + dir + " in " + std::to_string(ms) +
                                     " ms; start a scheduler from it with --data " + dir
                               : "snapshot failed: " + s.message();
  if (s.ok()) {
    options_.logger->info("{}", message);
  } else {
    options_.logger->error("{}", message);
  }
  flatbuffers::FlatBufferBuilder fbb(256);
  auto reply = wire::CreateControlReply(fbb, request.correlation, s.ok(), fbb.CreateString(message));
  CheckLease();  // a long checkpoint may have outlived the lease
  client_->Send(request.from, codec::Seal(fbb, reply));
}

}  // namespace fm::sched

namespace fm::sched {

void SchedulerDaemon::Metrics(ops::Sheet& sheet) const {
  const Engine& engine = core_->engine();
  EngineCensus census = engine.Census();
  const char* help = "tasks not ended, by state";
  sheet.Gauge("scheduler_tasks", help, census.pending, {{"state", "pending"}});
  sheet.Gauge("scheduler_tasks", help, census.queued, {{"state", "queued"}});
  sheet.Gauge("scheduler_tasks", help, census.running, {{"state", "running"}});
  sheet.Gauge("scheduler_intake_messages", "directed messages read and not handled yet (served per sender in turn)",
              intake_.queued());
  if (const ha::Leadership* l = options_.leadership) {
    sheet.Gauge("scheduler_ha_leader", "1: this scheduler leads (with --etcd; a standby serves no metrics yet)", 1);
    sheet.Gauge("scheduler_ha_epoch", "this leadership's epoch (the leader key's create revision in etcd)",
                static_cast<double>(l->epoch()));
    sheet.Gauge("scheduler_ha_lease_seconds_left", "how long the lease is known to be alive without a renewal",
                l->seconds_left());
    sheet.Counter("scheduler_ha_renewals_total", "lease renewals etcd answered", static_cast<double>(l->renewals()));
  }
  if (const ha::Replicator* r = options_.replicator) {
    double in_sync = 0, behind = 0;
    const auto standbys = r->Standbys();
    for (const auto& s : standbys) {
      if (s.in_sync) ++in_sync;
      behind = std::max(behind, static_cast<double>(s.behind));
    }
    sheet.Gauge("scheduler_ha_standbys", "standbys following this leader (--ha-listen)",
                static_cast<double>(standbys.size()));
    sheet.Gauge("scheduler_ha_standbys_in_sync", "standbys in the in-sync set: each batch's output waits for them",
                in_sync);
    sheet.Gauge("scheduler_ha_standby_batches_behind", "batches the standby furthest behind has not acknowledged",
                behind);
    sheet.Counter("scheduler_ha_batches_total", "batches written in this leadership", static_cast<double>(r->index()));
  }
  sheet.Counter("scheduler_intake_refused_total", "messages refused: their sender had a full queue here",
                intake_refused_);
  uint64_t now = bus::WallClockMs();
  sheet.Gauge(
      "scheduler_oldest_pending_seconds", "how long the longest-waiting pending task has waited",
      census.oldest_pending_ms == 0 || census.oldest_pending_ms > now ? 0 : (now - census.oldest_pending_ms) / 1000.0);
  const EngineStats& stats = engine.stats();
  sheet.Counter("scheduler_tasks_submitted_total", "tasks created since the scheduler started", stats.submitted);
  for (const auto& [key, n] : stats.ended) {
    std::string reason(Name(key.second));
    sheet.Counter("scheduler_tasks_ended_total", "tasks ended since the scheduler started, by outcome and reason",
                  static_cast<double>(n),
                  {{"outcome", StateName(key.first)}, {"reason", reason.empty() ? "none" : reason}});
  }
  sheet.Counter("scheduler_task_retries_total", "attempts sent back to pending for another try", stats.retries);
  sheet.Counter("scheduler_dispatch_redeliveries_total",
                "dispatches sent again to a worker that had not started the task", stats.redeliveries);
  help = "workers by state (lost: within the reconnect grace)";
  sheet.Gauge("scheduler_workers", help, census.workers_live, {{"state", "live"}});
  sheet.Gauge("scheduler_workers", help, census.workers_draining, {{"state", "draining"}});
  sheet.Gauge("scheduler_workers", help, census.workers_unconfirmed, {{"state", "unconfirmed"}});
  sheet.Gauge("scheduler_workers", help, census.workers_lost, {{"state", "lost"}});
  sheet.Counter("scheduler_worker_losses_total", "workers declared lost", stats.worker_losses);
  sheet.Counter("scheduler_unauthorized_total", "messages refused for their sender", engine.unauthorized());
  sheet.Counter("scheduler_commits_total", "store commits (synced write batches)", core_->commits());
  sheet.Counter("scheduler_store_write_errors_total", "commits the store refused", core_->write_errors());
  sheet.Gauge("scheduler_store_degraded", "1 while the store refuses writes", core_->degraded() ? 1 : 0);
  commit_seconds_.Write(sheet, "scheduler_commit_seconds", "time to write and sync one commit");
  batch_ops_.Write(sheet, "scheduler_commit_batch_writes", "store writes per commit");
  sheet.Gauge("scheduler_event_seq", "the next event's seq", engine.next_seq());
  sheet.Gauge("scheduler_event_oldest_seq", "the oldest event seq kept for replay", engine.oldest_seq());
  sheet.Gauge("scheduler_events_stored", "events kept for replay", engine.stored_events());
  sheet.Gauge("scheduler_ended_tasks_stored", "ended tasks the store holds (--task-retention)",
              engine.stored_ended_tasks());
  sheet.Counter("scheduler_ended_tasks_deleted_total", "ended tasks deleted by their retention",
                engine.tasks_trimmed());
  sheet.Gauge("scheduler_task_output_stored_bytes", "task output kept for replay", engine.stored_log_bytes());
}

}  // namespace fm::sched
