#include "scheduler/replication.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>

namespace fm::ha {
namespace {

constexpr size_t kMaxNameBytes = 256;
constexpr uint64_t kForgetSilentMs = 10000;  // a standby outside the set unheard this long
constexpr uint64_t kFollowerSilentMs = 10000;
constexpr std::string_view kEverything = "\xff\xff\xff\xff";  // beyond every key fm writes

uint64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string U64(uint64_t v) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(v >> (8 * i));
  return out;
}

bool ReadU64(const zmq::message_t& frame, uint64_t* v) {
  if (frame.size() != 8) return false;
  const auto* b = static_cast<const unsigned char*>(frame.data());
  *v = 0;
  for (int i = 0; i < 8; ++i) *v |= static_cast<uint64_t>(b[i]) << (8 * i);
  return true;
}

std::string Text(const zmq::message_t& frame) {
  return std::string(static_cast<const char*>(frame.data()), frame.size());
}

bool Printable(const std::string& s) {
  if (s.empty() || s.size() > kMaxNameBytes) return false;
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f) return false;
  }
  return true;
}

// Receives one whole multipart message without waiting; false when none (or too many parts).
bool Receive(zmq::socket_t& socket, std::vector<zmq::message_t>* frames) {
  frames->clear();
  for (;;) {
    zmq::message_t part;
    if (!socket.recv(part, zmq::recv_flags::dontwait)) return !frames->empty();
    const bool more = part.more();
    if (frames->size() < 8) frames->push_back(std::move(part));
    if (!more) return true;
  }
}

void SendFrames(zmq::socket_t& socket, const std::vector<std::string>& frames, const std::string* last) {
  for (size_t i = 0; i < frames.size(); ++i) {
    const bool more = i + 1 < frames.size() || last != nullptr;
    socket.send(zmq::buffer(frames[i]),
                (more ? zmq::send_flags::sndmore : zmq::send_flags::none) | zmq::send_flags::dontwait);
  }
  if (last != nullptr) socket.send(zmq::buffer(*last), zmq::send_flags::dontwait);
}

Status SyncDir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return Status::Io("cannot open " + dir + ": " + std::strerror(errno));
  const int rc = ::fsync(fd);
  ::close(fd);
  return rc == 0 ? Status::Ok() : Status::Io("cannot sync " + dir + ": " + std::strerror(errno));
}

// The store behind a Replicator: writes go through it, reads straight to the store.
class ReplicatedStore : public store::Store {
 public:
  ReplicatedStore(std::unique_ptr<store::Store> local, Replicator* replicator)
      : local_(std::move(local)), replicator_(replicator) {}
  // The replicator's thread reads the store (copies for standbys): it stops first.
  ~ReplicatedStore() override { replicator_->Stop(); }
  Status Write(const store::WriteBatch& batch, bool sync) override { return replicator_->Write(batch, sync); }
  Result<std::optional<std::string>> Get(std::string_view key) const override { return local_->Get(key); }
  Status Scan(std::string_view begin, std::string_view end, const store::ScanVisitor& visit) const override {
    return local_->Scan(begin, end, visit);
  }
  Status Checkpoint(const std::string& dir) const override { return local_->Checkpoint(dir); }

 private:
  std::unique_ptr<store::Store> local_;
  Replicator* replicator_;
};

}  // namespace

Replicator::Replicator(ReplicationOptions options, spdlog::logger& log)
    : options_(std::move(options)), log_(log), socket_(context_, zmq::socket_type::router) {
  etcd_ = std::make_unique<EtcdClient>(options_.etcd, std::max<uint64_t>(options_.lease_ms / 4, 200));
}

