// PNG encoding (signature, IHDR, one zlib IDAT, IEND, each chunk CRC-32 checked) for 8-bit grey images.
#include "vae/png.hpp"

#include <zlib.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "vae/file_io.hpp"

namespace vae {
namespace {

void put32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(std::uint8_t(v >> s));
}

void chunk(std::vector<std::uint8_t>& out, const char* type, const std::vector<std::uint8_t>& data) {
  put32(out, std::uint32_t(data.size()));
  const std::size_t start = out.size();
  out.insert(out.end(), type, type + 4);
  out.insert(out.end(), data.begin(), data.end());
  put32(out, std::uint32_t(crc32(0L, out.data() + start, uInt(out.size() - start))));
}

}  // namespace

void write_png_gray(const std::filesystem::path& path, std::size_t width, std::size_t height, const std::uint8_t* pixels) {
  std::vector<std::uint8_t> raw;  // each row prefixed by filter type 0 (none)
  raw.reserve(height * (width + 1));
  for (std::size_t y = 0; y < height; ++y) {
    raw.push_back(0);
    raw.insert(raw.end(), pixels + y * width, pixels + (y + 1) * width);
  }
  uLongf packed_size = compressBound(uLong(raw.size()));
  std::vector<std::uint8_t> packed(packed_size);
  if (compress2(packed.data(), &packed_size, raw.data(), uLong(raw.size()), 9) != Z_OK)
    throw std::runtime_error(path.string() + ": PNG compression failed");
  packed.resize(packed_size);

  std::vector<std::uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  std::vector<std::uint8_t> ihdr;
  put32(ihdr, std::uint32_t(width));
  put32(ihdr, std::uint32_t(height));
  ihdr.insert(ihdr.end(), {8, 0, 0, 0, 0});  // 8 bits, grey, deflate, adaptive filtering, no interlace
  chunk(png, "IHDR", ihdr);
  chunk(png, "IDAT", packed);
  chunk(png, "IEND", {});

  write_file_atomically(path, png);
}

}  // namespace vae
