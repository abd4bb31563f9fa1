#include "worker/off_loop.h"

namespace fm::worker {

void OffLoop::Run(std::function<void()> work, std::function<void()> done) {
  auto job = std::make_unique<Job>();
  Job* j = job.get();
  j->owner = this;
  j->work = std::move(work);
  j->done = std::move(done);
  uv_async_init(loop_, &j->async, OnDone);
  j->async.data = j;
  jobs_.push_back(std::move(job));
  j->thread = std::thread([j] {
    j->work();
    uv_async_send(&j->async);
  });
}

void OffLoop::OnDone(uv_async_t* async) {
  auto* j = static_cast<Job*>(async->data);
  j->thread.join();
  OffLoop* self = j->owner;
  std::function<void()> done = std::move(j->done);
  // The handle is freed only once libuv has closed it.
  for (auto it = self->jobs_.begin(); it != self->jobs_.end(); ++it) {
    if (it->get() != j) continue;
    it->release();
    self->jobs_.erase(it);
    break;
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&j->async), [](uv_handle_t* h) { delete static_cast<Job*>(h->data); });
  if (done) done();
}

OffLoop::~OffLoop() {
  for (auto& job : jobs_) {
    if (job->thread.joinable()) job->thread.join();
    Job* j = job.release();
    uv_close(reinterpret_cast<uv_handle_t*>(&j->async), [](uv_handle_t* h) { delete static_cast<Job*>(h->data); });
  }
}

}  // namespace fm::worker
