// The training loop. A step reads as its phases: data, forward, loss, backward, sync, update.
#include "vae/trainer.hpp"

#include <sys/resource.h>
#include <unistd.h>

#include <csignal>
#include <limits>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <stdexcept>

#include "vae/errors.hpp"
#include "vae/evaluation.hpp"
#include "vae/optimizer.hpp"
#include "vae/rng.hpp"
#include "vae/png.hpp"
#include "vae/version.hpp"

namespace vae {
namespace {

// The complete checkpoints in dir, oldest first. Only complete files carry these names (a checkpoint is written under a
// temporary name, then renamed); ckpt-eNNNN-sSSSSSSSSS.h5 (stopped inside epoch NNNN+1) is newer than ckpt-eNNNN.h5.
std::vector<std::filesystem::path> complete_checkpoints(const std::filesystem::path& dir) {
  std::vector<std::pair<std::pair<int, long>, std::filesystem::path>> found;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    int epoch = -1, used = 0;
    long step = 0;
    const bool whole = std::sscanf(name.c_str(), "ckpt-e%4d.h5%n", &epoch, &used) == 1 && std::size_t(used) == name.size();
    const bool partial =
        !whole && std::sscanf(name.c_str(), "ckpt-e%4d-s%9ld.h5%n", &epoch, &step, &used) == 2 && std::size_t(used) == name.size();
    if (whole || partial) found.push_back({{epoch, step}, e.path()});
  }
  std::sort(found.begin(), found.end());
  std::vector<std::filesystem::path> paths;
  for (auto& f : found) paths.push_back(std::move(f.second));
  return paths;
}


// Set from a signal handler; read once per step and agreed on by every rank with the step's losses.
std::atomic<int> g_stop_requested{0};

std::filesystem::path pick(const std::string& given, const std::string& dir, const char* name) {
  return given.empty() ? resolve_idx_path(dir, name) : std::filesystem::path(given);
}

// The four IDX files of a run: train images, train labels, test images, test labels.
std::array<std::filesystem::path, 4> data_files(const Config& cfg) {
  return {pick(cfg.train_images, cfg.data_dir, "train-images-idx3-ubyte"), pick(cfg.train_labels, cfg.data_dir, "train-labels-idx1-ubyte"),
          pick(cfg.test_images, cfg.data_dir, "t10k-images-idx3-ubyte"), pick(cfg.test_labels, cfg.data_dir, "t10k-labels-idx1-ubyte")};
}

// Sets the model's class count (--classes, or one more than the largest training label) and checks every label against it.
const Arch& settle_classes(Config& cfg, const IdxPair& train, const IdxPair& test) {
  int& classes = cfg.arch.classes;
  const bool given = classes > 0;
  if (!given) classes = 1 + *std::max_element(train.labels.begin(), train.labels.end());
  for (const IdxPair* file : {&train, &test}) {
    const auto most = std::max_element(file->labels.begin(), file->labels.end());
    if (*most >= classes)
      throw UsageError(file->labels_path + ": label " + std::to_string(*most) + " at index " + std::to_string(most - file->labels.begin()) +
                       (given ? " is outside the " + std::to_string(classes) + " classes of --classes"
                              : " is outside the training labels' 0-" + std::to_string(classes - 1)));
  }
  for (int d : cfg.digits)
    if (d >= classes && cfg.digits.size() < std::size_t(kNumClasses))
      throw UsageError("option --digits: digit " + std::to_string(d) + " is not among the " + std::to_string(classes) + " classes");
  std::erase_if(cfg.digits, [&](int d) { return d >= classes; });
  return cfg.arch;
}

double peak_rss_bytes() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_maxrss) * 1024.0;  // Linux reports KiB
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

std::string with_commas(std::size_t n) {
  std::string s = std::to_string(n);
  for (int i = int(s.size()) - 3; i > 0; i -= 3) s.insert(std::size_t(i), ",");
  return s;
}

// The optimizer as configured, at the rate lr (the scheduled one for a step, the base one for a checkpoint).
AdamParams adam_params(const Config& c, double lr) { return {lr, c.adam_beta1, c.adam_beta2, c.adam_eps, c.weight_decay, c.ema_decay}; }

}  // namespace

