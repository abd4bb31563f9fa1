#include "schemas/text.h"

#include <cstdint>
#include <cstdio>

namespace fm {

namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// The length of the well-formed UTF-8 sequence at text[i], or 0 if there is none.
size_t SequenceAt(std::string_view text, size_t i, uint32_t* code) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(text[k]); };
  uint8_t b = byte(i);
  if (b < 0x80) {
    *code = b;
    return 1;
  }
  size_t n;
  uint32_t c, min;
  if ((b & 0xE0) == 0xC0) {
    n = 2, c = b & 0x1F, min = 0x80;
  } else if ((b & 0xF0) == 0xE0) {
    n = 3, c = b & 0x0F, min = 0x800;
  } else if ((b & 0xF8) == 0xF0) {
    n = 4, c = b & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if (i + n > text.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    c = (c << 6) | (byte(i + k) & 0x3F);
  }
  if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
  *code = c;
  return n;
}

}  // namespace

// Calls visit(code, bytes) for each well-formed sequence of `text`, and visit(-1, byte)
// for each byte that is not part of one.
template <typename Visit>
void ForEachCode(std::string_view text, Visit visit) {
  for (size_t i = 0; i < text.size();) {
    uint32_t code;
    size_t n = SequenceAt(text, i, &code);
    visit(n == 0 ? -1 : static_cast<int64_t>(code), text.substr(i, n == 0 ? 1 : n));
    i += n == 0 ? 1 : n;
  }
}

std::string ValidUtf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  ForEachCode(text, [&](int64_t code, std::string_view bytes) { out += code < 0 ? kReplacement : bytes; });
  return out;
}

std::string Printable(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  ForEachCode(text, [&](int64_t code, std::string_view bytes) {
    char escape[16];
    if (code < 0) {
      out += kReplacement;
    } else if (code == '\n') {
      out += "\\n";
    } else if (code == '\t') {
      out += "\\t";
    } else if (code == '\r') {
      out += "\\r";
    } else if (code == 0x1B) {
      out += "\\e";
    } else if (code < 0x20 || code == 0x7F) {
      std::snprintf(escape, sizeof escape, "\\x%02x", static_cast<unsigned>(code));
      out += escape;
    } else if (code >= 0x80 && code <= 0x9F) {  // C1 controls (CSI is U+009B)
      std::snprintf(escape, sizeof escape, "\\u{%02x}", static_cast<unsigned>(code));
      out += escape;
    } else {
      out += bytes;
    }
  });
  return out;
}

size_t CompleteUtf8Prefix(std::string_view text) {
  // Look back at most 3 bytes for the start of a sequence that the text cuts short.
  size_t end = text.size();
  for (size_t back = 1; back <= 3 && back <= end; ++back) {
    auto b = static_cast<uint8_t>(text[end - back]);
    if ((b & 0xC0) == 0x80) continue;  // a continuation byte: keep looking for the lead
    size_t need = (b & 0xE0) == 0xC0 ? 2 : (b & 0xF0) == 0xE0 ? 3 : (b & 0xF8) == 0xF0 ? 4 : 1;
    return need > back ? end - back : end;
  }
  return end;
}

}  // namespace fm
