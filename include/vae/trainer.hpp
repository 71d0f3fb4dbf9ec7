// The data-parallel training loop: each rank trains on its slice of every global batch; a sync strategy combines the gradients.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "vae/checkpoint.hpp"
#include "vae/communicator.hpp"
#include "vae/config.hpp"
#include "vae/dataset.hpp"
#include "vae/gradient_sync.hpp"
#include "vae/idx.hpp"
#include "vae/kernels.hpp"
#include "vae/metrics.hpp"
#include "vae/model.hpp"
#include "vae/scheduler.hpp"
#include "vae/watchdog.hpp"

namespace vae {

// What a rank needs to run: its communicator, thread count, kernels and watchdog. Passed around instead of globals.
struct Context {
  const Communicator* comm = nullptr;
  int threads = 1;
  const Kernels<float>* kernels = nullptr;
  Watchdog* watchdog = nullptr;
};

struct EvalResult {
  double recon = 0, kl = 0;  // per image, nats
  double elbo() const { return recon + kl; }
};

class Trainer {
 public:
  // Decompresses any .gz data file into its cache (see decompressed_cache). Call it on one rank per node, before the
  // Trainers of that node are made, so each node decompresses once. Local work; throws UsageError.
  static void prepare_data(const Config& config);

  // Loads data and sizes the memory pool. Local work only (no collectives), so a UsageError here can be agreed on first.
  Trainer(const Config& config, const Communicator& comm, int threads);
  ~Trainer();

  // Broadcasts the initial parameters and trains config.epochs epochs. Collective. Throws AgreedError(kExitPreempted)
  // after writing a checkpoint when a stop was requested (request_stop) on any rank.
  void run();

  // Asks every rank to stop at the next step boundary (async-signal-safe: a relaxed atomic store).
  static void request_stop();

  struct StepLoss {
    double recon = 0, kl = 0;  // per image of the global batch
  };
  // The pieces of run(), for benchmarks and tests. initialize() draws and broadcasts the parameters; step() trains on
  // global batch s of epoch e's permutation with the given β and learning rate. Both collective.
  void initialize();
  StepLoss step(int epoch, long s, double beta, double lr);
  long steps_per_epoch() const;

  std::span<const float> parameters() const { return sync_->parameters(); }
  // The weights' moving average (--ema-decay; else empty), this rank's: in a shared pass only its own rows are current.
  std::span<const float> ema() const { return ema_; }
  // bf16 products: the weights in their panels as the optimizer keeps them (WeightCopy; empty: none)
  const WeightCopy& weight_copy() const { return copy_; }
  const std::vector<double>& step_losses() const { return step_losses_; }  // global loss per image, β-weighted, per step
  const std::vector<EpochRecord>& history() const { return history_; }
  std::size_t pool_bytes() const { return pool_.capacity(); }
  const ParamLayout& layout() const { return layout_; }

  // −ELBO (β = 1) of a dataset, sharded across ranks, ε from a fixed seed so figures are comparable between runs.
  EvalResult evaluate(const Dataset& data);
  const Dataset& test_set() const { return test_; }

 private:
  StepLoss train_step(std::span<const std::uint32_t> global_batch, double beta, double lr);
  // Images [first, first + n) of `order` (or of the data set, without one) into the network's rows, each `copies` times.
  void load_rows(const Dataset& data, std::size_t first, std::size_t n, std::span<const std::uint32_t> order, std::uint64_t eps_key,
                 std::uint64_t eps_base, std::size_t copies = 1);
  void print_header() const;
  void save_checkpoint(int epochs_done, PhaseTimes& time, bool mid_epoch = false);
  // The classes × 10 grid of generated digits (row d: digit d; column c: latent noise z_c, the same in every checkpoint),
  // decoder means as grey levels, [28·classes × 280]. Rank 0 only; uses the network's buffers.
  std::vector<std::uint8_t> sample_grid();
  void show_progress(int epoch, long step_in_epoch, long steps, double loss, double rate, bool done) const;

  Config cfg_;
  const Communicator& comm_;
  int threads_;
  std::unique_ptr<Kernels<float>> kernels_;
  Context ctx_;

  IdxPair train_file_, test_file_;
  Dataset train_, val_, test_;

  ParamLayout layout_;
  std::size_t local_batch_;
  std::unique_ptr<Watchdog> watchdog_;
  std::unique_ptr<GradientSync> sync_;                 // how this run combines gradients, chosen at start-up
  Arena pool_;
  std::span<float> params_;                            // sync_'s parameters: this rank's own, or its node's one copy
  std::span<float> grads_, adam_m_, adam_v_;           // one flat layout, [padded_size] each, in this rank's pool
  std::span<float> ema_;                               // the weights' moving average, the same layout (--ema-decay; else empty)
  WeightCopy copy_;                                    // bf16 products: the weights in their panels, beside params_
  std::span<std::uint32_t> order_;                     // [train size], epoch order_epoch_'s permutation
  int order_epoch_ = -1;
  std::vector<const std::uint8_t*> sources_;           // [local batch × --iw-train], the data set's image rows of the batch being loaded
  Network<float>* net_ = nullptr;                      // sync_'s network
  std::span<std::byte> workspace_;                     // the kernels' packing buffers and row sums
  std::optional<Checkpoint> resume_;                   // what --resume found, until initialize() applies it
  int first_epoch_ = 0;
  std::vector<EpochRecord> past_metrics_;              // the epochs before a resumed checkpoint, for the next one
  bool stop_agreed_ = false;                           // some rank was asked to stop: checkpoint and exit after this step

  ModeScheduler scheduler_;
  long step_ = 0;     // global steps completed (applied or dropped)
  long updates_ = 0;  // Adam updates applied: the t of its bias correction
  long skipped_ = 0;  // steps dropped for a non-finite loss or gradient
  PhaseTimes phase_, profile_;  // this epoch's phase times on this rank; the run's, averaged over ranks
  std::vector<double> step_losses_;
  std::vector<EpochRecord> history_;
  LineFile metrics_, step_log_;
  bool progress_ = false;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace vae
