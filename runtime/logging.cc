#include "runtime/logging.h"

#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/uio.h>
#include <syslog.h>
#include <systemd/sd-journal.h>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <vector>

#include "runtime/ops.h"
#include "schemas/units.h"

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

void AddSecurityFlags(CLI::App& app, std::string* cert, std::string* broker_cert, std::string* root_cert) {
  if (root_cert) {
    app.add_option("--root-cert", *root_cert,
                   "the root broker's public certificate (default $FM_ROOT_CERT; without it the --broker-cert is "
                   "taken for the root's): behind node brokers, needed: messages to and from the root are sealed end "
                   "to end, so no node broker on the way can forge one")
        ->envname("FM_ROOT_CERT");
  }
  app.add_option("--cert", *cert, "own certificate, NAME.cert_secret (default $FM_CERT): speak CURVE")
      ->envname("FM_CERT");
  app.add_option("--broker-cert", *broker_cert, "the broker's public certificate (default $FM_BROKER_CERT)")
      ->envname("FM_BROKER_CERT");
}

namespace {

// One JSON object a line on stderr.
class JsonSink : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit JsonSink(std::string process) : process_(std::move(process)) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    std::string text(msg.payload.data(), msg.payload.size());
    ops::LogFields fields = ops::FieldsOf(text);
    auto time = std::chrono::duration_cast<std::chrono::milliseconds>(msg.time.time_since_epoch()).count();
    std::string line = "{\"time_ms\":" + std::to_string(time) + ",\"level\":\"" +
                       std::string(spdlog::level::to_string_view(msg.level).data()) + "\",\"process\":\"" + process_ +
                       "\",\"message\":\"" + Escaped(text) + "\"";
    if (!fields.task.empty()) line += ",\"task\":\"" + fields.task + "\"";
    if (!fields.worker.empty()) line += ",\"worker\":\"" + Escaped(fields.worker) + "\"";
    line += "}\n";
    std::fwrite(line.data(), 1, line.size(), stderr);
  }
  void flush_() override { std::fflush(stderr); }

 private:
  static std::string Escaped(const std::string& raw) {
    std::string s = ValidUtf8(raw);
    std::string out;
    for (unsigned char c : s) {
      if (c == '"' || c == '\\') {
        out += '\\';
        out += static_cast<char>(c);
      } else if (c < 0x20) {
        char buf[8];
        std::snprintf(buf, sizeof buf, "\\u%04x", c);
        out += buf;
      } else {
        out += static_cast<char>(c);
      }
    }
    return out;
  }
  // Invalid UTF-8 (a peer's bytes in a message) as U+FFFD: every line stays valid JSON.
  static std::string ValidUtf8(const std::string& s) {
    std::string out;
    for (size_t i = 0; i < s.size();) {
      unsigned char c = static_cast<unsigned char>(s[i]);
      size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
      bool ok = n > 0 && i + n <= s.size();
      for (size_t k = 1; ok && k < n; ++k) ok = (static_cast<unsigned char>(s[i + k]) >> 6) == 0x2;
      if (ok) {
        out.append(s, i, n);
        i += n;
      } else {
        out += "\xef\xbf\xbd";
        ++i;
      }
    }
    return out;
  }
  std::string process_;
};

// To the journal: PRIORITY from the level, so journalctl -p err finds the errors.
class JournalSink : public spdlog::sinks::base_sink<std::mutex> {
 public:
  explicit JournalSink(std::string process) : process_(std::move(process)) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    std::string text(msg.payload.data(), msg.payload.size());
    ops::LogFields fields = ops::FieldsOf(text);
    int priority = LOG_INFO;
    switch (msg.level) {
      case spdlog::level::trace:
      case spdlog::level::debug:
        priority = LOG_DEBUG;
        break;
      case spdlog::level::warn:
        priority = LOG_WARNING;
        break;
      case spdlog::level::err:
        priority = LOG_ERR;
        break;
      case spdlog::level::critical:
        priority = LOG_CRIT;
        break;
      default:
        break;
    }
    std::vector<std::string> parts = {"MESSAGE=" + text, "PRIORITY=" + std::to_string(priority),
                                      "SYSLOG_IDENTIFIER=" + process_};
    if (!fields.task.empty()) parts.push_back("FM_TASK=" + fields.task);
    if (!fields.worker.empty()) parts.push_back("FM_WORKER=" + fields.worker);
    std::vector<iovec> iov;
    for (auto& p : parts) iov.push_back({p.data(), p.size()});
    if (sd_journal_sendv(iov.data(), static_cast<int>(iov.size())) < 0) {
      // No journal to take it (a container, journald down): never lose the line.
      std::string line = process_ + ": " + text + "\n";
      std::fwrite(line.data(), 1, line.size(), stderr);
    }
  }
  void flush_() override {}

 private:
  std::string process_;
};

}  // namespace

