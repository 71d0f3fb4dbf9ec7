// How the ranks combine the gradient of a global batch: one small interface, one module per deployment, chosen at start-up.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <type_traits>

#include "vae/aligned.hpp"
#include "vae/communicator.hpp"
#include "vae/config.hpp"
#include "vae/kernels.hpp"
#include "vae/model.hpp"
#include "vae/watchdog.hpp"

namespace vae {

// What a rank reports of its part of a step once its backward pass is done.
struct StepReport {
  double recon = 0, kl = 0;  // Σ over this rank's rows
  bool finite = true;        // its loss is finite (the strategy adds what it saw of the gradients)
  bool stop = false;         // a stop was requested on this rank (a signal)
};

// What every rank agrees on for the step: the losses of the global batch, a stop request, and where a NaN came from.
struct StepVerdict {
  double recon = 0, kl = 0;  // Σ over the global batch
  bool stop = false;
  int bad_rank = -1;         // the lowest rank whose loss or gradient was not finite; -1: every rank finite
};

// Everything a strategy is built from. The strategy keeps pointers: all of these outlive it.
struct SyncSetup {
  const Config* config = nullptr;
  const Communicator* comm = nullptr;
  const ParamLayout* layout = nullptr;
  Kernels<float>* kernels = nullptr;
  Watchdog* watchdog = nullptr;
  std::size_t local_batch = 0;  // this rank's rows of every global batch (its images × --iw-train)
};

// A step through a strategy: start_step(), then the backward pass with the strategy as its listener (it starts sums as
// layers finish and waits for the rows a shared pass reads), agree(), and, unless a rank failed, update(). Strategies are
// the only code besides the communicator that calls MPI.
class GradientSync : public BackwardListener {
 public:
  // Called with (begin, count) of the flat buffers once the gradient of those floats is complete on this rank. A reference
  // to the caller's closure, not a copy: the step allocates nothing.
  class Apply {
   public:
    template <class F>
    Apply(F&& f) : closure_(&f), call_([](void* c, std::size_t b, std::size_t n) { (*static_cast<std::remove_reference_t<F>*>(c))(b, n); }) {}
    void operator()(std::size_t begin, std::size_t count) const { call_(closure_, begin, count); }

   private:
    void* closure_;
    void (*call_)(void*, std::size_t, std::size_t);
  };

  virtual ~GradientSync() = default;
  GradientSync(const GradientSync&) = delete;
  GradientSync& operator=(const GradientSync&) = delete;

  // One line for the run's header: the strategy and the layout it serves.
  virtual std::string describe() const = 0;
  // Rows the weight-gradient products run over (this rank's batch, or its node's when the pass is shared).
  virtual std::size_t kernel_rows() const { return setup_.local_batch; }
  // Takes from the rank's pool what the strategy keeps there; called twice, to measure and then for real.
  virtual void carve(Arena& pool) = 0;
  // Collective, once: shared memory and the network. parameters() and network() are valid from here.
  virtual void attach() = 0;
  // Bytes of node shared memory this rank's node holds for the strategy (0: none).
  virtual std::size_t shared_bytes() const { return 0; }

  // The parameters this rank trains with: its own copy, or its node's one copy.
  std::span<float> parameters() const { return params_; }
  // The words of their bf16 weight copy (weight_copy_words; empty when the kernels keep none), beside them: the rank's
  // own, or the node's one, which each rank's update writes its rows of.
  std::span<std::uint32_t> weight_copy() const { return copy_words_; }
  Network<float>& network() const { return *net_; }
  // This rank's gradient buffer, in its pool (the trainer's, laid out as the parameters), before attach().
  void set_gradients(std::span<float> grads) { grads_ = grads; }

  // Writes the parameters with fill(params) where this rank writes its copy (and, there, the bf16 copy beside them),
  // then makes them every rank's. Collective.
  virtual void set_parameters(const std::function<void(std::span<float>)>& fill) = 0;

  virtual void start_step(long step) = 0;
  // Seconds of the backward pass spent waiting for other ranks (reset by the call): synchronisation, not backward work.
  virtual double take_backward_wait() { return 0; }
  // Collective: every rank learns the global losses and whether any rank failed (then the strategy has waited for its sums
  // in flight, nothing was updated, and bad_rank names the rank the NaN came from).
  virtual StepVerdict agree(const StepReport& mine) = 0;
  // Applies the update to each range this rank owns as soon as its gradient sum is complete, then makes the parameters
  // every rank's again. Returns the seconds spent waiting for sums (not updating).
  virtual double update(const Apply& apply) = 0;
  // The optimizer's state of every parameter for rank 0's checkpoint: given this rank's (which it holds whole, or only
  // its rows of), the arrays rank 0 writes. Collective.
  struct OptimizerState {
    std::span<const float> m, v;  // Adam's moments
    std::span<const float> ema;   // the weights' moving average (empty: none kept)
  };
  virtual OptimizerState checkpoint_state(const OptimizerState& mine) { return mine; }
  // Drives sums in flight; the kernels call it between their tasks.
  virtual void progress() {}
  virtual bool needs_progress() const { return false; }

  // BackwardListener: the default strategy has nothing to do when a layer finishes, and never shares a pass.
  void layer_done(std::size_t layer, bool finite) override;
  void rows_ready(std::size_t) override {}

 protected:
  explicit GradientSync(const SyncSetup& setup) : setup_(setup) {}
  const Config& cfg() const { return *setup_.config; }
  const Communicator& comm() const { return *setup_.comm; }
  const ParamLayout& layout() const { return *setup_.layout; }
  // A copy of the parameters and a network of its own, in the rank's pool (every strategy but the shared pass).
  void carve_own(Arena& pool) {
    params_ = pool.take<float>(layout().padded_size());
    copy_words_ = pool.take<std::uint32_t>(weight_copy_words(layout(), *setup_.kernels));
    net_ = std::make_unique<Network<float>>(cfg().arch, layout(), setup_.local_batch, pool, RowShare{}, shadowed_kernels(), cfg().dropout > 0);
  }
  // The kernels whose bf16 products the network keeps shadows for: none with importance samples, whose loss reweights
  // the loss gradient's rows after the kernel wrote their bf16 forms.
  const Kernels<float>* shadowed_kernels() const { return cfg().iw_train > 1 ? nullptr : setup_.kernels; }
  void beat(const char* phase, const char* what = "", long detail = -1) const {
    if (setup_.watchdog) setup_.watchdog->beat(step_, phase, what, detail);
  }

  SyncSetup setup_;
  std::span<float> params_;
  std::span<std::uint32_t> copy_words_;
  std::span<float> grads_;  // this rank's gradient buffer (set by the trainer: set_gradients)
  std::unique_ptr<Network<float>> net_;
  long step_ = 0;
  bool grads_finite_ = true;  // every layer gradient this rank formed this step was finite
};

// The strategy for this run: one rank; one node sharing a backward pass; a flat bucketed allreduce (--node-reduce mpi, or
// nodes with unequal rank counts); or hierarchical (a shared pass per node, each rank's rows allreduced across nodes).
// Local work: no collective.
std::unique_ptr<GradientSync> make_gradient_sync(const SyncSetup& setup);

}  // namespace vae
