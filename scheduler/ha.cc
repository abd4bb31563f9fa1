#include "scheduler/ha.h"

#include <curl/curl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/bus.h"

namespace fm::ha {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// The leader's deadline runs on CLOCK_BOOTTIME: unlike the monotonic clock it counts a
// host's suspension, during which etcd's lease runs out all the same.
int64_t BootNs() {
  timespec ts{};
  clock_gettime(CLOCK_BOOTTIME, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

int64_t NsOf(std::chrono::nanoseconds d) { return d.count(); }

// etcd's answers are a few hundred bytes; a peer that sends more is not etcd.
constexpr size_t kMaxReplyBytes = 1 << 20;

std::string Base64(const std::string& bytes) {
  std::string out(sodium_base64_ENCODED_LEN(bytes.size(), sodium_base64_VARIANT_ORIGINAL), '\0');
  sodium_bin2base64(out.data(), out.size(), reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(),
                    sodium_base64_VARIANT_ORIGINAL);
  out.resize(std::strlen(out.c_str()));
  return out;
}

std::string FromBase64(const std::string& text) {
  std::string out(text.size(), '\0');
  size_t len = 0;
  if (sodium_base642bin(reinterpret_cast<unsigned char*>(out.data()), out.size(), text.data(), text.size(), nullptr,
                        &len, nullptr, sodium_base64_VARIANT_ORIGINAL) != 0) {
    return "";
  }
  out.resize(len);
  return out;
}

// Fields read defensively: a reply of an unexpected shape reads as absent fields (and
// then fails the caller's checks), never as an exception.
std::string Text(const json& object, const char* name) {
  if (!object.is_object()) return "";
  auto it = object.find(name);
  return it != object.end() && it->is_string() ? it->get<std::string>() : "";
}

bool Flag(const json& object, const char* name) {
  if (!object.is_object()) return false;
  auto it = object.find(name);
  return it != object.end() && it->is_boolean() && it->get<bool>();
}

const json& Field(const json& object, const char* name) {
  static const json none;
  if (!object.is_object()) return none;
  auto it = object.find(name);
  return it != object.end() ? *it : none;
}

// proto3 JSON: int64 as a string, absent when 0.
int64_t Int(const json& object, const char* name) {
  if (!object.is_object()) return 0;
  auto it = object.find(name);
  if (it == object.end()) return 0;
  if (it->is_number_integer()) {
    const int64_t v = it->get<int64_t>();
    return v >= 0 ? v : 0;
  }
  if (!it->is_string()) return 0;
  // Revisions, lease ids and TTLs: non-negative int64, or not believed.
  const std::string& text = it->get_ref<const std::string&>();
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(text.c_str(), &end, 10);
  if (errno != 0 || end == text.c_str() || *end != '\0' || v < 0) return 0;
  return v;
}

EtcdClient::KeyValue ParseKeyValue(const json& kv) {
  EtcdClient::KeyValue out;
  out.key = FromBase64(Text(kv, "key"));
  out.value = FromBase64(Text(kv, "value"));
  out.create_revision = Int(kv, "create_revision");
  out.mod_revision = Int(kv, "mod_revision");
  out.lease = Int(kv, "lease");
  return out;
}

Result<json> ParseReply(const std::string& text, const std::string& what) {
  json reply = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (reply.is_discarded() || !reply.is_object()) return Status::Unavailable(what + ": etcd's answer is not JSON");
  if (reply.contains("error")) {
    return Status::Unavailable(
        what + ": etcd: " + (reply["error"].is_string() ? reply["error"].get<std::string>() : reply["error"].dump()));
  }
  return reply;
}

size_t Append(char* data, size_t size, size_t count, void* out) {
  auto* text = static_cast<std::string*>(out);
  if (text->size() + size * count > kMaxReplyBytes) return 0;  // ends the transfer with an error
  text->append(data, size * count);
  return size * count;
}

}  // namespace

std::string IsrValue(uint64_t epoch, const std::vector<Member>& members) {
  json list = json::array();
  for (const auto& m : members) list.push_back(json{{"node", m.node}, {"store", m.store}});
  return json{{"epoch", epoch}, {"members", list}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::vector<Member> IsrMembers(const std::string& value) {
  const json isr = json::parse(value, nullptr, false);
  std::vector<Member> out;
  if (const json& members = Field(isr, "members"); members.is_array()) {
    for (const auto& m : members) out.push_back({Text(m, "node"), Text(m, "store")});
  }
  return out;
}

std::string Join(const std::vector<Member>& members) {
  std::string out;
  for (const auto& m : members) out += (out.empty() ? "" : ", ") + m.node;
  return out;
}

std::string LeaderValue(const std::string& node, const std::string& describe, const std::string& replication) {
  return node + (describe.empty() ? "" : " (" + describe + ")") +
         (replication.empty() ? "" : std::string(kReplicationMark) + replication);
}

std::string ReplicationEndpoint(const std::string& leader_value) {
  const size_t at = leader_value.rfind(kReplicationMark);
  if (at == std::string::npos) return "";
  std::string rest = leader_value.substr(at + kReplicationMark.size());
  return rest.substr(0, rest.find(kReplicationKeyMark));
}

std::string ReplicationKey(const std::string& leader_value) {
  const size_t at = leader_value.rfind(kReplicationMark);
  if (at == std::string::npos) return "";
  const size_t key = leader_value.find(kReplicationKeyMark, at);
  return key == std::string::npos ? "" : leader_value.substr(key + kReplicationKeyMark.size());
}

namespace {

uint64_t WallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

EtcdClient::EtcdClient(std::vector<std::string> endpoints, uint64_t timeout_ms)
    : endpoints_(std::move(endpoints)), timeout_ms_(timeout_ms) {
  static const bool initialized = [] {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    return sodium_init() >= 0;
  }();
  (void)initialized;
  curl_ = curl_easy_init();
}

EtcdClient::~EtcdClient() {
  if (curl_ != nullptr) curl_easy_cleanup(static_cast<CURL*>(curl_));
}

Result<std::string> EtcdClient::Post(const std::string& path, const std::string& body) {
  if (curl_ == nullptr) return Status::Internal("libcurl could not be initialized");
  CURL* curl = static_cast<CURL*>(curl_);
  std::string problems;
  // One budget for the whole call, however many endpoints are tried.
  const auto until = Clock::now() + std::chrono::milliseconds(timeout_ms_);
  for (size_t tried = 0; tried < endpoints_.size(); ++tried) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now()).count();
    if (left <= 0) break;
    const std::string url = endpoints_[current_] + path;
    std::string reply;
    curl_easy_reset(curl);
    struct curl_slist* headers = curl_slist_append(nullptr, "Content-Type: application/json");
    curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body.c_str());
    curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, static_cast<long>(body.size()));
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, static_cast<long>(left));
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(std::min<int64_t>(left, 500)));
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, Append);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &reply);
    CURLcode rc = curl_easy_perform(curl);
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(headers);
    if (rc == CURLE_OK && status == 200) return reply;
    problems += (problems.empty() ? "" : "; ") + endpoints_[current_] + ": " +
                (rc != CURLE_OK ? std::string(curl_easy_strerror(rc))
                                : "HTTP " + std::to_string(status) + " " + reply.substr(0, 200));
    if (rc == CURLE_OK && status >= 400 && status < 500) break;  // the request is wrong, not the endpoint
    current_ = (current_ + 1) % endpoints_.size();
  }
  return Status::Unavailable(problems.empty() ? "no time left to ask etcd" : problems);
}

