#include "worker/docker_client.h"

#include <flatbuffers/flexbuffers.h>
#include <flatbuffers/idl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>

#include "schemas/docker_generated.h"

namespace fm {
namespace wire::embedded {
extern const char* const kDockerSchema;
}
namespace worker {
namespace {

constexpr const char* kApi = "/v1.41";

std::string Errno(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

constexpr size_t kMaxBodyBytes = 64u << 20;

// A parser for one Docker response type; unknown fields are skipped.
std::unique_ptr<flatbuffers::Parser> DockerParser(const char* root) {
  flatbuffers::IDLOptions options;
  options.skip_unexpected_fields_in_json = true;
  options.strict_json = true;
  options.indent_step = -1;
  auto parser = std::make_unique<flatbuffers::Parser>(options);
  if (!parser->Parse(wire::embedded::kDockerSchema) || !parser->SetRootType(root)) return nullptr;
  return parser;
}

std::string ErrorText(const HttpResponse& r) {
  auto parser = DockerParser("ErrorResponse");
  if (parser && parser->ParseJson(r.body.c_str())) {
    auto* e = flatbuffers::GetRoot<docker::ErrorResponse>(parser->builder_.GetBufferPointer());
    if (e->message()) return "HTTP " + std::to_string(r.status) + ": " + e->message()->str();
  }
  return "HTTP " + std::to_string(r.status) + ": " + r.body.substr(0, 200);
}

}  // namespace

namespace {

// An open request: the response head read, the body to come.
struct Exchange {
  int fd = -1;
  int status = 0;
  bool chunked = false;
  std::string early;  // body bytes read with the head
  ~Exchange() {
    if (fd >= 0) close(fd);
  }
};

Status Open(const std::string& socket_path, const std::string& method, const std::string& path, const std::string& body,
            int timeout_ms, Exchange* x, LogsStop* stop = nullptr) {
  x->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (x->fd < 0) return Status::Io(Errno("socket"));
  if (stop) stop->Attach(x->fd);
  if (timeout_ms > 0) {
    timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    setsockopt(x->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(x->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof addr.sun_path) return Status::Invalid("socket path too long: " + socket_path);
  std::strcpy(addr.sun_path, socket_path.c_str());
  if (connect(x->fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return Status::Unavailable(Errno("connect"));
  }
  std::string request = method + " " + path + " HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n";
  if (!body.empty() || method == "POST") {
    request += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  }
  request += "\r\n" + body;
  for (size_t sent = 0; sent < request.size();) {
    ssize_t n = send(x->fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return Status::Unavailable(Errno("send"));
    sent += static_cast<size_t>(n);
  }
  std::string head;
  char buf[16384];
  size_t header_end;
  while ((header_end = head.find("\r\n\r\n")) == std::string::npos) {
    if (head.size() > (64u << 10)) return Status::Unavailable("an HTTP response head over 64 KiB");
    ssize_t n = recv(x->fd, buf, sizeof buf, 0);
    if (n == 0) return Status::Unavailable("not an HTTP response");
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::Unavailable(errno == EAGAIN ? "no answer within " + std::to_string(timeout_ms) + " ms"
                                                 : Errno("recv"));
    }
    head.append(buf, static_cast<size_t>(n));
  }
  if (head.rfind("HTTP/1.", 0) != 0) return Status::Unavailable("not an HTTP response");
  x->status = std::atoi(head.c_str() + head.find(' ') + 1);
  x->early = head.substr(header_end + 4);
  head.resize(header_end);
  for (auto& c : head) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  x->chunked = head.find("transfer-encoding: chunked") != std::string::npos;
  return Status::Ok();
}

// Reads the body to its end, passing it on (de-chunked) as it comes.
Status ReadBody(Exchange* x, int timeout_ms, const std::function<void(std::string_view)>& out) {
  ChunkedDecoder chunks;
  auto feed = [&](std::string_view data) {
    if (!x->chunked) {
      out(data);
      return true;
    }
    return chunks.Feed(data, out);
  };
  if (!feed(x->early)) return Status::Unavailable("a malformed chunked response");
  char buf[65536];
  while (!chunks.done()) {
    ssize_t n = recv(x->fd, buf, sizeof buf, 0);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::Unavailable(errno == EAGAIN ? "no answer within " + std::to_string(timeout_ms) + " ms"
                                                 : Errno("recv"));
    }
    if (!feed(std::string_view(buf, static_cast<size_t>(n))))
      return Status::Unavailable("a malformed chunked response");
  }
  if (x->chunked && !chunks.done()) return Status::Unavailable("truncated chunked response");
  return Status::Ok();
}

}  // namespace

Result<HttpResponse> UnixHttp(const std::string& socket_path, const std::string& method, const std::string& path,
                              const std::string& body, int timeout_ms) {
  Exchange x;
  if (Status s = Open(socket_path, method, path, body, timeout_ms, &x); !s.ok()) return s;
  HttpResponse response;
  response.status = x.status;
  bool too_big = false;
  Status s = ReadBody(&x, timeout_ms, [&](std::string_view data) {
    if (response.body.size() + data.size() > kMaxBodyBytes) {
      too_big = true;
      return;
    }
    response.body.append(data);
  });
  if (!s.ok()) return s;
  if (too_big) return Status::Unavailable("a response body over 64 MiB");
  return response;
}

bool ChunkedDecoder::Feed(std::string_view in, const std::function<void(std::string_view)>& out) {
  while (!in.empty() && state_ != State::kDone) {
    if (state_ == State::kData) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(left_, in.size()));
      out(in.substr(0, n));
      in.remove_prefix(n);
      left_ -= n;
      if (left_ == 0) state_ = State::kDataEnd;
      continue;
    }
    // A line: a chunk's size, the CRLF after its data, or a trailer.
    size_t eol = in.find('\n');
    line_.append(in.substr(0, eol));
    if (line_.size() > 1024) return false;
    if (eol == std::string_view::npos) return true;
    in.remove_prefix(eol + 1);
    std::string line = std::move(line_);
    line_.clear();
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (state_ == State::kDataEnd) {
      if (!line.empty()) return false;
      state_ = State::kSize;
    } else if (state_ == State::kTrailer) {
      if (line.empty()) state_ = State::kDone;
    } else {
      size_t digits = 0;
      uint64_t size = 0;
      for (char c : line) {
        int v = std::isdigit(static_cast<unsigned char>(c)) ? c - '0'
                : (c >= 'a' && c <= 'f')                    ? c - 'a' + 10
                : (c >= 'A' && c <= 'F')                    ? c - 'A' + 10
                                                            : -1;
        if (v < 0) break;
        if (++digits > 15) return false;
        size = size * 16 + static_cast<uint64_t>(v);
      }
      if (digits == 0) return false;
      left_ = size;
      state_ = size == 0 ? State::kTrailer : State::kData;
    }
  }
  return true;
}

bool LogDemuxer::Feed(std::string_view in, const Sink& out) {
  while (!in.empty()) {
    if (left_ == 0) {
      size_t take = std::min(8 - header_.size(), in.size());
      header_.append(in.substr(0, take));
      in.remove_prefix(take);
      if (header_.size() < 8) return true;
      auto byte = [&](int i) { return static_cast<uint32_t>(static_cast<unsigned char>(header_[i])); };
      if (byte(0) > 2) return false;  // 0 stdin (never sent), 1 stdout, 2 stderr
      stream_ = byte(0) == 2 ? "stderr" : "stdout";
      left_ = byte(4) << 24 | byte(5) << 16 | byte(6) << 8 | byte(7);
      header_.clear();
      continue;
    }
    size_t n = std::min<size_t>(left_, in.size());
    out(stream_, in.substr(0, n));
    in.remove_prefix(n);
    left_ -= static_cast<uint32_t>(n);
  }
  return true;
}

Status DockerClient::Ping(int timeout_ms) {
  auto r = UnixHttp(socket_, "GET", "/_ping", "", timeout_ms);
  if (!r.ok()) return r.status();
  if (r->status != 200 || r->body.rfind("OK", 0) != 0) return Status::Unavailable("/_ping answered " + ErrorText(*r));
  return Status::Ok();
}

bool IsCommandMissing(const std::string& start_error) {
  // runc through Docker ("unable to start container process: exec: ...") and podman
  // ("OCI runtime attempted to invoke a command that was not found", "OCI permission denied").
  for (const char* mark : {"container process: exec:", "executable file not found", "command that was not found",
                           "OCI permission denied"}) {
    if (start_error.find(mark) != std::string::npos) return true;
  }
  return false;
}

Result<std::string> DockerClient::CreateBody(const std::string& image, const std::vector<std::string>& cmd,
                                             const ContainerSpec& spec) {
  flatbuffers::FlatBufferBuilder fbb;
  std::vector<flatbuffers::Offset<flatbuffers::String>> args, vars;
  for (const auto& a : cmd) args.push_back(fbb.CreateString(a));
  for (const auto& v : spec.env) vars.push_back(fbb.CreateString(v));
  auto image_off = fbb.CreateString(image);
  auto cmd_off = args.empty() ? 0 : fbb.CreateVector(args);
  auto env_off = vars.empty() ? 0 : fbb.CreateVector(vars);
  auto cwd_off = spec.cwd.empty() ? 0 : fbb.CreateString(spec.cwd);
  flatbuffers::Offset<flatbuffers::Vector<uint8_t>> labels_off = 0;
  if (!spec.labels.empty()) {
    flexbuffers::Builder labels;
    labels.Map([&] {
      for (const auto& [k, v] : spec.labels) labels.String(k.c_str(), v);
    });
    labels.Finish();
    labels_off = fbb.CreateVector(labels.GetBuffer());
  }
  const int64_t memory = static_cast<int64_t>(spec.memory);
  flatbuffers::Offset<flatbuffers::Vector<flatbuffers::Offset<docker::DeviceRequest>>> devices = 0;
  if (!spec.gpus.empty()) {
    flexbuffers::Builder caps;
    caps.Vector([&] { caps.Vector([&] { caps.String("gpu"); }); });
    caps.Finish();
    auto caps_off = fbb.CreateVector(caps.GetBuffer());
    std::vector<flatbuffers::Offset<flatbuffers::String>> ids;
    for (const auto& g : spec.gpus) ids.push_back(fbb.CreateString(g));
    auto request = docker::CreateDeviceRequest(fbb, fbb.CreateString("nvidia"), fbb.CreateVector(ids), caps_off);
    devices = fbb.CreateVector(&request, 1);
  }
  flatbuffers::Offset<flatbuffers::Vector<uint8_t>> bindings_off = 0, exposed_off = 0;
  if (!spec.ports.empty()) {
    flexbuffers::Builder bindings, exposed;
    bindings.Map([&] {
      for (const auto& p : spec.ports) {
        bindings.Vector((std::to_string(p.container) + "/tcp").c_str(), [&] {
          bindings.Map([&] {
            // All addresses: "" (podman 4.3 given "0.0.0.0" leaves loopback out).
            bindings.String("HostIp", p.host_ip == "0.0.0.0" ? std::string() : p.host_ip);
            bindings.String("HostPort", std::to_string(p.host_port));
          });
        });
      }
    });
    bindings.Finish();
    exposed.Map([&] {
      for (const auto& p : spec.ports) exposed.Map((std::to_string(p.container) + "/tcp").c_str(), [] {});
    });
    exposed.Finish();
    bindings_off = fbb.CreateVector(bindings.GetBuffer());
    exposed_off = fbb.CreateVector(exposed.GetBuffer());
  }
  // The daemon's least is 0.01 cpus (NanoCpus 1e7).
  const int64_t nano_cpus = spec.cpus_milli == 0 ? 0 : std::max<int64_t>(spec.cpus_milli * 1'000'000ll, 10'000'000);
  auto host = docker::CreateContainerHostConfig(fbb, nano_cpus, memory, memory, spec.pids_limit, devices, bindings_off);
  auto req = docker::CreateCreateRequest(fbb, image_off, cmd_off, false, true, true, env_off, cwd_off, labels_off, host,
                                         exposed_off);
  fbb.Finish(req);
  auto parser = DockerParser("CreateRequest");
  std::string body;
  if (!parser || !flatbuffers::GenerateText(*parser, fbb.GetBufferPointer(), &body)) {
    return Status::Internal("cannot print the create request");
  }
  return body;
}

Result<std::string> DockerClient::Create(const std::string& image, const std::vector<std::string>& cmd,
                                         const ContainerSpec& spec) {
  auto body = CreateBody(image, cmd, spec);
  if (!body.ok()) return body.status();
  auto r = UnixHttp(socket_, "POST", std::string(kApi) + "/containers/create", *body, 30000);
  if (!r.ok()) return r.status();
  if (r->status == 404) return Status::NotFound("image " + image + " is not on this host (" + ErrorText(*r) + ")");
  // 4xx: the daemon refused what the task asked (an image name, a limit): the task's
  // fault (kInvalid); anything else is the daemon's (kUnavailable).
  if (r->status >= 400 && r->status < 500) {
    return Status::Invalid("create container from " + image + ": " + ErrorText(*r));
  }
  if (r->status != 201) return Status::Unavailable("create container from " + image + ": " + ErrorText(*r));
  auto response_parser = DockerParser("CreateResponse");
  if (!response_parser || !response_parser->ParseJson(r->body.c_str())) {
    return Status::Unavailable("create: unreadable response: " + r->body.substr(0, 200));
  }
  auto* created = flatbuffers::GetRoot<docker::CreateResponse>(response_parser->builder_.GetBufferPointer());
  if (!created->Id()) return Status::Unavailable("create: response has no Id");
  return created->Id()->str();
}

Status DockerClient::Start(const std::string& id) {
  auto r = UnixHttp(socket_, "POST", std::string(kApi) + "/containers/" + id + "/start", "", 30000);
  if (!r.ok()) return r.status();
  if (r->status >= 400 && r->status < 500 && r->status != 404) return Status::Invalid("start: " + ErrorText(*r));
  if (r->status != 204 && r->status != 304) return Status::Unavailable("start: " + ErrorText(*r));
  return Status::Ok();
}

Result<int64_t> DockerClient::Wait(const std::string& id) {
  auto r = UnixHttp(socket_, "POST", std::string(kApi) + "/containers/" + id + "/wait", "", 0);
  if (!r.ok()) return r.status();
  if (r->status != 200) return Status::Unavailable("wait: " + ErrorText(*r));
  auto parser = DockerParser("WaitResponse");
  if (!parser || !parser->ParseJson(r->body.c_str())) {
    return Status::Unavailable("wait: unreadable response: " + r->body.substr(0, 200));
  }
  return flatbuffers::GetRoot<docker::WaitResponse>(parser->builder_.GetBufferPointer())->StatusCode();
}

void LogsStop::Stop() {
  std::lock_guard<std::mutex> lock(mutex_);
  stopped_ = true;
  if (fd_ >= 0) shutdown(fd_, SHUT_RDWR);
}

bool LogsStop::stopped() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stopped_;
}

void LogsStop::Attach(int fd) {
  std::lock_guard<std::mutex> lock(mutex_);
  fd_ = fd;
  if (stopped_ && fd >= 0) shutdown(fd, SHUT_RDWR);
}

Status DockerClient::Logs(const std::string& id, bool follow, const LogDemuxer::Sink& out, LogsStop* stop) {
  Exchange x;
  // Detached before the exchange closes its descriptor (declared after it: destroyed first).
  struct Detach {
    LogsStop* stop;
    ~Detach() {
      if (stop) stop->Attach(-1);
    }
  } detach{stop};
  std::string path =
      std::string(kApi) + "/containers/" + id + "/logs?follow=" + (follow ? "1" : "0") + "&stdout=1&stderr=1";
  Status opened = Open(socket_, "GET", path, "", 0, &x, stop);
  if (!opened.ok()) return opened;
  if (x.status != 200) {
    HttpResponse r{x.status, x.early.substr(0, 4096)};
    return Status::Unavailable("logs: " + ErrorText(r));
  }
  LogDemuxer frames;
  bool malformed = false;
  Status s = ReadBody(&x, 0, [&](std::string_view data) {
    if (!malformed && !frames.Feed(data, out)) malformed = true;
  });
  if (!s.ok()) return s;
  if (malformed) return Status::Unavailable("logs: not a multiplexed log stream");
  return Status::Ok();
}

Status DockerClient::Kill(const std::string& id) {
  auto r = UnixHttp(socket_, "POST", std::string(kApi) + "/containers/" + id + "/kill", "", 10000);
  if (!r.ok()) return r.status();
  if (r->status != 204 && r->status != 409) return Status::Unavailable("kill: " + ErrorText(*r));
  return Status::Ok();
}

Result<DockerClient::State> DockerClient::Inspect(const std::string& id) {
  auto r = UnixHttp(socket_, "GET", std::string(kApi) + "/containers/" + id + "/json", "", 10000);
  if (!r.ok()) return r.status();
  if (r->status != 200) return Status::Unavailable("inspect: " + ErrorText(*r));
  auto parser = DockerParser("InspectResponse");
  if (!parser || !parser->ParseJson(r->body.c_str())) return Status::Unavailable("inspect: unreadable response");
  const auto* state = flatbuffers::GetRoot<docker::InspectResponse>(parser->builder_.GetBufferPointer())->State();
  State out;
  if (state) out = {state->OOMKilled(), state->Pid()};
  return out;
}

Result<std::vector<std::string>> DockerClient::ListLabeled(const std::string& key, const std::string& value) {
  // filters={"label":["KEY=VALUE"]}, URL-encoded; ids and label values are [A-Za-z0-9._:-].
  std::string filter = "%7B%22label%22%3A%5B%22" + key + "%3D" + value + "%22%5D%7D";
  auto r = UnixHttp(socket_, "GET", std::string(kApi) + "/containers/json?all=1&filters=" + filter, "", 30000);
  if (!r.ok()) return r.status();
  if (r->status != 200) return Status::Unavailable("list containers: " + ErrorText(*r));
  auto parser = DockerParser("ContainerList");
  std::string wrapped = "{\"Items\": " + r->body + "}";
  if (!parser || !parser->ParseJson(wrapped.c_str()))
    return Status::Unavailable("list containers: unreadable response");
  std::vector<std::string> ids;
  const auto* list = flatbuffers::GetRoot<docker::ContainerList>(parser->builder_.GetBufferPointer());
  if (list->Items()) {
    for (const auto* c : *list->Items()) {
      if (c->Id()) ids.push_back(c->Id()->str());
    }
  }
  return ids;
}

Status DockerClient::Stop(const std::string& id, uint64_t seconds) {
  auto r = UnixHttp(socket_, "POST", std::string(kApi) + "/containers/" + id + "/stop?t=" + std::to_string(seconds), "",
                    static_cast<int>((seconds + 30) * 1000));
  if (!r.ok()) return r.status();
  // 304: stopped already; 404: gone already.
  if (r->status != 204 && r->status != 304 && r->status != 404) return Status::Unavailable("stop: " + ErrorText(*r));
  return Status::Ok();
}

Status DockerClient::Remove(const std::string& id) {
  auto r = UnixHttp(socket_, "DELETE", std::string(kApi) + "/containers/" + id + "?force=1", "", 30000);
  if (!r.ok()) return r.status();
  if (r->status != 204 && r->status != 404) return Status::Unavailable("remove: " + ErrorText(*r));
  return Status::Ok();
}

}  // namespace worker
}  // namespace fm
