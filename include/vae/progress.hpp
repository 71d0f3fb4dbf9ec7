// A live progress line for a terminal: count done, rate and time left, redrawn in place at most twice a second.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>

namespace vae {

class ProgressLine {
 public:
  // Nothing is drawn unless `on` (see resolve_progress). unit names what is counted, e.g. "images".
  ProgressLine(bool on, std::size_t total, std::string unit);
  ProgressLine(const ProgressLine&) = delete;
  ProgressLine& operator=(const ProgressLine&) = delete;
  ~ProgressLine();

  void update(std::size_t done);
  void finish();  // clears the line, so what is printed next starts at the margin

 private:
  bool on_;
  std::size_t total_;
  std::string unit_;
  std::chrono::steady_clock::time_point start_, last_;
  bool drawn_ = false;
};

}  // namespace vae
