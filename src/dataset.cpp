// Digit subsets, the validation split and the per-epoch permutation that every rank draws identically.
#include "vae/dataset.hpp"

#include <algorithm>
#include <numeric>

#include "vae/rng.hpp"

namespace vae {

Dataset Dataset::select_digits(const IdxPair& source, std::span<const int> digits) {
  bool want[kNumClasses] = {};
  for (int d : digits) want[d] = true;
  std::vector<std::uint32_t> rows;
  rows.reserve(source.count);
  for (std::size_t i = 0; i < source.count; ++i)
    if (want[source.labels[i]]) rows.push_back(static_cast<std::uint32_t>(i));
  return Dataset(&source, std::move(rows));
}

Dataset Dataset::split_tail(std::size_t n) {
  n = std::min(n, rows_.size());
  std::vector<std::uint32_t> tail(rows_.end() - static_cast<std::ptrdiff_t>(n), rows_.end());
  rows_.resize(rows_.size() - n);
  return Dataset(source_, std::move(tail));
}

Dataset Dataset::split_fold(std::size_t i, std::size_t k) {
  const std::size_t lo = rows_.size() * i / k, hi = rows_.size() * (i + 1) / k;
  std::vector<std::uint32_t> fold(rows_.begin() + std::ptrdiff_t(lo), rows_.begin() + std::ptrdiff_t(hi));
  rows_.erase(rows_.begin() + std::ptrdiff_t(lo), rows_.begin() + std::ptrdiff_t(hi));
  return Dataset(source_, std::move(fold));
}

void shift_image(const std::uint8_t* in, std::uint8_t* out, int dx, int dy) {
  constexpr int side = kImageSide;
  for (int y = 0; y < side; ++y)
    for (int x = 0; x < side; ++x) {
      const int sy = y - dy, sx = x - dx;
      out[y * side + x] = sy >= 0 && sy < side && sx >= 0 && sx < side ? in[sy * side + sx] : 0;
    }
}

std::pair<int, int> draw_shift(double p, int pixels, std::uint64_t key) {
  Rng rng(key);
  if (rng.uniform() >= p) return {0, 0};
  const std::uint64_t span = 2 * std::uint64_t(pixels) + 1;
  const int dx = int(rng.below(span)) - pixels;
  return {dx, int(rng.below(span)) - pixels};
}

void epoch_permutation(std::uint64_t seed, int epoch, std::span<std::uint32_t> out) {
  std::iota(out.begin(), out.end(), 0u);
  Rng rng(stream_key(seed, Stream::permutation, static_cast<std::uint64_t>(epoch)));
  for (std::size_t i = out.size(); i > 1; --i) std::swap(out[i - 1], out[rng.below(i)]);
}

}  // namespace vae
