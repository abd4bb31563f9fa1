// Health as the ability to run: an executor that fails to start tasks `quarantine_after`
// times in a row has its capability withdrawn (quarantined, with the reason), and is
// re-probed by doing (starting a real container), first after probe_initial_ms, then
// doubling up to probe_max_ms, until a probe works and the capability comes back. A
// socket that answers is not health; a task that started is.
//
// Pure: time is passed in (tests/unit/worker_core_test.cc drives it with a manual clock).
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace fm::worker {

struct HealthOptions {
  uint32_t quarantine_after = 3;      // failed starts in a row
  uint64_t probe_initial_ms = 2000;   // first re-probe after the quarantine
  uint64_t probe_max_ms = 5 * 60000;  // the longest wait between re-probes
};

class Health {
 public:
  struct Quarantine {
    std::string reason;          // "docker start failed 3x in a row: ..."
    std::string probe_image;     // what re-probes start: the last image that started, else the one that failed
    uint64_t next_probe_ms = 0;  // when the next re-probe is due
    uint64_t delay_ms = 0;       // the wait before the next one after a failure
    bool probing = false;        // a re-probe is out
    uint32_t probes_failed = 0;
    std::string last_probe_error;  // why the last re-probe failed
  };

  explicit Health(HealthOptions options = {}) : options_(options) {}

  // An attempt of `capability`'s executor started (from `image`). Resets its count of
  // failures; the image is what re-probes start (one known to start when all is well).
  void OnStarted(const std::string& capability, const std::string& image = "");
  // An attempt could not be started by `capability`'s executor (`step`: "docker create",
  // "docker start"; `message`: why; `image`: what it tried). Returns true when this
  // failure quarantines the capability.
  bool OnStartFailed(const std::string& capability, const std::string& step, const std::string& message,
                     const std::string& image, uint64_t now_ms);
  // Quarantined capabilities whose re-probe is due now: each is marked as probing until
  // OnProbe reports it.
  std::vector<std::pair<std::string, std::string>> DueProbes(uint64_t now_ms);  // capability, image
  // A re-probe's result. Returns true when the capability recovered (it is announced again).
  bool OnProbe(const std::string& capability, bool ok, const std::string& message, uint64_t now_ms);

  bool quarantined(const std::string& capability) const { return quarantined_.count(capability) > 0; }
  // A start worked since the last failure (or since this process began).
  bool proven(const std::string& capability) const { return proven_.count(capability) > 0; }
  const std::map<std::string, Quarantine>& quarantines() const { return quarantined_; }
  // `capabilities` (sorted) without the quarantined ones.
  std::vector<std::string> Announced(const std::vector<std::string>& capabilities) const;

 private:
  HealthOptions options_;
  std::map<std::string, uint32_t> failures_;  // failed starts in a row, per capability
  std::map<std::string, Quarantine> quarantined_;
  std::set<std::string> proven_;
  std::map<std::string, std::string> started_image_;  // the last image that started, per capability
};

}  // namespace fm::worker