void Trainer::prepare_data(const Config& cfg) {
  for (const auto& file : data_files(cfg)) decompressed_cache(file);
}

Trainer::Trainer(const Config& config, const Communicator& comm, int threads)
    : cfg_(config),
      comm_(comm),
      threads_(threads),
      kernels_(make_kernels(config.kernels, threads, config.precision)),
      train_file_(load_idx_pair(data_files(cfg_)[0], data_files(cfg_)[1])),
      test_file_(load_idx_pair(data_files(cfg_)[2], data_files(cfg_)[3])),
      layout_(settle_classes(cfg_, train_file_, test_file_)),
      pool_(Arena::measure()),
      scheduler_(config.modes, config.plateau) {
  ctx_ = {&comm_, threads_, kernels_.get(), nullptr};
  train_ = Dataset::select_digits(train_file_, cfg_.digits);
  test_ = Dataset::select_digits(test_file_, cfg_.digits);
  train_.truncate(std::size_t(cfg_.train_limit));
  test_.truncate(std::size_t(cfg_.test_limit));
  if (cfg_.val_size > 0) {
    if (std::size_t(cfg_.val_size) >= train_.size())
      throw UsageError("option --val-size: " + std::to_string(cfg_.val_size) + " leaves no training images (the digit set has " +
                       std::to_string(train_.size()) + ")");
    val_ = train_.split_tail(std::size_t(cfg_.val_size));
  }
  if (cfg_.kfold > 0) val_ = train_.split_fold(std::size_t(cfg_.fold), std::size_t(cfg_.kfold));
  if (train_.size() == 0) throw UsageError(train_file_.labels_path + ": no training images with the selected digits");
  if (test_.size() == 0) throw UsageError(test_file_.labels_path + ": no test images with the selected digits");
  if (cfg_.batch % comm_.size() != 0)
    throw UsageError("option --batch: global batch " + std::to_string(cfg_.batch) + " is not divisible by " +
                     std::to_string(comm_.size()) + " ranks");
  if (std::size_t(cfg_.batch) > train_.size())
    throw UsageError("option --batch: global batch " + std::to_string(cfg_.batch) + " is larger than the " +
                     std::to_string(train_.size()) + " training images");
  local_batch_ = std::size_t(cfg_.batch / comm_.size());
  sources_.resize(local_batch_ * std::size_t(cfg_.iw_train));
  // --resume: every rank reads and checks the file itself (local work, so a bad file is one agreed usage error), in a
  // child forked before this rank starts threads of its own: a thread starting up as the fork happens can hold a lock
  // the child then waits on for ever (AddressSanitizer's allocator, seen in every MPI resume test).
  std::filesystem::path resume_path;
  if (cfg_.resume == "auto") {
    const std::vector<std::filesystem::path> all = complete_checkpoints(std::filesystem::path(cfg_.run_dir) / "checkpoints");
    if (!all.empty()) resume_path = all.back();
  } else if (!cfg_.resume.empty()) {
    resume_path = cfg_.resume;
  }
  if (!resume_path.empty()) {
    resume_ = read_checkpoint_guarded(resume_path);
    const Arch& got = resume_->arch;
    std::string differs;
    if (got.conv_channels != cfg_.arch.conv_channels) differs += " conv-channels";
    if (got.hidden != cfg_.arch.hidden) differs += " hidden";
    if (got.latent != cfg_.arch.latent) differs += " latent";
    if (got.act != cfg_.arch.act) differs += " activation";
    if (got.conditional != cfg_.arch.conditional) differs += " conditional";
    if (got.label_every_layer != cfg_.arch.label_every_layer) differs += " label-layers";
    if (got.classes != cfg_.arch.classes) differs += " classes";
    if (!differs.empty()) throw UsageError(resume_path.string() + ": architecture differs from this run's in:" + differs);
    if (resume_->state.seed != cfg_.seed)
      throw UsageError(resume_path.string() + ": written with --seed " + std::to_string(resume_->state.seed) + ", this run has " +
                       std::to_string(cfg_.seed));
  }

  // Start-up and checkpoints wait on every rank (file systems, other nodes' start): ten times the limit.
  watchdog_ = std::make_unique<Watchdog>(cfg_.comm_timeout, 10 * cfg_.comm_timeout, comm_.rank(), "vae_dist");
  ctx_.watchdog = watchdog_.get();
  sync_ = make_gradient_sync({&cfg_, &comm_, &layout_, kernels_.get(), watchdog_.get(), local_batch_ * std::size_t(cfg_.iw_train)});

  const std::size_t P = layout_.padded_size();
  auto carve = [&](Arena& a) {
    // The gradient and the moments stay in this rank's pool, on 2 MiB pages, even when the pass is shared (each rank then
    // writes and reads only its rows of them): the optimizer pass runs nearly twice as fast there as on the 4 KiB pages
    // of shared memory.
    grads_ = a.take<float>(P);
    adam_m_ = a.take<float>(P);
    adam_v_ = a.take<float>(P);
    ema_ = a.take<float>(cfg_.ema_decay > 0 ? P : 0);
    order_ = a.take<std::uint32_t>(train_.size());
    sync_->carve(a);
    workspace_ = a.take<std::byte>(kernels_->workspace_bytes(sync_->kernel_rows(), layout_.max_dim(), layout_.conv_sizes()));
  };
  Arena probe = Arena::measure();
  carve(probe);
  pool_ = Arena(probe.used());
  carve(pool_);
  kernels_->bind_workspace(workspace_, sync_->kernel_rows(), layout_.max_dim(), layout_.conv_sizes());
  sync_->set_gradients(grads_);
  if (sync_->needs_progress()) kernels_->set_progress_hook([](void* sync) { static_cast<GradientSync*>(sync)->progress(); }, sync_.get());

  long total = steps_per_epoch() * cfg_.epochs;
  if (cfg_.max_steps > 0) total = std::min(total, cfg_.max_steps);
  step_losses_.reserve(std::size_t(total));

  if (comm_.rank() == 0) {
    std::error_code ec;
    std::filesystem::create_directories(cfg_.run_dir, ec);
    if (ec) throw UsageError(cfg_.run_dir + ": cannot create run directory: " + ec.message());
    metrics_ = LineFile((std::filesystem::path(cfg_.run_dir) / "metrics.jsonl").string(), resume_.has_value());
    if (!cfg_.step_log.empty()) step_log_ = LineFile(cfg_.step_log, false);
    // The caller settles --progress auto (resolve_progress); left as auto, it means no line.
    progress_ = cfg_.progress == Progress::always;
  }
}

