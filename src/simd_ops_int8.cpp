// The INT8 inference products: u8 activations × s8 weights summed in int32, emulated or with vpdpbusd, per Highway target.
#include "simd_ops.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "simd_ops_int8.cpp"
#include <hwy/foreach_target.h>  // IWYU pragma: keep
#include <hwy/highway.h>
#include <hwy/contrib/math/math-inl.h>

#if HWY_ARCH_X86
#include <cpuid.h>
#include <immintrin.h>
#endif

HWY_BEFORE_NAMESPACE();
namespace vae::simd {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

#include "simd_common-inl.h"

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

void add_int8_products(Ops& o) {
  o.int8_block = &emulated_int8::int8_block;
  o.pack_int8_panel = &pack_int8_panel;
  o.quantize_rows = &quantize_rows;
#if VAE_NATIVE_X86
  if (__builtin_cpu_supports("avx512vnni")) {
    o.int8_native = true;
    o.int8_block = &vnni::int8_block;
    o.int8_dot_loop = &vnni::int8_dot_loop;
  }
#endif
}

}  // namespace HWY_NAMESPACE
}  // namespace vae::simd
HWY_AFTER_NAMESPACE();
