// The choice of gradient-sync strategy, made once at start-up from the run's layout, and the listener's defaults.
#include "vae/gradient_sync.hpp"

#include "sync/strategies.hpp"

namespace vae {

void GradientSync::layer_done(std::size_t, bool finite) { grads_finite_ = grads_finite_ && finite; }

std::unique_ptr<GradientSync> make_gradient_sync(const SyncSetup& setup) {
  const Communicator& comm = *setup.comm;
  if (comm.size() == 1) return make_single_rank_sync(setup);
  if (!setup.config->node_shm) return make_flat_allreduce_sync(setup);
  if (comm.nodes() == 1) return make_node_shared_sync(setup);
  // Across nodes each local rank sums its rows with the ranks of the same local index; with unequal nodes those rows
  // differ from node to node, so such a job takes the flat path (docs/cluster.md).
  if (!comm.uniform_nodes()) return make_flat_allreduce_sync(setup);
  return make_hierarchical_sync(setup);
}

}  // namespace vae
