#include "schemas/json.h"

#include <catch2/catch.hpp>

#include "schemas/codec.h"

using namespace fm;

TEST_CASE("a full task line parses through the FlatBuffers JSON parser", "[unit]") {
  JsonCodec codec;
  auto spec = codec.ParseTaskLine(
      R"({"command": ["sh","-c","echo hi"], "requires": ["gpu", "docker"], "resources": {"cpus": 2,
      "memory": "8GiB", "gpus": 1, "gpu_memory": "40GiB", "gpu_model": "H100"}, "labels": {"zone": "a"},
      "image": "busybox", "max_attempts": 3, "timeout": "30s", "priority": 5, "key": "client-key"})");
  REQUIRE(spec.ok());
  CHECK(spec->command == std::vector<std::string>{"sh", "-c", "echo hi"});
  CHECK(spec->required_capabilities == std::vector<std::string>{"docker", "gpu"});
  CHECK(spec->resources.cpus_milli == 2000);
  CHECK(spec->resources.memory == 8ull << 30);
  CHECK(spec->resources.gpus == 1);
  CHECK(spec->resources.gpu_memory == 40ull << 30);
  CHECK(spec->resources.gpu_model == "H100");
  CHECK(spec->labels == Labels{{"zone", "a"}});
  CHECK(spec->image == "busybox");
  CHECK(spec->max_attempts == 3);
  CHECK(spec->timeout_ms == 30000);
  CHECK(spec->priority == 5);
  CHECK(spec->key == "client-key");
}

TEST_CASE("bad task lines are refused with what is wrong, and the parser keeps working", "[unit]") {
  JsonCodec codec;
  struct Row {
    const char* line;
    const char* says;
  };
  for (Row row :
       {Row{"not json", "not a JSON object"}, Row{R"({"command": ["x"], "colour": 1})", "unknown field: colour"},
        Row{R"({"command": ["x"], "resources": {"memory": "lots"}})", "resources.memory: invalid size"},
        Row{R"({"command": ["x"], "resources": {"cpus": -2}})", "resources.cpus is -2: it must be a number from 0"},
        Row{R"({"command": ["x"], "resources": {"gpus": -1}})", "resources.gpus is -1: it must be from 0 to 1024"},
        // Out of range once became 0 (and ran), or wrapped to 1.
        Row{R"({"command": ["x"], "resources": {"cpus": 1e308}})", "resources.cpus is 1e+308: it must be a number"},
        Row{R"({"command": ["x"], "resources": {"cpus": 0.0001}})", "the smallest share is 0.001 cpus"},
        Row{R"({"command": ["x"], "resources": {"gpus": 4294967296}})", "resources.gpus is 4294967296"},
        Row{R"({"command": ["x"], "resources": {"gpus": 4294967297}})", "resources.gpus is 4294967297"},
        Row{R"({"command": ["x"], "max_attempts": 4294967297})", "max_attempts is 4294967297"},
        Row{R"({"command": ["x"], "timeout": "0.0000001s"})", "is under 1ms"},
        // A NUL once cut the command short silently.
        Row{R"({"command": ["echo", "a\u0000b"]})", "command[1] holds a NUL byte"},
        Row{R"({"command": ["x"], "key": "k\u0000"})", "key holds a NUL byte"},
        Row{R"({"command": ["x"], "labels": {"zone": "a,b"}})", "a value holds only letters"},
        Row{R"({"command": []})", "command is missing or empty"}, Row{R"({})", "command is missing"},
        Row{R"({"command": ["x"], "timeout": "soon"})", "timeout: invalid duration"},
        Row{R"({"command": ["x"], "labels": {"zone": 1}})", "labels.zone must be a string"},
        Row{R"({"command": ["x"], "array": {"count": 3, "max_running": 4}})", "array.max_running is 4"},
        Row{R"({"command": ["x"], "array": {"count": 0}})", "array.count is 0: it must be from 1"},
        Row{R"({"command": ["x"], "array": {"count": 100001}})", "array.count is 100001"},
        Row{R"({"command": ["x"], "after": ["a", ""]})", "is an empty key"},
        Row{R"({"command": ["x"], "key": "a", "after": ["a"]})", "cannot run after itself"},
        Row{R"({"command": ["x"], "group": "a\u0007b"})", "group holds a control character"},
        Row{R"({"command": ["x"]} trailing)", ""}}) {
    INFO(row.line);
    auto spec = codec.ParseTaskLine(row.line);
    REQUIRE_FALSE(spec.ok());
    CHECK_THAT(spec.status().message(), Catch::Contains(row.says));
    // The next good line still parses.
    REQUIRE(codec.ParseTaskLine(R"({"command": ["true"]})").ok());
  }
}