Trainer::~Trainer() = default;

void Trainer::print_header() const {
  if (comm_.rank() != 0) return;
  std::printf("vae_dist %s (%s): %d rank%s x %d thread%s, kernels %s\n", version(), git_commit(), comm_.size(),
              comm_.size() > 1 ? "s" : "", threads_, threads_ > 1 ? "s" : "", kernels_->name().c_str());
  std::printf("model %s: %s; %s parameters\n", cfg_.preset.c_str(), cfg_.arch.describe().c_str(),
              with_commas(layout_.parameter_count()).c_str());
  std::printf("data: %zu train, %zu validation, %zu test images; global batch %d (%zu per rank), %zu steps per epoch%s\n", train_.size(),
              val_.size(), test_.size(), cfg_.batch, local_batch_, train_.size() / std::size_t(cfg_.batch),
              cfg_.iw_train > 1 ? (", " + std::to_string(cfg_.iw_train) + " draws of z per image (importance-weighted bound)").c_str() : "");
  if (sync_->shared_bytes() == 0) {
    std::printf("memory pool: %s bytes per rank (parameters, gradients, Adam moments, activations, kernel scratch, sampler)\n",
                with_commas(pool_.capacity()).c_str());
  } else {
    std::printf("memory pool: %s bytes per rank (gradient and Adam moments, of which it uses its rows, kernel scratch, sampler), "
                "plus %s bytes of shared memory per node (parameters, the activations of the node's rows of the global batch, "
                "the checkpoint's staging of the moments)\n",
                with_commas(pool_.capacity()).c_str(), with_commas(sync_->shared_bytes()).c_str());
  }
  std::printf("gradient sync: %s\n", sync_->describe().c_str());
  std::printf("run directory: %s\n", cfg_.run_dir.c_str());
  std::fflush(stdout);
}

