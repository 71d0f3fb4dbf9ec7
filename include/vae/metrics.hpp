// Per-epoch records: the console line and the JSON-lines metrics file, both written by rank 0.
#pragma once

#include <cstdio>
#include <string>
#include <utility>

#include "vae/scheduler.hpp"

namespace vae {

// Seconds spent in each phase of the training steps of one epoch, averaged over ranks. allreduce counts only the time a
// rank waits for collectives to finish, not the time they are in flight behind computation.
struct PhaseTimes {
  double data = 0, forward = 0, backward = 0, allreduce = 0, update = 0, checkpoint = 0;
  PhaseTimes& operator+=(const PhaseTimes& o) {
    data += o.data, forward += o.forward, backward += o.backward, allreduce += o.allreduce, update += o.update,
        checkpoint += o.checkpoint;
    return *this;
  }
  double total() const { return data + forward + backward + allreduce + update + checkpoint; }
};

struct EpochRecord {
  int epoch = 0;             // 1-based: epochs completed
  long step = 0;             // global steps completed
  Mode mode = Mode::fast;
  double beta = 0, lr = 0;
  double train_recon = 0, train_kl = 0;  // per image, nats, averaged over the epoch
  double test_elbo = 0, test_recon = 0, test_kl = 0;  // −ELBO per test image (β = 1)
  double val_elbo = -1;      // −ELBO per validation image, or −1 without a validation set
  double samples_per_s = 0;  // training samples per second (whole step)
  double epoch_seconds = 0, elapsed_seconds = 0;
  double peak_rss_bytes = 0;  // the largest peak resident set of any rank so far
  long skipped_steps = 0;     // steps whose update was dropped for a non-finite loss or gradient (--nan-policy skip)
  PhaseTimes time;
};

// The --profile summary: each phase's total over the run and its share of the step.
std::string format_profile(const PhaseTimes& total, long steps, int global_batch);

std::string format_console(const EpochRecord& r, int total_epochs);
std::string format_json(const EpochRecord& r);

// A line-buffered append-only text file; each line is flushed so a killed job keeps every finished epoch.
class LineFile {
 public:
  LineFile() = default;
  LineFile(const std::string& path, bool append);
  LineFile(const LineFile&) = delete;
  LineFile& operator=(const LineFile&) = delete;
  LineFile(LineFile&& o) noexcept : f_(std::exchange(o.f_, nullptr)), path_(std::move(o.path_)) {}
  LineFile& operator=(LineFile&& o) noexcept {
    std::swap(f_, o.f_);
    std::swap(path_, o.path_);
    return *this;
  }
  ~LineFile();
  bool is_open() const { return f_ != nullptr; }
  void write(const std::string& line);

 private:
  std::FILE* f_ = nullptr;
  std::string path_;
};

}  // namespace vae
