// One rank alone: its own parameters and network, nothing to combine, one update pass over the whole buffer.
#include "sync/strategies.hpp"

namespace vae {
namespace {

class SingleRankSync final : public GradientSync {
 public:
  explicit SingleRankSync(const SyncSetup& s) : GradientSync(s) {}

  std::string describe() const override { return "one rank"; }

  void carve(Arena& pool) override { carve_own(pool); }
  void attach() override {}
  void set_parameters(const std::function<void(std::span<float>)>& fill) override { fill(params_); }
  void start_step(long step) override {
    step_ = step;
    grads_finite_ = true;
  }
  StepVerdict agree(const StepReport& mine) override {
    return {mine.recon, mine.kl, mine.stop, mine.finite && grads_finite_ ? -1 : 0};
  }
  double update(const Apply& apply) override {
    apply(0, params_.size());
    return 0;
  }
};

}  // namespace

std::unique_ptr<GradientSync> make_single_rank_sync(const SyncSetup& setup) { return std::make_unique<SingleRankSync>(setup); }

}  // namespace vae