void Trainer::load_rows(const Dataset& data, std::size_t first, std::size_t n, std::span<const std::uint32_t> order,
                        std::uint64_t eps_key, std::uint64_t eps_base, std::size_t copies) {
  const std::size_t rows = n * copies;
  for (std::size_t r = 0; r < rows; ++r) {
    const std::size_t pos = first + r / copies;
    const std::size_t row = order.empty() ? pos : order[pos];
    sources_[r] = data.image(row);
    net_->set_label(r, data.label(row));
  }
  ctx_.kernels->gather_rows(std::span(sources_).first(rows), kImagePixels, net_->pixel_row(0), kImagePixels);
  // An image's copies are moved and binarised alike (keyed by the image's position), so its draws of z see one image.
  if (cfg_.shift > 0 && !order.empty()) {
    // Moved before binarisation, keyed like ε by the global-batch position; evaluation (no order) sees the images as
    // they are.
    const std::uint64_t step_key = stream_key(cfg_.seed, Stream::shift, std::uint64_t(step_));
    std::array<std::uint8_t, kImagePixels> moved;
    for (std::size_t r = 0; r < rows; ++r) {
      const auto [dx, dy] = draw_shift(cfg_.shift, cfg_.shift_pixels, hash_combine(step_key, eps_base + first + r / copies));
      if (dx == 0 && dy == 0) continue;
      shift_image(net_->pixel_row(r), moved.data(), dx, dy);
      std::copy(moved.begin(), moved.end(), net_->pixel_row(r));
    }
  }
  if (cfg_.binarize) {
    // Training draws anew at every step, keyed like ε by the global-batch position; evaluation (no order) uses one fixed
    // draw per image.
    const std::uint64_t step_key = stream_key(cfg_.seed, Stream::binarize, std::uint64_t(step_));
    for (std::size_t r = 0; r < rows; ++r) {
      const std::size_t pos = first + r / copies;
      const std::uint64_t key = order.empty() ? test_binarize_key(pos) : hash_combine(step_key, eps_base + pos);
      binarize_image(net_->pixel_row(r), net_->pixel_row(r), key);
    }
  }
  // ε depends on the row's position in the global batch (or dataset), never on the rank that holds it.
  ctx_.kernels->gaussian_rows(net_->eps().data(), rows, std::size_t(cfg_.arch.latent), eps_key, (eps_base + first) * copies);
}

