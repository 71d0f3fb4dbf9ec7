// Adam with bias correction over the flat parameter buffer (one parallel pass in the kernel).
#pragma once

#include <cmath>
#include <span>

#include "vae/kernels.hpp"

namespace vae {

struct AdamParams {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  double weight_decay = 0;  // AdamW's decoupled decay: every parameter × (1 − lr·weight_decay) before the Adam step
  double ema_decay = 0;     // the weights' moving average d (Polyak averaging): ema ← d·ema + (1 − d)·p after the step
};

// Step t (1-based). Bias correction m̂ = m/(1−β1ᵗ), v̂ = v/(1−β2ᵗ) is folded into the step size and ε, which is exact:
// lr·m̂/(√v̂ + ε) = lr_t·m/(√v + ε_t) with lr_t = lr·√(1−β2ᵗ)/(1−β1ᵗ), ε_t = ε·√(1−β2ᵗ).
// Weight decay scales p by 1 − lr·λ (Loshchilov & Hutter's AdamW, as torch.optim.AdamW: the scheduled rate, no bias
// correction), so λ = 0 leaves every update bit for bit as plain Adam's. With a weight copy, p is a range of
// copy->params and the pass also refreshes the bf16 form of the weights in it. With `ema` (the same range of the
// weights' moving average), the average then follows the weights just written, while they are still in cache.
template <class T>
void adam_step(const Kernels<T>& k, std::span<T> p, std::span<const T> g, std::span<T> m, std::span<T> v, long t, const AdamParams& a,
               const WeightCopy* copy = nullptr, std::span<T> ema = {}) {
  const double c1 = 1.0 - std::pow(a.beta1, double(t)), c2 = 1.0 - std::pow(a.beta2, double(t));
  k.adam_update(p.data(), g.data(), m.data(), v.data(), p.size(), T(a.lr * std::sqrt(c2) / c1), T(a.beta1), T(a.beta2),
                T(a.eps * std::sqrt(c2)), T(1.0 - a.lr * a.weight_decay), copy);
  if (!ema.empty()) k.ema_update(ema.data(), p.data(), p.size(), T(a.ema_decay));
}

}  // namespace vae
