// Across nodes: a shared backward pass in each node, and each rank's own rows summed with the ranks of its local index.
#include <chrono>
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
  explicit HierarchicalSync(const SyncSetup& s) : NodeSharedSync(s), requests_(owned_.size(), MPI_REQUEST_NULL) {}

  std::string describe() const override {
    return "hierarchical: one backward pass shared by each node's " + std::to_string(node_size_) + " ranks, each rank's rows summed over " +
           std::to_string(comm().nodes()) + " nodes" + (cfg().wire_bf16 ? " as bf16" : "");
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
    started_ = 0;
  }

  void layer_done(std::size_t layer, bool finite) override {
    GradientSync::layer_done(layer, finite);
    for (; started_ < owned_.size() && owned_layer_[started_] == layer; ++started_) {
      const auto [begin, count] = owned_[started_];
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

  double wait_range(std::size_t i) override {
    beat("update", "the cross-node sum of bucket", long(i));
    const auto t0 = std::chrono::steady_clock::now();
    cross_->wait_all(std::span<MPI_Request>(requests_).subspan(i, 1));
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (cfg().wire_bf16) {
      const auto [begin, count] = owned_[i];
      from_bf16(wire_.data() + begin, grads_.data() + begin, count);
    }
    return waited;
  }

 private:
  std::optional<Communicator> cross_;
  std::vector<MPI_Request> requests_;  // one per owned range
  std::size_t started_ = 0;            // owned ranges whose sums are in flight this step
  std::span<std::uint16_t> wire_;      // --wire bf16: this rank's rows as sent, [padded_size] (its rows used)
};

}  // namespace

std::unique_ptr<GradientSync> make_hierarchical_sync(const SyncSetup& setup) { return std::make_unique<HierarchicalSync>(setup); }

}  // namespace vae
