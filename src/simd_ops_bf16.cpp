// The bf16 products: operand packing, the emulated dot-product path, vdpbf16ps and AMX tiles, per Highway target.
#include "simd_ops.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <limits>

#include "vae/bf16.hpp"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "simd_ops_bf16.cpp"
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

HWY_BEFORE_NAMESPACE();
namespace vae::simd {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

#include "simd_common-inl.h"

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

#if HWY_TARGET <= HWY_AVX3
// q[v] lane 8s + t is pair word t of row 2v + s (v, t < 8, s < 2); afterwards q[t] lane r is pair word t of row r.
// Three two-source permutes each swap a bit of the vector index with one of the lane index (v's bits 0, 1, 2 with t's),
// the last also moving s to the lane's low bit.
HWY_INLINE void transpose_pair_words(__m512i q[8]) {
  alignas(64) static constexpr auto swap_bit = [] {
    std::array<std::array<std::int32_t, 16>, 6> idx{};
    for (int c = 0; c < 2; ++c)
      for (int L = 0; L < 16; ++L) {
        for (int b = 0; b < 2; ++b) idx[2 * b + c][L] = ((L >> b) & 1) * 16 + ((L & ~(1 << b)) | (c << b));
        const int q2 = L >> 3, q1 = (L >> 2) & 1, q0 = (L >> 1) & 1, s = L & 1;  // the final lane order (q2 q1 q0 s)
        idx[4 + c][L] = q2 * 16 + (s << 3 | c << 2 | q1 << 1 | q0);
      }
    return idx;
  }();
  for (int b = 0; b < 3; ++b) {
    const __m512i lo = _mm512_load_si512(swap_bit[2 * b].data()), hi = _mm512_load_si512(swap_bit[2 * b + 1].data());
    for (int v = 0; v < 8; ++v) {
      if (v & (1 << b)) continue;
      const __m512i a = q[v], other = q[v | 1 << b];
      q[v] = _mm512_permutex2var_epi32(a, lo, other);
      q[v | 1 << b] = _mm512_permutex2var_epi32(a, hi, other);
    }
  }
}
#endif

// Elements [e0, e1) of w [· × m] into the weight copy's two panel forms (Ops::bf16_copy_range): each element is one u16
// of each, written alone, so ranges written side by side (threads, the ranks of a node) never share a byte.
void bf16_copy_range(const float* w, std::size_t m, std::size_t e0, std::size_t e1, std::size_t k2f, std::size_t k2t, std::uint32_t* fwd,
                     std::uint32_t* trans) {
  const DF d;
  const hn::Rebind<std::uint16_t, DF> d16;
  const hn::RebindToSigned<DF> di;
  const std::size_t N = hn::Lanes(d), NR = nr();
  std::uint16_t* f16 = reinterpret_cast<std::uint16_t*>(fwd);
  std::uint16_t* t16 = reinterpret_cast<std::uint16_t*>(trans);
  // w(i, j) is B(i, j) of panel j / NR in the forward form and B(j, i) of panel i / NR in the transposed one
  auto fwd_at = [&](std::size_t i, std::size_t j) { return 2 * (((j / NR) * k2f + i / 2) * NR + j % NR) + (i & 1); };
  auto trans_at = [&](std::size_t i, std::size_t j) { return 2 * (((i / NR) * k2t + j / 2) * NR + i % NR) + (j & 1); };
  auto one = [&](std::size_t i, std::size_t j) {
    const std::uint16_t h = bf16_operand(w[i * m + j]);
    f16[fwd_at(i, j)] = h;
    if (trans) t16[trans_at(i, j)] = h;
  };
#if HWY_TARGET <= HWY_AVX3
  // the forward form's u16 lanes of one row's elements: every other lane, a masked store (which writes no other byte)
  const hn::Repartition<std::uint16_t, DF> dh;
  const auto odd_lane = hn::Eq(hn::And(hn::Iota(dh, 0), hn::Set(dh, 1)), hn::Set(dh, 1));
#endif
  if (N % 2) {  // a one-lane target: no whole pairs to store
    for (std::size_t e = e0; e < e1; ++e) one(e / m, e % m);
    return;
  }
  HWY_ALIGN std::uint16_t h[hn::MaxLanes(DF())];
#if HWY_TARGET != HWY_SCALAR
  // Rows i … i + R − 1 whole, R a power of two from 2 to N and i a multiple of R (so they lie in one panel of the
  // transposed form): row pairs make whole words of the forward form, and each R × N block is transposed in registers
  // (elsewhere through a tile in L1), so that the transposed form takes R words at a time (N/2 pair rows) instead of
  // one word per row in each of N/2 cache lines.
  const hn::RebindToUnsigned<DF> du;
  auto row_block = [&](std::size_t i, std::size_t R) {
#if HWY_TARGET <= HWY_AVX3
    // A whole line of the copy past the cache: it is read next by the following step's products, after Adam's pass has
    // streamed the optimizer's state through the cache, so keeping it buys little, while a cached store first reads the
    // line in (measured: the bf16 v3 step 4-7% faster, docs/benchmarks.md).
    auto store_line = [](std::uint32_t* p, __m512i v) {
      if (reinterpret_cast<std::uintptr_t>(p) % 64 == 0) _mm512_stream_si512(reinterpret_cast<__m512i*>(p), v);
      else _mm512_storeu_si512(p, v);
    };
    __m512i q[8];  // q[r/2]: rows r, r + 1 of the block as bf16, 8 pair words each
    // the low u16 of each u32 lane of row r, then of row r + 1
    alignas(64) static constexpr auto low_halves = [] {
      std::array<std::int16_t, 32> idx{};
      for (int k = 0; k < 32; ++k) idx[k] = std::int16_t(k < 16 ? 2 * k : 32 + 2 * (k - 16));
      return idx;
    }();
    const __m512i halves = _mm512_load_si512(low_halves.data());
#else
    HWY_ALIGN std::uint16_t tile[hn::MaxLanes(DF()) * hn::MaxLanes(DF())] = {};  // rows past R are gathered, not stored
    const hn::RebindToSigned<DF> ds;
    const auto tile_index = hn::Mul(hn::Iota(ds, 0), hn::Set(ds, std::int32_t(N / 2)));
    const auto rows = hn::FirstN(du, R);
#endif
    std::size_t j = 0;
    for (; j + N <= m; j += N) {
      for (std::size_t r = 0; r < R; r += 2) {
        const float* a = w + (i + r) * m + j;
        const auto lo = operand_bits(d, hn::LoadU(d, a)), hi = operand_bits(d, hn::LoadU(d, a + m));
#if HWY_TARGET <= HWY_AVX3
        store_line(fwd + ((j / NR) * k2f + (i + r) / 2) * NR + j % NR, hn::Or(lo, hn::ShiftLeft<16>(hi)).raw);
#else
        hn::StoreU(hn::Or(lo, hn::ShiftLeft<16>(hi)), du, fwd + ((j / NR) * k2f + (i + r) / 2) * NR + j % NR);
#endif
        if (!trans) continue;
#if HWY_TARGET <= HWY_AVX3
        q[r / 2] = _mm512_permutex2var_epi16(lo.raw, halves, hi.raw);
#else
        hn::Store(hn::DemoteTo(d16, hn::BitCast(di, lo)), d16, tile + r * N);
        hn::Store(hn::DemoteTo(d16, hn::BitCast(di, hi)), d16, tile + (r + 1) * N);
#endif
      }
      if (!trans) continue;
      std::uint32_t* t32 = trans + ((i / NR) * k2t + j / 2) * NR + i % NR;
#if HWY_TARGET <= HWY_AVX3
      for (std::size_t r = R; r < N; r += 2) q[r / 2] = _mm512_setzero_si512();
      transpose_pair_words(q);
      if (R == N)
        for (std::size_t t = 0; t < N / 2; ++t) store_line(t32 + t * NR, q[t]);
      else
        for (std::size_t t = 0; t < N / 2; ++t) _mm512_mask_storeu_epi32(t32 + t * NR, __mmask16((1u << R) - 1), q[t]);
#else
      // pair row t of the block: word r is row r's pair t, the u32 at r·N/2 + t of the tile
      const std::uint32_t* tile32 = reinterpret_cast<const std::uint32_t*>(tile);
      for (std::size_t t = 0; t < N / 2; ++t) hn::BlendedStore(hn::GatherIndex(du, tile32 + t, tile_index), rows, du, t32 + t * NR);
#endif
    }
    for (; j < m; ++j)
      for (std::size_t r = 0; r < R; ++r) one(i + r, j);
  };
#endif
  for (std::size_t e = e0; e < e1;) {
    const std::size_t i = e / m, end = std::min(e1 - i * m, m);
    std::size_t j = e - i * m;
#if HWY_TARGET != HWY_SCALAR
    if (j == 0) {
      std::size_t R = N;
      while (R > 1 && (i % R != 0 || e1 < (i + R) * m)) R /= 2;
      if (R > 1) {
        row_block(i, R);
        e = (i + R) * m;
        continue;
      }
    }
#endif
    // N-element runs from a multiple of N lie in one panel of the forward form and hold whole pairs of the transposed one
    for (; j < end && j % N != 0; ++j) one(i, j);
    for (; j + N <= end; j += N) {
      const auto bits = operand_bits(d, hn::LoadU(d, w + i * m + j));
#if HWY_TARGET <= HWY_AVX3
      const auto placed = hn::BitCast(dh, (i & 1) ? hn::ShiftLeft<16>(bits) : bits);
      hn::BlendedStore(placed, (i & 1) ? odd_lane : hn::Not(odd_lane), dh, f16 + fwd_at(i, j) - (i & 1));
      hn::Store(hn::DemoteTo(d16, hn::BitCast(di, bits)), d16, h);
#else
      hn::Store(hn::DemoteTo(d16, hn::BitCast(di, bits)), d16, h);
      std::uint16_t* f = f16 + fwd_at(i, j);
      for (std::size_t t = 0; t < N; ++t) f[2 * t] = h[t];
#endif
      if (!trans) continue;
      std::uint32_t* t32 = trans + ((i / NR) * k2t + j / 2) * NR + i % NR;
      for (std::size_t t = 0; t < N / 2; ++t) t32[t * NR] = std::uint32_t(h[2 * t]) | std::uint32_t(h[2 * t + 1]) << 16;
    }
    for (; j < end; ++j) one(i, j);
    e = i * m + end;
  }
#if HWY_TARGET <= HWY_AVX3
  _mm_sfence();  // the streamed lines visible before the task ends (the products of other threads read them)
#endif
}

// Two rows' bf16 operand bits, n ≤ N columns, into C's bf16 forms: each row's half words at h0 and h1 (the row form), the
// pair's words at w (the pair form: the first row low, the second high). Whole vectors when n is N.
HWY_INLINE void store_shadow_pair(DF d, hn::Vec<hn::RebindToUnsigned<DF>> b0, hn::Vec<hn::RebindToUnsigned<DF>> b1, std::uint16_t* h0,
                                  std::uint16_t* h1, std::uint32_t* w, std::size_t n) {
  const hn::RebindToUnsigned<DF> du;
  const hn::RebindToSigned<DF> di;
  const hn::Rebind<std::uint16_t, DF> d16;
  const auto words = hn::Or(b0, hn::ShiftLeft<16>(b1));
  if (n == hn::Lanes(d)) {
    hn::StoreU(hn::DemoteTo(d16, hn::BitCast(di, b0)), d16, h0);
    hn::StoreU(hn::DemoteTo(d16, hn::BitCast(di, b1)), d16, h1);
    hn::StoreU(words, du, w);
    return;
  }
  HWY_ALIGN std::uint16_t h[hn::MaxLanes(DF())];
  hn::Store(hn::DemoteTo(d16, hn::BitCast(di, b0)), d16, h);
  std::copy_n(h, n, h0);
  hn::Store(hn::DemoteTo(d16, hn::BitCast(di, b1)), d16, h);
  std::copy_n(h, n, h1);
  store_partial(d, hn::BitCast(d, words), reinterpret_cast<float*>(w), n);
}

// Rows [i, i + R) × columns [j, j + cols) of g's C, just written (still in L1), into C's bf16 forms (GemmBlock's c16
// fields): two rows at a time where a pair of C's rows lies in the block (whole words of the pair form), else the row
// form and a half word each. cols ≤ NR and j a multiple of NR, so each row's N-column runs lie in one panel.
void bf16_shadow_tile(const GemmBlock& g, std::size_t i, std::size_t R, std::size_t j, std::size_t cols) {
  const DF d;
  const hn::RebindToSigned<DF> di;
  const hn::Rebind<std::uint16_t, DF> d16;
  const std::size_t N = hn::Lanes(d);
  auto bits = [&](std::size_t r, std::size_t c, std::size_t n) { return operand_bits(d, load_partial(d, g.c + (i + r) * g.ldc + c, n)); };
  auto pair_word = [&](std::size_t row, std::size_t c) { return (c / g.pair_w) * g.pair_s + (row / 2) * g.pair_w + c % g.pair_w; };
  for (std::size_t r = 0; r < R;) {
    const std::size_t row = g.c16_row0 + i + r;
    std::uint16_t* h0 = g.c16_rows + (i + r) * g.c16_ld;
    if (row % 2 == 0 && r + 1 < R) {
      for (std::size_t c = j; c < j + cols; c += N) {
        const std::size_t n = std::min(N, j + cols - c);
        store_shadow_pair(d, bits(r, c, n), bits(r + 1, c, n), h0 + c, h0 + g.c16_ld + c, g.c16_pairs + pair_word(row, c), n);
      }
      r += 2;
      continue;
    }
    HWY_ALIGN std::uint16_t h[hn::MaxLanes(DF())];
    for (std::size_t c = j; c < j + cols; c += N) {
      const std::size_t n = std::min(N, j + cols - c);
      hn::Store(hn::DemoteTo(d16, hn::BitCast(di, bits(r, c, n))), d16, h);
      std::copy_n(h, n, h0 + c);
    }
    std::uint16_t* half = reinterpret_cast<std::uint16_t*>(g.c16_pairs) + row % 2;
    for (std::size_t c = j; c < j + cols; ++c) half[2 * pair_word(row, c)] = bf16_operand(g.c[(i + r) * g.ldc + c]);
    ++r;
  }
}

// Rows [i, i + R) of g.c, every column, into C's bf16 forms (Ops::bf16_shadow_rows): each pair of rows that is a pair
// of the shadow converted once, into both forms, N columns at a time; a row at an odd edge goes through
// bf16_shadow_tile, whose half-word stores leave the neighbouring row (another task's) alone.
void bf16_shadow_rows(const GemmBlock& g, std::size_t i, std::size_t R, std::size_t cols) {
  const DF d;
  const std::size_t N = hn::Lanes(d), NR = nr();
  auto edge = [&](std::size_t r) {
    for (std::size_t j = 0; j < cols; j += NR) bf16_shadow_tile(g, r, 1, j, std::min(NR, cols - j));
  };
  std::size_t r = i, end = i + R;
  if (r < end && (g.c16_row0 + r) % 2 == 1) edge(r++);
  for (; r + 1 < end; r += 2) {
    const float* x0 = g.c + r * g.ldc;
    const float* x1 = x0 + g.ldc;
    std::uint16_t* h0 = g.c16_rows + r * g.c16_ld;
    std::uint16_t* h1 = h0 + g.c16_ld;
    const std::size_t row = g.c16_row0 + r;
    for (std::size_t c = 0; c < cols; c += N) {
      const std::size_t n = std::min(N, cols - c);
      std::uint32_t* w = g.c16_pairs + (c / g.pair_w) * g.pair_s + (row / 2) * g.pair_w + c % g.pair_w;
      store_shadow_pair(d, operand_bits(d, load_partial(d, x0 + c, n)), operand_bits(d, load_partial(d, x1 + c, n)), h0 + c, h1 + c, w, n);
    }
  }
  if (r < end) edge(r);
}

// A result the dot-product instruction flushes: below the smallest normal float, a zero of its sign.
HWY_INLINE VF flush_small(DF d, VF x) {
  return hn::IfThenElse(hn::Lt(hn::Abs(x), hn::Set(d, std::numeric_limits<float>::min())), hn::And(x, hn::Set(d, -0.0f)), x);
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
    const std::uint32_t* b = g.b + (j / NR) * (g.b_stride ? g.b_stride : g.k2 * NR);
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

void add_bf16_products(Ops& o) {
  o.bf16_rows = &bf16_rows;
  o.bf16_pairs_rows = &bf16_pairs_rows;
  o.bf16_pairs = &bf16_pairs;
  o.bf16_trans_panel = &bf16_trans_panel;
  o.bf16_copy_range = &bf16_copy_range;
  o.bf16_shadow_rows = &bf16_shadow_rows;
  o.gemm_bf16_block = &emulated::gemm_bf16;
#if VAE_NATIVE_X86
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
}

}  // namespace HWY_NAMESPACE
}  // namespace vae::simd
HWY_AFTER_NAMESPACE();
