// A minimal PNG writer for 8-bit grey images (sample grids), built on zlib.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>

namespace vae {

// Writes pixels [height × width] (row-major, 0 = black) to path, atomically (temporary file, then rename). Throws
// std::runtime_error naming the file.
void write_png_gray(const std::filesystem::path& path, std::size_t width, std::size_t height, const std::uint8_t* pixels);

}  // namespace vae
