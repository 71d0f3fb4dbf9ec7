// Per-target definitions the SIMD translation units share (vectors, micro-tile size, activations, partial loads, the
// fp32 epilogue), included inside each one's Highway target namespace.

// The native bf16, AMX and VNNI paths are compiled by GCC for AVX-512 only: they add a target to a region of Highway's
// with nested GCC pragmas, which clang (the fuzz build) does not combine; there every product takes the emulated path.
#undef VAE_NATIVE_X86
#if HWY_TARGET == HWY_AVX3 && !defined(__clang__)
#define VAE_NATIVE_X86 1
#else
#define VAE_NATIVE_X86 0
#endif

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

// Micro-tile: MR rows × two vectors of columns. AVX-512 has 32 vector registers, so 12 rows (24 accumulators) fit;
// the 16-register targets take 6 rows (12 accumulators, 2 B vectors and a broadcast).
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
constexpr std::size_t kMR = 8;
#else
constexpr std::size_t kMR = 6;
#endif

inline std::size_t lanes() { return hn::Lanes(DF()); }
inline std::size_t nr() { return 2 * lanes(); }

// e^x − 1 for x ≤ 0 (positive lanes are clamped to 0): 2^n·p(r) − 1 with x = n·ln 2 + r, |r| ≤ ½ ln 2, and p a degree-6
// Taylor polynomial (relative error < 2e-7 on that range). Absolute error ≤ 1.2e-7: what ELU needs, in half the
// instructions of a general expm1, which matters when a short-K product spends its time in the epilogue.
HWY_INLINE VF expm1_nonpositive(DF d, VF x) {
  const hn::RebindToSigned<DF> di;
  x = hn::Max(hn::Min(x, hn::Zero(d)), hn::Set(d, -87.0f));
  const VF n = hn::Round(hn::Mul(x, hn::Set(d, 1.44269504088896341f)));
  VF r = hn::NegMulAdd(n, hn::Set(d, 0.693145751953125f), x);
  r = hn::NegMulAdd(n, hn::Set(d, 1.42860682030941723212e-6f), r);
  VF p = hn::Set(d, 1.0f / 720.0f);
  p = hn::MulAdd(p, r, hn::Set(d, 1.0f / 120.0f));
  p = hn::MulAdd(p, r, hn::Set(d, 1.0f / 24.0f));
  p = hn::MulAdd(p, r, hn::Set(d, 1.0f / 6.0f));
  p = hn::MulAdd(p, r, hn::Set(d, 0.5f));
  p = hn::MulAdd(p, r, hn::Set(d, 1.0f));
  p = hn::MulAdd(p, r, hn::Set(d, 1.0f));
  const VF scale = hn::BitCast(d, hn::ShiftLeft<23>(hn::Add(hn::ConvertTo(di, n), hn::Set(di, 127))));
  return hn::MulSub(p, scale, hn::Set(d, 1.0f));
}

// A NaN input stays NaN (activate's rule): lanes are tested v ≤ 0, false for NaN, which then passes through as it is.
HWY_INLINE VF activate_v(DF d, VF v, Activation act) {
  const auto nonpositive = hn::Le(v, hn::Zero(d));
  switch (act) {
    case Activation::identity: return v;
    case Activation::elu: return hn::IfThenElse(nonpositive, expm1_nonpositive(d, v), v);
    case Activation::relu: return hn::IfThenZeroElse(nonpositive, v);
    case Activation::leaky_relu: return hn::IfThenElse(nonpositive, hn::Mul(v, hn::Set(d, float(kLeakySlope))), v);
    case Activation::tanh: return hn::Tanh(d, v);
  }
  return v;
}

// The activation's derivative as a function of its output y (see activation_slope).
HWY_INLINE VF slope_v(DF d, VF y, Activation act) {
  const VF one = hn::Set(d, 1.0f);
  const auto pos = hn::Gt(y, hn::Zero(d));
  switch (act) {
    case Activation::identity: return one;
    case Activation::elu: return hn::IfThenElse(pos, one, hn::Add(y, one));
    case Activation::relu: return hn::IfThenElseZero(pos, one);
    case Activation::leaky_relu: return hn::IfThenElse(pos, one, hn::Set(d, float(kLeakySlope)));
    case Activation::tanh: return hn::NegMulAdd(y, y, one);
  }
  return one;
}

// Loads `count` (≤ lanes) floats, zero-filling the rest, without touching memory past p + count.
HWY_INLINE VF load_partial(DF d, const float* p, std::size_t count) {
  if (count >= hn::Lanes(d)) return hn::LoadU(d, p);
  HWY_ALIGN float tmp[hn::MaxLanes(DF())] = {};
  std::memcpy(tmp, p, count * sizeof(float));
  return hn::Load(d, tmp);
}

HWY_INLINE void store_partial(DF d, VF v, float* p, std::size_t count) {
  if (count >= hn::Lanes(d)) return hn::StoreU(v, d, p);
  HWY_ALIGN float tmp[hn::MaxLanes(DF())];
  hn::Store(v, d, tmp);
  std::memcpy(p, tmp, count * sizeof(float));
}

// Applies the epilogue to one accumulator vector of C(i, j … j + count), stores it, and returns what it stored.
HWY_INLINE VF finish(DF d, VF acc, const GemmBlock& g, std::size_t i, std::size_t j, std::size_t count) {
  float* c = g.c + i * g.ldc + j;
  if (g.epi == Epilogue::bias_act) acc = activate_v(d, hn::Add(acc, load_partial(d, g.bias + j, count)), g.act);
  else if (g.epi == Epilogue::slope) acc = hn::Mul(acc, slope_v(d, load_partial(d, g.y + i * g.ldy + j, count), g.act));
  else if (g.epi == Epilogue::row_bias_act) acc = activate_v(d, hn::Add(acc, hn::Set(d, g.bias[i])), g.act);
  // The weight gradient is written once and read by the allreduce and Adam only after the whole backward pass: streaming
  // stores skip the read-for-ownership of lines that would be evicted before they are used.
  if (g.stream && g.epi == Epilogue::none && count == hn::Lanes(d) && reinterpret_cast<std::uintptr_t>(c) % (hn::Lanes(d) * sizeof(float)) == 0)
    hn::Stream(acc, d, c);
  else
    store_partial(d, acc, c, count);
  return acc;
}

#ifndef VAE_ALWAYS_INLINE
// The micro-kernel's lambdas must melt into it, or its accumulators leave the registers.
#define VAE_ALWAYS_INLINE __attribute__((always_inline))
#endif

#include "simd_tile-inl.h"

// The bf16 and INT8 products live in translation units of their own (simd_ops_bf16.cpp, simd_ops_int8.cpp), which
// compile side by side; each fills its fields of this target's Ops. add_bf16_products comes last: the faster variants
// it adds copy every other field.
void add_int8_products(Ops& o);
void add_bf16_products(Ops& o);
