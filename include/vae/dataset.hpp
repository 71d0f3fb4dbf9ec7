// A view of the rows of an IdxPair that a run uses: the digit subset, minus any held-out validation tail.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "vae/idx.hpp"

namespace vae {

class Dataset {
 public:
  Dataset() = default;
  Dataset(const IdxPair* source, std::vector<std::uint32_t> rows) : source_(source), rows_(std::move(rows)) {}

  // All rows of source whose label is in digits, in file order.
  static Dataset select_digits(const IdxPair& source, std::span<const int> digits);

  std::size_t size() const { return rows_.size(); }
  const std::uint8_t* image(std::size_t i) const { return source_->pixels.data() + std::size_t(rows_[i]) * kImagePixels; }
  int label(std::size_t i) const { return source_->labels[rows_[i]]; }

  // Keeps only the first n rows (n = 0 keeps all).
  void truncate(std::size_t n) {
    if (n > 0 && n < rows_.size()) rows_.resize(n);
  }

  // Moves the last n rows into a new dataset (the validation split) and drops them from this one.
  Dataset split_tail(std::size_t n);
  // Moves fold i of k (rows [i·N/k, (i+1)·N/k) in file order) into a new dataset and drops them from this one.
  Dataset split_fold(std::size_t i, std::size_t k);

 private:
  const IdxPair* source_ = nullptr;
  std::vector<std::uint32_t> rows_;
};

// A 28 × 28 image moved dx pixels right and dy down, the uncovered border black: out[y][x] = in[y − dy][x − dx] (in and
// out must not overlap).
void shift_image(const std::uint8_t* in, std::uint8_t* out, int dx, int dy);
// The shift of one training image, decided by key alone: with probability p, dx and dy each uniform in [−pixels, pixels]
// (so (0, 0) too); otherwise none.
std::pair<int, int> draw_shift(double p, int pixels, std::uint64_t key);

// Fisher-Yates permutation of [0, n) determined only by (seed, epoch): identical on every rank.
void epoch_permutation(std::uint64_t seed, int epoch, std::span<std::uint32_t> out);

}  // namespace vae
