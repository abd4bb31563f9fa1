#include "runtime/loop.h"

#include <chrono>
#include <csignal>

#include "runtime/bus.h"

namespace fm::bus {

uint64_t WallClockMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

Loop::Loop() {
  uv_loop_init(&loop_);
  uv_prepare_init(&loop_, &prepare_);
  prepare_.data = this;
  uv_prepare_start(&prepare_, [](uv_prepare_t* h) { static_cast<Loop*>(h->data)->Settle(); });
  uv_check_init(&loop_, &check_);
  check_.data = this;
  uv_check_start(&check_, [](uv_check_t* h) { static_cast<Loop*>(h->data)->Settle(); });
  uv_unref(reinterpret_cast<uv_handle_t*>(&prepare_));
  uv_unref(reinterpret_cast<uv_handle_t*>(&check_));
  // Memory a burst left free goes back to the system (never keeps the loop running).
  Background(5000, [] { ReleaseFreeMemory(); });
}

void Loop::Background(uint64_t interval_ms, std::function<void()> fn) {
  Every(interval_ms, std::move(fn));
  uv_unref(reinterpret_cast<uv_handle_t*>(&timers_.back()->timer));
}

Loop::~Loop() {
  auto close = [](uv_handle_t* h) {
    if (!uv_is_closing(h)) uv_close(h, nullptr);
  };
  close(reinterpret_cast<uv_handle_t*>(&prepare_));
  close(reinterpret_cast<uv_handle_t*>(&check_));
  if (on_signal_) {
    close(reinterpret_cast<uv_handle_t*>(&sigint_));
    close(reinterpret_cast<uv_handle_t*>(&sigterm_));
  }
  for (auto& w : watched_) close(reinterpret_cast<uv_handle_t*>(&w->poll));
  for (auto& t : timers_) close(reinterpret_cast<uv_handle_t*>(&t->timer));
  uv_run(&loop_, UV_RUN_DEFAULT);
  uv_loop_close(&loop_);
}

void Loop::Watch(zmq::socket_t& socket, std::function<size_t()> drain) { Watch(socket, std::move(drain), {}); }

void Loop::Watch(zmq::socket_t& socket, std::function<size_t()> drain, std::function<bool()> pending) {
  auto w = std::make_unique<Watched>();
  w->loop = this;
  w->socket = &socket;
  w->drain = std::move(drain);
  w->pending = std::move(pending);
  int fd = socket.get(zmq::sockopt::fd);
  uv_poll_init(&loop_, &w->poll, fd);
  w->poll.data = w.get();
  uv_poll_start(&w->poll, UV_READABLE, [](uv_poll_t* h, int, int) {
    auto* self = static_cast<Watched*>(h->data);
    self->loop->Settle();
  });
  watched_.push_back(std::move(w));
}

void Loop::Every(uint64_t interval_ms, std::function<void()> fn, int64_t first_ms) {
  auto t = std::make_unique<Timer>();
  t->loop = this;
  t->fn = std::move(fn);
  uv_timer_init(&loop_, &t->timer);
  t->timer.data = t.get();
  uv_timer_start(
      &t->timer,
      [](uv_timer_t* h) {
        auto* self = static_cast<Timer*>(h->data);
        self->fn();
        self->loop->work_ = true;
      },
      first_ms < 0 ? interval_ms : static_cast<uint64_t>(first_ms), interval_ms);
  timers_.push_back(std::move(t));
}

void Loop::StopOnSignals(std::function<void(int)> fn) {
  on_signal_ = fn ? std::move(fn) : [](int) {};
  for (auto [handle, signum] : {std::pair{&sigint_, SIGINT}, std::pair{&sigterm_, SIGTERM}}) {
    uv_signal_init(&loop_, handle);
    handle->data = this;
    uv_signal_start(
        handle,
        [](uv_signal_t* h, int signum) {
          auto* self = static_cast<Loop*>(h->data);
          self->on_signal_(signum);
          self->Stop();
        },
        signum);
    uv_unref(reinterpret_cast<uv_handle_t*>(handle));
  }
}

void Loop::Settle() {
  if (settling_) return;
  settling_ = true;
  for (;;) {
    bool any = false;
    // One drain call (up to the component's budget) per socket per round, so that a
    // busy socket does not hold up the others (the broker's events vs. its directed
    // traffic); rounds go on until no socket is readable.
    for (auto& w : watched_) {
      if ((w->pending && w->pending()) ||
          (RetryEintr([&] { return w->socket->get(zmq::sockopt::events); }) & ZMQ_POLLIN)) {
        if (w->drain() > 0) any = true;
      }
    }
    if (any) work_ = true;
    if (work_) {
      work_ = false;
      if (turn_end_) turn_end_();
      // Under sustained input the rounds go on without libuv's timers and wakeups: what
      // must not wait for a quiet moment (the watchdog, scrapes) runs here too.
      for (auto& fn : each_round_) fn();
      continue;  // sending may have made sockets readable without a new edge
    }
    break;
  }
  settling_ = false;
}

void Loop::Run() { uv_run(&loop_, UV_RUN_DEFAULT); }

void Loop::Stop() { uv_stop(&loop_); }

}  // namespace fm::bus