Trainer::StepLoss Trainer::train_step(std::span<const std::uint32_t> global_batch, double beta, double lr) {
  const Kernels<float>& k = *ctx_.kernels;
  // n rows: this rank's images, each --iw-train times (an image's draws of z are adjacent rows)
  const std::size_t samples = std::size_t(cfg_.iw_train), images = local_batch_, n = images * samples;
  const float scale = 1.0f / float(cfg_.batch);
  const long step = step_ + 1;  // 1-based, as reported
  const bool faulty = cfg_.fault.kind != Fault::Kind::none && cfg_.fault.step == step && cfg_.fault.rank == comm_.rank();
  if (faulty && cfg_.fault.kind == Fault::Kind::exception)
    throw std::runtime_error("injected fault at step " + std::to_string(step) + " (--inject-fault)");
  if (faulty && cfg_.fault.kind == Fault::Kind::kill) std::raise(SIGKILL);
  watchdog_->beat(step, "data");
  auto t = std::chrono::steady_clock::now();
  auto lap = [&t](double& phase) {
    const auto now = std::chrono::steady_clock::now();
    phase += std::chrono::duration<double>(now - t).count();
    t = now;
  };

  // data: this rank's contiguous slice of the global batch
  const std::size_t first = std::size_t(comm_.rank()) * images;
  const std::uint64_t key = stream_key(cfg_.seed, Stream::reparam, std::uint64_t(step_));
  std::span<const std::uint32_t> slice = global_batch.subspan(first, images);
  load_rows(train_, 0, images, slice, key, first, samples);
  net_->draw_dropout(cfg_.dropout, stream_key(cfg_.seed, Stream::dropout, std::uint64_t(step_)), first * samples, n);
  lap(phase_.data);

  // forward and loss. --inject-fault nan makes the loss gradient's scale NaN: the loss stays finite, so only the gradient
  // check sees it (and the gradient's bf16 forms, written with it, carry it too).
  net_->forward(k, params_.data(), n, Network<float>::Pass::train);
  const bool poison = faulty && cfg_.fault.kind == Fault::Kind::nan;
  const Network<float>::Losses loss = net_->loss(k, n, poison ? std::numeric_limits<float>::quiet_NaN() : scale, float(beta), samples);
  lap(phase_.forward);

  // backward: the sync strategy hears of each layer as its gradient is done (and starts its sum), and a shared pass waits
  // in it for the other ranks' rows before each weight gradient
  sync_->start_step(step);
  net_->backward(k, params_.data(), grads_.data(), n, scale, float(beta), sync_.get());
  lap(phase_.backward);
  const double rows_wait = sync_->take_backward_wait();
  phase_.backward -= rows_wait;
  phase_.allreduce += rows_wait;

  // sync: every rank learns the global batch's losses, a stop request, and whether any rank's loss or gradient is not
  // finite (and where it came from)
  step_ = step;
  const bool stop = g_stop_requested.load(std::memory_order_relaxed) != 0;
  const StepVerdict verdict = sync_->agree({loss.recon, loss.kl, std::isfinite(loss.recon + loss.kl), stop});
  lap(phase_.allreduce);
  if (verdict.bad_rank >= 0) {
    const std::string what = "non-finite loss or gradient at step " + std::to_string(step) + " on rank " + std::to_string(verdict.bad_rank);
    if (cfg_.nan_policy == NanPolicy::stop)
      throw AgreedError(what + "; nothing was updated (--nan-policy skip would drop the step and go on)", kExitDiverged);
    ++skipped_;
    return {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::quiet_NaN()};
  }
  stop_agreed_ = verdict.stop;

  // update: Adam on each range of the flat buffers this rank updates, as soon as its sum is complete
  ++updates_;
  const AdamParams adam = adam_params(cfg_, lr);
  const double sum_wait = sync_->update([&](std::size_t begin, std::size_t count) {
    adam_step<float>(k, params_.subspan(begin, count), grads_.subspan(begin, count), adam_m_.subspan(begin, count),
                     adam_v_.subspan(begin, count), updates_, adam, copy_.layers.empty() ? nullptr : &copy_,
                     ema_.empty() ? ema_ : ema_.subspan(begin, count));
  });
  lap(phase_.update);
  phase_.update -= sum_wait;
  phase_.allreduce += sum_wait;
  return {verdict.recon / cfg_.batch, verdict.kl / cfg_.batch};
}

void Trainer::save_checkpoint(int epochs_done, PhaseTimes& time, bool mid_epoch) {
  watchdog_->allow_slow(step_ + 1);
  watchdog_->beat(step_, "checkpoint");
  const GradientSync::OptimizerState state = sync_->checkpoint_state({adam_m_, adam_v_, ema_});
  if (comm_.rank() != 0) return;
  const auto t0 = std::chrono::steady_clock::now();
  const std::filesystem::path dir = std::filesystem::path(cfg_.run_dir) / "checkpoints";
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw std::runtime_error(dir.string() + ": cannot create: " + ec.message());
  TrainingState s;
  s.epoch = epochs_done;
  s.step = step_;
  s.updates = updates_;
  s.skipped = skipped_;
  s.seed = cfg_.seed;
  s.world_size = comm_.size();
  s.binarize = cfg_.binarize;
  s.precision = cfg_.precision;
  s.scheduler = scheduler_.state();
  s.adam = adam_params(cfg_, cfg_.lr);
  s.config_ini = cfg_.to_ini();
  char name[48];
  if (mid_epoch) std::snprintf(name, sizeof name, "ckpt-e%04d-s%09ld.h5", epochs_done, step_);
  else std::snprintf(name, sizeof name, "ckpt-e%04d.h5", epochs_done);
  std::vector<EpochRecord> metrics = past_metrics_;
  metrics.insert(metrics.end(), history_.begin(), history_.end());
  const std::vector<std::uint8_t> grid = sample_grid();
  const std::size_t width = 10 * kImageSide, height = grid.size() / width;
  // A temporary here is a killed or failed writer's half file (only rank 0 writes): it goes before this write needs the
  // space it holds.
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string entry = e.path().filename().string();
    if (entry.starts_with("ckpt-e") && entry.find(".h5.tmp.") != std::string::npos) std::filesystem::remove(e.path(), ec);
  }
  const std::filesystem::path file = dir / name;
  write_checkpoint(file, cfg_.arch, layout_, params_, state.m, state.v, s, {metrics, grid, width, height, state.ema});
  write_png_gray(std::filesystem::path(file).replace_extension(".png"), width, height, grid.data());
  // The newest K stay, each with its grid.
  const std::vector<std::filesystem::path> all = complete_checkpoints(dir);
  for (std::size_t i = 0; i + std::size_t(cfg_.keep_checkpoints) < all.size(); ++i) {
    std::filesystem::remove(all[i], ec);
    std::filesystem::remove(std::filesystem::path(all[i]).replace_extension(".png"), ec);
  }
  time.checkpoint += seconds_since(t0);
}

