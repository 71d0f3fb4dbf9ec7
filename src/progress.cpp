// The live progress line of long evaluations.
#include "vae/progress.hpp"

#include <cstdio>

namespace vae {

ProgressLine::ProgressLine(bool on, std::size_t total, std::string unit)
    : on_(on), total_(total), unit_(std::move(unit)), start_(std::chrono::steady_clock::now()), last_(start_) {}

ProgressLine::~ProgressLine() { finish(); }

void ProgressLine::update(std::size_t done) {
  if (!on_) return;
  const auto now = std::chrono::steady_clock::now();
  if (now - last_ < std::chrono::milliseconds(500) && done < total_) return;
  last_ = now;
  const double seconds = std::chrono::duration<double>(now - start_).count();
  const double rate = seconds > 0 ? double(done) / seconds : 0;
  const double left = rate > 0 ? double(total_ - std::min(done, total_)) / rate : 0;
  std::printf("\r\033[K  %zu/%zu %s  %.1f %s/s  ETA %.0fs", done, total_, unit_.c_str(), rate, unit_.c_str(), left);
  std::fflush(stdout);
  drawn_ = true;
}

void ProgressLine::finish() {
  if (!drawn_) return;
  std::printf("\r\033[K");
  std::fflush(stdout);
  drawn_ = false;
}

}  // namespace vae
