// One libuv loop per component, with ZeroMQ sockets watched on it.
//
// ZeroMQ's file descriptor is edge-triggered and only says "look at ZMQ_EVENTS"; a send
// can consume the edge. So the loop settles before it blocks: in rounds, one drain call
// per readable socket (fair between sockets), the turn-end hook after each round that did
// work, until no socket is readable. A component therefore sees turns: some messages and
// timers, then TurnEnd, where the scheduler commits its batch and sends what it derived
// (group commit).
//
// Thread: everything runs on the thread that calls Run().
#pragma once

#include <uv.h>

#include <functional>
#include <memory>
#include <vector>
#include <zmq.hpp>

namespace fm::bus {

// Milliseconds since the Unix epoch: the one clock daemons pass to their components.
uint64_t WallClockMs();

class Loop {
 public:
  Loop();
  ~Loop();
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;

  uv_loop_t* uv() { return &loop_; }

  // `drain` is called when `socket` may be readable; it should receive until
  // ZMQ_DONTWAIT says EAGAIN or its budget ends, and return how many it took.
  // REQUIRES: `socket` outlives the loop.
  void Watch(zmq::socket_t& socket, std::function<size_t()> drain);
  // The same, and `drain` is also called in every round where `pending` says it holds
  // work of its own (messages it read earlier and has not handled yet).
  void Watch(zmq::socket_t& socket, std::function<size_t()> drain, std::function<bool()> pending);
  // Runs `fn` every `interval_ms`, the first time after `first_ms` (default: interval).
  void Every(uint64_t interval_ms, std::function<void()> fn, int64_t first_ms = -1);
  // The same, but the timer alone never keeps Run() from returning.
  void Background(uint64_t interval_ms, std::function<void()> fn);
  // Called once at the end of every turn that handled a message or timer.
  void OnTurnEnd(std::function<void()> fn) { turn_end_ = std::move(fn); }
  // Stops on SIGINT or SIGTERM (and calls `fn` first, if given).
  void StopOnSignals(std::function<void(int)> fn = {});
  // Also called after every round of a busy loop (cheap checks only: the systemd
  // watchdog, a waiting scrape), which otherwise wait for the loop to go idle.
  void EachRound(std::function<void()> fn) { each_round_.push_back(std::move(fn)); }
  // Marks the current turn as having work (for callbacks outside Watch/Every).
  void MarkWork() { work_ = true; }

  void Run();
  void Stop();

 private:
  struct Watched {
    Loop* loop;
    zmq::socket_t* socket;
    std::function<size_t()> drain;
    std::function<bool()> pending;
    uv_poll_t poll;
  };
  struct Timer {
    Loop* loop;
    std::function<void()> fn;
    uv_timer_t timer;
  };
  void Settle();

  uv_loop_t loop_;
  uv_prepare_t prepare_;
  uv_check_t check_;
  uv_signal_t sigint_, sigterm_;
  std::vector<std::unique_ptr<Watched>> watched_;
  std::vector<std::unique_ptr<Timer>> timers_;
  std::function<void()> turn_end_;
  std::vector<std::function<void()>> each_round_;
  std::function<void(int)> on_signal_;
  bool work_ = false;
  bool settling_ = false;
};

}  // namespace fm::bus
