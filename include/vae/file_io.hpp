// Whole-file reads and atomic writes for the small outputs (PNG, web decoder) that need no HDF5.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <vector>

namespace vae {

// Writes bytes to path atomically: a temporary file beside it, then a rename over path. Throws std::runtime_error naming
// the file; path is then untouched.
void write_file_atomically(const std::filesystem::path& path, std::span<const std::uint8_t> bytes);
// The file's bytes, at most max_bytes of them; throws UsageError naming the file when it is missing, not a regular file,
// unreadable or larger.
std::vector<std::uint8_t> read_small_file(const std::filesystem::path& path, std::size_t max_bytes);

}  // namespace vae
