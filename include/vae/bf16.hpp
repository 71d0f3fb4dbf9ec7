// bfloat16 as the upper half of a float: rounding to nearest even and widening back, the one definition every module uses.
#pragma once

#include <cstdint>

namespace vae {

// __builtin_bit_cast is std::bit_cast, which emscripten 3.1.6's libc++ (the web build) lacks.

inline std::uint16_t bf16_round(float f) {
  const std::uint32_t u = __builtin_bit_cast(std::uint32_t, f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((u >> 16) | 0x40u);  // NaN stays NaN (quiet)
  return std::uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// A product operand: as bf16_round, but an fp32 denormal becomes a zero of its sign first, as the AVX512_BF16 dot product
// reads its inputs; a normal float never rounds to a bf16 denormal, so a packed operand is never one.
inline std::uint16_t bf16_operand(float f) {
  const std::uint32_t u = __builtin_bit_cast(std::uint32_t, f);
  if ((u & 0x7f800000u) == 0) return std::uint16_t((u >> 16) & 0x8000u);
  return bf16_round(f);
}

inline float bf16_widen(std::uint16_t h) { return __builtin_bit_cast(float, std::uint32_t(h) << 16); }

}  // namespace vae