Replicator::~Replicator() {
  Stop();
  for (auto& [id, s] : standbys_) EndCopy(s);
  socket_.close();
  zap_.reset();
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

std::string Replicator::endpoint() const {
  return trust_ ? endpoint_ + std::string(kReplicationKeyMark) + options_.own.public_key : endpoint_;
}

Status Replicator::Bind() {
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) return Status::Io(std::string("eventfd: ") + std::strerror(errno));
  if (!options_.peers_dir.empty()) {
    trust_ = std::make_unique<bus::TrustStore>(options_.peers_dir);
    std::vector<std::string> removed, problems;
    if (auto read = trust_->Refresh(&removed, &problems); !read.ok()) {
      return Status::Invalid("--ha-peers \"" + options_.peers_dir + "\": " + read.status().message());
    }
    const bus::TrustStore* trust = trust_.get();
    zap_ = std::make_unique<bus::ZapHandler>(context_, trust, spdlog::default_logger(),
                                             [trust](const bus::ZapRequest& request) -> std::string {
                                               const bus::Certificate* cert = trust->Find(request.key);
                                               if (cert == nullptr || cert->role != "scheduler") {
                                                 return "only schedulers follow a leader";
                                               }
                                               return "";
                                             });
    if (Status s = zap_->Bind(); !s.ok()) return s;
    socket_.set(zmq::sockopt::curve_server, true);
    socket_.set(zmq::sockopt::curve_secretkey, options_.own.secret_key);
    socket_.set(zmq::sockopt::zap_domain, "fm-ha");
  }
  socket_.set(zmq::sockopt::linger, 0);
  socket_.set(zmq::sockopt::router_mandatory, true);
  socket_.set(zmq::sockopt::sndhwm, 0);  // bounded by kMaxOwedBytes per standby instead
  socket_.set(zmq::sockopt::heartbeat_ivl, 1000);
  socket_.set(zmq::sockopt::heartbeat_timeout, 5000);
  socket_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(64 * 1024));  // standbys send only small frames
  try {
    socket_.bind(options_.listen);
  } catch (const zmq::error_t& e) {
    return Status::Invalid("--ha-listen \"" + options_.listen + "\": " + e.what());
  }
  endpoint_ = socket_.get(zmq::sockopt::last_endpoint);
  // Copies a killed leader left behind.
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(options_.data_dir, ec)) {
    if (entry.path().filename().string().rfind("ha-copy-", 0) == 0) std::filesystem::remove_all(entry.path(), ec);
  }
  return Status::Ok();
}

void Replicator::Stop() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  Wake();
  acked_.notify_all();
  if (thread_.joinable()) thread_.join();
  local_ = nullptr;
}

void Replicator::Lead(const Leadership* leadership) {
  leadership_ = leadership;
  isr_revision_ = leadership->isr_revision();
}

std::unique_ptr<store::Store> Replicator::Wrap(std::unique_ptr<store::Store> local) {
  local_ = local.get();
  auto wrapped = std::make_unique<ReplicatedStore>(std::move(local), this);
  thread_ = std::thread([this] { Run(); });
  return wrapped;
}

uint64_t Replicator::index() const {
  std::lock_guard lock(mu_);
  return index_;
}

std::vector<StandbyView> Replicator::Standbys() const {
  std::lock_guard lock(mu_);
  std::vector<StandbyView> out;
  for (const auto& [id, s] : standbys_) {
    static const char* names[] = {"copying", "catching up", "joining", "in sync"};
    out.push_back({s.node, names[static_cast<int>(s.state)], s.acked, index_ > s.acked ? index_ - s.acked : 0,
                   s.state == State::kInSync});
  }
  return out;
}

std::vector<std::string> Replicator::TakeNotices() {
  std::lock_guard lock(mu_);
  std::vector<std::string> out;
  out.swap(notices_);
  return out;
}

void Replicator::Wake() {
  if (wake_fd_ < 0) return;
  uint64_t one = 1;
  (void)!::write(wake_fd_, &one, sizeof one);
}

void Replicator::Queue(Outgoing out) { outbox_.push_back(std::move(out)); }

void Replicator::Notice(std::string what) {
  if (notices_.size() >= 64) notices_.erase(notices_.begin());
  notices_.push_back(std::move(what));
}

std::vector<Member> Replicator::NamedMembers(const std::vector<std::string>& without, const std::string& with) const {
  std::vector<Member> members{options_.self};
  for (const auto& [id, s] : standbys_) {
    if (std::find(without.begin(), without.end(), id) != without.end()) continue;
    if (s.named || id == with) members.push_back({s.node, s.store});
  }
  return members;
}

