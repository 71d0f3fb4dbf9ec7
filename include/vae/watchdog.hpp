// The communication watchdog: a thread that ends the job when the step it watches has made no progress for too long.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

namespace vae {

// The training thread reports where it is (beat) at every phase of a step and before every wait on other ranks; the
// watchdog's thread checks the time since the last report. Past the limit it prints one line naming the step, the phase
// and what is waited on, and ends this process with kExitCommTimeout: the launcher then ends the job (a blocked MPI call
// cannot be interrupted, and MPI_Abort itself needs the lost link). Nothing here touches MPI.
class Watchdog {
 public:
  // timeout_s 0: never fires. grace_s: the limit while allow_slow() is in force (start-up, checkpoint writes).
  Watchdog(double timeout_s, double grace_s, int rank, std::string program);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // Progress: step (1-based global step, 0 before the first), the phase, and what it now waits on ("" for none; detail
  // < 0 for no number). phase and what must be string literals (they are read by the other thread).
  void beat(long step, const char* phase, const char* what = "", long detail = -1);
  // The grace limit holds until a beat of a step after `through_step`: every rank waits while rank 0 writes a checkpoint.
  void allow_slow(long through_step);
  double timeout() const { return timeout_; }

 private:
  void watch();
  [[noreturn]] void fire(double idle) const;  // the line, then the exit after as long again

  double timeout_, grace_;
  int rank_;
  std::string program_;
  std::atomic<std::int64_t> last_ns_;
  std::atomic<long> step_{0}, detail_{-1}, slow_through_{0};
  std::atomic<const char*> phase_{"start-up"}, what_{""};
  std::mutex mutex_;
  std::condition_variable wake_;
  bool done_ = false;
  std::thread thread_;
};

}  // namespace vae