Result<int64_t> EtcdClient::GrantLease(int64_t ttl_seconds) {
  auto text = Post("/v3/lease/grant", json{{"TTL", ttl_seconds}}.dump(-1, ' ', false, json::error_handler_t::replace));
  if (!text.ok()) return text.status();
  auto reply = ParseReply(*text, "lease grant");
  if (!reply.ok()) return reply.status();
  const int64_t id = Int(*reply, "ID");
  if (id == 0) return Status::Unavailable("lease grant: etcd gave no lease");
  return id;
}

Result<int64_t> EtcdClient::KeepAlive(int64_t lease) {
  auto text = Post("/v3/lease/keepalive",
                   json{{"ID", std::to_string(lease)}}.dump(-1, ' ', false, json::error_handler_t::replace));
  if (!text.ok()) return text.status();
  auto reply = ParseReply(*text, "lease keepalive");
  if (!reply.ok()) return reply.status();
  const json& result = Field(*reply, "result");
  if (!result.is_object()) return Status::Unavailable("lease keepalive: etcd's answer has no result");
  return Int(result, "TTL");
}

Status EtcdClient::Revoke(int64_t lease) {
  auto text = Post("/v3/lease/revoke",
                   json{{"ID", std::to_string(lease)}}.dump(-1, ' ', false, json::error_handler_t::replace));
  if (!text.ok()) return text.status();
  auto reply = ParseReply(*text, "lease revoke");
  return reply.ok() ? Status::Ok() : reply.status();
}

