// Fuzz target: the IDX reader, raw and gzip, as images and as labels, beside a valid partner file.
#include <cstdint>
#include <vector>

#include "fuzz_common.hpp"
#include "vae/errors.hpp"
#include "vae/idx.hpp"

// The first byte chooses: bit 0, gzip (the rest is the .gz file) or raw; bit 1, the fuzzed file is the labels (a valid
// one-image file beside it) or the images (a valid one-label file beside it).
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const bool gz = data[0] & 1, labels = data[0] & 2;
  const vae::fuzz::Scratch scratch;
  const std::vector<std::uint8_t> image = vae::make_idx_images(std::vector<std::uint8_t>(784, 7), 1);
  const std::vector<std::uint8_t> label = vae::make_idx_labels({3});
  const auto fuzzed = scratch.write(gz ? "fuzzed.gz" : "fuzzed", data + 1, size - 1);
  const auto partner = labels ? scratch.write("images", image.data(), image.size()) : scratch.write("labels", label.data(), label.size());
  try {
    const vae::IdxPair pair = labels ? vae::load_idx_pair(partner, fuzzed) : vae::load_idx_pair(fuzzed, partner);
    // What the trainer then reads: every pixel and label.
    unsigned sum = 0;
    for (std::uint8_t p : pair.pixels) sum += p;
    for (std::uint8_t l : pair.labels) sum += l;
    if (pair.pixels.size() != pair.count * 784 || pair.labels.size() != pair.count) __builtin_trap();
    (void)sum;
  } catch (const vae::UsageError&) {
  }
  return 0;
}
