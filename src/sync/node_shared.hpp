// The ranks of one node sharing one backward pass in MPI shared memory; the hierarchical strategy builds on it.
#pragma once

#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "sync/strategies.hpp"

namespace vae {

// The node keeps one copy of the parameters and, in shared memory, the activations that weight gradients read, for the
// node's rows of the global batch. Each rank computes forward, loss and input gradients on its own rows; before each
// layer's weight gradient the ranks wait for each other on counters in shared memory (no MPI call), and then rank r
// forms its rows of that weight gradient over all the node's rows: the gradient is formed once and never summed or copied
// within the node. Each rank updates its own rows, with gradient and moments in its own (huge-page) pool, then a fence
// shows the new parameters to every rank of the node.
class NodeSharedSync : public GradientSync {
 public:
  explicit NodeSharedSync(const SyncSetup& s);

  std::string describe() const override;
  std::size_t kernel_rows() const override { return setup_.local_batch * node_size_; }
  void carve(Arena& pool) override;
  void attach() override;
  std::size_t shared_bytes() const override;
  void set_parameters(const std::function<void(std::span<float>)>& fill) override;
  void start_step(long step) override;
  double take_backward_wait() override { return std::exchange(rows_wait_, 0.0); }
  StepVerdict agree(const StepReport& mine) override;
  double update(const Apply& apply) override;
  OptimizerState checkpoint_state(const OptimizerState& mine) override;
  void rows_ready(std::size_t layer) override;

 protected:
  const Communicator& node() const { return node_comm_ ? *node_comm_ : comm(); }
  // Hooks for a strategy that also combines nodes: the node's verdict summed over all nodes (bad_rank ≥ 0 if any failed),
  // the sums in flight completed, the lowest failing rank over all nodes (world size: none), and the wait for the sum of
  // owned range i before it is updated (seconds).
  virtual void combine(StepVerdict&) {}
  virtual void finish_in_flight() {}
  virtual int lowest(int rank) { return rank; }
  virtual double wait_range(std::size_t) { return 0; }

  std::optional<Communicator> node_comm_;  // set by a strategy spanning nodes; otherwise the job's communicator is the node
  int node_rank_ = 0, node_size_ = 1;
  // [offset, count) of the flat buffers this rank forms and updates, one per layer in the order the backward pass finishes
  // them (the first rank's with the layer's bias), and the layer each belongs to.
  std::vector<std::pair<std::size_t, std::size_t>> owned_;
  std::vector<std::size_t> owned_layer_;

 private:
  // Sharing the pass, every weight-gradient row mixes every rank's batch rows, so the rank that found a non-finite gradient
  // (found) need not be where it came from: the lowest rank of this node whose own loss, activations or loss gradients are
  // not finite, else found (-1: none). Collective over the node; only on a failed step.
  int trace(bool loss_finite, int found);

  std::unique_ptr<NodeSegments> records_;  // each rank's step record, and the counters the backward pass waits on
  std::unique_ptr<NodeSegments> acts_, params_window_;
  std::unique_ptr<NodeSegments> moments_;  // [m | v | ema], where a checkpoint's optimizer state is gathered for rank 0
  std::span<std::byte> net_memory_;        // this rank's own part of the shared network, in its pool
  std::size_t net_own_bytes_ = 0, act_bytes_ = 0;
  std::uint64_t rows_posted_ = 0;          // layers whose rows this rank has announced
  double rows_wait_ = 0;                   // seconds this step spent waiting for other ranks' rows
};

}  // namespace vae
