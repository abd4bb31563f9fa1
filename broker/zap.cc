#include "broker/zap.h"

#include <zmq_addon.hpp>

#include "runtime/bus.h"

namespace fm::bus {
namespace {

std::string Property(const zmq::message_t& frame, const char* name) {
  const char* v = zmq_msg_gets(const_cast<zmq_msg_t*>(frame.handle()), name);
  return v ? v : "";
}

// ZMTP property list: name length (1 byte), name, value length (4 bytes, network order), value.
void AddProperty(std::string* out, const std::string& name, const std::string& value) {
  out->push_back(static_cast<char>(name.size()));
  out->append(name);
  uint32_t n = static_cast<uint32_t>(value.size());
  for (int shift : {24, 16, 8, 0}) out->push_back(static_cast<char>((n >> shift) & 0xff));
  out->append(value);
}

}  // namespace

Peer PeerOf(const zmq::message_t& frame) {
  Peer peer;
  auto role = ParseRole(Property(frame, "Role"));
  if (!role) return peer;
  peer.role = *role;
  peer.name = Property(frame, "User-Id");
  peer.key = Property(frame, "Key");
  return peer;
}

ZapHandler::ZapHandler(zmq::context_t& context, const TrustStore* trust, std::shared_ptr<spdlog::logger> logger,
                       Admit admit)
    : socket_(context, zmq::socket_type::rep), trust_(trust), admit_(std::move(admit)), logger_(logger), log_(logger) {}

Status ZapHandler::Bind() {
  try {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.bind("inproc://zeromq.zap.01");
  } catch (const zmq::error_t& e) {
    return Status::Unavailable(std::string("cannot start the ZAP handler: ") + e.what());
  }
  return Status::Ok();
}

size_t ZapHandler::Drain(uint64_t now_ms) {
  size_t n = 0;
  for (;;) {
    std::vector<zmq::message_t> frames;
    if (!TryReceive(socket_, &frames)) break;
    ++n;
    // [version][request id][domain][address][identity][mechanism][credentials...]
    std::string version = frames.size() > 0 ? frames[0].to_string() : "";
    std::string request_id = frames.size() > 1 ? frames[1].to_string() : "";
    std::string address = frames.size() > 3 ? frames[3].to_string() : "";
    std::string mechanism = frames.size() > 5 ? frames[5].to_string() : "";
    std::string domain = frames.size() > 2 ? frames[2].to_string() : "";
    std::string status = "400", text, user, metadata, key;
    if (version != "1.0" || frames.size() < 6) {
      status = "500";
      text = "malformed ZAP request";
    } else if (!trust_) {
      if (mechanism == "NULL") {
        status = "200";
        text = "OK";
      } else {
        text = "this broker has no certificates";
      }
    } else if (mechanism != "CURVE" || frames.size() < 7 || frames[6].size() != 32) {
      text = "only CURVE is admitted";
    } else {
      char z85[41] = {0};
      zmq_z85_encode(z85, static_cast<const uint8_t*>(frames[6].data()), 32);
      if (const Certificate* cert = trust_->Find(z85)) {
        status = "200";
        text = "OK";
        user = cert->name;
        AddProperty(&metadata, "Role", cert->role);
        AddProperty(&metadata, "Key", cert->public_key);
        key = cert->public_key;
      } else {
        text = "key not trusted";
        ++refused_;
        log_.Warn(std::string("zap ") + address, now_ms,
                  std::string("refused a connection from ") + address + ": key " + z85 +
                      " is not in the trust directory " + trust_->dir());
      }
    }
    if (status == "200" && admit_) {
      if (std::string why = admit_({domain, address, key}); !why.empty()) {
        // 500, not 300: ZeroMQ tells the peer of a 4xx or 5xx, while a 300 leaves it
        // waiting out its handshake timeout.
        status = "500";
        text = why;
        user.clear();
        metadata.clear();
        ++refused_;
        log_.Warn(
            "zap refused " + why.substr(0, why.find(':')), now_ms,
            "refused a connection from " + (address.empty() ? std::string("a local peer") : address) + ": " + why);
      }
    }
    if (status == "400" && text != "key not trusted") {
      ++refused_;
      log_.Warn(std::string("zap ") + address, now_ms,
                "refused a connection from " + address + " (" + mechanism + "): " + text);
    }
    std::array<zmq::const_buffer, 6> reply = {zmq::buffer(std::string_view("1.0")),
                                              zmq::buffer(request_id),
                                              zmq::buffer(status),
                                              zmq::buffer(text),
                                              zmq::buffer(user),
                                              zmq::buffer(metadata)};
    RetryEintr([&] { return zmq::send_multipart(socket_, reply); });
  }
  return n;
}

}  // namespace fm::bus
