// Warnings a peer can cause cannot flood the log.
#include "runtime/rate_limited_log.h"

#include <spdlog/sinks/ostream_sink.h>

#include <catch2/catch.hpp>
#include <sstream>

TEST_CASE("a flood of bad input from one peer logs one line and one summary per interval", "[unit]") {
  std::ostringstream out;
  auto logger = std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::ostream_sink_mt>(out));
  logger->set_pattern("%v");
  fm::bus::RateLimitedLog log(logger, /*interval_ms=*/10'000, /*max_keys=*/2);
  uint64_t now = 1'000'000;
  for (int i = 0; i < 100000; ++i) log.Warn("peer-a", now + i / 100, "rejected message from peer-a");
  log.Warn("peer-b", now, "rejected message from peer-b");
  for (int i = 0; i < 50; ++i) log.Warn("peer-" + std::to_string(i + 10), now, "from a third source");
  log.Flush(now + 10'500);
  std::string text = out.str();
  INFO(text);
  CHECK(std::count(text.begin(), text.end(), '\n') == 4);
  CHECK_THAT(text, Catch::Contains("rejected message from peer-a\n"));
  CHECK_THAT(text, Catch::Contains("... 99999 more like this from peer-a in the last 10 s"));
  CHECK_THAT(text, Catch::Contains("rejected message from peer-b\n"));
  CHECK_THAT(text, Catch::Contains("... 50 more warnings from other sources (more than 2 at once)"));
}
