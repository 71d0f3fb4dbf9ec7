// The run's configuration: every option on the command line and in INI files (command line over file over defaults).
#pragma once

#include <array>
#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include "vae/kernels.hpp"
#include "vae/model.hpp"
#include "vae/scheduler.hpp"

namespace vae {

enum class Progress { automatic, always, never };
enum class NanPolicy { stop, skip };

// A failure made to happen on purpose (--inject-fault), so the tests can check what the job does about it.
struct Fault {
  enum class Kind { none, exception, nan, kill };
  Kind kind = Kind::none;
  long step = 0;  // 1-based global step
  int rank = 0;
};

struct Config {
  std::string config_file;
  std::string preset = "v3";
  Arch arch;
  std::vector<int> digits;
  std::string data_dir = "data/mnist";
  std::string train_images, train_labels, test_images, test_labels;  // resolved paths ("" = from data_dir)
  int val_size = 0;
  bool binarize = false;  // dynamic binarisation: pixels drawn as Bernoulli(intensity) each time an image is used
  double shift = 0;       // the probability that a training image is moved, each time it is used (draw_shift)
  int shift_pixels = 1;   // by up to this many pixels along each axis
  int kfold = 0, fold = 0;  // K-fold validation: fold `fold` of the training set is the validation set (kfold 0: off)
  int train_limit = 0;  // use only the first N training images (0: all); for smoke runs
  int test_limit = 0;   // evaluate on the first N test images (0: all)
  int batch = 64;  // global batch, split across ranks
  double lr = 8e-4;
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_eps = 1e-8;
  double weight_decay = 0;  // AdamW's λ
  double ema_decay = 0;     // the weights' moving average: ema ← d·ema + (1 − d)·w after each update (0: none)
  double dropout = 0;       // in training, each hidden dense layer's units are zeroed with this probability (Network)
  int iw_train = 1;         // draws of z per training image; > 1: the importance-weighted bound (Network::loss)
  int epochs = 10;
  long max_steps = 0;  // 0 = no cap
  std::uint64_t seed = 42;
  int threads = 0;     // 0 = cores available to this rank / ranks sharing them
  std::string run_dir = "runs/default";
  KernelChoice kernels = KernelChoice::parallel;
  Precision precision = Precision::fp32;  // of the products; weights, optimizer and loss stay fp32
  Progress progress = Progress::automatic;
  std::string step_log;  // optional per-step loss log (JSON lines), written by rank 0
  NanPolicy nan_policy = NanPolicy::stop;
  double bucket_mb = 1.0;  // gradient allreduce bucket size
  bool node_shm = true;    // the ranks of a node share one backward pass (and nodes sync hierarchically) instead of a flat allreduce
  bool wire_bf16 = false;  // cross-node gradient sums travel as bfloat16 (added in fp32 on arrival)
  double comm_timeout = 30;  // seconds a step may make no communication progress before the watchdog ends the job (0: off)
  int checkpoint_every = 1;  // epochs between checkpoints (0: only at the end)
  long checkpoint_every_steps = 0;  // also every N global steps inside an epoch (0: off)
  int keep_checkpoints = 3;  // the newest K are kept
  std::string resume;        // "", "auto" (newest checkpoint in RUN_DIR/checkpoints, or a fresh start) or a file
  bool profile = false;
  Fault fault;
  std::array<ModeSpec, 3> modes;
  PlateauSpec plateau;

  // The effective configuration as INI text, loadable with --config.
  std::string to_ini() const;
};

struct ParsedArgs {
  bool help = false;
  std::string help_text;
  Config config;
};

// Throws UsageError with a one-line message for unknown options, malformed or out-of-range values.
ParsedArgs parse_args(int argc, const char* const* argv);

// --progress auto made definite: the live line shows when standard output is a terminal and no launcher started the
// process (mpirun hands its ranks a pseudo-terminal even when its own output goes to a job log; launch/local.sh passes
// --progress always when its own output is a terminal).
Progress resolve_progress(Progress asked, bool launched);

// The one-line message of a Boost.Program_options error, escaped and cut. Boost's own message never returns when a value
// holds one of its placeholders ('%value%'), so with a '%' in the input (percent, or any of argv) the message is made
// from the option's name alone.
std::string option_error(const std::exception& e, bool percent);
std::string option_error(const std::exception& e, int argc, const char* const* argv);

// Parses "640,320" into {640, 320}; throws UsageError naming the option.
std::vector<int> parse_int_list(const std::string& text, const std::string& option);

}  // namespace vae
