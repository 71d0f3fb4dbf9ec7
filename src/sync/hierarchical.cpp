// Across nodes: a shared backward pass in each node, and each rank's own rows summed with the ranks of its local index.
#include <algorithm>
#include <chrono>
#include <utility>
#include <vector>

#include "sync/node_shared.hpp"

namespace vae {
namespace {

// Each local rank already owns its rows of every weight gradient (and the first its biases), formed over its node's rows
// of the global batch. It allreduces only those rows, over the cross communicator of the ranks with its local index (one
// per node), each layer's rows started as soon as the backward pass forms them and driven while the kernels compute; the
// update of a range waits only for its own sum. So each node sends its gradient across the network once, split over its
// ranks (Horovod's hierarchical allreduce, without the reduce and gather inside the node: the shared pass has no copies
// to reduce).
class HierarchicalSync final : public NodeSharedSync {
 public:
  explicit HierarchicalSync(const SyncSetup& s) : NodeSharedSync(s) {
    // Buckets of at least --bucket-mb where this rank's ranges of consecutive layers touch (with one rank per node they
    // all do: its rows are the whole buffer), else one per layer: every sum costs a latency per node in the ring.
    const std::size_t bucket_floats = std::max<std::size_t>(1, std::size_t(cfg().bucket_mb * 1024 * 1024 / sizeof(float)));
    for (std::size_t i = 0; i < owned_.size(); ++i) {
      const auto [begin, count] = owned_[i];
      if (!buckets_.empty() && buckets_.back().end == begin && buckets_.back().end - buckets_.back().begin < bucket_floats) {
        buckets_.back().end = begin + count;
        buckets_.back().last_layer = owned_layer_[i];
      } else {
        buckets_.push_back({begin, begin + count, owned_layer_[i]});
      }
    }
    requests_.assign(buckets_.size(), MPI_REQUEST_NULL);
  }

  std::string describe() const override {
    const std::string within = node_size_ == 1 ? "one rank per node, its gradient"
                                               : "one backward pass shared by each node's " + std::to_string(node_size_) +
                                                     " ranks, each rank's rows";
    return "hierarchical: " + within + " summed over " + std::to_string(comm().nodes()) + " nodes" + (cfg().wire_bf16 ? " as bf16" : "") +
           " in " + std::to_string(buckets_.size()) + " buckets";
  }

  void carve(Arena& pool) override {
    NodeSharedSync::carve(pool);
    if (cfg().wire_bf16) wire_ = pool.take<std::uint16_t>(layout().padded_size());
  }

  void attach() override {
    node_comm_.emplace(comm().node());
    cross_.emplace(comm().cross());
    NodeSharedSync::attach();
  }

  void start_step(long step) override {
    NodeSharedSync::start_step(step);
    started_ = waited_ = 0;
  }

  void layer_done(std::size_t layer, bool finite) override {
    GradientSync::layer_done(layer, finite);
    for (; started_ < buckets_.size() && buckets_[started_].last_layer == layer; ++started_) {
      const std::size_t begin = buckets_[started_].begin, count = buckets_[started_].end - begin;
      beat("backward", "start of the cross-node sum of bucket", long(started_));
      if (cfg().wire_bf16) {
        const std::span<std::uint16_t> wire = wire_.subspan(begin, count);
        to_bf16(grads_.data() + begin, wire.data(), count);
        requests_[started_] = cross_->start_allreduce_sum_bf16(wire);
      } else {
        requests_[started_] = cross_->start_allreduce_sum(grads_.subspan(begin, count));
      }
    }
    progress();
  }

  void progress() override {
    if (started_ > 0) cross_->test_all(std::span<MPI_Request>(requests_).first(started_));
  }
  bool needs_progress() const override { return true; }

 protected:
  void combine(StepVerdict& v) override {
    beat("agree", "the step's losses and NaN flag from the other nodes");
    double stats[4] = {v.recon, v.kl, v.stop ? 1.0 : 0.0, v.bad_rank >= 0 ? 1.0 : 0.0};
    cross_->allreduce_sum(stats);
    v = {stats[0], stats[1], stats[2] > 0, stats[3] > 0 ? 0 : -1};
  }

  void finish_in_flight() override { cross_->wait_all(requests_); }

  int lowest(int rank) override {
    beat("agree", "the source of a NaN from the other nodes");
    return cross_->allreduce_min(rank);
  }

  // Range i is the first of its bucket: wait for the bucket's sum (the later ranges of a bucket find it complete).
  double wait_range(std::size_t i) override {
    const std::size_t begin = owned_[i].first;
    while (waited_ < buckets_.size() && buckets_[waited_].begin <= begin) {
      beat("update", "the cross-node sum of bucket", long(waited_));
      const auto t0 = std::chrono::steady_clock::now();
      cross_->wait_all(std::span<MPI_Request>(requests_).subspan(waited_, 1));
      const Bucket& b = buckets_[waited_++];
      if (cfg().wire_bf16) from_bf16(wire_.data() + b.begin, grads_.data() + b.begin, b.end - b.begin);
      seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    return std::exchange(seconds_, 0.0);
  }

 private:
  struct Bucket {
    std::size_t begin = 0, end = 0;  // floats of the flat buffers, [begin, end): whole owned ranges
    std::size_t last_layer = 0;      // forward index of the layer that completes it
  };
  std::optional<Communicator> cross_;
  std::vector<Bucket> buckets_;        // in the order the backward pass completes them
  std::vector<MPI_Request> requests_;  // one per bucket
  std::size_t started_ = 0;            // buckets whose sums are in flight this step
  std::size_t waited_ = 0;             // buckets whose sums update() has completed
  double seconds_ = 0;
  std::span<std::uint16_t> wire_;      // --wire bf16: this rank's rows as sent, [padded_size] (its rows used)
};

}  // namespace

std::unique_ptr<GradientSync> make_hierarchical_sync(const SyncSetup& setup) { return std::make_unique<HierarchicalSync>(setup); }

}  // namespace vae
