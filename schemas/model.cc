#include "schemas/model.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdio>

namespace fm {

bool GpuServes(const Gpu& gpu, const Resources& need) {
  if (gpu.memory < need.gpu_memory) return false;
  auto it =
      std::search(gpu.model.begin(), gpu.model.end(), need.gpu_model.begin(), need.gpu_model.end(), [](char a, char b) {
        return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
      });
  return it != gpu.model.end() || need.gpu_model.empty();
}

std::string GpuDeviceId(const Gpu& gpu, size_t index) { return gpu.uuid.empty() ? std::to_string(index) : gpu.uuid; }

std::string TaskName(uint64_t id) { return "t" + std::to_string(id); }

bool ParseTaskName(const std::string& name, uint64_t* id) {
  std::string_view digits = name;
  if (!digits.empty() && digits.front() == 't') digits.remove_prefix(1);
  if (digits.empty()) return false;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), *id);
  return ec == std::errc() && end == digits.data() + digits.size() && *id != 0;
}

namespace {
bool LabelChar(char c, bool in_value) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return c == '.' || c == '_' || c == '-' || c == '/' || (in_value && c == ':');
}
std::string Printable(const std::string& text) {
  std::string out;
  for (unsigned char c : text) {
    if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') {
      out += static_cast<char>(c);
    } else {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
    }
  }
  return out;
}
}  // namespace

Status ValidateLabel(const std::string& key, const std::string& value) {
  const std::string where = "label \"" + Printable(key) + "\"";
  if (key.empty()) return Status::Invalid("a label key is empty");
  if (key.size() > 128) return Status::Invalid(where + ": the key is longer than 128 characters");
  if (!std::isalnum(static_cast<unsigned char>(key[0])) || static_cast<unsigned char>(key[0]) > 0x7f) {
    return Status::Invalid(where + ": a key starts with a letter or digit");
  }
  for (char c : key) {
    if (!LabelChar(c, false)) {
      return Status::Invalid(where + ": a key holds only letters, digits and . _ / - (found \"" +
                             Printable(std::string(1, c)) + "\")");
    }
  }
  if (value.size() > 256) return Status::Invalid(where + ": the value is longer than 256 characters");
  for (char c : value) {
    if (!LabelChar(c, true)) {
      return Status::Invalid(where + ": a value holds only letters, digits and . _ / : - (found \"" +
                             Printable(std::string(1, c)) + "\")");
    }
  }
  return Status::Ok();
}

Result<std::pair<std::string, std::string>> ParseLabel(const std::string& text) {
  size_t eq = text.find('=');
  if (eq == std::string::npos) return Status::Invalid("label \"" + Printable(text) + "\": expected KEY=VALUE");
  std::string key = text.substr(0, eq), value = text.substr(eq + 1);
  if (Status s = ValidateLabel(key, value); !s.ok()) return s;
  return std::make_pair(std::move(key), std::move(value));
}

void Normalize(std::vector<std::string>* set) {
  std::sort(set->begin(), set->end());
  set->erase(std::unique(set->begin(), set->end()), set->end());
}

void Normalize(std::vector<int32_t>* set) {
  std::sort(set->begin(), set->end());
  set->erase(std::unique(set->begin(), set->end()), set->end());
}

void Normalize(Labels* labels) {
  std::stable_sort(labels->begin(), labels->end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  labels->erase(
      std::unique(labels->begin(), labels->end(), [](const auto& a, const auto& b) { return a.first == b.first; }),
      labels->end());
}

}  // namespace fm
