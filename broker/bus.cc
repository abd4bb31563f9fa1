#include "broker/bus.h"

#include <unistd.h>

#include <charconv>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "schemas/codec.h"

namespace fm::bus {

Result<Endpoints> ParseBrokerUrl(const std::string& url) {
  const std::string scheme = "tcp://";
  if (url.rfind(scheme, 0) != 0) {
    return Status::Invalid("broker URL \"" + url + "\" must look like tcp://HOST:PORT");
  }
  size_t colon = url.rfind(':');
  if (colon == std::string::npos || colon < scheme.size()) {
    return Status::Invalid("broker URL \"" + url + "\" has no port (tcp://HOST:PORT)");
  }
  std::string host = url.substr(scheme.size(), colon - scheme.size());
  std::string port_text = url.substr(colon + 1);
  unsigned port = 0;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (host.empty() || ec != std::errc() || end != port_text.data() + port_text.size() || port == 0 ||
      port + 2 > 65535) {
    return Status::Invalid("broker URL \"" + url +
                           "\": need a host and a port from 1 to 65533 (PORT+1 and "
                           "PORT+2 carry the event bus)");
  }
  std::string base = scheme + host + ":";
  return Endpoints{url, base + std::to_string(port + 1), base + std::to_string(port + 2)};
}

std::string DefaultBrokerUrl() {
  const char* env = std::getenv("FM_BROKER");
  return env && *env ? env : kDefaultBroker;
}

std::string UniqueAddress(const std::string& prefix) {
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  std::random_device rd;
  char suffix[17];
  snprintf(suffix, sizeof suffix, "%08x", rd());
  return prefix + "/" + host + "/" + std::to_string(getpid()) + "/" + suffix;
}

Client::Client(zmq::context_t& context, const Endpoints& endpoints, const std::string& address, bool publish,
               bool subscribe)
    : address_(address), dealer_(context, zmq::socket_type::dealer) {
  dealer_.set(zmq::sockopt::routing_id, address);
  dealer_.set(zmq::sockopt::linger, 1000);
  dealer_.set(zmq::sockopt::sndhwm, 1'000'000);
  dealer_.set(zmq::sockopt::rcvhwm, 1'000'000);
  dealer_.set(zmq::sockopt::reconnect_ivl, 100);
  dealer_.set(zmq::sockopt::reconnect_ivl_max, 2000);
  dealer_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(codec::kMaxMessageBytes * 2));
  dealer_.connect(endpoints.router);
  if (publish) {
    pub_ = zmq::socket_t(context, zmq::socket_type::pub);
    pub_.set(zmq::sockopt::linger, 1000);
    pub_.set(zmq::sockopt::sndhwm, 1'000'000);
    pub_.connect(endpoints.events_in);
  }
  if (subscribe) {
    sub_ = zmq::socket_t(context, zmq::socket_type::sub);
    sub_.set(zmq::sockopt::rcvhwm, 1'000'000);
    sub_.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(codec::kMaxMessageBytes * 2));
    sub_.connect(endpoints.events_out);
  }
}

bool Client::Send(const std::string& to, const std::string& payload) {
  try {
    if (!RetryEintr(
            [&] { return dealer_.send(zmq::buffer(to), zmq::send_flags::sndmore | zmq::send_flags::dontwait); })) {
      return false;
    }
    RetryEintr([&] { return dealer_.send(zmq::buffer(payload), zmq::send_flags::dontwait); });
    return true;
  } catch (const zmq::error_t&) {
    return false;
  }
}

zmq::message_t Aligned(zmq::message_t message) {
  if (reinterpret_cast<uintptr_t>(message.data()) % codec::kAlignment == 0) return message;
  // ZeroMQ keeps small messages inside the message object, at an odd offset; FlatBuffers
  // reads scalars in place and needs them aligned.
  void* copy = std::malloc(std::max<size_t>(message.size(), 1));
  if (!copy) throw std::bad_alloc();
  std::memcpy(copy, message.data(), message.size());
  return zmq::message_t(copy, message.size(), [](void* data, void*) { std::free(data); });
}

std::optional<Received> Client::Receive() {
  for (;;) {
    std::vector<zmq::message_t> frames;
    auto n =
        RetryEintr([&] { return zmq::recv_multipart(dealer_, std::back_inserter(frames), zmq::recv_flags::dontwait); });
    if (!n) return std::nullopt;
    if (frames.size() != 2) {
      ++malformed_;
      continue;
    }
    return Received{frames[0].to_string(), Aligned(std::move(frames[1]))};
  }
}

void Client::Hello() {
  flatbuffers::FlatBufferBuilder fbb(32);
  Send(kBrokerAddress, codec::Seal(fbb, wire::CreateBrokerHello(fbb)));
}

void Client::Publish(std::string_view topic, std::string_view payload) {
  try {
    RetryEintr([&] { return pub_.send(zmq::buffer(topic), zmq::send_flags::sndmore | zmq::send_flags::dontwait); });
    RetryEintr([&] { return pub_.send(zmq::buffer(payload), zmq::send_flags::dontwait); });
  } catch (const zmq::error_t&) {
    // PUB never blocks; at the high-water mark ZeroMQ drops, as it does for absent peers.
  }
}

void Client::Subscribe(const std::string& prefix) { sub_.set(zmq::sockopt::subscribe, prefix); }

std::optional<Event> Client::ReceiveEvent() {
  for (;;) {
    std::vector<zmq::message_t> frames;
    auto n =
        RetryEintr([&] { return zmq::recv_multipart(sub_, std::back_inserter(frames), zmq::recv_flags::dontwait); });
    if (!n) return std::nullopt;
    if (frames.size() != 2) {
      ++malformed_;
      continue;
    }
    return Event{frames[0].to_string(), Aligned(std::move(frames[1]))};
  }
}

}  // namespace fm::bus
