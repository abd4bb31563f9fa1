// What the command-line tools share: a bus client with blocking waits and the
// translation of broker errors into messages a person can act on.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <zmq.hpp>

#include "broker/bus.h"
#include "schemas/codec.h"
#include "schemas/status.h"

namespace fm::tools {

class ToolClient {
 public:
  // Error: an unparsable broker URL.
  static Result<std::unique_ptr<ToolClient>> Connect(const std::string& broker, const std::string& prefix,
                                                     bool subscribe);

  bus::Client& bus() { return *client_; }
  const std::string& broker() const { return broker_; }

  // Waits up to `timeout_ms` (-1: forever) for a directed message or, with `stdin_fd`
  // >= 0, for that descriptor to be readable. Returns what woke it: 1 message ready,
  // 2 stdin readable, 0 timeout.
  int Wait(int timeout_ms, int stdin_fd = -1, bool events = false);

  // Sends `request` to the scheduler and waits for the first reply whose body is
  // `expected`. Errors: timeout, no scheduler connected to the broker, a malformed reply.
  // The reply's bytes are kept in *storage.
  Result<const wire::Envelope*> Call(const std::string& request, wire::Body expected, int timeout_ms,
                                     zmq::message_t* storage);

  // A broker/scheduler Error message as a sentence.
  std::string Explain(const wire::Error& error) const;

 private:
  ToolClient() = default;
  zmq::context_t context_{1};
  std::unique_ptr<bus::Client> client_;
  std::string broker_;
};

}  // namespace fm::tools