Result<std::optional<EtcdClient::KeyValue>> EtcdClient::Get(const std::string& key) {
  auto text = Post("/v3/kv/range", json{{"key", Base64(key)}}.dump(-1, ' ', false, json::error_handler_t::replace));
  if (!text.ok()) return text.status();
  auto reply = ParseReply(*text, "get " + key);
  if (!reply.ok()) return reply.status();
  const json& kvs = Field(*reply, "kvs");
  if (!kvs.is_array() || kvs.empty()) return std::optional<KeyValue>();
  return std::optional<KeyValue>(ParseKeyValue(kvs[0]));
}

Result<std::pair<bool, EtcdClient::KeyValue>> EtcdClient::CreateIfAbsent(const std::string& key,
                                                                         const std::string& value, int64_t lease) {
  const std::string k = Base64(key);
  json txn = {
      {"compare", {{{"key", k}, {"target", "CREATE"}, {"result", "EQUAL"}, {"createRevision", "0"}}}},
      {"success", {{{"requestPut", {{"key", k}, {"value", Base64(value)}, {"lease", std::to_string(lease)}}}}}},
      {"failure", {{{"requestRange", {{"key", k}}}}}},
  };
  auto text = Post("/v3/kv/txn", txn.dump(-1, ' ', false, json::error_handler_t::replace));
  if (!text.ok()) return text.status();
  auto reply = ParseReply(*text, "create " + key);
  if (!reply.ok()) return reply.status();
  if (Flag(*reply, "succeeded")) {
    // Created by this transaction: its revision is the key's create revision.
    KeyValue kv{key, value, 0, 0, lease};
    kv.create_revision = kv.mod_revision = Int(Field(*reply, "header"), "revision");
    if (kv.create_revision == 0) return Status::Unavailable("create " + key + ": etcd's answer has no revision");
    return std::make_pair(true, kv);
  }
  // Held by another: the range in the failure branch says by whom (it may have gone since).
  KeyValue holder{key, "", 0, 0, 0};
  const json& responses = Field(*reply, "responses");
  if (responses.is_array() && !responses.empty()) {
    const json& kvs = Field(Field(responses[0], "response_range"), "kvs");
    if (kvs.is_array() && !kvs.empty()) holder = ParseKeyValue(kvs[0]);
  }
  return std::make_pair(false, holder);
}

Result<int64_t> EtcdClient::PutIf(const std::string& key, const std::string& value, const std::string& guard,
                                  int64_t guard_created, int64_t key_modified) {
  const std::string k = Base64(key);
  json txn = {
      {"compare",
       {{{"key", Base64(guard)},
         {"target", "CREATE"},
         {"result", "EQUAL"},
         {"createRevision", std::to_string(guard_created)}},
        {{"key", k}, {"target", "MOD"}, {"result", "EQUAL"}, {"modRevision", std::to_string(key_modified)}}}},
      {"success", {{{"requestPut", {{"key", k}, {"value", Base64(value)}}}}}},
  };
  auto text = Post("/v3/kv/txn", txn.dump(-1, ' ', false, json::error_handler_t::replace));
  if (!text.ok()) return text.status();
  auto reply = ParseReply(*text, "put " + key);
  if (!reply.ok()) return reply.status();
  if (!Flag(*reply, "succeeded")) return int64_t{0};
  // Written by this transaction: its revision is the key's mod revision now.
  const int64_t revision = Int(Field(*reply, "header"), "revision");
  if (revision == 0) return Status::Unavailable("put " + key + ": etcd's answer has no revision");
  return revision;
}

