// SIMD kernels for every instruction set Highway targets (AVX-512, AVX2/FMA, SSE4, NEON, SVE, portable; static WASM): fp32 products, elementwise kernels, the dispatch table.
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

HWY_BEFORE_NAMESPACE();
namespace vae::simd {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

#include "simd_common-inl.h"

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

// One row of C over four NR-column panels of a row-major B at once (a single sample's decode): eight independent sums
// where the micro-tile's one row has two, each waiting on its last multiply-add, and B read a whole row of the four
// panels at a time. Each column's sum is the micro-tile's, in the same order.
HWY_NOINLINE void one_row_wide(const float* HWY_RESTRICT a, const float* HWY_RESTRICT b, std::size_t ldb, std::size_t k, const GemmBlock& g,
                               std::size_t i, std::size_t j) {
  const DF d;
  const std::size_t N = hn::Lanes(d);
  VF c0 = hn::Zero(d), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
  for (std::size_t p = 0; p < k; ++p, b += ldb) {
    const VF ap = hn::Set(d, a[p]);
    c0 = hn::MulAdd(ap, hn::LoadU(d, b), c0);
    c1 = hn::MulAdd(ap, hn::LoadU(d, b + N), c1);
    c2 = hn::MulAdd(ap, hn::LoadU(d, b + 2 * N), c2);
    c3 = hn::MulAdd(ap, hn::LoadU(d, b + 3 * N), c3);
    c4 = hn::MulAdd(ap, hn::LoadU(d, b + 4 * N), c4);
    c5 = hn::MulAdd(ap, hn::LoadU(d, b + 5 * N), c5);
    c6 = hn::MulAdd(ap, hn::LoadU(d, b + 6 * N), c6);
    c7 = hn::MulAdd(ap, hn::LoadU(d, b + 7 * N), c7);
  }
  if (g.nonfinite) {
    const VF check = hn::Add(hn::Add(hn::Add(hn::Sub(c0, c0), hn::Sub(c1, c1)), hn::Add(hn::Sub(c2, c2), hn::Sub(c3, c3))),
                             hn::Add(hn::Add(hn::Sub(c4, c4), hn::Sub(c5, c5)), hn::Add(hn::Sub(c6, c6), hn::Sub(c7, c7))));
    if (!hn::AllTrue(d, hn::Eq(check, hn::Zero(d)))) *g.nonfinite = true;
  }
  finish(d, c0, g, i, j, N);
  finish(d, c1, g, i, j + N, N);
  finish(d, c2, g, i, j + 2 * N, N);
  finish(d, c3, g, i, j + 3 * N, N);
  finish(d, c4, g, i, j + 4 * N, N);
  finish(d, c5, g, i, j + 5 * N, N);
  finish(d, c6, g, i, j + 6 * N, N);
  finish(d, c7, g, i, j + 7 * N, N);
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
  std::size_t j = g.j0;
  if (g.i1 - g.i0 == 1 && g.layout == ALayout::rows && !g.b_trans)
    for (; j + 4 * NR <= g.j1; j += 4 * NR) one_row_wide(g.a + g.i0 * g.lda, g.b + j, g.ldb, g.k, g, g.i0, j);
  for (; j < g.j1; j += NR) {
    const std::size_t cols = std::min(NR, g.j1 - j);
    // Full panels of a row-major B are read in place (and partial ones of a padded B); the others are packed first.
    const float* b = g.b + j;
    std::size_t ldb = g.ldb;
    if (g.b_trans || (cols < NR && !g.b_padded)) {
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

void apply_epilogue(const GemmBlock& g) {
  const DF d;
  const std::size_t N = hn::Lanes(d);
  for (std::size_t i = g.i0; i < g.i1; ++i)
    for (std::size_t j = g.j0; j < g.j1; j += N) {
      const std::size_t cnt = std::min(N, g.j1 - j);
      finish(d, load_partial(d, g.c + i * g.ldc + j, cnt), g, i, j, cnt);
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
          float eps_t, float decay) {
  const DF d;
  const std::size_t N = hn::Lanes(d);
  const VF b1 = hn::Set(d, beta1), b2 = hn::Set(d, beta2), c1 = hn::Set(d, 1.0f - beta1), c2 = hn::Set(d, 1.0f - beta2);
  const VF lr = hn::Set(d, lr_t), ep = hn::Set(d, eps_t), two = hn::Set(d, 2.0f), half = hn::Set(d, 0.5f), three = hn::Set(d, 3.0f);
  const VF tiny = hn::Set(d, 1e-37f), dec = hn::Set(d, decay);
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
    hn::StoreU(hn::NegMulAdd(hn::Mul(lr, mi), q, hn::Mul(dec, hn::LoadU(d, p + i))), d, p + i);
  }
  for (; i < end; ++i) {
    m[i] = beta1 * m[i] + (1.0f - beta1) * g[i];
    v[i] = beta2 * v[i] + (1.0f - beta2) * g[i] * g[i];
    p[i] = decay * p[i] - lr_t * (m[i] / (std::sqrt(v[i]) + eps_t));
  }
}

void ema(float* e, const float* p, std::size_t begin, std::size_t end, float decay) {
  const DF d;
  const std::size_t N = hn::Lanes(d);
  const VF dv = hn::Set(d, decay);
  std::size_t i = begin;
  for (; i + N <= end; i += N) {
    const VF pi = hn::LoadU(d, p + i);
    hn::StoreU(hn::Add(pi, hn::Mul(dv, hn::Sub(hn::LoadU(d, e + i), pi))), d, e + i);
  }
  for (; i < end; ++i) e[i] = p[i] + decay * (e[i] - p[i]);
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

float fma_loop(std::size_t iterations) {
  const DF d;
  const VF a = hn::Set(d, 0.999f), b = hn::Set(d, 1e-4f);
  return peak_chains(iterations, [&](VF c) VAE_ALWAYS_INLINE { return hn::MulAdd(c, a, b); });
}

const Ops* get_ops() {
  static const Ops ops = [] {
    Ops o;
    o.target = hwy::TargetName(HWY_TARGET);
    o.mr = kMR;
    o.nr = nr();
    o.pack_a = &pack_a;
    o.gemm_block = &gemm_block;
    o.col_sums = &col_sums;
    o.apply_epilogue = &apply_epilogue;
    o.bernoulli_rows = &bernoulli_rows;
    o.reparam_forward = &reparam_forward;
    o.reparam_backward = &reparam_backward;
    o.all_finite = &all_finite;
    o.box_muller = &box_muller;
    o.adam = &adam;
    o.ema = &ema;
    o.to_bf16 = &to_bf16;
    o.from_bf16 = &from_bf16;
    o.add_bf16 = &add_bf16;
    o.fma_loop = &fma_loop;
    add_int8_products(o);
    add_bf16_products(o);
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