std::vector<std::uint8_t> Trainer::sample_grid() {
  const std::span<const int> rows = all_classes(cfg_.arch);
  const std::vector<float> inputs = digit_decoder_inputs(cfg_.arch, *ctx_.kernels, rows, 10, 1.0, stream_key(cfg_.seed, Stream::samples, 0));
  const std::size_t n = rows.size() * 10;
  std::vector<std::uint8_t> images(n * std::size_t(kImagePixels));
  decode_to_pixels(*net_, *ctx_.kernels, params_.data(), inputs, n, images.data());
  return tile_images(images.data(), n, 10);
}

EvalResult Trainer::evaluate(const Dataset& data) {
  const Kernels<float>& k = *ctx_.kernels;
  const std::size_t N = data.size(), P = std::size_t(comm_.size()), r = std::size_t(comm_.rank());
  const std::size_t lo = N * r / P, hi = N * (r + 1) / P;
  const std::uint64_t key = stream_key(kEvalSeed, Stream::eval, 0);
  double sums[3] = {0, 0, double(hi - lo)};
  for (std::size_t first = lo; first < hi; first += local_batch_) {
    const std::size_t n = std::min(local_batch_, hi - first);
    load_rows(data, first, n, {}, key, 0);
    net_->forward(k, params_.data(), n);
    const Network<float>::Losses l = net_->loss(k, n, 0.0f);
    sums[0] += l.recon;
    sums[1] += l.kl;
  }
  comm_.allreduce_sum(sums);
  return {sums[0] / sums[2], sums[1] / sums[2]};
}

void Trainer::show_progress(int epoch, long step_in_epoch, long steps, double loss, double rate, bool done) const {
  if (!progress_) return;
  if (done) {
    std::printf("\r\033[K");
  } else {
    const double eta = rate > 0 ? double(steps - step_in_epoch) * cfg_.batch / rate : 0;
    std::printf("\r\033[K  epoch %d  step %ld/%ld  %.0f samples/s  loss %.2f  ETA %.0fs", epoch, step_in_epoch, steps, rate, loss, eta);
  }
  std::fflush(stdout);
}

void Trainer::request_stop() { g_stop_requested.store(1, std::memory_order_relaxed); }

