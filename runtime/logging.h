// Daemon logging: spdlog to stderr (stdout stays free for what tools print), one
// pattern for every fm process.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <functional>
#include <string>

#include "schemas/status.h"

namespace fm::bus {

// Lets every long option of `app` also come from the environment: --store-write-buffer
// from PREFIX STORE_WRITE_BUFFER (e.g. FM_SCHEDULER_STORE_WRITE_BUFFER). A flag on the
// command line wins over the config file, which wins over the environment. Options
// marked configurable(false) stay command-line only.
void EnvironmentFallbacks(CLI::App& app, const std::string& prefix);

// --cert and --broker-cert, from FM_CERT and FM_BROKER_CERT when not given (call before
// EnvironmentFallbacks, which leaves options that have an environment name alone).
// With `root_cert`, also --root-cert (FM_ROOT_CERT): the root broker's public certificate,
// for a peer behind node brokers that wants its messages sealed end to end (runtime/seal.h).
void AddSecurityFlags(CLI::App& app, std::string* cert, std::string* broker_cert, std::string* root_cert = nullptr);

// --NAME as a duration ("5s", "200ms", "2m", "7d") into *ms, or as a size ("64MiB",
// "1G") into *bytes: the default is what the variable holds (shown in --help), and the
// value is parsed as the command line, the config file and the environment are, so a
// bad one is a usage error naming the flag (exit 2). `check`, when given, refuses a
// parsed value by returning why ("must be at least 1s").
using FlagCheck = std::function<std::string(uint64_t)>;
CLI::Option* AddDurationFlag(CLI::App& app, const std::string& name, uint64_t* ms, const std::string& help,
                             FlagCheck check = nullptr);
CLI::Option* AddSizeFlag(CLI::App& app, const std::string& name, uint64_t* bytes, const std::string& help,
                         FlagCheck check = nullptr);
// A check: at least `least` (said as `least_text`).
FlagCheck AtLeast(uint64_t least, const std::string& least_text);

// Parses the command line the way every fm program does: --version prints "NAME
// VERSION", --help the usage, both exit 0; a usage error (an unknown flag, a bad value,
// an unknown key in a --config file) is said on stderr and exits 2. Returns the status
// to exit with, or -1 to go on.
int ParseCommandLine(CLI::App& app, const std::string& name, int argc, char** argv);

// Installs the logger named `process`: on stderr as text ("TIME LEVEL process: message")
// or json (one object a line: time, level, process, message, task, worker), or to the
// journal (PRIORITY from the level, SYSLOG_IDENTIFIER, FM_TASK and FM_WORKER where the
// message names them). `format`: text, json, journal or auto (journal under systemd).
// Error: an unknown level or format name.
Status InitLogging(const std::string& process, const std::string& level, const std::string& format = "text");

// What every daemon takes besides its own options.
struct DaemonFlags {
  std::string log_level = "info";
  std::string log_format = "auto";
  std::string metrics_listen;  // HOST:PORT for GET /metrics; empty: none
  bool check_config = false;   // validate the options and the files they name, then exit
};
// --log-level, --log-format, --metrics-listen, --check-config.
void AddDaemonFlags(CLI::App& app, DaemonFlags* flags);

}  // namespace fm::bus