namespace {

std::string SizeText(uint64_t bytes) {
  constexpr std::pair<uint64_t, const char*> kUnits[] = {
      {1ull << 40, "TiB"}, {1ull << 30, "GiB"}, {1ull << 20, "MiB"}, {1ull << 10, "KiB"}};
  for (const auto& [unit, name] : kUnits) {
    if (bytes != 0 && bytes % unit == 0) return std::to_string(bytes / unit) + name;
  }
  return std::to_string(bytes) + "B";
}

CLI::Option* AddParsedFlag(CLI::App& app, const std::string& name, uint64_t* out, const std::string& help,
                           Result<uint64_t> (*parse)(std::string_view), const std::string& shown, FlagCheck check) {
  return app
      .add_option_function<std::string>(
          name,
          [name, out, parse, check](const std::string& text) {
            auto value = parse(text);
            if (!value.ok()) throw CLI::ValidationError(name, value.status().message());
            if (check) {
              if (std::string why = check(*value); !why.empty()) throw CLI::ValidationError(name, why);
            }
            *out = *value;
          },
          help)
      ->default_str(shown);
}

}  // namespace

CLI::Option* AddDurationFlag(CLI::App& app, const std::string& name, uint64_t* ms, const std::string& help,
                             FlagCheck check) {
  return AddParsedFlag(app, name, ms, help, &ParseDurationMs, FormatDuration(*ms), std::move(check));
}

CLI::Option* AddSizeFlag(CLI::App& app, const std::string& name, uint64_t* bytes, const std::string& help,
                         FlagCheck check) {
  return AddParsedFlag(app, name, bytes, help, &ParseSize, SizeText(*bytes), std::move(check));
}

FlagCheck AtLeast(uint64_t least, const std::string& least_text) {
  return
      [least, least_text](uint64_t value) { return value < least ? "must be at least " + least_text : std::string(); };
}

void AddDaemonFlags(CLI::App& app, DaemonFlags* flags) {
  app.add_option("--log-level", flags->log_level, "trace, debug, info, warn, error")->capture_default_str();
  app.add_option("--log-format", flags->log_format,
                 "text, json (one object a line), journal, or auto (the journal under systemd, else text)")
      ->capture_default_str();
  app.add_option("--metrics-listen", flags->metrics_listen,
                 "serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9102)");
  app.add_flag("--check-config", flags->check_config,
               "validate the options, the config file and the files they name, then exit (0: valid, 2: not)")
      ->configurable(false);
}

Status InitLogging(const std::string& process, const std::string& level, const std::string& format) {
  ops::LogFormat parsed_format;
  if (!ops::ParseLogFormat(format, &parsed_format)) {
    return Status::Invalid("--log-format \"" + format + "\": use text, json, journal or auto");
  }
  auto parsed = spdlog::level::from_str(level);
  if (parsed == spdlog::level::off && level != "off") {
    return Status::Invalid("--log-level \"" + level + "\": use trace, debug, info, warn, error or off");
  }
  std::shared_ptr<spdlog::logger> logger;
  switch (parsed_format) {
    case ops::LogFormat::kText:
      logger = spdlog::stderr_color_mt(process);
      logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ " + process + ": %v");
      break;
    case ops::LogFormat::kJson:
      logger = std::make_shared<spdlog::logger>(process, std::make_shared<JsonSink>(process));
      break;
    case ops::LogFormat::kJournal:
      logger = std::make_shared<spdlog::logger>(process, std::make_shared<JournalSink>(process));
      break;
  }
  spdlog::set_default_logger(logger);
  spdlog::set_level(parsed);
  return Status::Ok();
}

}  // namespace fm::bus
