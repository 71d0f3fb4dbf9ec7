// A test's size capped by an environment variable: how the slow runs (sanitizers, emulators) narrow the suite.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <string>

namespace vae::test {

// n, or the value of `variable` when it is set and smaller.
inline std::size_t env_cap(const char* variable, std::size_t n) {
  const char* cap = std::getenv(variable);
  return cap && *cap ? std::min(n, std::size_t(std::stoul(cap))) : n;
}

}  // namespace vae::test
