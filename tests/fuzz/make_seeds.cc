// Writes seed envelopes (one file per message type) for the envelope fuzzer:
//   fm-make-fuzz-seeds tests/fuzz/corpus/envelope
#include <cstdio>
#include <fstream>
#include <string>

#include "schemas/codec.h"

namespace {
void Write(const std::string& dir, const std::string& name, const std::string& bytes) {
  std::ofstream(dir + "/" + name, std::ios::binary) << bytes;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  std::string dir = argv[1];
  using namespace fm;
  TaskSpec spec;
  spec.command = {"sh", "-c", "echo hi"};
  spec.required_capabilities = {"docker"};
  spec.resources = {2000, 1ull << 30, 1, 1ull << 30, "H100"};
  spec.labels = {{"zone", "a"}};
  {
    flatbuffers::FlatBufferBuilder fbb;
    std::vector<flatbuffers::Offset<wire::TaskSpec>> specs{codec::ToWire(fbb, spec)};
    Write(dir, "submit", codec::Seal(fbb, wire::CreateSubmitRequest(fbb, fbb.CreateVector(specs), true, 1)));
  }
  {
    flatbuffers::FlatBufferBuilder fbb;
    Hardware hw{4000, 8ull << 30, {{"NVIDIA H100", 80ull << 30}}};
    auto reg = wire::CreateWorkerRegistration(fbb, fbb.CreateString("w"), fbb.CreateString("w/w/1"),
                                              fbb.CreateString("n"), 1, fbb.CreateString("v"), 2,
                                              codec::ToWire(fbb, hw), codec::ToWire(fbb, spec.labels), 0,
                                              codec::ToWire(fbb, std::vector<std::string>{"docker", "gpu"}));
    Write(dir, "registration", codec::Seal(fbb, reg));
  }
  {
    flatbuffers::FlatBufferBuilder fbb;
    auto hb = wire::CreateWorkerHeartbeat(fbb, fbb.CreateString("w"), fbb.CreateString("w/w/1"), 1);
    Write(dir, "heartbeat", codec::Seal(fbb, hb));
  }
  {
    flatbuffers::FlatBufferBuilder fbb;
    auto ref = wire::CreateTaskRef(fbb, 1, 1);
    Write(dir, "finished",
          codec::Seal(fbb, wire::CreateTaskFinished(fbb, ref, fbb.CreateString("w"), wire::Outcome::Succeeded, 0, 0)));
  }
  {
    flatbuffers::FlatBufferBuilder fbb;
    Write(dir, "control", codec::Seal(fbb, wire::CreateControlRequestDirect(fbb, wire::ControlOp::Drain, "w", 1)));
  }
  {
    flatbuffers::FlatBufferBuilder fbb;
    Write(dir, "replay", codec::Seal(fbb, wire::CreateReplayRequest(fbb, 1, 1)));
  }
  return 0;
}
