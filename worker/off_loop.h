// Blocking calls off the loop: each on a thread of its own (never libuv's pool of four,
// where one slow Docker call would hold up every other), its completion run on the loop
// thread. For the few calls that are not an attempt's (re-probes, stops).
//
// Thread: Run and the destructor on the loop thread; `work` on its own thread; `done`
// on the loop thread, after `work` returned.
#pragma once

#include <uv.h>

#include <atomic>
#include <functional>
#include <list>
#include <memory>
#include <thread>

namespace fm::worker {

class OffLoop {
 public:
  explicit OffLoop(uv_loop_t* loop) : loop_(loop) {}
  // Joins the calls still running (their `done` is not called).
  ~OffLoop();
  OffLoop(const OffLoop&) = delete;
  OffLoop& operator=(const OffLoop&) = delete;

  void Run(std::function<void()> work, std::function<void()> done);
  size_t in_flight() const { return jobs_.size(); }

 private:
  struct Job {
    OffLoop* owner = nullptr;
    std::function<void()> work, done;
    std::thread thread;
    uv_async_t async{};
  };
  static void OnDone(uv_async_t* async);

  uv_loop_t* loop_;
  std::list<std::unique_ptr<Job>> jobs_;
};

}  // namespace fm::worker
