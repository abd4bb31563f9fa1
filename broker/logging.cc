#include "broker/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cctype>

namespace fm::bus {

void EnvironmentFallbacks(CLI::App& app, const std::string& prefix) {
  for (CLI::Option* option : app.get_options()) {
    const auto& names = option->get_lnames();
    if (names.empty() || names.front() == "help" || names.front() == "config") continue;
    if (!option->get_envname().empty()) continue;  // named already (FM_CERT, FM_BROKER_CERT)
    if (!option->get_configurable()) continue;     // command line only (--noop-executor)
    std::string env = prefix;
    for (char c : names.front()) env += c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    option->envname(env);
  }
}

void AddSecurityFlags(CLI::App& app, std::string* cert, std::string* broker_cert) {
  app.add_option("--cert", *cert, "own certificate, NAME.cert_secret (default $FM_CERT): speak CURVE")
      ->envname("FM_CERT");
  app.add_option("--broker-cert", *broker_cert, "the broker's public certificate (default $FM_BROKER_CERT)")
      ->envname("FM_BROKER_CERT");
}

Status InitLogging(const std::string& process, const std::string& level) {
  auto logger = spdlog::stderr_color_mt(process);
  spdlog::set_default_logger(logger);
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ " + process + ": %v");
  auto parsed = spdlog::level::from_str(level);
  if (parsed == spdlog::level::off && level != "off") {
    return Status::Invalid("--log-level \"" + level + "\": use trace, debug, info, warn, error or off");
  }
  spdlog::set_level(parsed);
  return Status::Ok();
}

}  // namespace fm::bus