TEST_CASE("submit output lines and events print as one-line JSON", "[unit]") {
  JsonCodec codec;
  std::string line = codec.SubmitLineToJson({3, "t7", "rejected", "no_eligible_worker", "0/1 workers eligible", ""});
  CHECK(
      line ==
      R"({"line": 3,"task": "t7","status": "rejected","reason": "no_eligible_worker","message": "0/1 workers eligible"})");
  flatbuffers::FlatBufferBuilder fbb;
  auto ev = wire::CreateEventDirect(fbb, 42, "task.failed", "2026-01-01T00:00:00.000Z", "t7", nullptr,
                                    "no_eligible_worker", "0/0 workers eligible: no live workers");
  std::string bytes = codec::Seal(fbb, ev);
  std::string json = codec.EventToJson(wire::GetEnvelope(bytes.data())->body_as_Event());
  CHECK_THAT(json,
             Catch::StartsWith(R"({"seq": 42,"type": "task.failed","time": "2026-01-01T00:00:00.000Z","task": "t7")"));
  CHECK_THAT(json, Catch::Contains(R"("reason": "no_eligible_worker")"));
}

TEST_CASE("inbound buffers are verified before they are read", "[unit]") {
  std::string garbage(64, '\xff');
  auto r = codec::Decode(garbage.data(), garbage.size());
  REQUIRE_FALSE(r.ok());
  CHECK_THAT(r.status().message(), Catch::Contains("malformed"));
  CHECK_FALSE(codec::Decode("abc", 3).ok());
  std::string huge(codec::kMaxMessageBytes + 1, '\0');
  auto big = codec::Decode(huge.data(), huge.size());
  REQUIRE_FALSE(big.ok());
  CHECK_THAT(big.status().message(), Catch::Contains("oversized"));
}

TEST_CASE("a task's env and cwd parse, travel the wire unchanged, and bad ones are refused naming what is wrong",
          "[unit]") {
  JsonCodec codec;
  auto spec = codec.ParseTaskLine(R"({"command": ["true"], "env": {"B": "2", "A": "x=y"}, "cwd": "/srv/job"})");
  REQUIRE(spec.ok());
  CHECK(spec->env == Labels{{"A", "x=y"}, {"B", "2"}});
  CHECK(spec->cwd == "/srv/job");
  flatbuffers::FlatBufferBuilder fbb;
  fbb.Finish(codec::ToWire(fbb, *spec));
  CHECK(codec::FromWire(flatbuffers::GetRoot<wire::TaskSpec>(fbb.GetBufferPointer())) == *spec);

  auto refused = [&](const std::string& line) {
    auto r = codec.ParseTaskLine(line);
    REQUIRE_FALSE(r.ok());
    return r.status().message();
  };
  CHECK_THAT(refused(R"({"command": ["true"], "env": {"FM_ATTEMPT": "9"}})"),
             Catch::Contains("names starting with FM_ are the worker's"));
  CHECK_THAT(refused(R"({"command": ["true"], "env": {"1X": "a"}})"), Catch::Contains("env \"1X\""));
  CHECK_THAT(refused(R"({"command": ["true"], "env": {"A-B": "a"}})"), Catch::Contains("env \"A-B\""));
  CHECK_THAT(refused(R"({"command": ["true"], "env": {"A": 1}})"), Catch::Contains("env.A must be a string"));
  CHECK_THAT(refused(R"({"command": ["true"], "cwd": "relative"})"), Catch::Contains("not an absolute path"));
  std::string big(kMaxEnvBytes, 'v');
  CHECK_THAT(refused(R"({"command": ["true"], "env": {"BIG": ")" + big + R"("}})"), Catch::Contains("at most"));
}

