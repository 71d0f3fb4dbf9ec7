// Fuzz target: the INI config parser and the command-line validation.
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_common.hpp"
#include "vae/config.hpp"
#include "vae/errors.hpp"

// The input up to the first NUL is an INI file given with --config; the NUL-separated pieces after it are further
// command-line arguments.
extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string all(reinterpret_cast<const char*>(data), size);
  const std::size_t end_of_ini = std::min(all.find('\0'), all.size());
  const vae::fuzz::Scratch scratch;
  const auto ini = scratch.write("fuzzed.ini", data, end_of_ini);
  std::vector<std::string> words = {"vae_dist", "--config", ini.string()};
  for (std::size_t at = end_of_ini + 1; at < all.size();) {
    const std::size_t next = std::min(all.find('\0', at), all.size());
    words.push_back(all.substr(at, next - at));
    at = next + 1;
  }
  std::vector<const char*> argv;
  for (const std::string& w : words) argv.push_back(w.c_str());
  try {
    const vae::ParsedArgs args = vae::parse_args(int(argv.size()), argv.data());
    // What a checkpoint records of an accepted configuration.
    if (!args.help && args.config.to_ini().empty()) __builtin_trap();
  } catch (const vae::UsageError& e) {
    // Every message is one printable line.
    for (const char* p = e.what(); *p; ++p)
      if (*p == '\n' || *p == '\r') __builtin_trap();
  }
  return 0;
}