Result<std::vector<Member>> Replicator::ReadSet() {
  auto kv = etcd_->Get("/fm/" + options_.name + "/isr");
  if (!kv.ok()) return kv.status();
  stale_revision_ = false;
  if (!*kv) {
    isr_revision_ = 0;
    return std::vector<Member>{};
  }
  // Only this leadership writes the set while it holds the leader key: what is there is
  // its own last write (another leader's would fail the next write's guard).
  isr_revision_ = (*kv)->mod_revision;
  return IsrMembers((*kv)->value);
}

Status Replicator::WriteSet(const std::vector<Member>& members) {
  if (stale_revision_) {  // a write whose outcome is unknown came before
    if (auto read = ReadSet(); !read.ok()) return read.status();
  }
  const std::string prefix = "/fm/" + options_.name + "/";
  auto put = etcd_->PutIf(prefix + "isr", IsrValue(leadership_->epoch(), members), prefix + "leader",
                          static_cast<int64_t>(leadership_->epoch()), isr_revision_);
  if (!put.ok()) {
    stale_revision_ = true;
    return put.status();
  }
  // Only this leadership writes the set while it holds the key: a failed guard means
  // another leads.
  if (*put == 0) leadership_->Fence("the in-sync set in etcd changed under this leader (another leads)");
  isr_revision_ = *put;
  return Status::Ok();
}

void Replicator::Forget(const std::string& from, const std::string& why) {
  auto it = standbys_.find(from);
  if (it == standbys_.end()) return;
  EndCopy(it->second);
  Queue({from, {"rejoin", why}, nullptr});
  standbys_.erase(it);
  waited_.erase(from);
}

void Replicator::EndCopy(Standby& s) {
  s.copy.reset();
  if (!s.copy_dir.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(s.copy_dir, ec);
    s.copy_dir.clear();
  }
}

