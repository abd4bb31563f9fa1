// Storage faults for real: the scheduler's store on a small tmpfs this test mounts and
// fills (needs root, as CI has).
#include <fcntl.h>
#include <sys/mount.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "harness.h"

using namespace fm::test;
using Catch::Contains;

namespace {

class SmallFilesystem {
 public:
  explicit SmallFilesystem(const std::string& path) : path_(path) {
    INFO("mounting a tmpfs needs root: " << std::strerror(errno));
    REQUIRE(mount("tmpfs", path_.c_str(), "tmpfs", 0, "size=24m") == 0);
  }
  ~SmallFilesystem() { umount2(path_.c_str(), MNT_DETACH); }

  // Writes a file until the filesystem is full (bounded by its size).
  void Fill() {
    int fd = open((path_ + "/filler").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    REQUIRE(fd >= 0);
    std::string block(1 << 20, 'x');
    for (int i = 0; i < 64; ++i) {
      if (write(fd, block.data(), block.size()) < static_cast<ssize_t>(block.size())) break;
    }
    close(fd);
  }
  void Free() { REQUIRE(unlink((path_ + "/filler").c_str()) == 0); }

 private:
  std::string path_;
};

std::string Tasks(int n) {
  std::string out;
  for (int i = 0; i < n; ++i)
    out += R"({"command": ["true"]})"
           "\n";
  return out;
}

}  // namespace

TEST_CASE(
    "a scheduler whose disk is full refuses submissions with a clear error, keeps serving reads and the "
    "stream, and recovers on its own",
    "[integration][storage]") {
  TempDir dir;
  SmallFilesystem fs(dir.path());
  Cluster c({"--liveness", "5s", "--store-write-buffer", "2MiB"}, dir.path() + "/scheduler");
  c.StartWorker("w", {"--slots", "2"});
  ToolRun before = c.Submit(Tasks(1), {"--wait"});
  REQUIRE(before.exit_code == 0);

  fs.Fill();
  // RocksDB preallocates its log: keep submitting (bounded) until a write reaches the full disk.
  ToolRun refused;
  for (int round = 0; round < 20; ++round) {
    refused = c.Submit(Tasks(500));
    if (refused.exit_code != 0) break;
  }
  REQUIRE(refused.exit_code == 1);
  std::string refusal;
  for (const auto& line : refused.lines) {
    if (line.find("storage_unavailable") != std::string::npos) refusal = line;
  }
  REQUIRE_FALSE(refusal.empty());
  CHECK_THAT(refusal, Contains("the scheduler cannot write to its store") && Contains("No space left on device"));
  // Nothing that was refused got an id: it was never acknowledged.
  CHECK_THAT(refusal, !Contains("\"task\""));

  // Reads and the stream keep working.
  ToolRun workers = c.Ctl({"workers"});
  CHECK(workers.exit_code == 0);
  CHECK_THAT(workers.lines.at(1), Contains("w "));
  ToolRun replay = RunTool({Bin("fm-tap"), "--broker", c.broker(), "--since", "1", "--count", "3"});
  CHECK(replay.exit_code == 0);
  CHECK(replay.lines.size() == 3);

  fs.Free();
  REQUIRE(c.scheduler().WaitFor("the store takes writes again", 15000, 1, true));
  // Ahead of the thousands accepted before the disk filled (a backlog that takes its own
  // time to run): what is checked is that writes are taken again.
  ToolRun after = c.Submit(R"({"command": ["true"], "priority": 100})"
                           "\n",
                           {"--wait"});
  CHECK(after.exit_code == 0);
  CHECK_THAT(after.lines.at(0), Contains(R"("status": "succeeded")"));
}

TEST_CASE(
    "a data directory removed under a running scheduler stops it, restarted on an empty one, its reused task ids run",
    "[integration]") {
  TempDir dir;
  Cluster c({"--liveness", "2s"}, dir.path() + "/data");
  c.StartWorker("w", {"--slots", "1"});
  ToolRun first = c.Submit(R"({"command": ["true"]})"
                           "\n",
                           {"--wait"});
  REQUIRE(first.exit_code == 0);
  REQUIRE_THAT(first.lines.at(0), Contains(R"("task": "t1")"));
  std::filesystem::remove_all(dir.path() + "/data");
  // It stops instead of acknowledging writes into unlinked files.
  CHECK(c.scheduler().Wait(10000) == 1);
  CHECK_THAT(c.scheduler().Stderr(), Contains("was removed or replaced while the scheduler ran"));

  c.RestartScheduler();  // on an empty directory: a new store, a new epoch, ids from t1 again
  auto tap = Process::Start({Bin("fm-tap"), "--broker", c.broker(), "--since", "1"});
  REQUIRE(tap->WaitFor("worker.registered worker=w", 15000));
  ToolRun again = c.Submit(R"({"command": ["true"]})"
                           "\n",
                           {"--wait"});
  INFO(again.err);
  REQUIRE(again.exit_code == 0);  // the worker did not drop t1 as a duplicate of the old t1
  CHECK_THAT(again.lines.at(0), Contains(R"("task": "t1")"));
  CHECK_THAT(again.lines.at(0), Contains(R"("status": "succeeded")"));
}
