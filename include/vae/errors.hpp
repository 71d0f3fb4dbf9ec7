// Error types: UsageError is the user's fault (bad option, bad file) and exits 2; anything else is a bug or a system failure.
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>
#include <string_view>

namespace vae {

// A problem with the user's input: a wrong option, a missing or corrupt file. Exit code 2, no abort.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A failure every rank has learned of in the same collective (a non-finite loss, say): each rank throws it, rank 0
// prints it, and all exit with `code` together, so no MPI_Abort is needed.
class AgreedError : public std::runtime_error {
 public:
  AgreedError(const std::string& what, int code) : std::runtime_error(what), code_(code) {}
  int code() const { return code_; }

 private:
  int code_;
};

// Text from a file or the command line made fit for a one-line message: bytes that are not printable (control bytes,
// invalid UTF-8) shown as \xNN, and anything past `max` bytes cut, with the full length said.
std::string printable(std::string_view text, std::size_t max = 80);

// printable(text, max) in single quotes: how a message shows a value the user gave.
inline std::string in_quotes(std::string_view text, std::size_t max = 80) { return "'" + printable(text, max) + "'"; }

// Exit codes, documented in the README: job scripts branch on them.
inline constexpr int kExitFailure = 1;   // an error on some rank; the job was aborted
inline constexpr int kExitUsage = 2;     // a bad option or input file; nothing was trained
inline constexpr int kExitDiverged = 3;  // a NaN or Inf in a loss or gradient with --nan-policy stop
inline constexpr int kExitPreempted = 4; // stopped by SIGTERM, SIGUSR1 or SIGUSR2 after writing a checkpoint: requeue and --resume auto
inline constexpr int kExitCommTimeout = 5;  // no communication progress for --comm-timeout seconds (a lost link, a stuck or
                                            // dead peer): the job was ended; the last checkpoint is intact, requeue and resume

}  // namespace vae
