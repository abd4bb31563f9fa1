// The session executor: an interactive session (TaskSpec::session) as a container of the
// worker's session image (or the task's own) running sshd, port 22 published on a port
// of the host's, the submitted public keys in FM_SSH_KEYS. Beside the container a
// watcher waits for sshd's banner (then the endpoint goes to the sink, once), and ends
// the session after its idle timeout with no established connection (a connected user
// is never reaped). Its ttl is its timeout, and a session ends as one: succeeded with
// reason session_ttl or session_idle, not as a failure. Everything else is the docker
// executor's (docker_executor.h): this one fills in its hooks.
//
// Thread: as the docker executor's; the watcher is a thread of the attempt's.
#pragma once

#include <cstdint>
#include <string>

#include "worker/docker_executor.h"

namespace fm::worker {

struct SessionOptions {
  std::string image = "localhost/fm-session:latest";
  std::string bind = "0.0.0.0";
  std::string advertise = "127.0.0.1";
  std::string user = "fm";
  uint64_t max_ttl_ms = 8 * 3600 * 1000;  // a session's ttl is at most this
};

class SessionExecutor final : public DockerExecutor {
 public:
  SessionExecutor(uv_loop_t* loop, RunSink* sink, DockerOptions docker, SessionOptions sessions,
                  std::function<void()> on_activity);
  // Joins the attempts' threads before sessions_ and the hooks go away.
  ~SessionExecutor() override { StopThreads(); }

  // REQUIRES: spec.session.
  void Start(const Ref& ref, const TaskSpec& spec, const Grant& grant) override;

 private:
  struct Session;
  std::unique_ptr<Extra> MakeExtra() override;
  std::string Prepare(Run& run, std::string* image, EnvBuilder* vars, DockerClient::ContainerSpec* spec) override;
  bool Watches() const override { return true; }
  void Watch(Run& run, const std::string& container) override;
  void Exited(Run& run) override;
  void OnWake(Run& run) override;
  std::optional<RunResult> KindResult(const Run& run) override;

  SessionOptions sessions_;
};

}  // namespace fm::worker
