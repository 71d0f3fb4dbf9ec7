// Progressive training modes (FAST → BALANCED → QUALITY): per-epoch β and learning-rate factor, with optional plateau switching.
#pragma once

#include <array>
#include <limits>
#include <string>

namespace vae {

enum class Mode { fast = 0, balanced = 1, quality = 2 };
std::string mode_name(Mode m);

struct ModeSpec {
  int until = 0;            // the mode hands over at this epoch at the latest (ignored for QUALITY)
  double beta_start = 1.0;  // KL weight in ELBO units: β = 1 is the true ELBO
  double beta_end = 1.0;
  int ramp_epochs = 0;      // β goes linearly from beta_start to beta_end over this many epochs of the mode
  double lr_factor = 1.0;   // multiplies the base learning rate
};

struct PlateauSpec {
  int patience = 0;         // epochs without improvement before moving on; 0 disables plateau switching
  double min_delta = 0.0;   // improvement must exceed this fraction of the best validation loss
};

struct EpochPlan {
  Mode mode = Mode::fast;
  double beta = 1.0;
  double lr_factor = 1.0;
};

// The scheduler's whole state is plain data, so rank 0 can broadcast decisions and a checkpoint can store it.
struct SchedulerState {
  Mode mode = Mode::fast;
  int mode_start = 0;
  double best = std::numeric_limits<double>::infinity();
  int stale_epochs = 0;
  bool advance_next = false;
};

class ModeScheduler {
 public:
  ModeScheduler(const std::array<ModeSpec, 3>& modes, PlateauSpec plateau) : modes_(modes), plateau_(plateau) {}

  // The mode, β and learning-rate factor for this epoch; moves to later modes when their epoch has come.
  EpochPlan plan(int epoch);
  // Feeds the epoch's validation loss; a plateau makes the next epoch start the next mode.
  void observe(double validation_loss);

  const SchedulerState& state() const { return state_; }
  void restore(const SchedulerState& s) { state_ = s; }

 private:
  void enter(Mode m, int epoch);
  std::array<ModeSpec, 3> modes_;
  PlateauSpec plateau_;
  SchedulerState state_;
};

}  // namespace vae
