// The communication watchdog's thread: a clock that the training thread resets, and the one line it prints when it runs out.
#include "vae/watchdog.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "vae/errors.hpp"

namespace vae {
namespace {

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

Watchdog::Watchdog(double timeout_s, double grace_s, int rank, std::string program)
    : timeout_(timeout_s), grace_(grace_s), rank_(rank), program_(std::move(program)), last_ns_(now_ns()) {
  slow_through_.store(0);
  if (timeout_ > 0) thread_ = std::thread([this] { watch(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    done_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Watchdog::beat(long step, const char* phase, const char* what, long detail) {
  step_.store(step, std::memory_order_relaxed);
  phase_.store(phase, std::memory_order_relaxed);
  what_.store(what, std::memory_order_relaxed);
  detail_.store(detail, std::memory_order_relaxed);
  last_ns_.store(now_ns(), std::memory_order_release);
}

void Watchdog::allow_slow(long through_step) {
  slow_through_.store(through_step, std::memory_order_relaxed);
  last_ns_.store(now_ns(), std::memory_order_release);
}

void Watchdog::watch() {
  std::unique_lock<std::mutex> lock(mutex_);
  // Checked a few times a second: the limit is seconds, and an idle check costs nothing measurable.
  while (!wake_.wait_for(lock, std::chrono::milliseconds(200), [this] { return done_; })) {
    const double idle = double(now_ns() - last_ns_.load(std::memory_order_acquire)) * 1e-9;
    const bool slow = step_.load(std::memory_order_relaxed) <= slow_through_.load(std::memory_order_relaxed);
    if (idle > (slow ? grace_ : timeout_)) fire(idle);
  }
}

void Watchdog::fire(double idle) const {
  const char* what = what_.load(std::memory_order_relaxed);
  const long detail = detail_.load(std::memory_order_relaxed);
  char waits[160] = "";
  if (what[0] != '\0' && detail >= 0) std::snprintf(waits, sizeof waits, ", waiting on %s %ld", what, detail);
  else if (what[0] != '\0') std::snprintf(waits, sizeof waits, ", waiting on %s", what);
  std::fprintf(stderr,
               "%s: rank %d: error: no communication progress for %.0f s at step %ld, phase %s%s (a lost link or a stuck "
               "peer; --comm-timeout); the job ends within %.0f s (exit %d, or mpirun's 205 for a lost node), the last "
               "checkpoint is intact\n",
               program_.c_str(), rank_, idle, step_.load(std::memory_order_relaxed), phase_.load(std::memory_order_relaxed), waits,
               idle, kExitCommTimeout);
  std::fflush(stderr);
  std::fflush(stdout);
  // Not at once: a rank's exit starts mpirun's abort, which waits for every daemon, a lost one too, forever. The
  // launcher's keepalive (launch/*.sh) finds a lost node before this sleep ends and ends the job itself; a stuck but
  // reachable peer is ended by the abort this exit starts.
  std::this_thread::sleep_for(std::chrono::duration<double>(idle));
  std::_Exit(kExitCommTimeout);
}

}  // namespace vae
