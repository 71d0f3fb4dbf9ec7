// The gradient-sync strategies' constructors, each defined in its own module; only make_gradient_sync calls them.
#pragma once

#include <memory>

#include "vae/gradient_sync.hpp"

namespace vae {

std::unique_ptr<GradientSync> make_single_rank_sync(const SyncSetup& setup);
std::unique_ptr<GradientSync> make_flat_allreduce_sync(const SyncSetup& setup);
std::unique_ptr<GradientSync> make_node_shared_sync(const SyncSetup& setup);
std::unique_ptr<GradientSync> make_hierarchical_sync(const SyncSetup& setup);

// bfloat16 of a float, rounded to nearest even (NaN stays NaN), and back: the wire format of --wire bf16.
void to_bf16(std::span<const float> from, std::uint16_t* to);
void from_bf16(const std::uint16_t* from, std::span<float> to);

}  // namespace vae
