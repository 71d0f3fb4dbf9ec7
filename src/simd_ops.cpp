// SIMD kernels for every instruction set Highway targets (AVX-512, AVX2/FMA, SSE4, NEON, SVE, portable), chosen at run time; one static target for WebAssembly.
#include "simd_ops.hpp"

#include <algorithm>
#include <cmath>
#include <array>
#include <cstring>
#include <limits>
#include <utility>

#include "vae/bf16.hpp"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "simd_ops.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>
#include <hwy/contrib/math/math-inl.h>

#if HWY_ARCH_X86
#include <cpuid.h>
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

// The native bf16, AMX and VNNI paths are compiled by GCC for AVX-512 only: they add a target to a region of Highway's
// with nested GCC pragmas, which clang (the fuzz build) does not combine; there every product takes the emulated path.
#undef VAE_NATIVE_X86
#if HWY_TARGET == HWY_AVX3 && !defined(__clang__)
#define VAE_NATIVE_X86 1
#else
#define VAE_NATIVE_X86 0
#endif

HWY_BEFORE_NAMESPACE();
namespace vae::simd {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

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

HWY_INLINE VF activate_v(DF d, VF v, Activation act) {
  switch (act) {
    case Activation::identity: return v;
    case Activation::elu: return hn::IfThenElse(hn::Gt(v, hn::Zero(d)), v, expm1_nonpositive(d, v));
    case Activation::relu: return hn::Max(v, hn::Zero(d));
    case Activation::leaky_relu: return hn::IfThenElse(hn::Gt(v, hn::Zero(d)), v, hn::Mul(v, hn::Set(d, float(kLeakySlope))));
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

// Applies the epilogue to one accumulator vector of C(i, j … j + count) and stores it.
HWY_INLINE void finish(DF d, VF acc, const GemmBlock& g, std::size_t i, std::size_t j, std::size_t count) {
  if (g.epi == Epilogue::bias_act) acc = activate_v(d, hn::Add(acc, load_partial(d, g.bias + j, count)), g.act);
  else if (g.epi == Epilogue::slope) acc = hn::Mul(acc, slope_v(d, load_partial(d, g.y + i * g.ldy + j, count), g.act));
  float* c = g.c + i * g.ldc + j;
  // The weight gradient is written once and read by the allreduce and Adam only after the whole backward pass: streaming
  // stores skip the read-for-ownership of lines that would be evicted before they are used.
  if (g.epi == Epilogue::none && count == hn::Lanes(d) && reinterpret_cast<std::uintptr_t>(c) % (hn::Lanes(d) * sizeof(float)) == 0)
    hn::Stream(acc, d, c);
  else
    store_partial(d, acc, c, count);
}

#ifndef VAE_ALWAYS_INLINE
// The micro-kernel's lambdas must melt into it, or its accumulators leave the registers.
#define VAE_ALWAYS_INLINE __attribute__((always_inline))
#endif

#include "simd_tile-inl.h"

// `tiles` C tiles [R × NR] down from (i, j): C(i + r, j … j + NR) = Σ_p A(i + r, p)·B(p, j … j + NR), B read as two
// vectors per p from b + p·ldb (the matrix itself, or a packed panel with ldb = NR). A element (i + r, p) is one broadcast
// from memory: RowsA: a[r·lda + p] (A row-major); otherwise a[p·lda + r] (A transposed, or a packed panel). The next
// tile's A starts a_step further on. Looping over tiles in here keeps the call and setup off the short-K products.
template <std::size_t R, bool RowsA>
HWY_NOINLINE void micro_tiles(const float* HWY_RESTRICT a, std::size_t lda, std::size_t a_step, std::size_t tiles,
                              const float* HWY_RESTRICT b, std::size_t ldb, std::size_t k, const GemmBlock& g, std::size_t i,
                              std::size_t j, std::size_t cols) {
  const DF d;
  const std::size_t N = hn::Lanes(d);
  const std::size_t n0 = std::min(cols, N), n1 = cols > N ? cols - N : 0;
  VF check = hn::Zero(d);  // stays 0 while every value written is finite: x − x is NaN for NaN and ±Inf
  for (std::size_t t = 0; t < tiles; ++t, a += a_step, i += R) {
    VF a0 = hn::Zero(d), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0,
       a12 = a0, a13 = a0, a14 = a0, a15 = a0;
    auto rows = [&](auto&& f) VAE_ALWAYS_INLINE { each_row<R>(f, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15); };
    const float* ap = a;
    const float* bp = b;
    for (std::size_t p = 0; p < k; ++p) {
      const VF b0 = hn::LoadU(d, bp), b1 = hn::LoadU(d, bp + N);
      rows([&](std::size_t r, VF& c0, VF& c1) VAE_ALWAYS_INLINE {
        const VF ar = hn::Set(d, RowsA ? ap[r * lda + p] : ap[r]);
        c0 = hn::MulAdd(ar, b0, c0);
        c1 = hn::MulAdd(ar, b1, c1);
      });
      if (!RowsA) ap += lda;
      bp += ldb;
    }
    if (g.nonfinite) rows([&](std::size_t, VF& c0, VF& c1) VAE_ALWAYS_INLINE { check = hn::Add(check, hn::Add(hn::Sub(c0, c0), hn::Sub(c1, c1))); });
    rows([&](std::size_t r, VF& c0, VF& c1) VAE_ALWAYS_INLINE {
      finish(d, c0, g, i + r, j, n0);
      if (n1) finish(d, c1, g, i + r, j + N, n1);
    });
  }
  if (g.nonfinite && !hn::AllTrue(d, hn::Eq(check, hn::Zero(d)))) *g.nonfinite = true;
}

using TileFn = void (*)(const float*, std::size_t, std::size_t, std::size_t, const float*, std::size_t, std::size_t, const GemmBlock&,
                        std::size_t, std::size_t, std::size_t);

template <bool RowsA, std::size_t... Rs>
constexpr std::array<TileFn, sizeof...(Rs)> make_tile_table(std::index_sequence<Rs...>) {
  return {&micro_tiles<Rs + 1, RowsA>...};
}

// B(p, j + c) for one NR-column panel into dst [k × NR], zero-padded past `cols`: from B row-major (partial panels) or
// from the rows of the matrix B is the transpose of (B(p, j) = b[j·ldb + p], dX = dY·Wᵀ).
void pack_panel(const GemmBlock& g, std::size_t j, std::size_t cols, float* HWY_RESTRICT dst) {
  const std::size_t NR = nr(), k = g.k;
  if (!g.b_trans) {
    for (std::size_t p = 0; p < k; ++p)
      for (std::size_t c = 0; c < NR; ++c) dst[p * NR + c] = c < cols ? g.b[p * g.ldb + j + c] : 0.0f;
    return;
  }
  std::size_t c0 = 0;
#if HWY_ARCH_X86 && (HWY_TARGET == HWY_AVX2 || HWY_TARGET <= HWY_AVX3)
  // Eight source rows at a time, transposed in registers eight columns at a time.
  for (; c0 + 8 <= cols; c0 += 8) {
    const float* src = g.b + (j + c0) * g.ldb;
    std::size_t p = 0;
    for (; p + 8 <= k; p += 8) {
      __m256 r[8], t[8], u[8];
      for (std::size_t q = 0; q < 8; ++q) r[q] = _mm256_loadu_ps(src + q * g.ldb + p);
      for (std::size_t q = 0; q < 8; q += 2) {
        t[q] = _mm256_unpacklo_ps(r[q], r[q + 1]);
        t[q + 1] = _mm256_unpackhi_ps(r[q], r[q + 1]);
      }
      for (std::size_t q = 0; q < 8; q += 4) {
        u[q] = _mm256_shuffle_ps(t[q], t[q + 2], 0x44);
        u[q + 1] = _mm256_shuffle_ps(t[q], t[q + 2], 0xEE);
        u[q + 2] = _mm256_shuffle_ps(t[q + 1], t[q + 3], 0x44);
        u[q + 3] = _mm256_shuffle_ps(t[q + 1], t[q + 3], 0xEE);
      }
      for (std::size_t q = 0; q < 4; ++q) {
        _mm256_storeu_ps(dst + (p + q) * NR + c0, _mm256_permute2f128_ps(u[q], u[q + 4], 0x20));
        _mm256_storeu_ps(dst + (p + q + 4) * NR + c0, _mm256_permute2f128_ps(u[q], u[q + 4], 0x31));
      }
    }
    for (; p < k; ++p)
      for (std::size_t c = 0; c < 8; ++c) dst[p * NR + c0 + c] = src[c * g.ldb + p];
  }
#endif
  for (std::size_t c = c0; c < NR; ++c) {
    const float* src = g.b + (j + c) * g.ldb;
    for (std::size_t p = 0; p < k; ++p) dst[p * NR + c] = c < cols ? src[p] : 0.0f;
  }
}

void gemm_block(const GemmBlock& g) {
  static constexpr auto rows_tiles = make_tile_table<true>(std::make_index_sequence<kMR>());
  static constexpr auto cols_tiles = make_tile_table<false>(std::make_index_sequence<kMR>());
  const std::size_t NR = nr();
  const bool packed = g.layout == ALayout::panels;
  for (std::size_t j = g.j0; j < g.j1; j += NR) {
    const std::size_t cols = std::min(NR, g.j1 - j);
    // Full panels of a row-major B are read in place; transposed or partial ones are packed first.
    const float* b = g.b + j;
    std::size_t ldb = g.ldb;
    if (g.b_trans || cols < NR) {
      pack_panel(g, j, cols, g.bpack);
      b = g.bpack;
      ldb = NR;
    }
    // Runs of whole kMR-row tiles in one call, then what is left (a packed panel's tiles must not straddle panels).
    for (std::size_t i = g.i0; i < g.i1;) {
      const std::size_t offset = packed ? i % kMR : 0;
      const std::size_t rows = offset ? std::min(kMR - offset, g.i1 - i) : std::min(kMR, g.i1 - i);
      const std::size_t tiles = rows == kMR ? (g.i1 - i) / kMR : 1;
      switch (g.layout) {
        case ALayout::rows: rows_tiles[rows - 1](g.a + i * g.lda, g.lda, rows * g.lda, tiles, b, ldb, g.k, g, i, j, cols); break;
        case ALayout::cols: cols_tiles[rows - 1](g.a + i, g.lda, rows, tiles, b, ldb, g.k, g, i, j, cols); break;
        case ALayout::panels:
          cols_tiles[rows - 1](g.a + (i / kMR) * g.k * kMR + offset, kMR, g.k * kMR, tiles, b, ldb, g.k, g, i, j, cols);
          break;
      }
      i += rows * tiles;
    }
  }
}

void pack_a(const PackA& s) {
  for (std::size_t q = s.panel_begin; q < s.panel_end; ++q) {
    float* HWY_RESTRICT dst = s.dst + q * s.k * kMR;
    const std::size_t i0 = q * kMR, rows = std::min(kMR, s.rows - i0);
    const ImageBatch& x = *s.image;
    if (s.trans) {
      for (std::size_t p = 0; p < s.k; ++p)
        for (std::size_t r = 0; r < kMR; ++r) {
          const std::size_t i = i0 + r;
          dst[p * kMR + r] = r >= rows ? 0.0f : i < x.width ? float(x.pixels[p * x.ld + i]) * (1.0f / 255.0f) : x.at<float>(p, i);
        }
      continue;
    }
    for (std::size_t r = 0; r < kMR; ++r) {
      if (r >= rows) {
        for (std::size_t p = 0; p < s.k; ++p) dst[p * kMR + r] = 0.0f;
        continue;
      }
      const std::uint8_t* px = x.pixels + (i0 + r) * x.ld;
      const std::size_t w = std::min(x.width, s.k);
      for (std::size_t p = 0; p < w; ++p) dst[p * kMR + r] = float(px[p]) * (1.0f / 255.0f);
      for (std::size_t p = w; p < s.k; ++p) dst[p * kMR + r] = x.at<float>(i0 + r, p);
    }
  }
}

void col_sums(const float* y, std::size_t ldy, std::size_t rows, std::size_t j0, std::size_t j1, float* out) {
  const DF d;
  const std::size_t N = hn::Lanes(d);
  for (std::size_t j = j0; j < j1; j += N) {
    const std::size_t cnt = std::min(N, j1 - j);
    VF s = hn::Zero(d);
    for (std::size_t r = 0; r < rows; ++r) s = hn::Add(s, load_partial(d, y + r * ldy + j, cnt));
    store_partial(d, s, out + j, cnt);
  }
}

void bernoulli_rows(const float* logits, const ImageBatch& x, float* dlogits, std::size_t r0, std::size_t r1, float scale,
                    double* row_sums) {
  const DF d;
  const std::size_t N = hn::Lanes(d), D = x.width;
  const hn::Rebind<std::uint8_t, DF> du8;
  const hn::Rebind<std::int32_t, DF> di;
  const VF inv255 = hn::Set(d, 1.0f / 255.0f), one = hn::Set(d, 1.0f), vscale = hn::Set(d, scale);
  for (std::size_t r = r0; r < r1; ++r) {
    const float* l = logits + r * D;
    const std::uint8_t* px = x.pixels + r * x.ld;
    VF sum = hn::Zero(d);
    for (std::size_t j = 0; j < D; j += N) {
      const std::size_t cnt = std::min(N, D - j);
      VF t;
      if (cnt == N) {
        t = hn::Mul(hn::ConvertTo(d, hn::PromoteTo(di, hn::LoadU(du8, px + j))), inv255);
      } else {
        HWY_ALIGN float tmp[hn::MaxLanes(DF())] = {};
        for (std::size_t c = 0; c < cnt; ++c) tmp[c] = float(px[j + c]) * (1.0f / 255.0f);
        t = hn::Load(d, tmp);
      }
      const VF lv = load_partial(d, l + j, cnt);
      // softplus(l) − x·l = max(l, 0) − x·l + log1p(e^{−|l|})
      const VF e = hn::Exp(d, hn::Neg(hn::Abs(lv)));
      VF term = hn::Add(hn::NegMulAdd(t, lv, hn::Max(lv, hn::Zero(d))), hn::Log1p(d, e));
      if (cnt < N) term = hn::IfThenElseZero(hn::FirstN(d, cnt), term);
      sum = hn::Add(sum, term);
      if (dlogits) {
        // σ(l) = 1/(1 + e^{−l}) for l ≥ 0, e^{l}/(1 + e^{l}) below: both are (l ≥ 0 ? 1 : e)/(1 + e) with e = e^{−|l|}
        const VF sig = hn::Div(hn::IfThenElse(hn::Ge(lv, hn::Zero(d)), one, e), hn::Add(one, e));
        store_partial(d, hn::Mul(vscale, hn::Sub(sig, t)), dlogits + r * D + j, cnt);
      }
    }
    row_sums[r] = double(hn::GetLane(hn::SumOfLanes(d, sum)));
  }
}

void reparam_forward(const float* head, const float* eps, float* z, std::size_t ldz, std::size_t r0, std::size_t r1, std::size_t latent,
                     double* row_kl) {
  const DF d;
  const std::size_t N = hn::Lanes(d);
  const VF half = hn::Set(d, 0.5f), one = hn::Set(d, 1.0f);
  for (std::size_t r = r0; r < r1; ++r) {
    const float* mu = head + r * 2 * latent;
    const float* lv = mu + latent;
    VF kl = hn::Zero(d);
    for (std::size_t j = 0; j < latent; j += N) {
      const std::size_t cnt = std::min(N, latent - j);
      const VF m = load_partial(d, mu + j, cnt), v = load_partial(d, lv + j, cnt);
      const VF sd = hn::Exp(d, hn::Mul(half, v));
      store_partial(d, hn::MulAdd(load_partial(d, eps + r * latent + j, cnt), sd, m), z + r * ldz + j, cnt);
      // KL term −½(1 + log σ² − μ² − σ²); padded lanes have μ = log σ² = 0, σ² = 1: exactly zero.
      const VF term = hn::Mul(half, hn::Sub(hn::MulAdd(m, m, hn::Mul(sd, sd)), hn::Add(one, v)));
      kl = hn::Add(kl, term);
    }
    row_kl[r] = double(hn::GetLane(hn::SumOfLanes(d, kl)));
  }
}

void reparam_backward(const float* head, const float* eps, const float* dz, std::size_t ldz, float* dhead, std::size_t r0, std::size_t r1,
                      std::size_t latent, float scale, float beta) {
  const DF d;
  const std::size_t N = hn::Lanes(d);
  const VF half = hn::Set(d, 0.5f), one = hn::Set(d, 1.0f), sb = hn::Set(d, scale * beta);
  for (std::size_t r = r0; r < r1; ++r) {
    const float* mu = head + r * 2 * latent;
    const float* lv = mu + latent;
    float* dmu = dhead + r * 2 * latent;
    float* dlv = dmu + latent;
    for (std::size_t j = 0; j < latent; j += N) {
      const std::size_t cnt = std::min(N, latent - j);
      const VF m = load_partial(d, mu + j, cnt), v = load_partial(d, lv + j, cnt);
      const VF g = load_partial(d, dz + r * ldz + j, cnt), e = load_partial(d, eps + r * latent + j, cnt);
      const VF sd = hn::Exp(d, hn::Mul(half, v));
      store_partial(d, hn::MulAdd(sb, m, g), dmu + j, cnt);
      const VF from_z = hn::Mul(hn::Mul(g, e), hn::Mul(half, sd));
      const VF from_kl = hn::Mul(hn::Mul(sb, half), hn::MulSub(sd, sd, one));
      store_partial(d, hn::Add(from_z, from_kl), dlv + j, cnt);
    }
  }
}

bool all_finite(const float* x, std::size_t begin, std::size_t end) {
  const DF d;
  const std::size_t N = hn::Lanes(d);
  // x − x is 0 for a finite x and NaN for NaN or ±Inf: one subtraction and a running sum, then one test at the end.
  VF acc = hn::Zero(d);
  std::size_t i = begin;
  for (; i + N <= end; i += N) {
    const VF v = hn::LoadU(d, x + i);
    acc = hn::Add(acc, hn::Sub(v, v));
  }
  float tail = 0.0f;
  for (; i < end; ++i) tail += x[i] - x[i];
  return hn::AllTrue(d, hn::Eq(acc, hn::Zero(d))) && tail == 0.0f;
}

void box_muller(const float* u, float* out, std::size_t n) {
  const DF d;
  const std::size_t N = hn::Lanes(d);
  const VF minus2 = hn::Set(d, -2.0f), two_pi = hn::Set(d, 6.283185307179586f);
  HWY_ALIGN float even[hn::MaxLanes(DF())], odd[hn::MaxLanes(DF())], c[hn::MaxLanes(DF())], s[hn::MaxLanes(DF())];
  std::size_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    for (std::size_t q = 0; q < N; ++q) {
      even[q] = u[i + 2 * q];
      odd[q] = u[i + 2 * q + 1];
    }
    const VF radius = hn::Sqrt(hn::Mul(minus2, hn::Log(d, hn::Load(d, even))));
    const VF angle = hn::Mul(two_pi, hn::Load(d, odd));
    hn::Store(hn::Mul(radius, hn::Cos(d, angle)), d, c);
    hn::Store(hn::Mul(radius, hn::Sin(d, angle)), d, s);
    for (std::size_t q = 0; q < N; ++q) {
      out[i + 2 * q] = c[q];
      out[i + 2 * q + 1] = s[q];
    }
  }
  for (; i + 1 < n; i += 2) {
    const float radius = std::sqrt(-2.0f * std::log(u[i])), angle = 6.283185307179586f * u[i + 1];
    out[i] = radius * std::cos(angle);
    out[i + 1] = radius * std::sin(angle);
  }
}

void adam(float* p, const float* g, float* m, float* v, std::size_t begin, std::size_t end, float lr_t, float beta1, float beta2,
          float eps_t) {
  const DF d;
  const std::size_t N = hn::Lanes(d);
  const VF b1 = hn::Set(d, beta1), b2 = hn::Set(d, beta2), c1 = hn::Set(d, 1.0f - beta1), c2 = hn::Set(d, 1.0f - beta2);
  const VF lr = hn::Set(d, lr_t), ep = hn::Set(d, eps_t), two = hn::Set(d, 2.0f), half = hn::Set(d, 0.5f), three = hn::Set(d, 3.0f);
  const VF tiny = hn::Set(d, 1e-37f);
  std::size_t i = begin;
  for (; i + N <= end; i += N) {
    const VF gi = hn::LoadU(d, g + i);
    const VF mi = hn::MulAdd(b1, hn::LoadU(d, m + i), hn::Mul(c1, gi));
    const VF vi = hn::MulAdd(b2, hn::LoadU(d, v + i), hn::Mul(c2, hn::Mul(gi, gi)));
    hn::StoreU(mi, d, m + i);
    hn::StoreU(vi, d, v + i);
    // √v and 1/(√v + ε) from the hardware estimates, each refined by one Newton step to within 2 ulp: the divide and
    // square root units would otherwise bound this pass, which touches every parameter.
    const VF vs = hn::Max(vi, tiny);
    VF r = hn::ApproximateReciprocalSqrt(vs);
    r = hn::Mul(hn::Mul(half, r), hn::NegMulAdd(hn::Mul(vs, r), r, three));
    const VF denom = hn::MulAdd(vi, r, ep);
    VF q = hn::ApproximateReciprocal(denom);
    q = hn::Mul(q, hn::NegMulAdd(denom, q, two));
    hn::StoreU(hn::NegMulAdd(hn::Mul(lr, mi), q, hn::LoadU(d, p + i)), d, p + i);
  }
  for (; i < end; ++i) {
    m[i] = beta1 * m[i] + (1.0f - beta1) * g[i];
    v[i] = beta2 * v[i] + (1.0f - beta2) * g[i] * g[i];
    p[i] -= lr_t * (m[i] / (std::sqrt(v[i]) + eps_t));
  }
}

// bf16 from f32 lanes, rounded to nearest even (NaN kept quiet), narrowed to u16 lanes.
template <class DU16>
hn::Vec<DU16> round_to_bf16(DU16 d16, VF v) {
  const hn::RebindToUnsigned<DF> du;
  const hn::RebindToSigned<DF> di;
  const auto u = hn::BitCast(du, v);
  auto r = hn::Add(u, hn::Add(hn::Set(du, 0x7fffu), hn::And(hn::ShiftRight<16>(u), hn::Set(du, 1u))));
  r = hn::IfThenElse(hn::RebindMask(du, hn::IsNaN(v)), hn::Or(u, hn::Set(du, 0x400000u)), r);
  return hn::DemoteTo(d16, hn::BitCast(di, hn::ShiftRight<16>(r)));
}

template <class DU16>
VF widen_bf16(DU16 d16, const std::uint16_t* h) {
  const DF d;
  const hn::RebindToUnsigned<DF> du;
  return hn::BitCast(d, hn::ShiftLeft<16>(hn::PromoteTo(du, hn::LoadU(d16, h))));
}

void to_bf16(const float* x, std::uint16_t* out, std::size_t n) {
  const DF d;
  const hn::Rebind<std::uint16_t, DF> d16;
  const std::size_t N = hn::Lanes(d);
  std::size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(round_to_bf16(d16, hn::LoadU(d, x + i)), d16, out + i);
  for (; i < n; ++i) out[i] = bf16_round(x[i]);
}

void from_bf16(const std::uint16_t* h, float* out, std::size_t n) {
  const DF d;
  const hn::Rebind<std::uint16_t, DF> d16;
  const std::size_t N = hn::Lanes(d);
  std::size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(widen_bf16(d16, h + i), d, out + i);
  for (; i < n; ++i) out[i] = bf16_widen(h[i]);
}

void add_bf16(const std::uint16_t* a, std::uint16_t* b, std::size_t n) {
  const DF d;
  const hn::Rebind<std::uint16_t, DF> d16;
  const std::size_t N = hn::Lanes(d);
  std::size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(round_to_bf16(d16, hn::Add(widen_bf16(d16, a + i), widen_bf16(d16, b + i))), d16, b + i);
  for (; i < n; ++i) b[i] = bf16_round(bf16_widen(a[i]) + bf16_widen(b[i]));
}

// bf16 operand bits (bf16_operand: round to nearest even, NaN kept quiet, an fp32 denormal a signed zero) in the low
// half of each u32 lane.
HWY_INLINE hn::Vec<hn::RebindToUnsigned<DF>> operand_bits(DF, VF v) {
  const hn::RebindToUnsigned<DF> du;
  const auto u = hn::BitCast(du, v);
  auto r = hn::ShiftRight<16>(hn::Add(u, hn::Add(hn::Set(du, 0x7fffu), hn::And(hn::ShiftRight<16>(u), hn::Set(du, 1u)))));
  r = hn::IfThenElse(hn::RebindMask(du, hn::IsNaN(v)), hn::ShiftRight<16>(hn::Or(u, hn::Set(du, 0x400000u))), r);
  const auto denormal = hn::Eq(hn::And(u, hn::Set(du, 0x7f800000u)), hn::Zero(du));
  return hn::IfThenElse(denormal, hn::And(hn::ShiftRight<16>(u), hn::Set(du, 0x8000u)), r);
}

// s(r, c … c + count) as floats, zero past count and past s's rows and columns.
HWY_INLINE VF source_v(DF d, const Bf16Source& s, std::size_t r, std::size_t c, std::size_t count) {
  if (r >= s.rows || c >= s.cols) return hn::Zero(d);
  count = std::min({count, s.cols - c, hn::Lanes(d)});
  if (!s.image) return load_partial(d, s.x + r * s.ld + c, count);
  const ImageBatch& x = *s.image;
  if (count == hn::Lanes(d) && c + count <= x.width) {
    const hn::Rebind<std::uint8_t, DF> du8;
    const hn::Rebind<std::int32_t, DF> di;
    return hn::Mul(hn::ConvertTo(d, hn::PromoteTo(di, hn::LoadU(du8, x.pixels + r * x.ld + c))), hn::Set(d, 1.0f / 255.0f));
  }
  HWY_ALIGN float tmp[hn::MaxLanes(DF())] = {};
  for (std::size_t q = 0; q < count; ++q) tmp[q] = x.at<float>(r, c + q);
  return hn::Load(d, tmp);
}

void bf16_rows(const Bf16Source& s, std::size_t r0, std::size_t r1, std::size_t k2, std::uint32_t* dst, std::size_t ldd) {
  const DF d;
  const hn::Rebind<std::uint16_t, DF> d16;
  const hn::RebindToSigned<DF> di;
  const std::size_t N = hn::Lanes(d), width = 2 * k2;
  for (std::size_t r = r0; r < r1; ++r) {
    std::uint16_t* row = reinterpret_cast<std::uint16_t*>(dst + r * ldd);
    for (std::size_t c = 0; c < width; c += N) {
      const auto h = hn::DemoteTo(d16, hn::BitCast(di, operand_bits(d, source_v(d, s, r, c, N))));
      if (c + N <= width) {
        hn::StoreU(h, d16, row + c);
      } else {
        HWY_ALIGN std::uint16_t tmp[hn::MaxLanes(DF())];
        hn::Store(h, d16, tmp);
        std::memcpy(row + c, tmp, (width - c) * sizeof(std::uint16_t));
      }
    }
  }
}

void bf16_pairs(const Bf16Source& s, std::size_t q0, std::size_t q1, std::size_t c0, std::size_t c1, std::size_t width, std::uint32_t* dst,
                std::size_t ldd) {
  const DF d;
  const hn::RebindToUnsigned<DF> du;
  const std::size_t N = hn::Lanes(d);
  for (std::size_t q = q0; q < q1; ++q) {
    std::uint32_t* out = dst + q * ldd;
    for (std::size_t c = c0; c < c0 + width; c += N) {
      const std::size_t count = c < c1 ? c1 - c : 0;
      const auto lo = operand_bits(d, source_v(d, s, 2 * q, c, count));
      const auto hi = operand_bits(d, source_v(d, s, 2 * q + 1, c, count));
      const auto pair = hn::Or(lo, hn::ShiftLeft<16>(hi));
      if (c + N <= c0 + width) {
        hn::StoreU(pair, du, out + (c - c0));
      } else {
        HWY_ALIGN std::uint32_t tmp[hn::MaxLanes(DF())];
        hn::Store(pair, du, tmp);
        std::memcpy(out + (c - c0), tmp, (c0 + width - c) * sizeof(std::uint32_t));
      }
    }
  }
}

void bf16_pairs_rows(const Bf16Source& s, std::size_t i0, std::size_t i1, std::size_t k2, std::uint32_t* dst, std::size_t ldd) {
  const DF d;
  const hn::RebindToUnsigned<DF> du;
  const std::size_t N = hn::Lanes(d);
  HWY_ALIGN std::uint32_t pairs[hn::MaxLanes(DF())];
  for (std::size_t i = i0; i < i1; i += N) {
    const std::size_t count = std::min(N, i1 - i);
    for (std::size_t q = 0; q < k2; ++q) {
      // the pairs of N columns of s from one pair of its rows, each to its own row of dst
      const auto lo = operand_bits(d, source_v(d, s, 2 * q, i, count));
      const auto hi = operand_bits(d, source_v(d, s, 2 * q + 1, i, count));
      hn::Store(hn::Or(lo, hn::ShiftLeft<16>(hi)), du, pairs);
      for (std::size_t t = 0; t < count; ++t) dst[(i + t) * ldd + q] = pairs[t];
    }
  }
}

void bf16_trans_panel(const Bf16Source& s, std::size_t j0, std::size_t k2, std::uint32_t* dst) {
  const DF d;
  const hn::Rebind<std::uint16_t, DF> d16;
  const hn::RebindToSigned<DF> di;
  const std::size_t N = hn::Lanes(d), NR = nr();
  HWY_ALIGN std::uint16_t h[hn::MaxLanes(DF()) + 1];
  for (std::size_t jj = 0; jj < NR; ++jj) {
    if (j0 + jj >= s.rows) {
      for (std::size_t q = 0; q < k2; ++q) dst[q * NR + jj] = 0;
      continue;
    }
    // Row j0 + jj as bf16, an even number of columns at a time, each pair to its place in the panel's column jj.
    const std::size_t step = N % 2 ? N + 1 : N;
    for (std::size_t c = 0; c < 2 * k2; c += step) {
      hn::Store(hn::DemoteTo(d16, hn::BitCast(di, operand_bits(d, source_v(d, s, j0 + jj, c, N)))), d16, h);
      if (step > N) h[N] = bf16_operand(c + N < s.cols ? (s.image ? s.image->at<float>(j0 + jj, c + N) : s.x[(j0 + jj) * s.ld + c + N]) : 0.0f);
      for (std::size_t t = 0; t < step / 2 && c / 2 + t < k2; ++t)
        dst[(c / 2 + t) * NR + jj] = std::uint32_t(h[2 * t]) | std::uint32_t(h[2 * t + 1]) << 16;
    }
  }
}

// A result the dot-product instruction flushes: below the smallest normal float, a zero of its sign.
HWY_INLINE VF flush_small(DF d, VF x) {
  return hn::IfThenElse(hn::Lt(hn::Abs(x), hn::Set(d, std::numeric_limits<float>::min())), hn::And(x, hn::Set(d, -0.0f)), x);
}

float fma_loop(std::size_t iterations) {
  const DF d;
  const VF a = hn::Set(d, 0.999f), b = hn::Set(d, 1e-4f);
  return peak_chains(iterations, [&](VF c) VAE_ALWAYS_INLINE { return hn::MulAdd(c, a, b); });
}

namespace emulated {
// Each lane: acc + hi(a)·hi(b), flushed, + lo(a)·lo(b), flushed. Both products are exact in fp32, so each FMA rounds
// once, as the instruction's adds do.
template <class VU>
HWY_INLINE VF dot2(DF d, VF acc, VU a, VU b) {
  const hn::RebindToUnsigned<DF> du;
  const auto high = hn::Set(du, 0xffff0000u);
  acc = flush_small(d, hn::MulAdd(hn::BitCast(d, hn::And(a, high)), hn::BitCast(d, hn::And(b, high)), acc));
  return flush_small(d, hn::MulAdd(hn::BitCast(d, hn::ShiftLeft<16>(a)), hn::BitCast(d, hn::ShiftLeft<16>(b)), acc));
}
#include "simd_bf16-inl.h"
}  // namespace emulated

#if VAE_NATIVE_X86
#pragma GCC push_options
#pragma GCC target("avx512bf16")
namespace native {
#include "simd_tile-inl.h"
template <class VU>
HWY_INLINE VF dot2(DF, VF acc, VU a, VU b) {
  return VF{_mm512_dpbf16_ps(acc.raw, reinterpret_cast<__m512bh>(a.raw), reinterpret_cast<__m512bh>(b.raw))};
}
#include "simd_bf16-inl.h"

float bf16_dot_loop(std::size_t iterations) {
  const DF d;
  const hn::RebindToUnsigned<DF> du;
  const auto a = hn::Set(du, 0x3f803f80u), b = hn::Set(du, 0x3a803a80u);  // pairs of 1.0 and of 2⁻¹⁰
  return peak_chains(iterations, [&](VF c) VAE_ALWAYS_INLINE { return dot2(d, c, a, b); });
}
}  // namespace native
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("amx-tile,amx-bf16")
namespace amx {
// Tile registers 0–3: C, 2 × 2 tiles of 16 × 16 floats (32 rows × NR = 32 columns); 4–5: A, 16 rows × 16 pairs; 6–7: B,
// 16 pairs × 16 columns. Every tile is 16 rows of 64 bytes, so one configuration serves every product.
struct alignas(64) TileConfig {
  std::uint8_t palette = 1, start_row = 0;
  std::uint8_t reserved[14] = {};
  std::uint16_t bytes_per_row[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  std::uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

// C = A·B in 32-row blocks of A (in the a_rows form, k2 a multiple of 16, rows readable to the next multiple of 32),
// each 32 × 32 block summed in the tiles, stored to a scratch block and finished with the fp32 epilogue.
void gemm_bf16(const GemmBf16Block& g) {
  static const TileConfig config;
  _tile_loadconfig(&config);
  const DF d;
  const std::size_t N = hn::Lanes(d), NR = 2 * N, lda_bytes = g.lda * sizeof(std::uint32_t);
  const GemmBlock& o = g.out;
  HWY_ALIGN float c[32 * 32];
  VF check = hn::Zero(d);
  for (std::size_t j = o.j0; j < o.j1; j += NR) {
    const std::size_t cols = std::min(NR, o.j1 - j);
    const std::uint32_t* b = g.b + (j / NR) * g.k2 * NR;
    for (std::size_t i = o.i0; i < o.i1; i += 32) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      const std::uint32_t* a = g.a + i * g.lda;
      for (std::size_t q = 0; q < g.k2; q += 16) {
        _tile_loadd(4, a + q, lda_bytes);
        _tile_loadd(5, a + 16 * g.lda + q, lda_bytes);
        _tile_loadd(6, b + q * NR, NR * sizeof(std::uint32_t));
        _tile_loadd(7, b + q * NR + 16, NR * sizeof(std::uint32_t));
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      _tile_stored(0, c, 32 * sizeof(float));
      _tile_stored(1, c + 16, 32 * sizeof(float));
      _tile_stored(2, c + 16 * 32, 32 * sizeof(float));
      _tile_stored(3, c + 16 * 32 + 16, 32 * sizeof(float));
      const std::size_t rows = std::min<std::size_t>(32, o.i1 - i);
      for (std::size_t r = 0; r < rows; ++r) {
        const VF c0 = hn::Load(d, c + r * 32), c1 = hn::Load(d, c + r * 32 + N);
        // only the columns this block owns count (the panel's padding is zero, so always finite)
        if (o.nonfinite) check = hn::Add(check, hn::Add(hn::Sub(c0, c0), hn::Sub(c1, c1)));
        finish(d, c0, o, i + r, j, std::min(cols, N));
        if (cols > N) finish(d, c1, o, i + r, j + N, cols - N);
      }
    }
  }
  _tile_release();
  if (o.nonfinite && !hn::AllTrue(d, hn::Eq(check, hn::Zero(d)))) *o.nonfinite = true;
}

// Throughput ceiling: four independent tile sums per iteration, 16·16·32 multiply-adds each.
float amx_loop(std::size_t iterations) {
  static const TileConfig config;
  _tile_loadconfig(&config);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_zero(4);
  _tile_zero(5);
  _tile_zero(6);
  _tile_zero(7);
  for (std::size_t i = 0; i < iterations; ++i) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  HWY_ALIGN float c[16 * 16];
  _tile_stored(0, c, 16 * sizeof(float));
  _tile_release();
  return c[0];
}

// Whether the CPU has AMX tiles with bf16, and Linux lets this process use them (it must ask, once, for the tile state).
bool usable() {
#if defined(__linux__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  constexpr unsigned kAmxBf16 = 1u << 22, kAmxTile = 1u << 24;
  constexpr long kReqXcompPerm = 0x1023, kXtiledata = 18;
  return (d & kAmxBf16) && (d & kAmxTile) && syscall(SYS_arch_prctl, kReqXcompPerm, kXtiledata) == 0;
#else
  return false;
#endif
}
}  // namespace amx
#pragma GCC pop_options
#endif

// INT8 inference.

// Loads `count` (≤ lanes) int32s, zero-filling the rest.
HWY_INLINE hn::Vec<hn::RebindToSigned<DF>> load_partial_i32(const std::int32_t* p, std::size_t count) {
  const hn::RebindToSigned<DF> di;
  if (count >= hn::Lanes(di)) return hn::LoadU(di, p);
  HWY_ALIGN std::int32_t tmp[hn::MaxLanes(DF())] = {};
  std::memcpy(tmp, p, count * sizeof(std::int32_t));
  return hn::Load(di, tmp);
}

// clamp(round(v·inv + zero), 0, 255) as u8 lanes: the multiply and the add round separately on every target.
HWY_INLINE hn::Vec<hn::Rebind<std::uint8_t, DF>> quantize_u8(DF d, VF v, float inv, float zero) {
  const hn::RebindToSigned<DF> di;
  const hn::Rebind<std::uint8_t, DF> d8;
  VF q = hn::Round(hn::Add(hn::Mul(v, hn::Set(d, inv)), hn::Set(d, zero)));
  q = hn::Min(hn::Max(q, hn::Zero(d)), hn::Set(d, 255.0f));
  return hn::DemoteTo(d8, hn::ConvertTo(di, q));
}

HWY_INLINE void finish_int8(DF d, hn::Vec<hn::RebindToSigned<DF>> acc, const Int8Block& g, std::size_t i, std::size_t j, std::size_t count) {
  VF v = hn::ConvertTo(d, hn::Sub(acc, load_partial_i32(g.zero_term + j, count)));
  v = hn::Add(hn::Mul(v, load_partial(d, g.scale + j, count)), load_partial(d, g.bias + j, count));
  v = activate_v(d, v, g.act);
  if (g.y) return store_partial(d, v, g.y + i * g.ldy + j, count);
  const hn::Rebind<std::uint8_t, DF> d8;
  HWY_ALIGN std::uint8_t tmp[hn::MaxLanes(DF())];
  hn::Store(quantize_u8(d, v, g.inv_out, g.zero_out), d8, tmp);
  std::memcpy(g.q + i * g.ldq + j, tmp, count);
}

void pack_int8_panel(const std::int8_t* w, std::size_t k, std::size_t m, std::size_t j0, std::size_t k4, std::uint32_t* dst) {
  const std::size_t NR = nr();
  for (std::size_t q = 0; q < k4; ++q)
    for (std::size_t c = 0; c < NR; ++c) {
      std::uint32_t quad = 0;
      for (std::size_t t = 0; t < 4; ++t) {
        const std::size_t p = 4 * q + t, j = j0 + c;
        if (p < k && j < m) quad |= std::uint32_t(std::uint8_t(w[p * m + j])) << (8 * t);
      }
      dst[q * NR + c] = quad;
    }
}

void quantize_rows(const float* x, std::size_t ldx, std::size_t r0, std::size_t r1, std::size_t k, std::size_t k4, float inv_scale,
                   float zero_point, std::uint8_t* dst, std::size_t ldd) {
  const DF d;
  const hn::Rebind<std::uint8_t, DF> d8;
  const std::size_t N = hn::Lanes(d);
  HWY_ALIGN std::uint8_t tmp[hn::MaxLanes(DF())];
  for (std::size_t r = r0; r < r1; ++r) {
    std::uint8_t* out = dst + r * ldd;
    for (std::size_t c = 0; c < k; c += N) {
      const std::size_t count = std::min(N, k - c);
      hn::Store(quantize_u8(d, load_partial(d, x + r * ldx + c, count), inv_scale, zero_point), d8, tmp);
      std::memcpy(out + c, tmp, count);
    }
    std::memset(out + k, 0, 4 * k4 - k);
  }
}

namespace emulated_int8 {
// Each lane: acc + Σ_t u8(a, byte t)·s8(b, byte t), exact in int32.
template <class DI, class VI>
HWY_INLINE VI dot4(DI di, VI acc, VI a, VI b) {
  const auto low = hn::Set(di, 0xff);
  acc = hn::Add(acc, hn::Mul(hn::And(a, low), hn::ShiftRight<24>(hn::ShiftLeft<24>(b))));
  acc = hn::Add(acc, hn::Mul(hn::And(hn::ShiftRight<8>(a), low), hn::ShiftRight<24>(hn::ShiftLeft<16>(b))));
  acc = hn::Add(acc, hn::Mul(hn::And(hn::ShiftRight<16>(a), low), hn::ShiftRight<24>(hn::ShiftLeft<8>(b))));
  return hn::Add(acc, hn::Mul(hn::And(hn::ShiftRight<24>(a), low), hn::ShiftRight<24>(b)));
}
#include "simd_int8-inl.h"
}  // namespace emulated_int8

#if VAE_NATIVE_X86
#pragma GCC push_options
#pragma GCC target("avx512vnni")
namespace vnni {
#include "simd_tile-inl.h"
template <class DI, class VI>
HWY_INLINE VI dot4(DI, VI acc, VI a, VI b) {
  return VI{_mm512_dpbusd_epi32(acc.raw, a.raw, b.raw)};
}
#include "simd_int8-inl.h"

float int8_dot_loop(std::size_t iterations) {
  const DF d;
  const hn::RebindToSigned<DF> di;
  const auto a = hn::Set(di, 0x01010101), b = hn::Set(di, 0x02020202);
  return peak_chains(iterations, [&](VF c) VAE_ALWAYS_INLINE { return hn::BitCast(d, dot4(di, hn::BitCast(di, c), a, b)); });
}
}  // namespace vnni
#pragma GCC pop_options
#endif

const Ops* get_ops() {
  static const Ops ops = [] {
    Ops o;
    o.target = hwy::TargetName(HWY_TARGET);
    o.mr = kMR;
    o.nr = nr();
    o.pack_a = &pack_a;
    o.gemm_block = &gemm_block;
    o.col_sums = &col_sums;
    o.bernoulli_rows = &bernoulli_rows;
    o.reparam_forward = &reparam_forward;
    o.reparam_backward = &reparam_backward;
    o.all_finite = &all_finite;
    o.box_muller = &box_muller;
    o.adam = &adam;
    o.to_bf16 = &to_bf16;
    o.from_bf16 = &from_bf16;
    o.add_bf16 = &add_bf16;
    o.bf16_rows = &bf16_rows;
    o.bf16_pairs_rows = &bf16_pairs_rows;
    o.bf16_pairs = &bf16_pairs;
    o.bf16_trans_panel = &bf16_trans_panel;
    o.gemm_bf16_block = &emulated::gemm_bf16;
    o.fma_loop = &fma_loop;
    o.int8_block = &emulated_int8::int8_block;
    o.pack_int8_panel = &pack_int8_panel;
    o.quantize_rows = &quantize_rows;
#if VAE_NATIVE_X86
    if (__builtin_cpu_supports("avx512vnni")) {
      o.int8_native = true;
      o.int8_block = &vnni::int8_block;
      o.int8_dot_loop = &vnni::int8_dot_loop;
    }
    static const Ops amx_ops = [&] {
      Ops n = o;
      n.target = "AVX3_AMX";
      n.bf16_native = true;
      n.bf16_bit_exact = false;
      n.bf16_k_block = 16;
      n.bf16_m_block = 32;
      n.bf16_a_rows_only = true;
      n.gemm_bf16_block = &amx::gemm_bf16;
      n.amx_dot_loop = &amx::amx_loop;
      n.bf16_dot_loop = &native::bf16_dot_loop;
      return n;
    }();
    static const Ops native_ops = [&] {
      Ops n = o;
      n.target = "AVX3_BF16";
      n.bf16_native = true;
      n.gemm_bf16_block = &native::gemm_bf16;
      n.bf16_dot_loop = &native::bf16_dot_loop;
      if (amx::usable()) n.faster = &amx_ops;
      return n;
    }();
    if (__builtin_cpu_supports("avx512bf16")) o.faster = &native_ops;
#endif
    return o;
  }();
  return &ops;
}

}  // namespace HWY_NAMESPACE
}  // namespace vae::simd
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace vae::simd {

HWY_EXPORT(get_ops);

const Ops& best_ops() {
  const Ops* o = HWY_DYNAMIC_DISPATCH(get_ops)();
  while (o->faster) o = o->faster;
  return *o;
}

std::vector<const Ops*> available_ops() {
#if (HWY_TARGETS & (HWY_TARGETS - 1)) == 0
  // One target compiled (HWY_COMPILE_ONLY_STATIC, as for WebAssembly): there is nothing to choose, and no Highway library.
  return {&best_ops()};
#else
  std::vector<const Ops*> all;
  for (std::int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    std::vector<const Ops*> chain;
    for (const Ops* o = HWY_DYNAMIC_DISPATCH(get_ops)(); o; o = o->faster) chain.push_back(o);
    all.insert(all.end(), chain.rbegin(), chain.rend());
  }
  hwy::SetSupportedTargetsForTest(0);
  return all;
#endif
}

}  // namespace vae::simd
#endif
