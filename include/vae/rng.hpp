// Counter-based randomness: a value depends only on (seed, stream, index), so every rank and every rank count draws the same numbers.
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>
#include <span>

namespace vae {

constexpr std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

constexpr std::uint64_t hash_combine(std::uint64_t a, std::uint64_t b) { return splitmix64(a ^ splitmix64(b + 0x632BE59BD9B4E019ull)); }

// Streams keep independent uses of one seed apart.
enum class Stream : std::uint64_t { init = 1, permutation = 2, reparam = 3, eval = 4, samples = 5, validation = 6, importance = 7, binarize = 8, calibration = 9, dropout = 10, shift = 11 };

inline std::uint64_t stream_key(std::uint64_t seed, Stream s, std::uint64_t a, std::uint64_t b = 0) {
  return hash_combine(hash_combine(hash_combine(seed, static_cast<std::uint64_t>(s)), a), b);
}

// xoshiro256** seeded through splitmix64; small, fast, and fully specified (unlike std:: distributions).
class Rng {
 public:
  explicit Rng(std::uint64_t key) {
    std::uint64_t x = key;
    for (auto& w : s_) w = splitmix64(x++);
  }
  std::uint64_t next() {
    const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const std::uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  // Uniform in (0, 1): never 0, so log() is safe.
  double uniform() { return (static_cast<double>(next() >> 11) + 0.5) * 0x1.0p-53; }
  // Uniform integer in [0, n) without modulo bias (Lemire's method).
  std::uint64_t below(std::uint64_t n) {
    __extension__ using u128 = unsigned __int128;
    u128 m = static_cast<u128>(next()) * n;
    auto low = static_cast<std::uint64_t>(m);
    if (low < n) {
      const std::uint64_t threshold = -n % n;
      while (low < threshold) {
        m = static_cast<u128>(next()) * n;
        low = static_cast<std::uint64_t>(m);
      }
    }
    return static_cast<std::uint64_t>(m >> 64);
  }
  // Uniform in (0, 1) on a grid of 2^-24, exactly representable as a float: the input of the Gaussian kernels.
  float uniform24() { return (static_cast<float>(next() >> 40) + 0.5f) * 0x1.0p-24f; }

 private:
  static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  std::uint64_t s_[4];
};

}  // namespace vae
