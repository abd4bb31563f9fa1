#include "broker/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cctype>
#include <cstdio>

namespace fm::bus {

int ParseCommandLine(CLI::App& app, const std::string& name, int argc, char** argv) {
  app.set_version_flag("--version", name + " " + FM_VERSION);
  // A misspelt key in a config file is an error, never a default silently kept.
  app.allow_config_extras(CLI::config_extras_mode::error);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ConfigError& e) {
    std::string what = e.what();
    std::string key = what.substr(what.rfind(' ') + 1);
    std::fprintf(stderr, "%s: the --config file has \"%s\", which is not an option of %s (%s)\n", name.c_str(),
                 key.c_str(), name.c_str(), e.what());
    return 2;
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    std::fprintf(stderr, "%s: %s\nRun with --help for more information.\n", name.c_str(), e.what());
    return 2;
  }
  return -1;
}

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