void Trainer::initialize() {
  watchdog_->allow_slow(resume_ ? resume_->state.step + 1 : 1);
  watchdog_->beat(resume_ ? resume_->state.step : 0, "start-up", "the other ranks' shared memory and communicators");
  if (!net_) {
    sync_->attach();
    params_ = sync_->parameters();
    net_ = &sync_->network();
  }
  // Every rank chose its checkpoint itself: across nodes that needs one shared run directory, seen alike by all.
  double found[2] = {resume_ ? double(resume_->state.step) : -1.0, resume_ ? -double(resume_->state.step) : 1.0};
  comm_.allreduce_max(found);
  if (found[0] != -found[1])
    throw AgreedError("the ranks resume from different checkpoints (step " + std::to_string(long(-found[1])) + " on some, " +
                          std::to_string(long(found[0])) + " on others; -1: none): is " + cfg_.run_dir +
                          " one directory shared by every node?",
                      kExitUsage);
  // Every rank reads the checkpoint it resumes from, and the seed draws the same parameters everywhere: the writers of
  // each copy fill it, and it is every rank's.
  // bf16 products: the weights' bf16 form beside them, written whole where the parameters are written, and then by
  // every update of theirs
  copy_ = make_weight_copy(layout_, *kernels_, params_.data(), sync_->weight_copy().data());
  auto refresh = [&] {
    if (!copy_.layers.empty()) kernels_->refresh_weight_copy(copy_);
  };
  if (resume_) {
    sync_->set_parameters([&](std::span<float> p) {
      std::copy(resume_->params.begin(), resume_->params.end(), p.begin());
      refresh();
    });
    std::copy(resume_->adam_m.begin(), resume_->adam_m.end(), adam_m_.begin());
    std::copy(resume_->adam_v.begin(), resume_->adam_v.end(), adam_v_.begin());
    // a run that starts keeping the average from a checkpoint without one starts it at the weights it resumes
    if (!ema_.empty()) std::copy_n(resume_->ema.empty() ? params_.data() : resume_->ema.data(), ema_.size(), ema_.begin());
  } else {
    sync_->set_parameters([&](std::span<float> p) {
      init_parameters<float>(layout_, cfg_.seed, p);
      refresh();
    });
    std::fill(adam_m_.begin(), adam_m_.end(), 0.0f);
    std::fill(adam_v_.begin(), adam_v_.end(), 0.0f);
    std::copy_n(params_.data(), ema_.size(), ema_.begin());
  }
  kernels_->bind_weight_copy(copy_.layers.empty() ? nullptr : &copy_);
  kernels_->bind_bf16_shadows(sync_->network().bf16_shadows());
  step_ = resume_ ? resume_->state.step : 0;
  updates_ = resume_ ? resume_->state.updates : 0;
  skipped_ = resume_ ? resume_->state.skipped : 0;
  first_epoch_ = resume_ ? resume_->state.epoch : 0;
  if (resume_) {
    scheduler_.restore(resume_->state.scheduler);
    past_metrics_ = resume_->metrics;
  }
  resume_.reset();
}

long Trainer::steps_per_epoch() const { return long(train_.size() / std::size_t(cfg_.batch)); }

Trainer::StepLoss Trainer::step(int epoch, long s, double beta, double lr) {
  if (order_epoch_ != epoch) {
    epoch_permutation(cfg_.seed, epoch, order_);
    order_epoch_ = epoch;
  }
  const std::size_t B = std::size_t(cfg_.batch);
  return train_step(std::span<const std::uint32_t>(order_).subspan(std::size_t(s) * B, B), beta, lr);
}

