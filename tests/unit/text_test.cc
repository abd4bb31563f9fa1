// What the tools print of peers' and tasks' bytes: valid UTF-8, control characters
// escaped, valid JSON whatever a task printed.
#include "schemas/text.h"

#include <catch2/catch.hpp>

#include "schemas/codec.h"
#include "schemas/json.h"

using namespace fm;

TEST_CASE("invalid UTF-8 becomes U+FFFD and valid text stays as it is", "[unit]") {
  CHECK(ValidUtf8("a\xff"
                  "b") ==
        "a\xEF\xBF\xBD"
        "b");
  CHECK(ValidUtf8("\xc0\xaf") == "\xEF\xBF\xBD\xEF\xBF\xBD");                  // overlong '/'
  CHECK(ValidUtf8("\xed\xa0\x80") == "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // a surrogate
  CHECK(ValidUtf8("\xe2\x82") == "\xEF\xBF\xBD\xEF\xBF\xBD");                  // cut short
  const std::string fine = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80";
  CHECK(ValidUtf8(fine) == fine);
}

TEST_CASE("control characters are escaped for the terminal", "[unit]") {
  CHECK(Printable("\x1b[2J\x1b]0;owned\x07") == "\\e[2J\\e]0;owned\\x07");
  CHECK(Printable("line\nnext\tcol\r") == "line\\nnext\\tcol\\r");
  CHECK(Printable("\xc2\x9b"
                  "31m") == "\\u{9b}31m");  // C1 CSI
  CHECK(Printable("plain caf\xc3\xa9") == "plain caf\xc3\xa9");
  CHECK(Printable("\xff") == "\xEF\xBF\xBD");
}

TEST_CASE("a read that cuts a character short passes on only what is complete", "[unit]") {
  CHECK(CompleteUtf8Prefix("ab\xe2\x82") == 2);
  CHECK(CompleteUtf8Prefix("ab\xe2\x82\xac") == 5);
  CHECK(CompleteUtf8Prefix("ab\xc3") == 2);
  CHECK(CompleteUtf8Prefix("ab") == 2);
  CHECK(CompleteUtf8Prefix("\x80\x80\x80\x80") == 4);  // no lead byte to wait for: pass it on
}

TEST_CASE("an event whose strings hold any bytes prints as valid JSON with its seq and type", "[unit]") {
  flatbuffers::FlatBufferBuilder fbb;
  auto e = wire::CreateEventDirect(fbb, 42, "task.log", "2026-11-29T12:00:00.000Z", "t7", "w\x1b[31m", nullptr, nullptr,
                                   1, 0, "stdout", "bad \xff\xfe then \x1b[2J and \x01");
  fbb.Finish(e);
  JsonCodec codec;
  std::string json = codec.EventToJson(flatbuffers::GetRoot<wire::Event>(fbb.GetBufferPointer()));
  INFO(json);
  CHECK_THAT(json, Catch::StartsWith("{\"seq\": 42,\"type\": \"task.log\""));
  CHECK_THAT(json, Catch::Contains("\\uFFFD\\uFFFD then \\u001B[2J and \\u0001"));
  CHECK_THAT(json, Catch::Contains("\"worker\": \"w\\u001B[31m\""));
  for (char c : json) CHECK((static_cast<unsigned char>(c) >= 0x20 && static_cast<unsigned char>(c) < 0x7f));
}