TEST_CASE("a session task line needs its keys, one public key per entry, and may leave out its command", "[unit]") {
  JsonCodec codec;
  auto ok = codec.ParseTaskLine(
      R"({"session": {"ssh_keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA me@laptop"], "ttl": "2h", "idle_timeout": "10m"}})");
  REQUIRE(ok.ok());
  REQUIRE(ok->session);
  CHECK(ok->command.empty());
  CHECK(ok->session->ttl_ms == 2 * 3600 * 1000);
  CHECK(ok->session->idle_timeout_ms == 10 * 60 * 1000);
  auto no_keys = codec.ParseTaskLine(R"({"session": {"ttl": "1h"}})");
  REQUIRE_FALSE(no_keys.ok());
  CHECK_THAT(no_keys.status().message(), Catch::Contains("session.ssh_keys is empty"));
  auto options = codec.ParseTaskLine(R"({"session": {"ssh_keys": ["command=\"sh\" ssh-ed25519 AAAA x"]}})");
  REQUIRE_FALSE(options.ok());
  CHECK_THAT(options.status().message(), Catch::Contains("is not a public key"));
  auto two_lines = codec.ParseTaskLine(R"({"session": {"ssh_keys": ["ssh-ed25519 AAAA x\nssh-rsa BBBB y"]}})");
  REQUIRE_FALSE(two_lines.ok());
  CHECK_THAT(two_lines.status().message(), Catch::Contains("is not one line"));
  auto short_ttl = codec.ParseTaskLine(R"({"session": {"ssh_keys": ["ssh-ed25519 AAAA x"], "ttl": "10ms"}})");
  REQUIRE_FALSE(short_ttl.ok());
  CHECK_THAT(short_ttl.status().message(), Catch::Contains("session.ttl"));
  auto no_command = codec.ParseTaskLine(R"({"requires": ["docker"]})");
  REQUIRE_FALSE(no_command.ok());
  CHECK_THAT(no_command.status().message(), Catch::Contains("command is missing"));
  CHECK(RedactedKey("ssh-ed25519 AAAAC3Nza me@laptop") == "ssh-ed25519 ... me@laptop");
}

TEST_CASE("a session key is TYPE BASE64 [COMMENT] with no control character, and an endpoint is a plain host and user",
          "[unit]") {
  for (const char* bad :
       {"ssh-ed25519\tAAAA x", "ssh-ed25519  AAAA x", "ssh-ed25519 AA$A x", "ssh-ed25519 AAAA \x1b[2J"}) {
    SessionSpec s{{bad}, 0, 0};
    CHECK_FALSE(ValidateSession(s).ok());
  }
  CHECK(ValidateSession({{"ssh-ed25519 AAAA+/== a comment with spaces"}, 0, 0}).ok());
  CHECK(ValidateEndpoint({"gpu-07.example", 40022, "fm"}).ok());
  CHECK(ValidateEndpoint({"10.0.0.7", 1, "_svc"}).ok());
  CHECK_FALSE(ValidateEndpoint({"-oProxyCommand=sh", 22, "fm"}).ok());
  CHECK_FALSE(ValidateEndpoint({"host", 22, "-oProxyCommand=sh -c x"}).ok());
  CHECK_FALSE(ValidateEndpoint({"host name", 22, "fm"}).ok());
  CHECK_FALSE(ValidateEndpoint({"host", 0, "fm"}).ok());
  CHECK_FALSE(ValidateEndpoint({"host", 22, "fm@x"}).ok());
}

TEST_CASE("a replayed event is a copy of the stored one, field for field (epoch included)", "[unit]") {
  flatbuffers::FlatBufferBuilder fbb;
  std::vector<flatbuffers::Offset<wire::PredicateCount>> breakdown{
      wire::CreatePredicateCountDirect(fbb, "capability", 3, "docker")};
  Hardware hw{4000, 8ull << 30, {}};
  auto event = wire::CreateEvent(
      fbb, 42, fbb.CreateString("task.started"), fbb.CreateString("2026-12-07T00:00:00.000Z"), fbb.CreateString("t7"),
      fbb.CreateString("w1"), fbb.CreateString("no_eligible_worker"), fbb.CreateString("said"), 2, -3,
      fbb.CreateString("stdout"), fbb.CreateString("data"), 4, 5, fbb.CreateVector(breakdown),
      codec::ToWire(fbb, std::vector<std::string>{"gpu"}), codec::ToWire(fbb, hw),
      codec::ToWire(fbb, Labels{{"zone", "a"}}), 1234, fbb.CreateString("alice"),
      codec::ToWire(fbb, std::vector<std::string>{"GPU-1"}), codec::ToWire(fbb, Endpoint{"10.0.0.1", 2222}), 9);
  fbb.Finish(event);
  const auto* original = flatbuffers::GetRoot<wire::Event>(fbb.GetBufferPointer());
  flatbuffers::FlatBufferBuilder copy_fbb;
  copy_fbb.Finish(codec::CopyEvent(copy_fbb, *original));
  const auto* copy = flatbuffers::GetRoot<wire::Event>(copy_fbb.GetBufferPointer());
  JsonCodec codec;
  const std::string json = codec.EventToJson(original);
  CHECK(json.find("\"epoch\": 9") != std::string::npos);
  CHECK(codec.EventToJson(copy) == json);
}
