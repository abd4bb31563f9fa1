#include "broker/logging.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace fm::bus {

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