Result<std::vector<std::string>> ParseEtcdEndpoints(const std::string& list) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= list.size()) {
    size_t comma = list.find(',', start);
    std::string url = list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    while (!url.empty() && url.back() == '/') url.pop_back();
    if (url.rfind("http://", 0) != 0 && url.rfind("https://", 0) != 0) {
      return Status::Invalid("--etcd \"" + url +
                             "\": each endpoint is http://HOST:PORT (or https://), comma-separated");
    }
    if (url.find(':', url.find("//") + 2) == std::string::npos) {
      return Status::Invalid("--etcd \"" + url + "\": name the port (etcd's client port, usually 2379)");
    }
    out.push_back(url);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

Status StoreIdentity(const std::string& data_dir, std::string* id, bool* fresh) {
  std::error_code ec;
  std::filesystem::create_directories(data_dir, ec);
  if (ec) return Status::Io("cannot create data directory " + data_dir + ": " + ec.message());
  ::chmod(data_dir.c_str(), 0700);
  *fresh = !std::filesystem::exists(data_dir + "/store/CURRENT", ec);
  const std::string path = data_dir + "/ha-store-id";
  if (std::ifstream in(path); in) {
    std::getline(in, *id);
    if (id->size() == 32) return Status::Ok();
  }
  unsigned char bytes[16];
  randombytes_buf(bytes, sizeof bytes);
  char hex[33];
  sodium_bin2hex(hex, sizeof hex, bytes, sizeof bytes);
  *id = hex;
  const std::string tmp = path + ".new";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << *id << "\n";
    if (!out.flush()) return Status::Io("cannot write " + tmp);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) return Status::Io("cannot write " + path + ": " + strerror(errno));
  return Status::Ok();
}

Leadership::Leadership(const LeadershipOptions& options, spdlog::logger& log) : options_(options), log_(log) {
  // Each request is bounded well inside the lease: a renewal that hangs must not outlive it.
  etcd_ = std::make_unique<EtcdClient>(options_.etcd, std::max<uint64_t>(options_.lease_ms / 4, 200));
  leader_key_ = "/fm/" + options_.name + "/leader";
}