void Trainer::run() {
  start_ = std::chrono::steady_clock::now();
  print_header();
  initialize();

  const long per_epoch = steps_per_epoch();
  if (comm_.rank() == 0 && first_epoch_ > 0) std::printf("resumed after epoch %d, step %ld\n", first_epoch_, step_);
  for (int epoch = first_epoch_; epoch < cfg_.epochs; ++epoch) {
    if (cfg_.max_steps > 0 && step_ >= cfg_.max_steps) break;
    // Rank 0 decides the epoch's mode, β and learning rate; every rank applies the same values.
    EpochPlan plan = scheduler_.plan(epoch);
    watchdog_->beat(step_, "epoch start", "rank 0's plan of the epoch");
    comm_.broadcast(&plan, sizeof plan);
    const double lr = cfg_.lr * plan.lr_factor;

    const auto t0 = std::chrono::steady_clock::now();
    double recon = 0, kl = 0;
    long steps = 0, applied = 0;
    const long skipped_before = skipped_;
    phase_ = {};
    auto last_progress = t0;
    // A checkpoint written mid-epoch (on a signal) resumes inside its epoch.
    const long first_step = epoch == first_epoch_ ? std::max(0L, step_ - long(epoch) * per_epoch) : 0;
    for (long s = first_step; s < per_epoch; ++s) {
      if (cfg_.max_steps > 0 && step_ >= cfg_.max_steps) break;
      const StepLoss l = step(epoch, s, plan.beta, lr);
      ++steps;
      step_losses_.push_back(l.recon + plan.beta * l.kl);  // NaN for a dropped step
      if (stop_agreed_) {
        PhaseTimes t;
        save_checkpoint(epoch, t, true);
        throw AgreedError("stopped by a signal at step " + std::to_string(step_) + " (epoch " + std::to_string(epoch + 1) +
                              "); checkpoint written, continue with --resume auto",
                          kExitPreempted);
      }
      // A step interval inside the epoch (its end is the epoch checkpoint's).
      if (cfg_.checkpoint_every_steps > 0 && step_ % cfg_.checkpoint_every_steps == 0 && s + 1 < per_epoch) save_checkpoint(epoch, phase_, true);
      if (std::isnan(l.recon)) continue;
      recon += l.recon;
      kl += l.kl;
      ++applied;
      if (step_log_.is_open()) {
        char line[160];
        std::snprintf(line, sizeof line, "{\"step\":%ld,\"recon\":%.9g,\"kl\":%.9g,\"loss\":%.9g}", step_, l.recon, l.kl,
                      l.recon + plan.beta * l.kl);
        step_log_.write(line);
      }
      if (progress_ && seconds_since(last_progress) > 0.5) {
        last_progress = std::chrono::steady_clock::now();
        show_progress(epoch + 1, s + 1, per_epoch, (recon + plan.beta * kl) / double(std::max(applied, 1L)),
                      double(steps * cfg_.batch) / seconds_since(t0), false);
      }
    }
    const double train_seconds = seconds_since(t0);
    show_progress(0, 0, 0, 0, 0, true);

    EpochRecord rec;
    rec.epoch = epoch + 1;
    rec.step = step_;
    rec.mode = plan.mode;
    rec.beta = plan.beta;
    rec.lr = lr;
    rec.train_recon = applied ? recon / double(applied) : 0;
    rec.train_kl = applied ? kl / double(applied) : 0;
    rec.skipped_steps = skipped_ - skipped_before;
    watchdog_->beat(step_, "epoch end", "the other ranks' evaluation");
    double phases[6] = {phase_.data, phase_.forward, phase_.backward, phase_.allreduce, phase_.update, phase_.checkpoint};
    comm_.allreduce_sum(phases);
    for (double& x : phases) x /= comm_.size();
    rec.time = {phases[0], phases[1], phases[2], phases[3], phases[4], phases[5]};
    const EvalResult test = evaluate(test_);
    rec.test_elbo = test.elbo();
    rec.test_recon = test.recon;
    rec.test_kl = test.kl;
    if (val_.size() > 0) {
      rec.val_elbo = evaluate(val_).elbo();
      scheduler_.observe(rec.val_elbo);
    }
    double rss[1] = {peak_rss_bytes()};
    comm_.allreduce_max(rss);
    rec.peak_rss_bytes = rss[0];
    rec.samples_per_s = train_seconds > 0 ? double(steps * cfg_.batch) / train_seconds : 0;
    rec.epoch_seconds = seconds_since(t0);
    rec.elapsed_seconds = seconds_since(start_);
    history_.push_back(rec);
    // The checkpoint holds this epoch's record too (its own writing time is in the metrics file, not in itself).
    const bool last = epoch + 1 == cfg_.epochs || (cfg_.max_steps > 0 && step_ >= cfg_.max_steps);
    if (last || (cfg_.checkpoint_every > 0 && (epoch + 1) % cfg_.checkpoint_every == 0)) {
      save_checkpoint(epoch + 1, rec.time);
      history_.back().time.checkpoint = rec.time.checkpoint;
    }
    profile_ += rec.time;
    if (comm_.rank() == 0) {
      std::printf("%s\n", format_console(rec, cfg_.epochs).c_str());
      std::fflush(stdout);
      metrics_.write(format_json(rec));
    }
  }
  if (cfg_.profile && comm_.rank() == 0) {
    std::printf("%s", format_profile(profile_, step_, cfg_.batch).c_str());
    std::fflush(stdout);
  }
  // The last checkpoint is on disk before any rank goes on (to resume from it, say).
  watchdog_->allow_slow(step_ + 1);
  watchdog_->beat(step_, "end", "rank 0's last checkpoint");
  comm_.barrier();
}

}  // namespace vae
