// Whole-file reads and atomic writes (the temporary file is removed when anything fails).
#include "vae/file_io.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>

#include "vae/errors.hpp"

namespace vae {

void write_file_atomically(const std::filesystem::path& path, std::span<const std::uint8_t> bytes) {
  const std::filesystem::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
    out.flush();
    if (!out) {
      const std::string why = std::strerror(errno);
      out.close();
      std::error_code ignored;
      std::filesystem::remove(tmp, ignored);
      throw std::runtime_error(tmp.string() + ": cannot write: " + why);
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    throw std::runtime_error(path.string() + ": cannot rename into place: " + ec.message());
  }
}

std::vector<std::uint8_t> read_small_file(const std::filesystem::path& path, std::size_t max_bytes) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status)) throw UsageError(path.string() + ": no such file");
  if (!std::filesystem::is_regular_file(status)) throw UsageError(path.string() + ": not a regular file");
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) throw UsageError(path.string() + ": cannot read its size: " + ec.message());
  if (size > max_bytes) throw UsageError(path.string() + ": " + std::to_string(size) + " bytes, more than the " + std::to_string(max_bytes) + " expected");
  std::ifstream in(path, std::ios::binary);
  std::vector<std::uint8_t> bytes(size);
  in.read(reinterpret_cast<char*>(bytes.data()), std::streamsize(size));
  if (!in) throw UsageError(path.string() + ": cannot read: " + std::strerror(errno));
  return bytes;
}

}  // namespace vae