Result<std::unique_ptr<Leadership>> Leadership::Acquire(const LeadershipOptions& options, const std::atomic<bool>& stop,
                                                        spdlog::logger& log) {
  if (options.etcd.empty()) return Status::Invalid("--etcd: no endpoint");
  if (options.lease_ms < 2000) return Status::Invalid("--ha-lease: at least 2s (etcd's shortest lease)");
  if (options.node.empty()) return Status::Invalid("--ha-node: empty");
  std::unique_ptr<Leadership> me(new Leadership(options, log));
  EtcdClient& etcd = *me->etcd_;
  const std::string isr_key = "/fm/" + options.name + "/isr";
  const int64_t ttl_s = static_cast<int64_t>((options.lease_ms + 999) / 1000);
  const auto margin = std::chrono::milliseconds(std::max<uint64_t>(500, options.lease_ms / 6));
  std::string said;
  auto say = [&](spdlog::level::level_enum level, const std::string& message) {
    if (options.waiting) options.waiting(message);
    if (message == said) return;  // once per change
    log.log(level, "{}", message);
    said = message;
  };
  auto pause = [&](uint64_t ms) {
    for (uint64_t waited = 0; waited < ms && !stop.load(); waited += 50) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  };
  const std::string value = LeaderValue(options.node, options.describe, options.replication);
  while (!stop.load()) {
    // Reads until the key is free: a standby writes nothing to etcd while it waits.
    auto held = etcd.Get(me->leader_key_);
    if (!held.ok()) {
      say(spdlog::level::warn,
          "standby for " + options.name + ": etcd does not answer (" + held.status().message() + "); trying again");
      pause(500);
      continue;
    }
    if (*held) {
      say(spdlog::level::info, "standby for " + options.name + ": led by " + (*held)->value + " (epoch " +
                                   std::to_string((*held)->create_revision) + ")");
      if (options.follow) options.follow((*held)->value, static_cast<uint64_t>((*held)->create_revision));
      pause(250);
      continue;
    }
    // Nothing more is applied from the last leader from here on: what this store holds is
    // what it would lead with.
    if (std::string unready = options.ready ? options.ready() : std::string(); !unready.empty()) {
      // Not even by force: a store half copied is no scheduler's state.
      say(spdlog::level::err, "will not lead " + options.name + ": " + unready);
      pause(1000);
      continue;
    }
    // Only a member of the in-sync set takes the key (or an operator's forced one): one
    // that may lack what was acknowledged never holds it, even for a moment.
    auto isr = etcd.Get(isr_key);
    if (!isr.ok()) {
      say(spdlog::level::warn, "standby for " + options.name + ": " + isr.status().message());
      pause(500);
      continue;
    }
    // In sync: named with this very store. With no set at all (the first leader, or an
    // etcd new or emptied) only a scheduler whose store is still empty may lead.
    const std::vector<Member> members = *isr ? IsrMembers((*isr)->value) : std::vector<Member>{};
    const Member* named = nullptr;
    for (const auto& m : members) {
      if (m.node == options.node) named = &m;
    }
    const bool member = *isr ? named != nullptr && named->store == options.store : options.fresh_store;
    if (!member && !options.force_promotion) {
      std::string why;
      if (!*isr) {
        why =
            "the in-sync set is missing from etcd (a new or emptied etcd?) and this scheduler's store already "
            "holds data: only an operator knows whether it is the latest";
      } else if (named != nullptr) {
        why = "its store (id " + options.store + ") is not the one the in-sync set names (" + named->store +
              "): its data directory was replaced or emptied, and may lack what was acknowledged";
      } else {
        why = "this scheduler (" + options.node + ") is not in the in-sync set [" + Join(members) +
              "], so its store may lack what the last leader acknowledged; start that scheduler again";
      }
      say(spdlog::level::err, "will not lead " + options.name + ": " + why +
                                  "; or lead anyway with --ha-force-promotion (what only the last leader had is lost)");
      pause(1000);
      continue;
    }
    const int64_t sent = BootNs();
    auto lease = etcd.GrantLease(ttl_s);
    if (!lease.ok()) {
      say(spdlog::level::warn, "standby for " + options.name + ": " + lease.status().message());
      pause(500);
      continue;
    }
    auto won = etcd.CreateIfAbsent(me->leader_key_, value, *lease);
    if (!won.ok() || !won->first) {
      (void)etcd.Revoke(*lease);
      if (!won.ok()) say(spdlog::level::warn, "standby for " + options.name + ": " + won.status().message());
      continue;  // another took it first: said at the next read
    }
    const int64_t epoch = won->second.create_revision;
    if (static_cast<uint64_t>(epoch) >=
        bus::kMaxLeadershipEpoch) {  // a revision no etcd reaches: not believed (the broker would keep it)
      (void)etcd.Revoke(*lease);
      say(spdlog::level::err, "standby for " + options.name + ": etcd gave revision " + std::to_string(epoch) +
                                  " to the leader key, beyond any real one; not leading on it");
      pause(1000);
      continue;
    }
    // The in-sync set is this leader alone until standbys are shipped its batches; the
    // write fails if the set changed since it was read (then all over again).
    auto put = etcd.PutIf(isr_key, IsrValue(epoch, {{options.node, options.store}}), me->leader_key_, epoch,
                          *isr ? (*isr)->mod_revision : 0);
    if (!put.ok() || *put == 0) {
      (void)etcd.Revoke(*lease);
      say(spdlog::level::warn, "standby for " + options.name + ": the in-sync set changed while taking the lead" +
                                   (put.ok() ? std::string() : ": " + put.status().message()));
      continue;
    }
    me->lease_ = *lease;
    me->isr_revision_ = *put;
    me->epoch_ = static_cast<uint64_t>(epoch);
    me->since_ms_ = WallMs();
    me->forced_ = !member;
    me->deadline_ns_ = sent + NsOf(std::chrono::seconds(ttl_s) - margin);
    if (!me->Valid()) {
      // Taking the lead took most of the lease (etcd slow): never lead on borrowed time.
      (void)etcd.Revoke(*lease);
      say(spdlog::level::warn, "standby for " + options.name + ": etcd answered too slowly to lead safely");
      continue;
    }
    if (me->forced_) {
      log.warn(
          "leading {} as {} (epoch {}) BY FORCE: not in the in-sync set [{}]; what only its last leader "
          "acknowledged is lost",
          options.name, options.node, epoch, Join(members));
    } else {
      log.info("leading {} as {} (epoch {})", options.name, options.node, epoch);
    }
    me->keepalive_ = std::thread([leadership = me.get()] { leadership->KeepAliveLoop(); });
    return me;
  }
  return Status::Unavailable("stopped while waiting to lead " + options.name);
}

