// Mode scheduling: which mode, β and learning-rate factor an epoch uses.
#include "vae/scheduler.hpp"

#include <algorithm>

namespace vae {

std::string mode_name(Mode m) {
  switch (m) {
    case Mode::fast: return "FAST";
    case Mode::balanced: return "BALANCED";
    case Mode::quality: return "QUALITY";
  }
  return "?";
}

void ModeScheduler::enter(Mode m, int epoch) {
  state_.mode = m;
  state_.mode_start = epoch;
  state_.best = std::numeric_limits<double>::infinity();
  state_.stale_epochs = 0;
  state_.advance_next = false;
}

EpochPlan ModeScheduler::plan(int epoch) {
  if (state_.advance_next && state_.mode != Mode::quality) enter(static_cast<Mode>(int(state_.mode) + 1), epoch);
  while (state_.mode != Mode::quality && epoch >= modes_[std::size_t(state_.mode)].until)
    enter(static_cast<Mode>(int(state_.mode) + 1), epoch);
  state_.advance_next = false;
  const ModeSpec& s = modes_[std::size_t(state_.mode)];
  const double progress = s.ramp_epochs > 0 ? std::min(1.0, double(epoch - state_.mode_start) / s.ramp_epochs) : 1.0;
  return {state_.mode, s.beta_start + (s.beta_end - s.beta_start) * progress, s.lr_factor};
}

void ModeScheduler::observe(double validation_loss) {
  if (plateau_.patience <= 0 || state_.mode == Mode::quality) return;
  if (validation_loss < state_.best * (1.0 - plateau_.min_delta)) {
    state_.best = validation_loss;
    state_.stale_epochs = 0;
  } else if (++state_.stale_epochs >= plateau_.patience) {
    state_.advance_next = true;
  }
}

}  // namespace vae