Status Replicator::Write(const store::WriteBatch& batch, bool sync) {
  std::unique_lock writing(write_mu_);
  uint64_t index = 0;
  {
    std::lock_guard lock(mu_);
    index = ++index_;
    if (!standbys_.empty()) {
      auto bytes = std::make_shared<const std::string>(batch.Serialize());
      std::vector<std::string> over;
      for (auto& [id, s] : standbys_) {
        if (s.state == State::kCopying) {
          s.held.emplace_back(index, bytes);
        } else {
          Queue({id, {"batch", U64(leadership_->epoch()), U64(s.session), U64(index)}, bytes});
        }
        s.owed_bytes += bytes->size();
        s.sizes[index] = bytes->size();
        if (s.owed_bytes > kMaxOwedBytes && waited_.count(id) == 0) over.push_back(id);
      }
      for (const auto& id : over) {
        log_.warn("standby {} owes more than {} MiB of batches: it starts over with a new copy", standbys_[id].node,
                  kMaxOwedBytes >> 20);
        Forget(id, "too far behind");
      }
      Wake();
    }
  }
  Status written = local_->Write(batch, sync);
  writing.unlock();
  std::unique_lock lock(mu_);
  if (!written.ok()) {
    // The standbys may have applied what this store refused: they hold a state this one
    // does not. An in-sync one can lead from it (this one steps down); the others start over.
    const bool in_sync = !waited_.empty();
    while (!standbys_.empty()) Forget(standbys_.begin()->first, "the leader's store refused a batch");
    Wake();
    if (in_sync) {
      leadership_->Fence("its store refused a batch that its in-sync standbys may hold (" + written.message() +
                         "); one of them leads instead");
    }
    return written;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(options_.lag_max_ms);
  for (;;) {
    std::vector<std::string> late;
    for (const auto& id : waited_) {
      auto it = standbys_.find(id);
      if (it != standbys_.end() && it->second.acked < index) late.push_back(id);
    }
    if (stop_) return Status::Unavailable("the scheduler is stopping: the batch is not released");
    if (late.empty()) {
      released_ = std::max(released_, index);
      return Status::Ok();
    }
    if (std::chrono::steady_clock::now() < deadline) {
      acked_.wait_until(lock, deadline);
      continue;
    }
    // Out of the set in etcd first, then no longer waited for (both under isr_mu_): the
    // set never names a standby that may lack a released batch.
    lock.unlock();
    {
      std::lock_guard isr(isr_mu_);
      std::vector<Member> members;
      std::string names;
      bool named = false;
      {
        std::lock_guard again(mu_);
        for (const auto& id : late) {
          auto it = standbys_.find(id);
          if (it == standbys_.end()) continue;
          names += (names.empty() ? "" : ", ") + it->second.node;
          named = named || it->second.named;
        }
        members = NamedMembers(late, "");
      }
      if (named) {
        if (Status removed = WriteSet(members); !removed.ok()) {
          leadership_->Fence("standby " + names + " did not acknowledge batch " + std::to_string(index) + " within " +
                             std::to_string(options_.lag_max_ms) +
                             " ms and the in-sync set in etcd could not be written: " + removed.message());
        }
      }
      std::lock_guard again(mu_);
      if (!names.empty()) {
        log_.warn(
            "standby {} left the in-sync set: batch {} not acknowledged within {} ms; it starts over with a "
            "new copy",
            names, index, options_.lag_max_ms);
        Notice(names + " left the in-sync set: batch " + std::to_string(index) + " not acknowledged within " +
               std::to_string(options_.lag_max_ms) + " ms");
      }
      for (const auto& id : late) Forget(id, "dropped from the in-sync set: too slow");
    }
    lock.lock();
    Wake();
  }
}

void Replicator::Run() {
  std::vector<zmq::message_t> frames;
  uint64_t next_check = 0, next_refresh = 0, next_tick = 0;
  for (;;) {
    zmq::pollitem_t items[] = {{socket_.handle(), 0, ZMQ_POLLIN, 0},
                               {nullptr, wake_fd_, ZMQ_POLLIN, 0},
                               {zap_ ? zap_->socket().handle() : nullptr, zap_ ? 0 : -1, ZMQ_POLLIN, 0}};
    zmq::poll(items, zap_ ? 3 : 2, std::chrono::milliseconds(100));
    if (items[1].revents & ZMQ_POLLIN) {
      uint64_t n = 0;
      (void)!::read(wake_fd_, &n, sizeof n);
    }
    const uint64_t now = NowMs();
    if (zap_) {
      zap_->Drain(now);
      zap_->FlushLog(now);
      if (now >= next_refresh) {  // certificates added or removed take effect within a second
        next_refresh = now + 1000;
        std::vector<std::string> removed, problems;
        (void)trust_->Refresh(&removed, &problems);
      }
    }
    for (int i = 0; i < 1024; ++i) {
      if (!Receive(socket_, &frames)) break;
      if (frames.size() < 2) continue;
      const std::string from = Text(frames[0]);
      frames.erase(frames.begin());
      OnMessage(from, frames, now);
    }
    std::deque<Outgoing> out;
    std::vector<std::string> ready;
    {
      std::lock_guard lock(mu_);
      if (stop_) return;
      if (now >= next_check) {
        next_check = now + 100;
        std::vector<std::string> silent;
        const bool tick = now >= next_tick;
        if (tick) next_tick = now + 1000;
        for (auto& [id, s] : standbys_) {
          if (waited_.count(id) == 0 && now > s.heard_ms + kForgetSilentMs) silent.push_back(id);
          // Waited for from here on (so no batch is released without it from now), then
          // named in etcd once it has acknowledged every batch released before.
          if (s.state == State::kCatchingUp && now >= s.retry_ms) {
            s.state = State::kJoining;
            s.join_floor = released_;
            waited_.insert(id);
          }
          if (s.state == State::kJoining && !s.named && s.acked >= s.join_floor) ready.push_back(id);
          if (s.state == State::kCopying) SendChunks(id, s);
          // Said every second, so that a standby of a leader with nothing to write knows
          // that it is alive.
          if (tick && s.state != State::kCopying) {
            Queue({id, {"tick", U64(leadership_->epoch()), U64(s.session)}, nullptr});
          }
        }
        for (const auto& id : silent) {
          log_.info("standby {} unheard for {} s: forgotten", standbys_[id].node, kForgetSilentMs / 1000);
          Forget(id, "unheard");
        }
      }
      out.swap(outbox_);
    }
    for (const auto& o : out) {
      // Mandatory routing: a standby whose connection is gone is forgotten at once (it
      // joins again on its new one) instead of silently missing batches.
      try {
        if (!socket_.send(zmq::buffer(o.to), zmq::send_flags::sndmore | zmq::send_flags::dontwait)) continue;
        SendFrames(socket_, o.frames, o.batch.get());
      } catch (const zmq::error_t& e) {
        if (e.num() != EHOSTUNREACH) throw;
        std::lock_guard lock(mu_);
        auto it = standbys_.find(o.to);
        if (it != standbys_.end() && it->second.named) continue;  // the lag bound takes it out of the set
        if (it != standbys_.end()) {
          EndCopy(it->second);
          waited_.erase(o.to);
          standbys_.erase(it);
        }
      }
    }
    for (const auto& id : ready) AddToSet(id, now);
  }
}

void Replicator::AddToSet(const std::string& id, uint64_t now_ms) {
  std::lock_guard isr(isr_mu_);
  std::vector<Member> members;
  std::string node;
  {
    std::lock_guard lock(mu_);
    auto it = standbys_.find(id);
    if (it == standbys_.end() || it->second.state != State::kJoining || it->second.named) return;
    node = it->second.node;
    members = NamedMembers({}, id);
  }
  Status written = WriteSet(members);
  bool named = written.ok();
  if (!written.ok()) {
    // Applied or not? Asked again; until etcd says, it counts as named (it is waited for).
    auto now_set = ReadSet();
    named = !now_set.ok();
    if (now_set.ok()) {
      for (const auto& m : *now_set) named = named || m.node == node;
    }
    log_.warn("adding standby {} to the in-sync set: {}{}", node, written.message(),
              now_set.ok() ? (named ? " (it was written)" : "; trying again") : "; etcd does not say whether it was");
  }
  std::lock_guard lock(mu_);
  auto it = standbys_.find(id);
  if (it == standbys_.end()) return;  // (forgotten meanwhile: only by the lag path, which wrote the set after)
  it->second.named = named;
  if (named && written.ok()) {
    it->second.state = State::kInSync;
    log_.info("standby {} is in sync (batch {}): the in-sync set is [{}]", node, index_, Join(members));
    Notice(node + " joined the in-sync set [" + Join(members) + "]");
  } else if (named) {
    it->second.state = State::kInSync;
  } else {
    it->second.retry_ms = now_ms + 1000;
  }
}

void Replicator::OnMessage(const std::string& from, std::vector<zmq::message_t>& frames, uint64_t now_ms) {
  const std::string type = Text(frames[0]);
  uint64_t session = 0;
  if (type == "join" && frames.size() == 4 && ReadU64(frames[3], &session)) {
    const std::string node = Text(frames[1]), store = Text(frames[2]);
    if (!Printable(node) || !Printable(store)) return;
    // With CURVE a standby joins under its certificate's name only: no other scheduler
    // can take its place in the set.
    if (trust_) {
      const bus::Peer peer = bus::PeerOf(frames[0]);
      if (peer.name != node) {
        log_.warn("refused a join as {} from the certificate of {}: a standby joins under its own name", node,
                  peer.name);
        return;
      }
    }
    {
      std::lock_guard lock(mu_);
      if (standbys_.size() >= kMaxStandbys && standbys_.count(from) == 0) {
        bool known = false;
        for (const auto& [id, s] : standbys_) known = known || s.node == node;
        if (!known) return;  // refused: bounded
      }
      // A copy costs a checkpoint: one per node every few seconds, however often it asks.
      uint64_t& last = last_copy_ms_[node];
      if (last != 0 && now_ms < last + kCopyEveryMs) return;  // it asks again
      if (last_copy_ms_.size() > 4 * kMaxStandbys) last_copy_ms_.clear();
    }
    // One that was in the set (by its name, or this connection under another name) and
    // asks again has lost its place: out of etcd's set before its store is emptied for the
    // copy, and no longer waited for only then (both under isr_mu_).
    {
      std::lock_guard isr(isr_mu_);
      std::vector<std::string> same;
      bool named = false;
      std::vector<Member> members;
      {
        std::lock_guard lock(mu_);
        for (const auto& [id, s] : standbys_) {
          if (s.node == node || id == from) {
            same.push_back(id);
            named = named || s.named;
          }
        }
        members = NamedMembers(same, "");
      }
      if (named) {
        if (Status written = WriteSet(members); !written.ok()) {
          log_.warn("standby {} asks for a new copy; removing it from the in-sync set first failed: {}", node,
                    written.message());
          return;  // it asks again
        }
      }
      std::lock_guard lock(mu_);
      if (named) Notice(node + " left the in-sync set: it asked for a new copy (restarted?)");
      for (const auto& id : same) {
        auto it = standbys_.find(id);
        EndCopy(it->second);
        standbys_.erase(it);
        waited_.erase(id);
      }
      last_copy_ms_[node] = now_ms;
    }
    Standby s;
    s.node = node;
    s.store = store;
    s.session = session;
    s.heard_ms = now_ms;
    s.copy_dir = options_.data_dir + "/ha-copy-" + std::to_string(getpid()) + "-" + std::to_string(++copies_);
    // The copy is taken between two batches: the first batch after it is held for it.
    std::lock_guard writing(write_mu_);
    std::error_code ec;
    std::filesystem::remove_all(s.copy_dir, ec);
    if (Status made = local_->Checkpoint(s.copy_dir); !made.ok()) {
      log_.error("cannot copy the store for standby {}: {}", node, made.message());
      return;
    }
    auto copy = store::OpenRocksStore(s.copy_dir);
    if (!copy.ok()) {
      log_.error("cannot read the copy for standby {}: {}", node, copy.status().message());
      EndCopy(s);
      return;
    }
    s.copy = std::move(*copy);
    std::lock_guard lock(mu_);
    s.copy_index = index_;
    s.acked = index_;
    log_.info("standby {} joins: sending it a copy of the store at batch {}", node, index_);
    auto [it, inserted] = standbys_.emplace(from, std::move(s));
    SendChunks(from, it->second);
    Wake();
    return;
  }
  std::lock_guard lock(mu_);
  auto it = standbys_.find(from);
  if (it == standbys_.end()) {
    if (type == "ack") Queue({from, {"rejoin", "unknown here (the leader restarted, or forgot it)"}, nullptr});
    Wake();
    return;
  }
  Standby& s = it->second;
  uint64_t n = 0;
  if (type == "ack" && frames.size() == 2 && ReadU64(frames[1], &n)) {
    if (s.state == State::kCopying || n > index_) return;  // not a batch it was sent
    s.heard_ms = now_ms;
    if (n > s.acked) {
      s.acked = n;
      while (!s.sizes.empty() && s.sizes.begin()->first <= n) {
        s.owed_bytes -= s.sizes.begin()->second;
        s.sizes.erase(s.sizes.begin());
      }
      acked_.notify_all();
    }
  } else if (type == "chunk-ack" && frames.size() == 2 && ReadU64(frames[1], &n)) {
    if (s.state != State::kCopying || n >= s.chunks_sent) return;
    s.heard_ms = now_ms;
    s.chunks_acked = std::max(s.chunks_acked, n + 1);
    if (s.copy_done && s.chunks_acked == s.chunks_sent) {
      // Copied: then every batch since, in order.
      s.state = State::kCatchingUp;
      for (auto& [index, bytes] : s.held) {
        Queue({from, {"batch", U64(leadership_->epoch()), U64(s.session), U64(index)}, bytes});
      }
      s.held.clear();
      log_.info("standby {} has the copy; catching up from batch {} to {}", s.node, s.copy_index, index_);
    } else {
      SendChunks(from, s);
    }
    Wake();
  }
}

void Replicator::SendChunks(const std::string& from, Standby& s) {
  while (!s.copy_done && s.chunks_sent - s.chunks_acked < static_cast<uint64_t>(kChunksInFlight)) {
    store::WriteBatch chunk;
    if (s.chunks_sent == 0) chunk.DeleteRange("", kEverything);  // the standby's store starts empty
    size_t bytes = 0;
    bool more = false;
    std::string next;
    Status scanned = s.copy->Scan(s.next_key, kEverything, [&](std::string_view key, std::string_view value) {
      if (bytes >= kChunkBytes) {
        more = true;
        next = std::string(key);
        return false;
      }
      chunk.Put(key, value);
      bytes += key.size() + value.size();
      return true;
    });
    if (!scanned.ok()) {
      log_.error("cannot read the copy for standby {}: {}", s.node, scanned.message());
      Forget(from, "the leader could not read its copy");
      return;
    }
    s.next_key = next;
    s.copy_done = !more;
    Queue({from,
           {"chunk", U64(leadership_->epoch()), U64(s.session), U64(s.chunks_sent), U64(s.copy_index),
            s.copy_done ? "1" : "0"},
           std::make_shared<const std::string>(chunk.Serialize())});
    ++s.chunks_sent;
    if (s.copy_done) EndCopy(s);
  }
}

Follower::Follower(store::Store* store, const ReplicationOptions& options, spdlog::logger& log)
    : store_(store), data_dir_(options.data_dir), self_(options.self), own_(options.own), log_(log) {
  if (!options.peers_dir.empty()) trust_ = std::make_unique<bus::TrustStore>(options.peers_dir);
}

Follower::~Follower() { Stop(); }

void Follower::Follow(const std::string& leader_value, uint64_t epoch) {
  const std::string endpoint = ReplicationEndpoint(leader_value), key = ReplicationKey(leader_value);
  if (endpoint.empty() || (endpoint == endpoint_ && epoch == epoch_ && thread_.joinable())) return;
  Stop();
  // With CURVE only a scheduler of --ha-peers is followed (its key is in the leader key,
  // which any etcd client could write); without, only a leader without CURVE.
  std::string refused;
  if (trust_) {
    std::vector<std::string> removed, problems;
    (void)trust_->Refresh(&removed, &problems);
    const bus::Certificate* cert = key.empty() ? nullptr : trust_->Find(key);
    if (key.empty()) {
      refused = "it ships its batches without CURVE, and this scheduler has a certificate";
    } else if (cert == nullptr || cert->role != "scheduler") {
      refused = "its key " + key.substr(0, 8) + "... is not a scheduler's certificate in --ha-peers";
    }
  } else if (!key.empty()) {
    refused = "it ships its batches with CURVE, and this scheduler has no certificate (--cert, --ha-peers)";
  }
  if (!refused.empty()) {
    if (refused != refused_) log_.error("will not follow the leader at {}: {}", endpoint, refused);
    refused_ = refused;
    return;
  }
  refused_.clear();
  endpoint_ = endpoint;
  key_ = key;
  epoch_ = epoch;
  thread_ = std::thread([this, endpoint, key, epoch] { Run(endpoint, key, epoch); });
}

void Follower::Stop() {
  if (!thread_.joinable()) return;
  stop_ = true;
  thread_.join();
  stop_ = false;
  endpoint_.clear();
  epoch_ = 0;
}

bool Follower::Complete() const {
  std::error_code ec;
  return !std::filesystem::exists(data_dir_ + "/ha-incomplete", ec);
}

Status Follower::MarkIncomplete() {
  if (!Complete()) return Status::Ok();
  const std::string path = data_dir_ + "/ha-incomplete";
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return Status::Io("cannot create " + path + ": " + std::strerror(errno));
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return Status::Io("cannot sync " + path);
  return SyncDir(data_dir_);
}

Status Follower::MarkComplete() {
  const std::string path = data_dir_ + "/ha-incomplete";
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) return Status::Io("cannot remove " + path);
  return SyncDir(data_dir_);
}

