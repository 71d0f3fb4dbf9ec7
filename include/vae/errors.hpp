// Error types: UsageError is the user's fault (bad option, bad file) and exits 2; anything else is a bug or a system failure.
#pragma once

#include <stdexcept>
#include <string>

namespace vae {

// A problem with the user's input: a wrong option, a missing or corrupt file. Exit code 2, no abort.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

inline constexpr int kExitUsage = 2;
inline constexpr int kExitFailure = 1;

}  // namespace vae
