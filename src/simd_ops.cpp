// SIMD kernels for every instruction set Highway targets (AVX-512, AVX2/FMA, SSE4, portable), chosen at run time.
#include "simd_ops.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "simd_ops.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>
#include <hwy/contrib/math/math-inl.h>

HWY_BEFORE_NAMESPACE();
namespace vae::simd {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

// Micro-tile: MR rows × two vectors of columns. AVX-512 has 32 vector registers, so 12 rows (24 accumulators) fit;
// the 16-register targets take 6 rows (12 accumulators, 2 B vectors and a broadcast).
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
constexpr std::size_t kMR = 12;
#else
constexpr std::size_t kMR = 6;
#endif
constexpr std::size_t kKC = 256;

inline std::size_t lanes() { return hn::Lanes(DF()); }
inline std::size_t nr() { return 2 * lanes(); }

HWY_INLINE VF activate_v(DF d, VF v, Activation act) {
  switch (act) {
    case Activation::identity: return v;
    case Activation::elu: return hn::IfThenElse(hn::Gt(v, hn::Zero(d)), v, hn::Expm1(d, v));
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
  float* c = g.c + i * g.ldc + j;
  if (!g.first) acc = hn::Add(acc, load_partial(d, c, count));
  if (g.last) {
    if (g.epi == Epilogue::bias_act) acc = activate_v(d, hn::Add(acc, load_partial(d, g.bias + j, count)), g.act);
    else if (g.epi == Epilogue::slope) acc = hn::Mul(acc, slope_v(d, load_partial(d, g.y + i * g.ldy + j, count), g.act));
  }
  store_partial(d, acc, c, count);
}

// C tile [R × NR] at (i, j): Σ_p A(i + r, p)·Bpanel(p, :). A(i + r, p) = a[p·ps + r]: both A layouts put a tile's R values
// for one p side by side, so each is one broadcast from memory.
template <std::size_t R>
HWY_NOINLINE void micro_tile(const float* HWY_RESTRICT a, std::size_t ps, const float* HWY_RESTRICT b, std::size_t kc,
                             const GemmBlock& g, std::size_t i, std::size_t j, std::size_t cols) {
  const DF d;
  const std::size_t N = hn::Lanes(d);
  VF c0[R], c1[R];
  for (std::size_t r = 0; r < R; ++r) c0[r] = c1[r] = hn::Zero(d);
  for (std::size_t p = 0; p < kc; ++p) {
    const VF b0 = hn::Load(d, b), b1 = hn::Load(d, b + N);
    for (std::size_t r = 0; r < R; ++r) {
      const VF ar = hn::Set(d, a[r]);
      c0[r] = hn::MulAdd(ar, b0, c0[r]);
      c1[r] = hn::MulAdd(ar, b1, c1[r]);
    }
    a += ps;
    b += 2 * N;
  }
  const std::size_t n0 = std::min(cols, N), n1 = cols > N ? cols - N : 0;
  for (std::size_t r = 0; r < R; ++r) {
    finish(d, c0[r], g, i + r, j, n0);
    if (n1) finish(d, c1[r], g, i + r, j + N, n1);
  }
}

template <std::size_t... Rs>
constexpr auto make_tile_table(std::index_sequence<Rs...>) {
  using Fn = void (*)(const float*, std::size_t, const float*, std::size_t, const GemmBlock&, std::size_t, std::size_t, std::size_t);
  return std::array<Fn, sizeof...(Rs)>{&micro_tile<Rs + 1>...};
}

void gemm_block(const GemmBlock& g) {
  static constexpr auto tiles = make_tile_table(std::make_index_sequence<kMR>());
  const std::size_t NR = nr();
  for (std::size_t j = g.j0; j < g.j1; j += NR) {
    const float* b = g.bpack + (j - g.j0) * g.kc;  // panel (j − j0)/NR, kc × NR each
    const std::size_t cols = std::min(NR, g.j1 - j);
    for (std::size_t i = g.i0; i < g.i1;) {
      const std::size_t rows = std::min(kMR - (g.layout == ALayout::panels ? i % kMR : 0), g.i1 - i);
      const float* a;
      std::size_t ps;
      if (g.layout == ALayout::panels) {
        a = g.a + (i / kMR) * g.lda * kMR + g.p0 * kMR + i % kMR;
        ps = kMR;
      } else {
        a = g.a + g.p0 * g.lda + i;
        ps = g.lda;
      }
      tiles[rows - 1](a, ps, b, g.kc, g, i, j, cols);
      i += rows;
    }
  }
}

void pack_b(const PackB& s) {
  const DF d;
  const std::size_t N = hn::Lanes(d), NR = 2 * N;
  float* dst = s.dst;
  for (std::size_t j = 0; j < s.nc; j += NR, dst += s.kc * NR) {
    const std::size_t cols = std::min(NR, s.nc - j);
    if (!s.trans) {
      const float* src = s.b + s.p0 * s.ldb + s.j0 + j;
      for (std::size_t p = 0; p < s.kc; ++p, src += s.ldb) {
        hn::Store(load_partial(d, src, std::min(cols, N)), d, dst + p * NR);
        hn::Store(cols > N ? load_partial(d, src + N, cols - N) : hn::Zero(d), d, dst + p * NR + N);
      }
    } else {
      // B(p, j) = b[j·ldb + p]: each source row is contiguous in p, so walk it once and scatter into the panel's column.
      for (std::size_t c = 0; c < NR; ++c) {
        float* col = dst + c;
        if (c >= cols) {
          for (std::size_t p = 0; p < s.kc; ++p) col[p * NR] = 0.0f;
          continue;
        }
        const float* src = s.b + (s.j0 + j + c) * s.ldb + s.p0;
        for (std::size_t p = 0; p < s.kc; ++p) col[p * NR] = src[p];
      }
    }
  }
}

void pack_a(const PackA& s) {
  for (std::size_t q = s.panel_begin; q < s.panel_end; ++q) {
    float* dst = s.dst + q * s.k * kMR;
    for (std::size_t r = 0; r < kMR; ++r) {
      const std::size_t i = q * kMR + r;
      if (i >= s.rows) {
        for (std::size_t p = 0; p < s.k; ++p) dst[p * kMR + r] = 0.0f;
      } else if (s.image && !s.image_trans) {
        const std::uint8_t* px = s.image->pixels + i * s.image->ld;
        const std::size_t w = std::min(s.image->width, s.k);
        for (std::size_t p = 0; p < w; ++p) dst[p * kMR + r] = float(px[p]) * (1.0f / 255.0f);
        for (std::size_t p = w; p < s.k; ++p) dst[p * kMR + r] = s.image->at<float>(i, p);
      } else if (s.image) {
        for (std::size_t p = 0; p < s.k; ++p) dst[p * kMR + r] = s.image->at<float>(p, i);
      } else {
        const float* src = s.a + i * s.lda;
        for (std::size_t p = 0; p < s.k; ++p) dst[p * kMR + r] = src[p];
      }
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

void adam(float* p, const float* g, float* m, float* v, std::size_t begin, std::size_t end, float lr_t, float beta1, float beta2,
          float eps_t) {
  const DF d;
  const std::size_t N = hn::Lanes(d);
  const VF b1 = hn::Set(d, beta1), b2 = hn::Set(d, beta2), c1 = hn::Set(d, 1.0f - beta1), c2 = hn::Set(d, 1.0f - beta2);
  const VF lr = hn::Set(d, lr_t), ep = hn::Set(d, eps_t);
  std::size_t i = begin;
  for (; i + N <= end; i += N) {
    const VF gi = hn::LoadU(d, g + i);
    const VF mi = hn::MulAdd(b1, hn::LoadU(d, m + i), hn::Mul(c1, gi));
    const VF vi = hn::MulAdd(b2, hn::LoadU(d, v + i), hn::Mul(c2, hn::Mul(gi, gi)));
    hn::StoreU(mi, d, m + i);
    hn::StoreU(vi, d, v + i);
    hn::StoreU(hn::NegMulAdd(lr, hn::Div(mi, hn::Add(hn::Sqrt(vi), ep)), hn::LoadU(d, p + i)), d, p + i);
  }
  for (; i < end; ++i) {
    m[i] = beta1 * m[i] + (1.0f - beta1) * g[i];
    v[i] = beta2 * v[i] + (1.0f - beta2) * g[i] * g[i];
    p[i] -= lr_t * (m[i] / (std::sqrt(v[i]) + eps_t));
  }
}

const Ops* get_ops() {
  static const Ops ops = [] {
    Ops o;
    o.target = hwy::TargetName(HWY_TARGET);
    o.mr = kMR;
    o.nr = nr();
    o.kc = kKC;
    o.pack_a = &pack_a;
    o.pack_b = &pack_b;
    o.gemm_block = &gemm_block;
    o.col_sums = &col_sums;
    o.bernoulli_rows = &bernoulli_rows;
    o.reparam_forward = &reparam_forward;
    o.reparam_backward = &reparam_backward;
    o.adam = &adam;
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

const Ops& best_ops() { return *HWY_DYNAMIC_DISPATCH(get_ops)(); }

std::vector<const Ops*> available_ops() {
  std::vector<const Ops*> all;
  for (std::int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    all.push_back(HWY_DYNAMIC_DISPATCH(get_ops)());
  }
  hwy::SetSupportedTargetsForTest(0);
  return all;
}

}  // namespace vae::simd
#endif