Leadership::~Leadership() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (keepalive_.joinable()) keepalive_.join();
  // Handing over at once rather than after the lease: the key goes with the lease.
  if (lease_ != 0) (void)etcd_->Revoke(lease_);
}

bool Leadership::Valid() const { return BootNs() < deadline_ns_.load(); }

double Leadership::seconds_left() const {
  return std::max<double>(0, static_cast<double>(deadline_ns_.load() - BootNs()) / 1e9);
}

void Leadership::Fence(const std::string& why) const {
  log_.critical("no longer sure to lead {} (epoch {}): {}; exiting so that nothing more is sent", options_.name, epoch_,
                why);
  log_.flush();
  std::_Exit(kFencedExitCode);
}

void Leadership::KeepAliveLoop() {
  const int64_t every = NsOf(std::chrono::milliseconds(options_.lease_ms / 3));
  const int64_t retry = NsOf(std::chrono::milliseconds(100));
  const int64_t ttl_s = static_cast<int64_t>((options_.lease_ms + 999) / 1000);
  const int64_t validity =
      NsOf(std::chrono::seconds(ttl_s) - std::chrono::milliseconds(std::max<uint64_t>(500, options_.lease_ms / 6)));
  int64_t next = BootNs();  // renewed at once: taking the lead may have used much of the lease
  std::string last_problem;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      const int64_t wake = std::min(next, deadline_ns_.load());
      wake_.wait_for(lock, std::chrono::nanoseconds(std::max<int64_t>(wake - BootNs(), 0)),
                     [this] { return stopping_; });
      if (stopping_) return;
    }
    if (!Valid()) {
      Fence("its lease in etcd was not renewed in time" +
            (last_problem.empty() ? std::string(" (the process or its host stalled)") : ": " + last_problem));
    }
    if (BootNs() < next) continue;
    const int64_t sent = BootNs();
    // A renewal may not outlast the time the lease is known to be alive: past it the
    // leader must be able to stop.
    etcd_->set_timeout_ms(static_cast<uint64_t>(
        std::clamp<int64_t>((deadline_ns_.load() - sent) / 1'000'000, 1, static_cast<int64_t>(options_.lease_ms / 4))));
    auto ttl = etcd_->KeepAlive(lease_);
    if (ttl.ok() && *ttl > 0) {
      // etcd keeps the lease at least its TTL from this renewal, counted from before it was sent.
      deadline_ns_ = std::max(deadline_ns_.load(), sent + validity);
      ++renewals_;
      last_problem.clear();
      next = sent + every;
    } else if (ttl.ok()) {
      Fence("etcd says its lease expired");
    } else {
      if (ttl.status().message() != last_problem) {
        log_.warn("could not renew the lease of {} in etcd: {}; {:.1f} s left", options_.name, ttl.status().message(),
                  seconds_left());
      }
      last_problem = ttl.status().message();
      next = BootNs() + retry;
    }
  }
}

}  // namespace fm::ha
