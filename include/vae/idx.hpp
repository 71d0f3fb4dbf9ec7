// Reader for MNIST-format IDX files (images 0x00000803, labels 0x00000801), raw or gzip-compressed.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace vae {

inline constexpr int kImageSide = 28;
inline constexpr int kImagePixels = kImageSide * kImageSide;
inline constexpr int kNumClasses = 10;

// A whole file mapped read-only: every rank on a node reads the same pages of the page cache, so the data costs a rank
// no private memory.
class MappedFile {
 public:
  MappedFile() = default;
  explicit MappedFile(const std::filesystem::path& path);  // throws UsageError naming the file
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();
  std::span<const std::uint8_t> bytes() const { return {static_cast<const std::uint8_t*>(data_), size_}; }

 private:
  void* data_ = nullptr;
  std::size_t size_ = 0;
};

// Images and labels of one split, as stored: uint8 pixels, row-major, kImagePixels per image, in the mapped files
// (or in `owned`, for data made in memory).
struct IdxPair {
  std::string images_path;
  std::string labels_path;
  std::size_t count = 0;
  std::span<const std::uint8_t> pixels;  // [count × 784]
  std::span<const std::uint8_t> labels;  // [count], each in 0..9
  MappedFile image_file, label_file;
  std::vector<std::uint8_t> owned;

  // An IdxPair over data in memory (tests, tools): pixels then labels in one owned buffer.
  static IdxPair from_memory(const std::vector<std::uint8_t>& pixels, const std::vector<std::uint8_t>& labels);
};

// The whole file's bytes, inflated when the name ends in .gz. Throws UsageError naming the file.
std::vector<std::uint8_t> read_maybe_gzip(const std::filesystem::path& path);

// Validates magic, rank, 28×28 size, file length against the header, equal counts and label range, and maps the files.
// A .gz file is read through its decompressed cache (decompressed_cache). Every failure is a UsageError "PATH: problem".
IdxPair load_idx_pair(const std::filesystem::path& images, const std::filesystem::path& labels);

// For a .gz file: the raw file it decompresses to, next to it (or in the temporary directory when its directory is not
// writable), written atomically (temporary file, fsync, rename) the first time it is needed and reused while the .gz is
// unchanged (its size and modification time are in the name). Other paths are returned as they are. Run it on one rank
// per node before the others load, so each node decompresses once.
std::filesystem::path decompressed_cache(const std::filesystem::path& path);

// dir/name if it exists, else dir/name.gz, else a UsageError naming both.
std::filesystem::path resolve_idx_path(const std::filesystem::path& dir, const std::string& name);

// Serialise an IDX file (used by tests and tools that write their own data).
std::vector<std::uint8_t> make_idx_images(const std::vector<std::uint8_t>& pixels, std::uint32_t count, std::uint32_t rows = kImageSide,
                                          std::uint32_t cols = kImageSide);
std::vector<std::uint8_t> make_idx_labels(const std::vector<std::uint8_t>& labels);

}  // namespace vae
