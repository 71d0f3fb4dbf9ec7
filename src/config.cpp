// Option parsing and validation with Boost.Program_options; every failure becomes a one-line UsageError.
#include "vae/config.hpp"

#include <boost/program_options.hpp>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <set>
#include <sstream>

#include "vae/errors.hpp"
#include "vae/version.hpp"

namespace po = boost::program_options;

namespace vae {
namespace {

struct Preset {
  std::vector<int> conv_channels;
  std::vector<int> hidden;
  int latent;
  int batch;
  double lr;
  const char* activation;
};

const Preset* find_preset(const std::string& name) {
  static const Preset v1{{}, {1024, 512}, 128, 16, 5e-5, "elu"};
  static const Preset v2{{}, {512, 256}, 64, 64, 1e-3, "elu"};
  static const Preset v3{{}, {640, 320}, 128, 64, 8e-4, "elu"};
  // Burda et al. (2015), one stochastic layer: two deterministic layers of 200 tanh units, 50 latent units, batch 20.
  static const Preset burda{{}, {200, 200}, 50, 20, 1e-3, "tanh"};
  // The conv CVAE: 1×28×28 → 32×14×14 → 64×7×7 → [3,136 | label] → 512 → 2×32, and its mirror (docs/architecture.md).
  static const Preset conv{{32, 64}, {512}, 32, 64, 1e-3, "elu"};
  if (name == "v1") return &v1;
  if (name == "v2") return &v2;
  if (name == "v3") return &v3;
  if (name == "burda") return &burda;
  if (name == "conv") return &conv;
  return nullptr;
}

[[noreturn]] void bad(const std::string& option, const std::string& problem) { throw UsageError("option --" + option + ": " + problem); }

Activation parse_activation(const std::string& s) {
  if (s == "elu") return Activation::elu;
  if (s == "relu") return Activation::relu;
  if (s == "leaky_relu") return Activation::leaky_relu;
  if (s == "tanh") return Activation::tanh;
  bad("activation", "unknown activation " + in_quotes(s) + " (expected elu, relu, leaky_relu or tanh)");
}

const char* kModeKeys[3] = {"fast", "balanced", "quality"};

// Defaults in ELBO units, measured in docs/modes.md: a short KL warm-up, then the true ELBO, then a lower learning rate.
constexpr ModeSpec kDefaultModes[3] = {
    {2, 0.5, 1.0, 2, 1.0},
    {8, 1.0, 1.0, 0, 1.0},
    {0, 1.0, 1.0, 0, 0.25},
};

Fault parse_fault(const std::string& text) {
  Fault f;
  if (text.empty()) return f;
  const auto first = text.find(':');
  const std::string kind = text.substr(0, first);
  if (kind == "throw") f.kind = Fault::Kind::exception;
  else if (kind == "nan") f.kind = Fault::Kind::nan;
  else if (kind == "kill") f.kind = Fault::Kind::kill;
  else bad("inject-fault", "unknown kind " + in_quotes(kind) + " (expected throw, nan or kill)");
  if (first == std::string::npos) bad("inject-fault", "expected KIND:STEP[:RANK], got " + in_quotes(text));
  std::string rest = text.substr(first + 1);
  std::replace(rest.begin(), rest.end(), ':', ',');
  const std::vector<int> numbers = parse_int_list(rest, "inject-fault");
  if (numbers.empty() || numbers.size() > 2 || numbers[0] < 1 || (numbers.size() == 2 && numbers[1] < 0))
    bad("inject-fault", "expected KIND:STEP[:RANK] with STEP ≥ 1, got " + in_quotes(text));
  f.step = numbers[0];
  f.rank = numbers.size() == 2 ? numbers[1] : 0;
  return f;
}

po::options_description make_options() {
  po::options_description general("General");
  general.add_options()
      ("help,h", "print this help and exit")
      ("version", "print the version and the git commit it was built from, and exit")
      ("config", po::value<std::string>(), "INI file with any of these options (command line wins)")
      ("run-dir", po::value<std::string>()->default_value("runs/default"), "directory for metrics and checkpoints")
      ("seed", po::value<std::uint64_t>()->default_value(42), "seed for initialisation, shuffling and sampling")
      ("threads", po::value<int>()->default_value(0), "threads per rank (0: cores available to the rank / ranks sharing them)")
      ("kernels", po::value<std::string>()->default_value("parallel"), "kernel set: parallel (TBB, SIMD) or reference (plain loops)")
      ("precision", po::value<std::string>()->default_value("fp32"),
       "what the layers' products multiply: fp32, or bf16 (bfloat16 operands, fp32 sums, fp32 master weights and optimizer)")
      ("progress", po::value<std::string>()->default_value("auto"), "live progress line: auto (a terminal, not under mpirun), always, never")
      ("step-log", po::value<std::string>()->default_value(""), "write every step's global loss to this JSON-lines file (rank 0)");

  po::options_description model("Model");
  model.add_options()
      ("preset", po::value<std::string>()->default_value("v3"),
       "architecture preset: v1, v2, v3, burda (Burda et al. 2015: 200-200 tanh, latent 50), or conv (the conv CVAE: "
       "convolutions 32,64, dense 512, latent 32) (sets conv-channels, hidden, latent, activation, batch, lr)")
      ("conv-channels", po::value<std::string>(),
       "channels of the encoder's 4x4 stride-2 convolutions, comma-separated (at most 2), mirrored by the decoder's "
       "transposed ones; none: an MLP (default: from preset)")
      ("hidden", po::value<std::string>(), "encoder hidden widths, comma-separated, decoder mirrors them (default: from preset)")
      ("latent", po::value<int>(), "latent dimension (default: from preset)")
      ("activation", po::value<std::string>(), "hidden activation: elu, relu, leaky_relu, tanh (default: from preset)")
      ("conditional", po::value<std::string>()->default_value("on"), "on: the label's one-hot feeds encoder and decoder; off: an unconditional VAE")
      ("classes", po::value<int>()->default_value(0),
       "label classes of the model, 1-10 (0: one more than the largest label in the training labels)")
      ("label-layers", po::value<std::string>()->default_value("first"),
       "where the label enters the decoder: first (its input layer, with z) or all (every decoder layer)");

  po::options_description data("Data");
  data.add_options()
      ("data-dir", po::value<std::string>()->default_value("data/mnist"), "directory with the four MNIST IDX files (raw or .gz)")
      ("train-images", po::value<std::string>()->default_value(""), "training images IDX file (default: DATA_DIR/train-images-idx3-ubyte[.gz])")
      ("train-labels", po::value<std::string>()->default_value(""), "training labels IDX file (default: DATA_DIR/train-labels-idx1-ubyte[.gz])")
      ("test-images", po::value<std::string>()->default_value(""), "test images IDX file (default: DATA_DIR/t10k-images-idx3-ubyte[.gz])")
      ("test-labels", po::value<std::string>()->default_value(""), "test labels IDX file (default: DATA_DIR/t10k-labels-idx1-ubyte[.gz])")
      ("digits", po::value<std::string>()->default_value("all"), "digits to train and test on, e.g. 0,1 (the report's binary mode) or all")
      ("val-size", po::value<int>()->default_value(0), "hold out the last N training images as a validation set (needed for plateau switching)")
      ("train-limit", po::value<int>()->default_value(0), "use only the first N training images of the digit set (0: all)")
      ("test-limit", po::value<int>()->default_value(0), "evaluate on the first N test images of the digit set (0: all)")
      ("binarize", po::value<std::string>()->default_value("none"),
       "none: grey levels as Bernoulli means; dynamic: each pixel drawn as Bernoulli(intensity) every time an image is used "
       "(the test set binarised once, with a fixed seed)")
      ("shift", po::value<double>()->default_value(0.0),
       "augmentation: each time a training image is used, with this probability move it by dx, dy drawn uniformly from "
       "[-shift-pixels, shift-pixels] (the border black); evaluation sees the images as they are (0: off)")
      ("shift-pixels", po::value<int>()->default_value(1), "the largest move of --shift along each axis, in pixels")
      ("kfold", po::value<int>()->default_value(0), "K-fold validation: split the training set into K folds (0: off)")
      ("fold", po::value<int>()->default_value(0), "with --kfold K: hold out fold i (0 ≤ i < K) as the validation set");

  po::options_description train("Training");
  train.add_options()
      ("batch", po::value<int>(), "global batch size, split evenly across ranks (default: from preset)")
      ("lr", po::value<double>(), "base Adam learning rate (default: from preset)")
      ("adam-beta1", po::value<double>()->default_value(0.9), "Adam β1")
      ("adam-beta2", po::value<double>()->default_value(0.999), "Adam β2")
      ("adam-eps", po::value<double>()->default_value(1e-8), "Adam ε")
      ("weight-decay", po::value<double>()->default_value(0.0),
       "AdamW's decoupled weight decay λ: every parameter × (1 − lr·λ) each step (0: plain Adam)")
      ("ema-decay", po::value<double>()->default_value(0.0),
       "keep an exponential moving average of the weights, ema ← d·ema + (1 − d)·w after each update, in the checkpoints "
       "for vae_eval and vae_sample --weights ema (0: none; e.g. 0.999)")
      ("dropout", po::value<double>()->default_value(0.0),
       "in training, zero each unit of every hidden dense layer (the --hidden widths, encoder and decoder) with this "
       "probability and scale the kept ones by 1/(1 − p); evaluation and the tools keep every unit (0: off)")
      ("iw-train", po::value<int>()->default_value(1),
       "train on the importance-weighted bound with this many draws of z per image (Burda et al. 2015; each step runs "
       "batch × K rows); 1: the ELBO")
      ("epochs", po::value<int>()->default_value(10), "epochs to train")
      ("max-steps", po::value<long>()->default_value(0), "stop after this many steps in total (0: no cap)")
      ("nan-policy", po::value<std::string>()->default_value("stop"),
       "a NaN or Inf in any rank's loss or gradient: stop (with an error naming step and rank) or skip (drop that step's update and count it)")
      ("bucket-mb", po::value<double>()->default_value(1.0),
       "gradient allreduce bucket size in MiB: each bucket is reduced while the backward pass goes on")
      ("node-reduce", po::value<std::string>()->default_value("shm"),
       "how the ranks of a one-node job form the gradient: shm (one backward pass shared in MPI shared memory, each rank forming its "
       "rows of every weight gradient: nothing to sum; across nodes each rank then allreduces only its own rows with the ranks of "
       "the same local index) or mpi (a flat bucketed MPI_Iallreduce of the whole gradient by every rank)")
      ("wire", po::value<std::string>()->default_value("fp32"),
       "format of the gradient sums that cross nodes: fp32, or bf16 (half the bytes; added in fp32 on arrival)")
      ("comm-timeout", po::value<double>()->default_value(30),
       "seconds a step may wait on other ranks without progress before the job is ended with exit code 5 (a lost link, a "
       "stuck peer); start-up and checkpoints get 10 times as long; 0: wait forever")
      ("checkpoint-every", po::value<int>()->default_value(1), "epochs between HDF5 checkpoints in RUN_DIR/checkpoints (0: only at the end)")
      ("checkpoint-every-steps", po::value<long>()->default_value(0),
       "also checkpoint every N global steps inside an epoch, as ckpt-eNNNN-sSSSSSSSSS.h5 (0: off)")
      ("keep-checkpoints", po::value<int>()->default_value(3), "keep the newest K checkpoints")
      ("resume", po::value<std::string>()->default_value(""),
       "continue from a checkpoint: auto (the newest complete one in RUN_DIR/checkpoints, or start fresh if none) or a file")
      ("profile", po::bool_switch(), "print a per-phase time summary on rank 0 at the end");

  po::options_description testing("Testing");
  testing.add_options()
      ("inject-fault", po::value<std::string>()->default_value(""),
       "make a failure happen, for testing: KIND:STEP[:RANK] with KIND throw, nan or kill (rank 0 by default)");

  po::options_description modes("Progressive modes (β in ELBO units; β = 1 is the true ELBO)");
  for (int m = 0; m < 3; ++m) {
    const std::string k = kModeKeys[m];
    const ModeSpec& d = kDefaultModes[m];
    if (m < 2)
      modes.add_options()((k + ".until").c_str(), po::value<int>()->default_value(d.until),
                          ("epoch at which " + k + " hands over to the next mode").c_str());
    modes.add_options()
        ((k + ".beta-start").c_str(), po::value<double>()->default_value(d.beta_start), ("β when " + k + " starts").c_str())
        ((k + ".beta-end").c_str(), po::value<double>()->default_value(d.beta_end), ("β after the ramp of " + k).c_str())
        ((k + ".ramp-epochs").c_str(), po::value<int>()->default_value(d.ramp_epochs), ("epochs of the linear β ramp in " + k).c_str())
        ((k + ".lr-factor").c_str(), po::value<double>()->default_value(d.lr_factor), ("learning-rate factor in " + k).c_str());
  }
  modes.add_options()
      ("plateau.patience", po::value<int>()->default_value(0), "move to the next mode after this many epochs without validation improvement (0: off)")
      ("plateau.min-delta", po::value<double>()->default_value(0.002), "an improvement must exceed this fraction of the best validation loss");

  po::options_description all("vae_dist: distributed data-parallel conditional VAE trainer\n\nUsage: mpirun -n N vae_dist [options]\n");
  all.add(general).add(model).add(data).add(train).add(modes).add(testing);
  return all;
}

std::vector<int> parse_digits(const std::string& text) {
  if (text == "all") return {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  std::vector<int> d = parse_int_list(text, "digits");
  std::set<int> seen;
  for (int x : d) {
    if (x < 0 || x > 9) bad("digits", "digit " + std::to_string(x) + " is outside 0-9");
    if (!seen.insert(x).second) bad("digits", "digit " + std::to_string(x) + " is listed twice");
  }
  return d;
}

template <class T>
T get(const po::variables_map& vm, const char* key) {
  return vm[key].as<T>();
}

Config build(const po::variables_map& vm) {
  Config c;
  if (vm.count("config")) c.config_file = get<std::string>(vm, "config");
  c.preset = get<std::string>(vm, "preset");
  const Preset* p = find_preset(c.preset);
  if (!p) bad("preset", "unknown preset " + in_quotes(c.preset) + " (expected v1, v2, v3, burda or conv)");
  if (!vm.count("conv-channels")) c.arch.conv_channels = p->conv_channels;
  else if (get<std::string>(vm, "conv-channels") != "none")
    c.arch.conv_channels = parse_int_list(get<std::string>(vm, "conv-channels"), "conv-channels");
  c.arch.hidden = vm.count("hidden") ? parse_int_list(get<std::string>(vm, "hidden"), "hidden") : p->hidden;
  c.arch.latent = vm.count("latent") ? get<int>(vm, "latent") : p->latent;
  c.arch.act = parse_activation(vm.count("activation") ? get<std::string>(vm, "activation") : std::string(p->activation));
  const std::string conditional = get<std::string>(vm, "conditional");
  if (conditional != "on" && conditional != "off") bad("conditional", "unknown value " + in_quotes(conditional) + " (expected on or off)");
  c.arch.conditional = conditional == "on";
  c.arch.classes = get<int>(vm, "classes");
  const std::string label_layers = get<std::string>(vm, "label-layers");
  if (label_layers != "first" && label_layers != "all") bad("label-layers", "unknown value " + in_quotes(label_layers) + " (expected first or all)");
  c.arch.label_every_layer = label_layers == "all";
  const std::string binarize = get<std::string>(vm, "binarize");
  if (binarize != "none" && binarize != "dynamic") bad("binarize", "unknown value " + in_quotes(binarize) + " (expected none or dynamic)");
  c.binarize = binarize == "dynamic";
  c.shift = get<double>(vm, "shift");
  c.shift_pixels = get<int>(vm, "shift-pixels");
  c.kfold = get<int>(vm, "kfold");
  c.fold = get<int>(vm, "fold");
  c.batch = vm.count("batch") ? get<int>(vm, "batch") : p->batch;
  c.lr = vm.count("lr") ? get<double>(vm, "lr") : p->lr;
  c.digits = parse_digits(get<std::string>(vm, "digits"));
  c.data_dir = get<std::string>(vm, "data-dir");
  c.train_images = get<std::string>(vm, "train-images");
  c.train_labels = get<std::string>(vm, "train-labels");
  c.test_images = get<std::string>(vm, "test-images");
  c.test_labels = get<std::string>(vm, "test-labels");
  c.val_size = get<int>(vm, "val-size");
  c.train_limit = get<int>(vm, "train-limit");
  c.test_limit = get<int>(vm, "test-limit");
  c.adam_beta1 = get<double>(vm, "adam-beta1");
  c.adam_beta2 = get<double>(vm, "adam-beta2");
  c.adam_eps = get<double>(vm, "adam-eps");
  c.weight_decay = get<double>(vm, "weight-decay");
  c.ema_decay = get<double>(vm, "ema-decay");
  c.dropout = get<double>(vm, "dropout");
  c.iw_train = get<int>(vm, "iw-train");
  c.epochs = get<int>(vm, "epochs");
  c.max_steps = get<long>(vm, "max-steps");
  c.seed = get<std::uint64_t>(vm, "seed");
  c.threads = get<int>(vm, "threads");
  c.run_dir = get<std::string>(vm, "run-dir");
  c.step_log = get<std::string>(vm, "step-log");
  const std::string nan = get<std::string>(vm, "nan-policy");
  if (nan == "stop") c.nan_policy = NanPolicy::stop;
  else if (nan == "skip") c.nan_policy = NanPolicy::skip;
  else bad("nan-policy", "unknown value " + in_quotes(nan) + " (expected stop or skip)");
  c.profile = vm["profile"].as<bool>();
  c.bucket_mb = get<double>(vm, "bucket-mb");
  c.checkpoint_every = get<int>(vm, "checkpoint-every");
  c.checkpoint_every_steps = get<long>(vm, "checkpoint-every-steps");
  c.keep_checkpoints = get<int>(vm, "keep-checkpoints");
  c.resume = get<std::string>(vm, "resume");
  const std::string reduce = get<std::string>(vm, "node-reduce");
  if (reduce == "shm") c.node_shm = true;
  else if (reduce == "mpi") c.node_shm = false;
  else bad("node-reduce", "unknown value " + in_quotes(reduce) + " (expected shm or mpi)");
  const std::string wire = get<std::string>(vm, "wire");
  if (wire == "fp32") c.wire_bf16 = false;
  else if (wire == "bf16") c.wire_bf16 = true;
  else bad("wire", "unknown value " + in_quotes(wire) + " (expected fp32 or bf16)");
  c.comm_timeout = get<double>(vm, "comm-timeout");
  c.fault = parse_fault(get<std::string>(vm, "inject-fault"));
  const std::string kernels = get<std::string>(vm, "kernels");
  if (kernels == "parallel") c.kernels = KernelChoice::parallel;
  else if (kernels == "reference") c.kernels = KernelChoice::reference;
  else bad("kernels", "unknown kernel set " + in_quotes(kernels) + " (expected parallel or reference)");
  const std::string precision = get<std::string>(vm, "precision");
  if (precision == "fp32") c.precision = Precision::fp32;
  else if (precision == "bf16") c.precision = Precision::bf16;
  else bad("precision", "unknown value " + in_quotes(precision) + " (expected fp32 or bf16)");
  const std::string progress = get<std::string>(vm, "progress");
  if (progress == "auto") c.progress = Progress::automatic;
  else if (progress == "always") c.progress = Progress::always;
  else if (progress == "never") c.progress = Progress::never;
  else bad("progress", "unknown value " + in_quotes(progress) + " (expected auto, always or never)");
  for (int m = 0; m < 3; ++m) {
    const std::string k = kModeKeys[m];
    ModeSpec& s = c.modes[std::size_t(m)];
    s.until = m < 2 ? get<int>(vm, (k + ".until").c_str()) : 0;
    s.beta_start = get<double>(vm, (k + ".beta-start").c_str());
    s.beta_end = get<double>(vm, (k + ".beta-end").c_str());
    s.ramp_epochs = get<int>(vm, (k + ".ramp-epochs").c_str());
    s.lr_factor = get<double>(vm, (k + ".lr-factor").c_str());
  }
  c.plateau.patience = get<int>(vm, "plateau.patience");
  c.plateau.min_delta = get<double>(vm, "plateau.min-delta");
  return c;
}

void validate(const Config& c) {
  if (c.arch.hidden.empty()) bad("hidden", "needs at least one layer");
  for (int h : c.arch.hidden)
    if (h <= 0 || h > 65536) bad("hidden", "width " + std::to_string(h) + " is outside 1-65536");
  if (c.arch.conv_channels.size() > 2)
    bad("conv-channels", "takes at most 2 convolutions (a third would halve the 7-pixel side), got " + std::to_string(c.arch.conv_channels.size()));
  for (int ch : c.arch.conv_channels)
    if (ch <= 0 || ch > 4096) bad("conv-channels", "channel count " + std::to_string(ch) + " is outside 1-4096");
  if (c.arch.latent <= 0 || c.arch.latent > 4096) bad("latent", "must be in 1-4096, got " + std::to_string(c.arch.latent));
  if (c.arch.classes < 0 || c.arch.classes > kNumClasses)
    bad("classes", "must be in 0-" + std::to_string(kNumClasses) + ", got " + std::to_string(c.arch.classes));
  if (c.batch <= 0) bad("batch", "must be positive, got " + std::to_string(c.batch));
  if (!(c.lr > 0) || c.lr > 1) bad("lr", "must be in (0, 1], got " + std::to_string(c.lr));
  if (!(c.adam_beta1 >= 0 && c.adam_beta1 < 1)) bad("adam-beta1", "must be in [0, 1)");
  if (!(c.adam_beta2 >= 0 && c.adam_beta2 < 1)) bad("adam-beta2", "must be in [0, 1)");
  if (!(c.adam_eps > 0)) bad("adam-eps", "must be positive");
  if (!(c.weight_decay >= 0 && c.lr * c.weight_decay < 1)) bad("weight-decay", "must be in [0, 1/lr), got " + std::to_string(c.weight_decay));
  if (!(c.ema_decay >= 0 && c.ema_decay < 1)) bad("ema-decay", "must be in [0, 1), got " + std::to_string(c.ema_decay));
  if (!(c.dropout >= 0 && c.dropout < 1)) bad("dropout", "must be in [0, 1), got " + std::to_string(c.dropout));
  if (c.iw_train < 1 || std::size_t(c.iw_train) > kMaxImportanceSamples)
    bad("iw-train", "must be in 1-" + std::to_string(kMaxImportanceSamples) + ", got " + std::to_string(c.iw_train));
  if (!(c.shift >= 0 && c.shift <= 1)) bad("shift", "must be in [0, 1], got " + std::to_string(c.shift));
  if (c.shift_pixels < 1 || c.shift_pixels >= kImageSide) bad("shift-pixels", "must be in 1-27, got " + std::to_string(c.shift_pixels));
  if (c.epochs < 0) bad("epochs", "must not be negative, got " + std::to_string(c.epochs));
  if (c.max_steps < 0) bad("max-steps", "must not be negative");
  if (!(c.bucket_mb > 0 && c.bucket_mb <= 4096)) bad("bucket-mb", "must be in (0, 4096]");
  if (!(c.comm_timeout >= 0 && c.comm_timeout <= 86400)) bad("comm-timeout", "must be in 0-86400 seconds");
  if (c.checkpoint_every < 0) bad("checkpoint-every", "must not be negative");
  if (c.checkpoint_every_steps < 0) bad("checkpoint-every-steps", "must not be negative");
  if (c.keep_checkpoints < 1) bad("keep-checkpoints", "must be at least 1");
  if (c.threads < 0 || c.threads > 1024) bad("threads", "must be in 0-1024, got " + std::to_string(c.threads));
  if (c.val_size < 0) bad("val-size", "must not be negative");
  if (c.train_limit < 0) bad("train-limit", "must not be negative");
  if (c.test_limit < 0) bad("test-limit", "must not be negative");
  if (c.kfold < 0 || c.kfold == 1 || c.kfold > 100) bad("kfold", "must be 0 (off) or 2-100");
  if (c.kfold > 0 && (c.fold < 0 || c.fold >= c.kfold))
    bad("fold", "must be in 0-" + std::to_string(c.kfold - 1) + " with --kfold " + std::to_string(c.kfold));
  if (c.kfold == 0 && c.fold != 0) bad("fold", "needs --kfold K");
  if (c.kfold > 0 && c.val_size > 0) bad("kfold", "the validation set is the held-out fold: do not give --val-size too");
  if (c.digits.empty()) bad("digits", "the digit set is empty");
  if (c.run_dir.empty()) bad("run-dir", "must not be empty");
  for (int m = 0; m < 3; ++m) {
    const std::string k = kModeKeys[m];
    const ModeSpec& s = c.modes[std::size_t(m)];
    if (!(s.beta_start >= 0) || !(s.beta_end >= 0)) bad(k + ".beta-start", "β must not be negative");
    if (s.ramp_epochs < 0) bad(k + ".ramp-epochs", "must not be negative");
    if (!(s.lr_factor > 0)) bad(k + ".lr-factor", "must be positive");
    if (m < 2 && s.until < 0) bad(k + ".until", "must not be negative");
  }
  if (c.modes[0].until > c.modes[1].until) bad("balanced.until", "must not be before fast.until");
  if (c.plateau.patience < 0) bad("plateau.patience", "must not be negative");
  if (!(c.plateau.min_delta >= 0 && c.plateau.min_delta < 1)) bad("plateau.min-delta", "must be in [0, 1)");
  if (c.plateau.patience > 0 && c.val_size == 0) bad("plateau.patience", "plateau switching needs a validation set (--val-size N)");
}

std::string join(const std::vector<int>& v) {
  std::string s;
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (i) s += ',';
    s += std::to_string(v[i]);
  }
  return s;
}

}  // namespace

// Boost's message for an error never returns when a value holds one of its own placeholders (a value '%value%' is put
// in for '%value%' for ever, found by fuzzing): with a '%' anywhere in the input the message is made here, from the
// option's name alone, which Boost gives without substituting.
std::string option_error(const std::exception& e, bool percent) {
  if (!percent) return printable(e.what(), 160);
  if (!dynamic_cast<const po::error*>(&e)) return printable(e.what(), 160);
  const auto* named = dynamic_cast<const po::error_with_option_name*>(&e);
  const std::string option = named ? in_quotes(named->get_option_name()) : std::string("an option");
  if (dynamic_cast<const po::unknown_option*>(&e)) return "unrecognised option " + option;
  if (dynamic_cast<const po::multiple_occurrences*>(&e)) return "option " + option + " cannot be specified more than once";
  if (dynamic_cast<const po::invalid_option_value*>(&e)) return "the argument for option " + option + " is invalid";
  return "option " + option + " cannot be parsed";
}

std::string option_error(const std::exception& e, int argc, const char* const* argv) {
  bool percent = false;
  for (int i = 1; i < argc; ++i) percent = percent || std::strchr(argv[i], '%');
  return option_error(e, percent);
}

Progress resolve_progress(Progress asked, bool launched) {
  if (asked != Progress::automatic) return asked;
  return isatty(STDOUT_FILENO) && !launched ? Progress::always : Progress::never;
}

std::vector<int> parse_int_list(const std::string& text, const std::string& option) {
  std::vector<int> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    std::size_t used = 0;
    int v = 0;
    try {
      v = std::stoi(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size()) bad(option, in_quotes(text) + " is not a comma-separated list of integers");
    out.push_back(v);
  }
  if (out.empty()) bad(option, "the list is empty");
  return out;
}

ParsedArgs parse_args(int argc, const char* const* argv) {
  const po::options_description desc = make_options();
  ParsedArgs out;
  po::variables_map vm;
  bool percent = false;
  for (int i = 1; i < argc; ++i) percent = percent || std::strchr(argv[i], '%');
  try {
    po::store(po::parse_command_line(argc, argv, desc), vm);
    if (vm.count("help")) {
      std::ostringstream os;
      os << desc;
      out.help = true;
      out.help_text = os.str();
      return out;
    }
    if (vm.count("version")) {
      out.help = true;
      out.help_text = std::string("vae_dist ") + version() + " (" + git_commit() + ")\n";
      return out;
    }
    if (vm.count("config")) {
      const std::string path = vm["config"].as<std::string>();
      std::error_code ec;
      if (std::filesystem::is_directory(path, ec)) throw UsageError(printable(path) + ": is a directory, not a config file");
      if (!std::filesystem::exists(path, ec)) throw UsageError(printable(path) + ": no such file (the config file)");
      std::ifstream file(path, std::ios::binary);
      if (!file) throw UsageError(printable(path) + ": cannot open config file: " + std::strerror(errno));
      std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
      if (file.bad()) throw UsageError(printable(path) + ": cannot read config file: " + std::strerror(errno));
      percent = percent || text.find('%') != std::string::npos;
      std::istringstream in(text);
      try {
        po::store(po::parse_config_file(in, desc, false), vm);
      } catch (const po::error& e) {
        throw UsageError(printable(path) + ": " + option_error(e, percent));
      }
    }
    po::notify(vm);
  } catch (const po::error& e) {
    throw UsageError(option_error(e, percent));
  }
  out.config = build(vm);
  validate(out.config);
  return out;
}

std::string Config::to_ini() const {
  std::ostringstream os;
  os << std::setprecision(17);
  os << "preset = " << preset << "\nconv-channels = " << (arch.convolutional() ? join(arch.conv_channels) : std::string("none"))
     << "\nhidden = " << join(arch.hidden) << "\nlatent = " << arch.latent
     << "\nactivation = " << activation_name(arch.act) << "\nconditional = " << (arch.conditional ? "on" : "off")
     << "\nclasses = " << arch.classes << "\nlabel-layers = " << (arch.label_every_layer ? "all" : "first") << "\n";
  os << "data-dir = " << data_dir << "\ntrain-images = " << train_images << "\ntrain-labels = " << train_labels
     << "\ntest-images = " << test_images << "\ntest-labels = " << test_labels << "\ndigits = " << join(digits)
     << "\nval-size = " << val_size << "\nbinarize = " << (binarize ? "dynamic" : "none") << "\nshift = " << shift << "\nshift-pixels = " << shift_pixels << "\nkfold = " << kfold << "\nfold = " << fold
     << "\ntrain-limit = " << train_limit << "\ntest-limit = " << test_limit << "\n";
  os << "batch = " << batch << "\nlr = " << lr << "\nadam-beta1 = " << adam_beta1 << "\nadam-beta2 = " << adam_beta2
     << "\nadam-eps = " << adam_eps << "\nweight-decay = " << weight_decay << "\nema-decay = " << ema_decay << "\ndropout = " << dropout << "\niw-train = " << iw_train << "\nepochs = " << epochs << "\nmax-steps = " << max_steps
     << "\nseed = " << seed
     << "\nthreads = " << threads << "\nrun-dir = " << run_dir
     << "\nkernels = " << (kernels == KernelChoice::reference ? "reference" : "parallel")
     << "\nprecision = " << precision_name(precision)
     << "\nnan-policy = " << (nan_policy == NanPolicy::skip ? "skip" : "stop") << "\nbucket-mb = " << bucket_mb
     << "\nnode-reduce = " << (node_shm ? "shm" : "mpi")
     << "\nwire = " << (wire_bf16 ? "bf16" : "fp32") << "\ncomm-timeout = " << comm_timeout << "\ncheckpoint-every = " << checkpoint_every
     << "\ncheckpoint-every-steps = " << checkpoint_every_steps
     << "\nkeep-checkpoints = " << keep_checkpoints << "\n";
  for (int m = 0; m < 3; ++m) {
    const ModeSpec& s = modes[std::size_t(m)];
    os << "\n[" << kModeKeys[m] << "]\n";
    if (m < 2) os << "until = " << s.until << "\n";
    os << "beta-start = " << s.beta_start << "\nbeta-end = " << s.beta_end << "\nramp-epochs = " << s.ramp_epochs
       << "\nlr-factor = " << s.lr_factor << "\n";
  }
  os << "\n[plateau]\npatience = " << plateau.patience << "\nmin-delta = " << plateau.min_delta << "\n";
  return os.str();
}

}  // namespace vae
