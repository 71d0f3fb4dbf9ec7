// Reader for MNIST-format IDX files (images 0x00000803, labels 0x00000801), raw or gzip-compressed.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace vae {

inline constexpr int kImageSide = 28;
inline constexpr int kImagePixels = kImageSide * kImageSide;
inline constexpr int kNumClasses = 10;

// Images and labels of one split, as stored: uint8 pixels, row-major, kImagePixels per image.
struct IdxPair {
  std::string images_path;
  std::string labels_path;
  std::size_t count = 0;
  std::vector<std::uint8_t> pixels;  // [count × 784]
  std::vector<std::uint8_t> labels;  // [count], each in 0..9
};

// The whole file's bytes, inflated when the name ends in .gz. Throws UsageError naming the file.
std::vector<std::uint8_t> read_maybe_gzip(const std::filesystem::path& path);

// Validates magic, rank, 28×28 size, file length against the header, equal counts and label range.
// Every failure is a UsageError "PATH: problem".
IdxPair load_idx_pair(const std::filesystem::path& images, const std::filesystem::path& labels);

// dir/name if it exists, else dir/name.gz, else a UsageError naming both.
std::filesystem::path resolve_idx_path(const std::filesystem::path& dir, const std::string& name);

// Serialise an IDX file (used by tests and tools that write their own data).
std::vector<std::uint8_t> make_idx_images(const std::vector<std::uint8_t>& pixels, std::uint32_t count, std::uint32_t rows = kImageSide,
                                          std::uint32_t cols = kImageSide);
std::vector<std::uint8_t> make_idx_labels(const std::vector<std::uint8_t>& labels);

}  // namespace vae
