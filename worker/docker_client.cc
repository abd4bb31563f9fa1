#include "worker/docker_client.h"

#include <flatbuffers/idl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

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

bool DecodeChunked(const std::string& in, std::string* out) {
  size_t pos = 0;
  for (;;) {
    size_t eol = in.find("\r\n", pos);
    if (eol == std::string::npos) return false;
    size_t size = std::stoul(in.substr(pos, eol - pos), nullptr, 16);
    pos = eol + 2;
    if (size == 0) return true;
    if (pos + size > in.size()) return false;
    out->append(in, pos, size);
    pos += size + 2;
  }
}

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

Result<HttpResponse> UnixHttp(const std::string& socket_path, const std::string& method, const std::string& path,
                              const std::string& body, int timeout_ms) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::Io(Errno("socket"));
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  if (timeout_ms > 0) {
    timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  }
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof addr.sun_path) return Status::Invalid("socket path too long: " + socket_path);
  std::strcpy(addr.sun_path, socket_path.c_str());
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return Status::Unavailable(Errno("connect"));
  std::string request = method + " " + path + " HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n";
  if (!body.empty() || method == "POST") {
    request += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  }
  request += "\r\n" + body;
  for (size_t sent = 0; sent < request.size();) {
    ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return Status::Unavailable(Errno("send"));
    sent += static_cast<size_t>(n);
  }
  std::string raw;
  char buf[16384];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::Unavailable(errno == EAGAIN ? "no answer within " + std::to_string(timeout_ms) + " ms"
                                                 : Errno("recv"));
    }
    raw.append(buf, static_cast<size_t>(n));
  }
  size_t header_end = raw.find("\r\n\r\n");
  if (raw.rfind("HTTP/1.", 0) != 0 || header_end == std::string::npos) {
    return Status::Unavailable("not an HTTP response");
  }
  HttpResponse response;
  response.status = std::atoi(raw.c_str() + raw.find(' ') + 1);
  std::string headers = raw.substr(0, header_end);
  for (auto& c : headers) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  std::string rest = raw.substr(header_end + 4);
  if (headers.find("transfer-encoding: chunked") != std::string::npos) {
    if (!DecodeChunked(rest, &response.body)) return Status::Unavailable("truncated chunked response");
  } else {
    response.body = std::move(rest);
  }
  return response;
}

void DemuxDockerLogs(const std::string& raw, std::string* out, std::string* err) {
  size_t pos = 0;
  while (pos + 8 <= raw.size()) {
    unsigned char kind = static_cast<unsigned char>(raw[pos]);
    uint32_t size = (static_cast<uint32_t>(static_cast<unsigned char>(raw[pos + 4])) << 24) |
                    (static_cast<uint32_t>(static_cast<unsigned char>(raw[pos + 5])) << 16) |
                    (static_cast<uint32_t>(static_cast<unsigned char>(raw[pos + 6])) << 8) |
                    static_cast<uint32_t>(static_cast<unsigned char>(raw[pos + 7]));
    pos += 8;
    std::string chunk = raw.substr(pos, size);
    (kind == 2 ? err : out)->append(chunk);
    pos += size;
  }
}

Status DockerClient::Ping(int timeout_ms) {
  auto r = UnixHttp(socket_, "GET", "/_ping", "", timeout_ms);
  if (!r.ok()) return r.status();
  if (r->status != 200 || r->body.rfind("OK", 0) != 0) return Status::Unavailable("/_ping answered " + ErrorText(*r));
  return Status::Ok();
}

Result<std::string> DockerClient::Create(const std::string& image, const std::vector<std::string>& cmd) {
  flatbuffers::FlatBufferBuilder fbb;
  std::vector<flatbuffers::Offset<flatbuffers::String>> args;
  for (const auto& a : cmd) args.push_back(fbb.CreateString(a));
  auto image_off = fbb.CreateString(image);
  auto cmd_off = fbb.CreateVector(args);
  auto req = docker::CreateCreateRequest(fbb, image_off, cmd_off, false, true, true);
  fbb.Finish(req);
  auto parser = DockerParser("CreateRequest");
  std::string body;
  if (!parser || !flatbuffers::GenerateText(*parser, fbb.GetBufferPointer(), &body)) {
    return Status::Internal("cannot print the create request");
  }
  auto r = UnixHttp(socket_, "POST", std::string(kApi) + "/containers/create", body, 30000);
  if (!r.ok()) return r.status();
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

Status DockerClient::Logs(const std::string& id, std::string* out, std::string* err) {
  auto r = UnixHttp(socket_, "GET", std::string(kApi) + "/containers/" + id + "/logs?stdout=1&stderr=1", "", 30000);
  if (!r.ok()) return r.status();
  if (r->status != 200) return Status::Unavailable("logs: " + ErrorText(*r));
  DemuxDockerLogs(r->body, out, err);
  return Status::Ok();
}

Status DockerClient::Kill(const std::string& id) {
  auto r = UnixHttp(socket_, "POST", std::string(kApi) + "/containers/" + id + "/kill", "", 10000);
  if (!r.ok()) return r.status();
  if (r->status != 204 && r->status != 409) return Status::Unavailable("kill: " + ErrorText(*r));
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
