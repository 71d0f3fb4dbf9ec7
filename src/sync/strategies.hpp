// The gradient-sync strategies' constructors, each defined in its own module; only make_gradient_sync calls them.
#pragma once

#include <memory>

#include "vae/gradient_sync.hpp"

namespace vae {

std::unique_ptr<GradientSync> make_single_rank_sync(const SyncSetup& setup);
std::unique_ptr<GradientSync> make_flat_allreduce_sync(const SyncSetup& setup);
std::unique_ptr<GradientSync> make_node_shared_sync(const SyncSetup& setup);
std::unique_ptr<GradientSync> make_hierarchical_sync(const SyncSetup& setup);

}  // namespace vae