void Follower::Run(std::string endpoint, std::string key, uint64_t epoch) {
  zmq::context_t context(1);
  std::unique_ptr<zmq::socket_t> socket;
  bool copying = true;
  uint64_t chunk_expected = 0, index = 0, heard = 0, acked_at = 0, join_at = 0, asked_at = 0;
  // Each join starts a session: what the leader still sends of an earlier one is dropped.
  uint64_t session = 0;
  auto connect = [&](uint64_t now) {
    socket = std::make_unique<zmq::socket_t>(context, zmq::socket_type::dealer);
    socket->set(zmq::sockopt::linger, 0);
    socket->set(zmq::sockopt::heartbeat_ivl, 1000);
    socket->set(zmq::sockopt::heartbeat_timeout, 5000);
    socket->set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(Replicator::kMaxOwedBytes));
    if (!key.empty()) {
      socket->set(zmq::sockopt::curve_serverkey, key);
      socket->set(zmq::sockopt::curve_publickey, own_.public_key);
      socket->set(zmq::sockopt::curve_secretkey, own_.secret_key);
    }
    socket->connect(endpoint);
    heard = now;
    join_at = now;
  };
  auto send = [&](std::vector<std::string> frames) { SendFrames(*socket, frames, nullptr); };
  auto rejoin = [&](const std::string& why, uint64_t now) {
    log_.warn("following {} (epoch {}): {}; asking for a new copy", endpoint, epoch, why);
    copying = true;
    chunk_expected = 0;
    join_at = now + 500;
  };
  connect(NowMs());
  log_.info("following the leader at {} (epoch {})", endpoint, epoch);
  std::vector<zmq::message_t> frames;
  while (!stop_.load()) {
    zmq::pollitem_t item{socket->handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, std::chrono::milliseconds(100));
    uint64_t now = NowMs();
    if (join_at != 0 && now >= join_at) {
      send({"join", self_.node, self_.store, U64(++session)});
      join_at = 0;
      asked_at = now;
    }
    // Asked, and no copy begun: the leader may have refused for now (a copy a moment ago,
    // the set being written); ask again.
    if (copying && chunk_expected == 0 && join_at == 0 && now >= asked_at + 2000) join_at = now;
    for (int i = 0; i < 64 && !stop_.load() && Receive(*socket, &frames); ++i) {
      heard = now;
      const std::string type = Text(frames[0]);
      uint64_t their_epoch = 0, their_session = 0, n = 0, at = 0;
      if (type == "rejoin" && frames.size() == 2) {
        rejoin("the leader says: " + Text(frames[1]).substr(0, kMaxNameBytes), now);
        continue;
      }
      const bool chunk = type == "chunk" && frames.size() == 7 && ReadU64(frames[1], &their_epoch) &&
                         ReadU64(frames[2], &their_session) && ReadU64(frames[3], &n) && ReadU64(frames[4], &at);
      const bool batch = type == "batch" && frames.size() == 5 && ReadU64(frames[1], &their_epoch) &&
                         ReadU64(frames[2], &their_session) && ReadU64(frames[3], &n);
      if (!chunk && !batch) continue;  // not a message of this protocol
      if (their_epoch != epoch) {
        // Another leadership's: the key this standby read says who leads.
        log_.warn("refused a batch of epoch {} from {}: following epoch {}", their_epoch, endpoint, epoch);
        continue;
      }
      if (join_at != 0 || their_session != session) continue;  // an earlier session's
      const zmq::message_t& body = frames.back();
      if (chunk) {
        if (!copying || n != chunk_expected) {
          rejoin("chunk " + std::to_string(n) + " out of order", now);
          continue;
        }
        if (n == 0) {
          if (Status s = MarkIncomplete(); !s.ok()) {
            log_.error("{}", s.message());
            rejoin("cannot mark the store incomplete", now);
            continue;
          }
        }
      } else if (copying || n != index + 1) {
        rejoin("batch " + std::to_string(n) + " after " + std::to_string(index), now);
        continue;
      }
      auto parsed = store::WriteBatch::Parse(std::string_view(static_cast<const char*>(body.data()), body.size()));
      if (!parsed.ok()) {
        log_.error("following {}: {}", endpoint, parsed.status().message());
        rejoin("a batch that does not parse", now);
        continue;
      }
      const bool last = chunk && Text(frames[5]) == "1";
      Status written = store_->Write(*parsed, /*sync=*/batch || last);
      if (written.ok() && last) written = MarkComplete();
      if (!written.ok()) {
        log_.error("following {}: cannot write to the store: {}", endpoint, written.message());
        (void)MarkIncomplete();
        rejoin("the store refused a write", now);
        continue;
      }
      if (chunk) {
        send({"chunk-ack", U64(n)});
        ++chunk_expected;
        if (last) {
          copying = false;
          index = at;
          applied_ = at;
          log_.info("copied the leader's store (batch {}); applying its batches", at);
        }
      } else {
        index = n;
        applied_ = n;
        send({"ack", U64(n)});
        acked_at = now;
      }
    }
    if (!copying && now >= acked_at + 500) {  // also says it is alive
      send({"ack", U64(index)});
      acked_at = now;
    }
    if (now > heard + kFollowerSilentMs) {
      log_.warn("following {}: nothing heard for {} s; connecting again", endpoint, kFollowerSilentMs / 1000);
      copying = true;
      chunk_expected = 0;
      connect(now);
    }
  }
}

}  // namespace fm::ha
