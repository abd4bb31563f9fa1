#include "schemas/model.h"

#include <algorithm>
#include <charconv>

namespace fm {

std::string TaskName(uint64_t id) { return "t" + std::to_string(id); }

bool ParseTaskName(const std::string& name, uint64_t* id) {
  std::string_view digits = name;
  if (!digits.empty() && digits.front() == 't') digits.remove_prefix(1);
  if (digits.empty()) return false;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), *id);
  return ec == std::errc() && end == digits.data() + digits.size() && *id != 0;
}

void Normalize(std::vector<std::string>* set) {
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
