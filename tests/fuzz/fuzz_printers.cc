// libFuzzer: what the tools print of bytes from peers and tasks. The input becomes the
// strings of an event; fm-tap --json must print valid JSON (every byte printable ASCII)
// and the human format must hold no control character.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "schemas/json.h"
#include "schemas/text.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static fm::JsonCodec codec;
  std::string bytes(reinterpret_cast<const char*>(data), size);
  flatbuffers::FlatBufferBuilder fbb;
  auto str = [&](std::string_view s) { return fbb.CreateString(s.data(), s.size()); };
  auto type = str("task.log"), worker = str(std::string_view(bytes).substr(0, bytes.size() / 2)),
       message = str(std::string_view(bytes).substr(bytes.size() / 2)), stream = str("stdout"), payload = str(bytes);
  fm::wire::EventBuilder b(fbb);
  b.add_seq(1);
  b.add_type(type);
  b.add_worker(worker);
  b.add_message(message);
  b.add_stream(stream);
  b.add_data(payload);
  fbb.Finish(b.Finish());
  std::string json = codec.EventToJson(flatbuffers::GetRoot<fm::wire::Event>(fbb.GetBufferPointer()));
  for (unsigned char c : json) {
    if (c < 0x20 || c >= 0x7f) std::abort();  // JSON with a raw control or non-ASCII byte
  }
  std::string human = fm::Printable(bytes);
  for (unsigned char c : human) {
    if (c < 0x20 || c == 0x7f) std::abort();  // a control character reached the terminal
  }
  std::string valid = fm::ValidUtf8(bytes);
  if (fm::ValidUtf8(valid) != valid) std::abort();  // not a fixed point: not valid UTF-8
  if (fm::CompleteUtf8Prefix(bytes) > bytes.size()) std::abort();
  return 0;
}
