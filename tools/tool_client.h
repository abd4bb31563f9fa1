// What the command-line tools share: a bus client with blocking waits and the
// translation of broker errors into messages a person can act on.
#pragma once

#include <CLI/CLI.hpp>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>
#include <zmq.hpp>

#include "runtime/bus.h"
#include "schemas/codec.h"
#include "schemas/status.h"

namespace fm::tools {

class ToolClient {
 public:
  // --cert and --broker-cert (defaults from FM_CERT and FM_BROKER_CERT).
  static void AddSecurityOptions(CLI::App& app, std::string* cert, std::string* broker_cert, std::string* root_cert);
  // `tool` names the program in messages ("fm-submit"). With a certificate (role client
  // or operator) every link is CURVE and the address is ROLE/NAME/...; without, the
  // address is TOOL/... and the broker must be keyless. Error: an unparsable broker URL,
  // an unreadable certificate or one of another role.
  static Result<std::unique_ptr<ToolClient>> Connect(const std::string& broker, const std::string& tool, bool subscribe,
                                                     const std::string& cert = "", const std::string& broker_cert = "",
                                                     const std::string& root_cert = "");

  bus::Client& bus() { return *client_; }
  const std::string& broker() const { return broker_; }
  // The topics of the event stream this tool may follow: with a client's certificate
  // its own tasks' only (bus::TaskTopic), else every task's.
  std::vector<std::string> StreamTopics() const;

  // Waits up to `timeout_ms` (-1: forever) for a directed message or, with `stdin_fd`
  // >= 0, for that descriptor to be readable. Returns what woke it: 1 message ready,
  // 2 stdin readable, 3 events ready, 0 timeout. A failed handshake with the broker (a
  // refused certificate, a wrong broker key, CURVE on one side only) ends the program
  // with status 1 and a message that says which.
  int Wait(int timeout_ms, int stdin_fd = -1, bool events = false);

  // Sends `request` to the scheduler and waits for the first reply whose body is
  // `expected`. Errors: timeout, no scheduler connected to the broker, a malformed reply.
  // The reply's bytes are kept in *storage.
  // `accept`, when given, also checks the reply: one it refuses (a late answer to an
  // earlier request) is skipped.
  Result<const wire::Envelope*> Call(const std::string& request, wire::Body expected, int timeout_ms,
                                     zmq::message_t* storage,
                                     const std::function<bool(const wire::Envelope&)>& accept = {});

  // A broker/scheduler Error message as a sentence.
  std::string Explain(const wire::Error& error) const;

 private:
  ToolClient() = default;
  // What to say when the broker never answered: no handshake, or no scheduler.
  std::string Silence(int timeout_ms) const;
  void CheckLink();

  zmq::context_t context_{1};
  std::unique_ptr<bus::Client> client_;
  std::string broker_;
  std::string tool_;
  std::string client_name_;  // set when the certificate is a client's
};

}  // namespace fm::tools
