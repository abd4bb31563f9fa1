#include "tools/tool_client.h"

#include "runtime/logging.h"
#include "runtime/policy.h"
#include "schemas/vocabulary.h"

namespace fm::tools {

void ToolClient::AddSecurityOptions(CLI::App& app, std::string* cert, std::string* broker_cert,
                                    std::string* root_cert) {
  bus::AddSecurityFlags(app, cert, broker_cert, root_cert);
}

Result<std::unique_ptr<ToolClient>> ToolClient::Connect(const std::string& broker, const std::string& tool,
                                                        bool subscribe, const std::string& cert,
                                                        const std::string& broker_cert, const std::string& root_cert) {
  auto endpoints = bus::ParseBrokerUrl(broker);
  if (!endpoints.ok()) return endpoints.status();
  auto security = bus::LoadSecurity(cert, broker_cert, nullptr, root_cert);
  if (!security.ok()) return security.status();
  std::string address = bus::UniqueAddress(tool);
  if (security->on()) {
    auto role = bus::ParseRole(security->own.role);
    if (role != bus::Role::kClient && role != bus::Role::kOperator) {
      return Status::Invalid("--cert: " + tool + " needs a certificate of role client or operator, not " +
                             security->own.role);
    }
    // ROLE/NAME/host/pid/random: the form the broker lets this certificate claim.
    address = bus::UniqueAddress(bus::AddressPrefix(*role, security->own.name) + tool);
  }
  std::unique_ptr<ToolClient> c(new ToolClient());
  c->broker_ = broker;
  c->tool_ = tool;
  if (security->on() && security->own.role == "client") c->client_name_ = security->own.name;
  c->client_ = std::make_unique<bus::Client>(c->context_, *endpoints, address, false, subscribe, *security);
  c->client_->dealer().set(zmq::sockopt::linger, 0);
  return c;
}

std::vector<std::string> ToolClient::StreamTopics() const {
  return {client_name_.empty() ? std::string("task.") : bus::TaskTopic(client_name_), "worker.", "scheduler."};
}

void ToolClient::CheckLink() {
  client_->RenewProof();  // a tool that follows for hours behind a node broker
  if (uint64_t forged = client_->TakeForged(); forged > 0) {
    std::fprintf(stderr,
                 "%s: dropped %llu directed message(s) without the root broker's seal (missing, wrong or replayed): "
                 "a node broker on the way forged or altered them\n",
                 tool_.c_str(), static_cast<unsigned long long>(forged));
  }
  if (const std::string& unpinned = client_->UnpinnedRoot(); !unpinned.empty()) {
    std::fflush(stdout);
    std::fprintf(stderr, "%s: %s\n", tool_.c_str(), unpinned.c_str());
    std::_Exit(2);
  }
  std::string problem = client_->LinkProblem();
  if (problem.empty()) return;
  std::fflush(stdout);
  std::fprintf(stderr, "%s: %s\n", tool_.c_str(), problem.c_str());
  std::_Exit(1);
}

std::string ToolClient::Silence(int timeout_ms) const {
  std::string within = " within " + std::to_string(timeout_ms / 1000.0).substr(0, 4) + " s";
  if (!client_->linked()) {
    return "no connection to the broker at " + broker_ + within +
           " (is fm-broker running there? if it uses CURVE, give --cert and --broker-cert)";
  }
  return "no answer from the scheduler through broker " + broker_ + within;
}

int ToolClient::Wait(int timeout_ms, int stdin_fd, bool events) {
  CheckLink();
  zmq::pollitem_t items[4];
  int n = 0;
  items[n++] = {client_->dealer().handle(), 0, ZMQ_POLLIN, 0};
  // Wakes on the link's events too, in short slices while no handshake has completed.
  const int monitor_index = n;
  items[n++] = {client_->monitor().handle(), 0, ZMQ_POLLIN, 0};
  int stdin_index = -1, events_index = -1;
  if (stdin_fd >= 0) {
    stdin_index = n;
    items[n++] = {nullptr, stdin_fd, ZMQ_POLLIN, 0};
  }
  if (events) {
    events_index = n;
    items[n++] = {client_->sub().handle(), 0, ZMQ_POLLIN, 0};
  }
  try {
    zmq::poll(items, n, std::chrono::milliseconds(timeout_ms));
  } catch (const zmq::error_t& e) {
    if (e.num() == EINTR) return 0;  // a signal: the caller checks its stop flag
    throw;
  }
  if (items[monitor_index].revents & ZMQ_POLLIN) CheckLink();
  if (items[0].revents & ZMQ_POLLIN) return 1;
  if (events_index >= 0 && (items[events_index].revents & ZMQ_POLLIN)) return 3;
  if (stdin_index >= 0 && (items[stdin_index].revents & (ZMQ_POLLIN | ZMQ_POLLERR))) return 2;
  return 0;
}

std::string ToolClient::Explain(const wire::Error& error) const {
  std::string code = codec::Str(error.code());
  if (ParseErrorCode(code) == wire::ErrorCode::Unreachable && codec::Str(error.about()) == bus::kSchedulerAddress) {
    return "no scheduler is connected to broker " + broker_ + " (is fm-scheduler running?)";
  }
  if (ParseErrorCode(code) == wire::ErrorCode::Unclaimed) {
    return "the broker at " + broker_ +
           " lost this connection's address (reconnected?): " + codec::Str(error.message());
  }
  return code + ": " + codec::Str(error.message());
}

Result<const wire::Envelope*> ToolClient::Call(const std::string& request, wire::Body expected, int timeout_ms,
                                               zmq::message_t* storage,
                                               const std::function<bool(const wire::Envelope&)>& accept) {
  if (!client_->Send(bus::kSchedulerAddress, request)) return Status::Unavailable("cannot queue the request");
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return Status::Unavailable(Silence(timeout_ms));
    if (Wait(static_cast<int>(left.count())) == 0) continue;
    while (auto msg = client_->Receive()) {
      auto env = codec::Decode(msg->payload.data(), msg->payload.size());
      if (!env.ok()) return Status::Invalid("unreadable reply from " + msg->from + ": " + env.status().message());
      if ((*env)->body_type() == wire::Body::Error) return Status::Unavailable(Explain(*(*env)->body_as_Error()));
      if ((*env)->body_type() == expected) {
        if (accept && !accept(**env)) continue;
        *storage = std::move(msg->payload);
        return codec::Decode(storage->data(), storage->size());
      }
    }
  }
}

}  // namespace fm::tools
