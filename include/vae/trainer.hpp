// The data-parallel training loop: each rank trains on its slice of every global batch, gradients are averaged by allreduce.
#pragma once

#include <array>
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
#include "vae/idx.hpp"
#include "vae/kernels.hpp"
#include "vae/metrics.hpp"
#include "vae/model.hpp"
#include "vae/scheduler.hpp"

namespace vae {

// What a rank needs to run: its communicator, thread count and kernels. Passed around instead of globals.
struct Context {
  const Communicator* comm = nullptr;
  int threads = 1;
  const Kernels<float>* kernels = nullptr;
};

struct EvalResult {
  double recon = 0, kl = 0;  // per image, nats
  double elbo() const { return recon + kl; }
};

class Trainer : private BackwardListener {
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

  std::span<const float> parameters() const { return params_; }
  const std::vector<double>& step_losses() const { return step_losses_; }  // global loss per image, β-weighted, per step
  const std::vector<EpochRecord>& history() const { return history_; }
  std::size_t pool_bytes() const { return pool_.capacity(); }
  const ParamLayout& layout() const { return layout_; }

  // −ELBO (β = 1) of a dataset, sharded across ranks, ε from a fixed seed so figures are comparable between runs.
  EvalResult evaluate(const Dataset& data);
  const Dataset& test_set() const { return test_; }

 private:
  // A contiguous range of the flat gradient buffer, synchronised by one non-blocking allreduce as soon as its last layer
  // (in backward order) has its gradients.
  struct GradBucket {
    std::size_t begin = 0, end = 0;  // floats
    std::size_t last_layer = 0;      // forward index of the layer that completes it
  };
  void layer_done(std::size_t layer, bool finite) override;
  void rows_ready(std::size_t layer) override;
  // Sharing the backward pass, every weight-gradient row mixes every rank's batch rows, so the rank that found a non-finite
  // gradient (found) need not be where it came from: the lowest rank whose own loss, activations or loss gradients are not
  // finite, else found. Collective over the node; only on a failed step.
  int source_rank(std::size_t n, bool loss_finite, int found);
  void progress();  // drives the buckets in flight; called between layers and from inside the kernels
  StepLoss train_step(std::span<const std::uint32_t> global_batch, double beta, double lr);
  void load_rows(const Dataset& data, std::size_t first, std::size_t n, std::span<const std::uint32_t> order, std::uint64_t eps_key,
                 std::uint64_t eps_base);
  void print_header() const;
  void save_checkpoint(int epochs_done, PhaseTimes& time, bool mid_epoch = false);
  // The 10 × 10 grid of generated digits (row d: digit d; column c: latent noise z_c, the same in every checkpoint),
  // decoder means as grey levels, [280 × 280]. Rank 0 only; uses the network's buffers.
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
  Arena pool_;
  std::span<float> params_, grads_, adam_m_, adam_v_;  // one flat layout, [padded_size] each
  std::span<std::uint32_t> order_;                     // [train size], epoch order_epoch_'s permutation
  int order_epoch_ = -1;
  std::array<std::uint8_t, kImagePixels> binarized_{};  // one image as dynamically binarised, on its way into the batch
  std::unique_ptr<Network<float>> net_;
  std::span<std::byte> workspace_;                     // the kernels' packing buffers and row sums
  bool node_shm_ = false;                              // one node, gradients summed through shared memory
  // Then params_ and the activations that weight gradients read are the node's one copy of each (the backward pass
  // shared: see RowShare), each rank forming and updating its rows of every layer (owned_) in its own grads_, adam_m_,
  // adam_v_; shared_ holds each rank's step record and the counter the ranks wait on inside the backward pass.
  std::unique_ptr<NodeSegments> shared_, shared_params_, shared_acts_;
  std::unique_ptr<NodeSegments> shared_moments_;       // [m | v], where a checkpoint's moments are gathered for rank 0
  std::span<std::byte> net_memory_;                    // this rank's own part of a shared network, in the pool
  std::size_t shared_act_bytes_ = 0;
  std::vector<std::pair<std::size_t, std::size_t>> owned_;  // [offset, count) of the flat buffer this rank updates
  std::uint64_t rows_posted_ = 0;                      // layers whose rows this rank has announced (rows_ready)
  double rows_wait_ = 0;                               // seconds this step spent waiting for other ranks' rows
  std::optional<Checkpoint> resume_;                   // what --resume found, until initialize() applies it
  int first_epoch_ = 0;
  std::vector<EpochRecord> past_metrics_;              // the epochs before a resumed checkpoint, for the next one
  bool stop_agreed_ = false;                           // some rank was asked to stop: checkpoint and exit after this step
  std::vector<GradBucket> buckets_;                    // in backward order, covering the gradient buffer
  std::vector<MPI_Request> requests_;                  // one per bucket
  std::size_t next_bucket_ = 0;
  bool grads_finite_ = true;                           // every layer gradient so far was finite on this rank

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
