// HDF5 checkpoints: model, optimizer and training state in one self-describing file (the only module that touches HDF5).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "vae/metrics.hpp"
#include "vae/model.hpp"
#include "vae/optimizer.hpp"
#include "vae/scheduler.hpp"

namespace vae {

inline constexpr const char* kCheckpointFormat = "vae_dist-checkpoint";
inline constexpr int kCheckpointVersion = 1;

// Everything besides the arrays that a run needs to continue exactly where it stopped.
struct TrainingState {
  int epoch = 0;          // epochs completed
  long step = 0;          // global steps completed (applied or dropped)
  long updates = 0;       // Adam updates applied (the t of its bias correction)
  long skipped = 0;       // steps dropped for a non-finite loss or gradient
  std::uint64_t seed = 0; // every random stream (initialisation, permutation, ε) is keyed by it, the epoch and the step
  int world_size = 1;
  bool binarize = false;   // trained on dynamically binarised images (the model's likelihood is of binary pixels)
  Precision precision = Precision::fp32;  // of the training products (the parameters saved are the fp32 master weights)
  SchedulerState scheduler;
  AdamParams adam;
  std::string config_ini;  // the full effective configuration
};

// What a checkpoint holds besides the state and Adam: the metrics of every epoch so far, the latest sample grid and the
// weights' moving average, when the run keeps one.
struct CheckpointExtras {
  std::span<const EpochRecord> metrics;
  std::span<const std::uint8_t> grid;  // [height × width] grey, 0 = black; empty for none
  std::size_t grid_width = 0, grid_height = 0;
  std::span<const float> ema;  // [layout.padded_size()]; empty for none
};

// The flat buffers (parameters, Adam m and v, one ParamLayout) and the state, as read back.
struct Checkpoint {
  Arch arch;
  TrainingState state;
  std::vector<float> params, adam_m, adam_v;  // [layout.padded_size()] each, padding zero
  std::vector<float> ema;                     // the weights' moving average, the same size; empty when none was kept
  std::vector<EpochRecord> metrics;           // one per epoch so far
};

// Writes path atomically: a temporary file beside it, flushed to disk, renamed over path, the directory flushed.
// Throws std::runtime_error naming the file on any HDF5 or file-system failure; path is then untouched.
void write_checkpoint(const std::filesystem::path& path, const Arch& arch, const ParamLayout& layout, std::span<const float> params,
                      std::span<const float> adam_m, std::span<const float> adam_v, const TrainingState& state,
                      const CheckpointExtras& extras = {});

// Images generated from a checkpoint (vae_sample), with what produced them.
struct SampleSet {
  std::string checkpoint, kind;              // source file; "grid", "digits", "interpolate" or "traverse"
  std::uint64_t seed = 0;
  double temperature = 1.0;
  std::size_t count = 0, classes = 0;
  std::span<const std::uint8_t> grid;        // [grid_height × grid_width] the images tiled; empty when there are too many
  std::size_t grid_width = 0, grid_height = 0;
};

// Fills images [rows × 28 × 28] (grey, 0 = black) and labels [rows × classes] (the label weights each was decoded with)
// for samples first … first + rows − 1.
using SampleSource = std::function<void(std::size_t first, std::size_t rows, std::uint8_t* images, float* labels)>;
inline constexpr std::size_t kSampleBatch = 1024;  // samples asked of a SampleSource at a time

// Writes /samples/{images, labels, grid} (grid an HDF5 image) atomically, as write_checkpoint does, asking `source` for
// kSampleBatch samples at a time, so any count is written in bounded memory.
void write_sample_file(const std::filesystem::path& path, const SampleSet& set, const SampleSource& source);

// Reads and validates: format and version, every dataset present with its shape, every value finite. Any problem is a
// UsageError "PATH: problem". Before anything is read, the file is refused if it holds what a checkpoint never does:
// soft or external links, external or virtual storage, filters other than deflate and shuffle (no plugin is ever
// loaded), more objects, attributes or elements than any checkpoint has.
Checkpoint read_checkpoint(const std::filesystem::path& path);

// Stochastic weight averaging (Izmailov et al., 2018): the mean of several checkpoints' parameters, summed in double in
// the order added, in a copy of the last one (its architecture, state, Adam moments and metrics; not its moving average
// of the weights, which is not the mean's). Only the running sum and the last checkpoint are held, so averaging many
// costs the memory of one. Each must have the first's architecture and data (grey or binarised); add throws a
// UsageError naming the file otherwise.
class CheckpointAverage {
 public:
  void add(Checkpoint c, const std::string& name);
  Checkpoint mean() &&;  // a UsageError with fewer than two added

 private:
  std::vector<double> sum_;
  Checkpoint last_;
  std::string first_name_, first_arch_;
  bool first_binarize_ = false;
  std::size_t count_ = 0;
};

// The weights a tool runs: "raw" (the checkpoint's parameters, as trained) or "ema" (its moving average of them, which
// replaces the parameters). A UsageError names `name` when it holds no average, or the option when `which` is neither.
void select_weights(Checkpoint& c, const std::string& which, const std::string& name);

struct ClassifierWeights;
// Reads the digit classifier's weights (scripts/train_classifier.py writes them), checked as a checkpoint is.
ClassifierWeights read_classifier(const std::filesystem::path& path);

// read_checkpoint and read_classifier for files from outside: the file is read in a child process first, so one that
// crashes libhdf5 (a crafted file past the checks) is reported as a UsageError naming it, not as a crash of the caller.
Checkpoint read_checkpoint_guarded(const std::filesystem::path& path);
ClassifierWeights read_classifier_guarded(const std::filesystem::path& path);
// Runs read(path) in a forked child and returns once it has finished cleanly. Its UsageError comes back as one, other
// exceptions as std::runtime_error; a child killed by a signal becomes a UsageError saying the file crashed the reader.
void check_in_child(const std::filesystem::path& path, const std::function<void(const std::filesystem::path&)>& read);

}  // namespace vae
