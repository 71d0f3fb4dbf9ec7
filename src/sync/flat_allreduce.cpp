// Every rank sums its whole gradient with every other's: bucketed MPI_Iallreduce, each bucket started as soon as the
// backward pass completes it and updated as soon as its sum arrives (--node-reduce mpi, and nodes of unequal rank counts).
#include <algorithm>
#include <chrono>
#include <vector>

#include "sync/strategies.hpp"

namespace vae {
namespace {

class FlatAllreduceSync final : public GradientSync {
 public:
  explicit FlatAllreduceSync(const SyncSetup& s) : GradientSync(s) {
    // Buckets of at least --bucket-mb, whole layers each, in the order the backward pass finishes them (the buffer is
    // laid out in that order).
    const auto& layers = layout().layers();
    const std::size_t bucket_floats = std::max<std::size_t>(1, std::size_t(cfg().bucket_mb * 1024 * 1024 / sizeof(float)));
    std::size_t begin = 0;
    for (std::size_t l = layers.size(); l-- > 0;) {
      const std::size_t end = l > 0 ? layers[l - 1].b_offset : layout().padded_size();
      if (end - begin >= bucket_floats || l == 0) {
        buckets_.push_back({begin, end, l});
        begin = end;
      }
    }
    requests_.assign(buckets_.size(), MPI_REQUEST_NULL);
  }

  std::string describe() const override {
    return "flat bucketed allreduce (" + std::to_string(buckets_.size()) + " buckets" + (cfg().wire_bf16 ? ", bf16 wire" : "") + ")";
  }

  void carve(Arena& pool) override {
    carve_own(pool);
    if (cfg().wire_bf16) wire_ = pool.take<std::uint16_t>(layout().padded_size());
  }
  void attach() override {}
  // Every rank writes the same values (drawn from the seed, or read from the checkpoint): nothing to send.
  void set_parameters(const std::function<void(std::span<float>)>& fill) override { fill(params_); }

  void start_step(long step) override {
    step_ = step;
    grads_finite_ = true;
    next_bucket_ = 0;
  }

  // The kernels checked the gradient as they wrote it: nothing is read again, and nothing after the allreduce starts (from
  // then on the bucket is MPI's until it completes).
  void layer_done(std::size_t layer, bool finite) override {
    grads_finite_ = grads_finite_ && finite;
    if (next_bucket_ == buckets_.size() || buckets_[next_bucket_].last_layer != layer) return;
    const std::size_t b = next_bucket_++;
    const Bucket& k = buckets_[b];
    beat("backward", "start of bucket", long(b));
    if (cfg().wire_bf16) {
      const std::span<std::uint16_t> wire = wire_.subspan(k.begin, k.end - k.begin);
      to_bf16(grads_.data() + k.begin, wire.data(), wire.size());
      requests_[b] = comm().start_allreduce_sum_bf16(wire);
    } else {
      requests_[b] = comm().start_allreduce_sum(grads_.subspan(k.begin, k.end - k.begin));
    }
    progress();
  }

  StepVerdict agree(const StepReport& mine) override {
    beat("agree", "the step's loss and NaN flag from every rank");
    StepVerdict v;
    const int bad = comm().allreduce_min(mine.finite && grads_finite_ ? comm().size() : comm().rank());
    if (bad < comm().size()) {
      beat("agree", "the sums in flight of a failed step");
      comm().wait_all(requests_);
      v.bad_rank = bad;
      return v;
    }
    double stats[3] = {mine.recon, mine.kl, mine.stop ? 1.0 : 0.0};
    comm().allreduce_sum(stats);
    return {stats[0], stats[1], stats[2] > 0, -1};
  }

  // Bucket by bucket in the order their sums were started: the first are updated while the last is still in flight.
  double update(const Apply& apply) override {
    double waited = 0;
    for (std::size_t b = 0; b < buckets_.size(); ++b) {
      beat("update", "the sum of bucket", long(b));
      const auto t0 = std::chrono::steady_clock::now();
      comm().wait_all(std::span<MPI_Request>(requests_).subspan(b, 1));
      waited += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const Bucket& k = buckets_[b];
      if (cfg().wire_bf16) from_bf16(wire_.data() + k.begin, grads_.data() + k.begin, k.end - k.begin);
      apply(k.begin, k.end - k.begin);
    }
    return waited;
  }

  void progress() override {
    if (next_bucket_ > 0) comm().test_all(std::span<MPI_Request>(requests_).first(next_bucket_));
  }
  bool needs_progress() const override { return true; }

 private:
  struct Bucket {
    std::size_t begin = 0, end = 0;  // floats
    std::size_t last_layer = 0;      // forward index of the layer that completes it
  };
  std::vector<Bucket> buckets_;  // in backward order, covering the gradient buffer
  std::vector<MPI_Request> requests_;
  std::size_t next_bucket_ = 0;
  std::span<std::uint16_t> wire_;  // --wire bf16: the gradient as sent, [padded_size]
};

}  // namespace

std::unique_ptr<GradientSync> make_flat_allreduce_sync(const SyncSetup& setup) { return std::make_unique<FlatAllreduceSync>(setup); }

}  // namespace vae
