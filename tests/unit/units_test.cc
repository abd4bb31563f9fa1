#include "schemas/units.h"

#include <catch2/catch.hpp>
#include <set>
#include <string_view>

#include "schemas/vocabulary.h"

TEST_CASE("sizes parse in binary units and refuse what they cannot read", "[unit]") {
  struct Row {
    const char* text;
    uint64_t bytes;
  };
  for (Row row : {Row{"0", 0}, Row{"1024", 1024}, Row{"1B", 1}, Row{"1K", 1024}, Row{"1KiB", 1024},
                  Row{"8GiB", 8ull << 30}, Row{"8 GiB", 8ull << 30}, Row{"8g", 8ull << 30}, Row{"1.5G", 3ull << 29},
                  Row{"512M", 512ull << 20}, Row{"2TiB", 2ull << 40}, Row{"4MiB", 4ull << 20}}) {
    INFO(row.text);
    auto r = fm::ParseSize(row.text);
    REQUIRE(r.ok());
    CHECK(*r == row.bytes);
  }
  for (const char* bad : {"", "GiB", "-1GiB", "8XB", "eight", "1e3", "8 GiBs"}) {
    INFO(bad);
    auto r = fm::ParseSize(bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().message().find("size") != std::string::npos);
  }
}

TEST_CASE("sizes print in the largest whole binary unit", "[unit]") {
  CHECK(fm::FormatSize(0) == "0 B");
  CHECK(fm::FormatSize(4ull << 30) == "4 GiB");
  CHECK(fm::FormatSize(3ull << 29) == "1.5 GiB");
  CHECK(fm::FormatSize(512ull << 20) == "512 MiB");
}

TEST_CASE("durations and cpu counts parse", "[unit]") {
  CHECK(*fm::ParseDurationMs("30s") == 30000);
  CHECK(*fm::ParseDurationMs("500ms") == 500);
  CHECK(*fm::ParseDurationMs("2m") == 120000);
  CHECK(*fm::ParseDurationMs("1.5") == 1500);
  CHECK_FALSE(fm::ParseDurationMs("5 weeks").ok());
  CHECK(*fm::ParseCpus("2") == 2000);
  CHECK(*fm::ParseCpus("0.5") == 500);
  CHECK_FALSE(fm::ParseCpus("-1").ok());
  CHECK_FALSE(fm::ParseCpus("2cpus").ok());
  CHECK(fm::FormatCpus(1500) == "1.5");
  CHECK(fm::FormatTimeMs(0) == "1970-01-01T00:00:00.000Z");
}

TEST_CASE("a duration is printed in the largest unit that divides it and reads back the same", "[unit]") {
  for (uint64_t ms :
       {0ull, 1ull, 999ull, 1000ull, 1500ull, 30000ull, 300000ull, 3600000ull, 86400000ull * 7, 86400000ull + 1}) {
    INFO(ms);
    auto back = fm::ParseDurationMs(fm::FormatDuration(ms));
    REQUIRE(back.ok());
    CHECK(*back == ms);
  }
  CHECK(fm::FormatDuration(30000) == "30s");
  CHECK(fm::FormatDuration(1500) == "1500ms");
  CHECK(fm::FormatDuration(7 * 86400000ull) == "7d");
}

TEST_CASE("every task state and submit status has one name in the vocabulary, and no two share one", "[unit]") {
  std::set<std::string_view> states, statuses;
  for (auto s : fm::wire::EnumValuesTaskState()) {
    CHECK_FALSE(fm::Name(s).empty());
    CHECK(states.insert(fm::Name(s)).second);
  }
  for (auto s : fm::wire::EnumValuesSubmitStatus()) {
    CHECK_FALSE(fm::Name(s).empty());
    CHECK(statuses.insert(fm::Name(s)).second);
  }
  CHECK(fm::Name(fm::wire::TaskState::Pending) == "pending");
  CHECK(fm::Name(fm::wire::SubmitStatus::Rejected) == "rejected");
}
