// What the fuzz targets share: each input is written to a file in a fresh private directory, as a user's file would be.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <exception>
#include <functional>
#include <string>
#include <string_view>

#include "vae/checkpoint.hpp"
#include "vae/errors.hpp"

// The sanitizer runtime's, when there is one (the fuzz build); the replays of the normal build have none.
extern "C" void __sanitizer_set_death_callback(void (*callback)()) __attribute__((weak));

namespace vae::fuzz {

// A directory of its own for one input, removed with everything in it (a .gz input's decompressed cache, say) at the end.
class Scratch {
 public:
  Scratch() {
    std::string pattern = (std::filesystem::temp_directory_path() / "vae_fuzz.XXXXXX").string();
    if (!mkdtemp(pattern.data())) std::abort();
    dir_ = pattern;
  }
  ~Scratch() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  std::filesystem::path write(const std::string& name, const std::uint8_t* data, std::size_t size) const {
    const std::filesystem::path p = dir_ / name;
    std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(data), std::streamsize(size));
    return p;
  }
  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::filesystem::path dir_;
};

// Keeps an input that crashed libhdf5 in a checking child in $VAE_FUZZ_CONTAINED, if set: the cases the tools must
// report as bad files (tests/fuzz/contained).
inline void keep_contained(const std::uint8_t* data, std::size_t size) {
  const char* dir = std::getenv("VAE_FUZZ_CONTAINED");
  if (!dir) return;
  std::filesystem::create_directories(dir);
  const std::filesystem::path p = std::filesystem::path(dir) / ("crash-" + std::to_string(size) + "-" + std::to_string(std::hash<std::string_view>{}(
                                                                   std::string_view(reinterpret_cast<const char*>(data), size)) % 1000000007));
  std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(data), std::streamsize(size));
}

// read(file) as a checking child runs it: the fuzzer's death callback (which would report the child's end as a finding
// of the parent's) is dropped first, since a child that libhdf5 ends is a contained case, not a finding.
template <class Read>
auto in_child(Read read) {
  return [read](const std::filesystem::path& file) {
    if (__sanitizer_set_death_callback) __sanitizer_set_death_callback(nullptr);
    read(file);
  };
}

// Whether check_in_child reported that reading the file ended the child (a libhdf5 crash, contained).
inline bool crashed_the_library(const std::exception& e) { return std::string(e.what()).find("crashed the HDF5 library") != std::string::npos; }

// One HDF5 input as the tools read a file from outside: in a checking child first (a libhdf5 crash ends only the child,
// and the input, reported as a bad file, is done with), then in this process, where the sanitizers and the coverage
// see our code. load throws UsageError for a file it refuses.
template <class Load>
int fuzz_hdf5_file(const std::uint8_t* data, std::size_t size, Load load) {
  const Scratch scratch;
  const auto file = scratch.write("fuzzed.h5", data, size);
  try {
    vae::check_in_child(file, in_child(load));
  } catch (const vae::UsageError& e) {
    if (crashed_the_library(e)) return keep_contained(data, size), 0;
  }
  try {
    load(file);
  } catch (const vae::UsageError&) {
  }
  return 0;
}

}  // namespace vae::fuzz
