// Daemon logging: spdlog to stderr (stdout stays free for what tools print), one
// pattern for every fm process.
#pragma once

#include <string>

#include "schemas/status.h"

namespace fm::bus {

// Installs a stderr logger named `process`. Error: an unknown level name.
Status InitLogging(const std::string& process, const std::string& level);

}  // namespace fm::bus
