// The training loop. A step reads as its phases: data, forward, loss, backward, allreduce, update.
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

// What a rank of a one-node job tells the others after its backward pass, in its cache line of a shared window: the
// fence that ends the backward pass shows these too, so the step needs no collective of its own.
struct StepRecord {
  double recon, kl;
  std::int32_t finite, stop;
};
constexpr std::size_t kStepRecordFloats = 16;
static_assert(sizeof(StepRecord) <= kStepRecordFloats * sizeof(float));

void post_record(NodeSegments& node, const StepRecord& record) { std::memcpy(node.mine().data(), &record, sizeof record); }

StepRecord record_of(const NodeSegments& node, int rank) {
  StepRecord record{};
  std::memcpy(&record, node.segments()[std::size_t(rank)], sizeof record);
  return record;
}

std::filesystem::path pick(const std::string& given, const std::string& dir, const char* name) {
  return given.empty() ? resolve_idx_path(dir, name) : std::filesystem::path(given);
}

// The four IDX files of a run: train images, train labels, test images, test labels.
std::array<std::filesystem::path, 4> data_files(const Config& cfg) {
  return {pick(cfg.train_images, cfg.data_dir, "train-images-idx3-ubyte"), pick(cfg.train_labels, cfg.data_dir, "train-labels-idx1-ubyte"),
          pick(cfg.test_images, cfg.data_dir, "t10k-images-idx3-ubyte"), pick(cfg.test_labels, cfg.data_dir, "t10k-labels-idx1-ubyte")};
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

}  // namespace

void Trainer::prepare_data(const Config& cfg) {
  for (const auto& file : data_files(cfg)) decompressed_cache(file);
}

Trainer::Trainer(const Config& config, const Communicator& comm, int threads)
    : cfg_(config),
      comm_(comm),
      threads_(threads),
      kernels_(make_kernels(config.kernels, threads)),
      layout_(config.arch),
      pool_(Arena::measure()),
      scheduler_(config.modes, config.plateau) {
  ctx_ = {&comm_, threads_, kernels_.get()};
  const auto [train_images, train_labels, test_images, test_labels] = data_files(cfg_);
  train_file_ = load_idx_pair(train_images, train_labels);
  test_file_ = load_idx_pair(test_images, test_labels);
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
  node_shm_ = cfg_.node_shm && comm_.size() > 1 && comm_.local_size() == comm_.size();

  // A shared pass's weight gradients run over the rows of the whole global batch.
  const std::size_t kernel_rows = node_shm_ ? std::size_t(cfg_.batch) : local_batch_;
  const auto net_bytes = node_shm_ ? Network<float>::arena_bytes(cfg_.arch, layout_, local_batch_, std::size_t(comm_.size()))
                                   : std::pair<std::size_t, std::size_t>{};
  shared_act_bytes_ = net_bytes.second;
  const std::size_t P = layout_.padded_size();
  auto carve = [&](Arena& a) {
    if (!node_shm_) params_ = a.take<float>(P);
    // Sharing the pass, this rank writes and reads only its own rows of these: they stay in its pool, on 2 MiB pages,
    // where the optimizer pass runs nearly twice as fast as on the 4 KiB pages of shared memory.
    grads_ = a.take<float>(P);
    adam_m_ = a.take<float>(P);
    adam_v_ = a.take<float>(P);
    order_ = a.take<std::uint32_t>(train_.size());
    // Sharing the backward pass, the network is made in initialize(), over shared memory that only exists from there.
    if (node_shm_) net_memory_ = a.take<std::byte>(net_bytes.first);
    else net_ = std::make_unique<Network<float>>(cfg_.arch, layout_, local_batch_, a);
    workspace_ = a.take<std::byte>(kernels_->workspace_bytes(kernel_rows, layout_.max_dim()));
  };
  Arena probe = Arena::measure();
  carve(probe);
  pool_ = Arena(probe.used());
  carve(pool_);
  kernels_->bind_workspace(workspace_, kernel_rows, layout_.max_dim());

  // Buckets of at least --bucket-mb, whole layers each, in the order the backward pass finishes them.
  const auto& layers = layout_.layers();
  const std::size_t bucket_floats = std::max<std::size_t>(1, std::size_t(cfg_.bucket_mb * 1024 * 1024 / sizeof(float)));
  std::size_t begin = 0;
  for (std::size_t l = layers.size(); l-- > 0;) {
    const std::size_t end = l > 0 ? layers[l - 1].b_offset : layout_.padded_size();
    if (end - begin >= bucket_floats || l == 0) {
      buckets_.push_back({begin, end, l});
      begin = end;
    }
  }
  requests_.assign(buckets_.size(), MPI_REQUEST_NULL);
  // Through shared memory there is nothing in flight to drive, and each call into MPI's progress engine costs microseconds.
  if (comm_.size() > 1 && !node_shm_)
    kernels_->set_progress_hook([](void* self) { static_cast<Trainer*>(self)->progress(); }, this);

  long total = steps_per_epoch() * cfg_.epochs;
  if (cfg_.max_steps > 0) total = std::min(total, cfg_.max_steps);
  step_losses_.reserve(std::size_t(total));

  // --resume: every rank reads and checks the file itself (local work, so a bad file is one agreed usage error).
  std::filesystem::path resume_path;
  if (cfg_.resume == "auto") {
    const std::vector<std::filesystem::path> all = complete_checkpoints(std::filesystem::path(cfg_.run_dir) / "checkpoints");
    if (!all.empty()) resume_path = all.back();
  } else if (!cfg_.resume.empty()) {
    resume_path = cfg_.resume;
  }
  if (!resume_path.empty()) {
    resume_ = read_checkpoint(resume_path);
    const Arch& got = resume_->arch;
    std::string differs;
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

  if (comm_.rank() == 0) {
    std::error_code ec;
    std::filesystem::create_directories(cfg_.run_dir, ec);
    if (ec) throw UsageError(cfg_.run_dir + ": cannot create run directory: " + ec.message());
    metrics_ = LineFile((std::filesystem::path(cfg_.run_dir) / "metrics.jsonl").string(), resume_.has_value());
    if (!cfg_.step_log.empty()) step_log_ = LineFile(cfg_.step_log, false);
    // mpirun hands its ranks a pseudo-terminal even when its own output goes to a job log, so under mpirun only a single
    // process started by hand shows the live line automatically.
    const bool launched = std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_RANK") || std::getenv("PMIX_RANK");
    progress_ = cfg_.progress == Progress::always || (cfg_.progress == Progress::automatic && isatty(STDOUT_FILENO) && !launched);
  }
}

Trainer::~Trainer() = default;

void Trainer::print_header() const {
  if (comm_.rank() != 0) return;
  std::printf("vae_dist %s (%s): %d rank%s x %d thread%s, kernels %s\n", version(), git_commit(), comm_.size(),
              comm_.size() > 1 ? "s" : "", threads_, threads_ > 1 ? "s" : "", kernels_->name().c_str());
  std::printf("model %s: %s; %s parameters\n", cfg_.preset.c_str(), cfg_.arch.describe().c_str(),
              with_commas(layout_.parameter_count()).c_str());
  std::printf("data: %zu train, %zu validation, %zu test images; global batch %d (%zu per rank), %zu steps per epoch\n", train_.size(),
              val_.size(), test_.size(), cfg_.batch, local_batch_, train_.size() / std::size_t(cfg_.batch));
  if (!node_shm_) {
    std::printf("memory pool: %s bytes per rank (parameters, gradients, Adam moments, activations, kernel scratch, sampler)\n",
                with_commas(pool_.capacity()).c_str());
  } else {
    const std::size_t buffer = layout_.padded_size() * sizeof(float);
    std::printf("memory pool: %s bytes per rank (gradient and Adam moments, of which it uses its rows, kernel scratch, sampler), "
                "plus shared memory per node: parameters (%s bytes), the activations of the global batch (%s bytes) and the "
                "checkpoint's staging of the moments (%s bytes)\n",
                with_commas(pool_.capacity()).c_str(), with_commas(buffer).c_str(), with_commas(shared_act_bytes_).c_str(),
                with_commas(2 * buffer).c_str());
  }
  std::printf("run directory: %s\n", cfg_.run_dir.c_str());
  std::fflush(stdout);
}

void Trainer::load_rows(const Dataset& data, std::size_t first, std::size_t n, std::span<const std::uint32_t> order,
                        std::uint64_t eps_key, std::uint64_t eps_base) {
  for (std::size_t r = 0; r < n; ++r) {
    const std::size_t pos = first + r;
    const std::size_t row = order.empty() ? pos : order[pos];
    const std::uint8_t* pixels = data.image(row);
    if (cfg_.binarize) {
      // Training draws anew at every step, keyed like ε by the global-batch position; evaluation (no order) uses one fixed
      // draw per image.
      const std::uint64_t key =
          order.empty() ? test_binarize_key(pos) : hash_combine(stream_key(cfg_.seed, Stream::binarize, std::uint64_t(step_)), eps_base + pos);
      binarize_image(pixels, binarized_.data(), key);
      pixels = binarized_.data();
    }
    net_->load_example(r, pixels, data.label(row));
  }
  // ε depends on the sample's position in the global batch (or dataset), never on the rank that holds it.
  ctx_.kernels->gaussian_rows(net_->eps().data(), n, std::size_t(cfg_.arch.latent), eps_key, eps_base + first);
}

Trainer::StepLoss Trainer::train_step(std::span<const std::uint32_t> global_batch, double beta, double lr) {
  const Kernels<float>& k = *ctx_.kernels;
  const std::size_t n = local_batch_;
  const float scale = 1.0f / float(cfg_.batch);
  const long step = step_ + 1;  // 1-based, as reported
  const bool faulty = cfg_.fault.kind != Fault::Kind::none && cfg_.fault.step == step && cfg_.fault.rank == comm_.rank();
  if (faulty && cfg_.fault.kind == Fault::Kind::exception)
    throw std::runtime_error("injected fault at step " + std::to_string(step) + " (--inject-fault)");
  if (faulty && cfg_.fault.kind == Fault::Kind::kill) std::raise(SIGKILL);
  auto t = std::chrono::steady_clock::now();
  auto lap = [&t](double& phase) {
    const auto now = std::chrono::steady_clock::now();
    phase += std::chrono::duration<double>(now - t).count();
    t = now;
  };

  // data: this rank's contiguous slice of the global batch
  const std::size_t first = std::size_t(comm_.rank()) * n;
  const std::uint64_t key = stream_key(cfg_.seed, Stream::reparam, std::uint64_t(step_));
  std::span<const std::uint32_t> slice = global_batch.subspan(first, n);
  load_rows(train_, 0, n, slice, key, first);
  lap(phase_.data);

  // forward and loss
  net_->forward(k, params_.data(), n);
  const Network<float>::Losses loss = net_->loss(k, n, scale);
  lap(phase_.forward);

  // backward, with each bucket's allreduce started as soon as its layers are done (layer_done); on one node, the ranks
  // sharing one pass, each waiting for the others' rows before a layer's weight gradient (rows_ready)
  next_bucket_ = 0;
  grads_finite_ = true;
  // --inject-fault nan spoils one element of the loss gradient: the loss stays finite, so only the gradient check sees it.
  if (faulty && cfg_.fault.kind == Fault::Kind::nan) net_->loss_gradient()[0] = std::numeric_limits<float>::quiet_NaN();
  net_->backward(k, params_.data(), grads_.data(), n, scale, float(beta), this);
  const bool finite = grads_finite_ && std::isfinite(loss.recon + loss.kl);
  lap(phase_.backward);
  // Sharing the pass, the waits for the other ranks' rows are synchronisation, not backward work.
  phase_.backward -= rows_wait_;
  phase_.allreduce += rows_wait_;
  rows_wait_ = 0;

  // allreduce: a flag, so every rank learns in this step whether any rank's loss or gradient is not finite (and the lowest
  // such rank), then the wait for the buckets in flight: the gradient sum is the mean gradient of the global batch. On
  // one node the flags and losses are records in shared memory, and there is no gradient to sum.
  step_ = step;
  const int stop = g_stop_requested.load(std::memory_order_relaxed);
  int bad_rank = comm_.size();
  double stats[3] = {loss.recon, loss.kl, double(stop)};
  if (node_shm_) {
    post_record(*shared_, {loss.recon, loss.kl, finite ? 1 : 0, stop});
    shared_->fence();  // every rank's weight-gradient rows and record are written and visible
    stats[0] = stats[1] = stats[2] = 0;
    for (int r = 0; r < comm_.size(); ++r) {
      const StepRecord theirs = record_of(*shared_, r);
      if (!theirs.finite && bad_rank == comm_.size()) bad_rank = r;
      stats[0] += theirs.recon;
      stats[1] += theirs.kl;
      stats[2] += theirs.stop;
    }
  } else {
    bad_rank = comm_.allreduce_min(finite ? comm_.size() : comm_.rank());
    if (bad_rank == comm_.size()) comm_.allreduce_sum(stats);
  }
  if (bad_rank < comm_.size()) {
    comm_.wait_all(requests_);
    if (node_shm_) bad_rank = source_rank(n, std::isfinite(loss.recon + loss.kl), bad_rank);
    lap(phase_.allreduce);
    const std::string what = "non-finite loss or gradient at step " + std::to_string(step) + " on rank " + std::to_string(bad_rank);
    if (cfg_.nan_policy == NanPolicy::stop)
      throw AgreedError(what + "; nothing was updated (--nan-policy skip would drop the step and go on)", kExitDiverged);
    ++skipped_;
    return {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::quiet_NaN()};
  }
  stop_agreed_ = stats[2] > 0;
  lap(phase_.allreduce);
  ++updates_;
  const AdamParams adam{lr, cfg_.adam_beta1, cfg_.adam_beta2, cfg_.adam_eps};
  auto update = [&](std::size_t begin, std::size_t count) {
    adam_step<float>(k, params_.subspan(begin, count), grads_.subspan(begin, count), adam_m_.subspan(begin, count),
                     adam_v_.subspan(begin, count), updates_, adam);
  };

  if (node_shm_) {
    // update: each rank updates the rows of the node's one parameter copy whose gradient it formed (Adam's work divided by
    // the ranks), then the fence shows them to every rank and frees the activations and records for the next step.
    for (const auto& [begin, count] : owned_) update(begin, count);
    lap(phase_.update);
    shared_->fence();
    lap(phase_.allreduce);
    return {stats[0] / cfg_.batch, stats[1] / cfg_.batch};
  }

  // update, bucket by bucket in the order their allreduces were started: the first buckets are updated while the last,
  // finished by the backward pass just now, is still in flight.
  const std::size_t passes = comm_.size() > 1 ? buckets_.size() : 1;  // alone, one pass over everything
  for (std::size_t b = 0; b < passes; ++b) {
    comm_.wait_all(std::span<MPI_Request>(requests_).subspan(b, 1));
    lap(phase_.allreduce);
    const std::size_t begin = passes > 1 ? buckets_[b].begin : 0;
    update(begin, passes > 1 ? buckets_[b].end - begin : params_.size());
    lap(phase_.update);
  }
  return {stats[0] / cfg_.batch, stats[1] / cfg_.batch};
}

void Trainer::progress() {
  if (next_bucket_ > 0) comm_.test_all(std::span<MPI_Request>(requests_).first(next_bucket_));
}

void Trainer::save_checkpoint(int epochs_done, PhaseTimes& time, bool mid_epoch) {
  std::span<const float> m = adam_m_, v = adam_v_;
  if (node_shm_) {
    // Each rank holds the moments of its own rows: they meet in the node's staging copy, which rank 0 writes.
    const std::span<float> staged = shared_moments_->segment(0).first(2 * layout_.padded_size());
    for (const auto& [begin, count] : owned_) {
      std::copy_n(adam_m_.data() + begin, count, staged.data() + begin);
      std::copy_n(adam_v_.data() + begin, count, staged.data() + layout_.padded_size() + begin);
    }
    shared_moments_->fence();
    m = staged.first(layout_.padded_size());
    v = staged.last(layout_.padded_size());
  }
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
  s.scheduler = scheduler_.state();
  s.adam = {cfg_.lr, cfg_.adam_beta1, cfg_.adam_beta2, cfg_.adam_eps};
  s.config_ini = cfg_.to_ini();
  char name[48];
  if (mid_epoch) std::snprintf(name, sizeof name, "ckpt-e%04d-s%09ld.h5", epochs_done, step_);
  else std::snprintf(name, sizeof name, "ckpt-e%04d.h5", epochs_done);
  std::vector<EpochRecord> metrics = past_metrics_;
  metrics.insert(metrics.end(), history_.begin(), history_.end());
  const std::vector<std::uint8_t> grid = sample_grid();
  const std::size_t side = 10 * kImageSide;
  const std::filesystem::path file = dir / name;
  write_checkpoint(file, cfg_.arch, layout_, params_, m, v, s, {metrics, grid, side});
  write_png_gray(std::filesystem::path(file).replace_extension(".png"), side, side, grid.data());
  // The newest K stay, each with its grid. Our own temporary is renamed by now, so a temporary still here is a killed
  // writer's half file.
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string entry = e.path().filename().string();
    if (entry.starts_with("ckpt-e") && entry.find(".h5.tmp.") != std::string::npos) std::filesystem::remove(e.path(), ec);
  }
  const std::vector<std::filesystem::path> all = complete_checkpoints(dir);
  for (std::size_t i = 0; i + std::size_t(cfg_.keep_checkpoints) < all.size(); ++i) {
    std::filesystem::remove(all[i], ec);
    std::filesystem::remove(std::filesystem::path(all[i]).replace_extension(".png"), ec);
  }
  time.checkpoint += seconds_since(t0);
}

std::vector<std::uint8_t> Trainer::sample_grid() {
  const std::vector<float> inputs = digit_decoder_inputs(cfg_.arch, *ctx_.kernels, kAllDigits, 10, 1.0, stream_key(cfg_.seed, Stream::samples, 0));
  std::vector<std::uint8_t> images(100 * std::size_t(kImagePixels));
  decode_to_pixels(*net_, *ctx_.kernels, params_.data(), inputs, 100, images.data());
  return tile_images(images.data(), 100, 10);
}

int Trainer::source_rank(std::size_t n, bool loss_finite, int found) {
  shared_->fence();  // every rank has read the step's records: they can be written again
  post_record(*shared_, {0, 0, loss_finite && net_->rows_finite(n) ? 1 : 0, 0});
  shared_->fence();
  int source = found;
  for (int r = comm_.size() - 1; r >= 0; --r)
    if (!record_of(*shared_, r).finite) source = r;
  shared_->fence();  // no rank writes its next record before every rank has read this one
  return source;
}

void Trainer::rows_ready(std::size_t) {
  const auto t0 = std::chrono::steady_clock::now();
  shared_->post(++rows_posted_);
  shared_->wait_for(rows_posted_);
  rows_wait_ += seconds_since(t0);
}

void Trainer::layer_done(std::size_t layer, bool finite) {
  // The kernels checked the gradient as they wrote it: nothing is read again, and nothing after the allreduce starts
  // (from then on the buffer is MPI's until it completes).
  grads_finite_ = grads_finite_ && finite;
  if (next_bucket_ == buckets_.size() || buckets_[next_bucket_].last_layer != layer) return;
  const std::size_t bucket = next_bucket_++;
  if (comm_.size() == 1 || node_shm_) return;  // alone, or summed in place after the backward pass: nothing to send
  requests_[bucket] = comm_.start_allreduce_sum(grads_.subspan(buckets_[bucket].begin, buckets_[bucket].end - buckets_[bucket].begin));
  progress();
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
  if (node_shm_ && !shared_) {
    shared_ = std::make_unique<NodeSegments>(comm_, kStepRecordFloats);
    shared_acts_ = std::make_unique<NodeSegments>(comm_, (shared_act_bytes_ + sizeof(float) - 1) / sizeof(float), true);
    Arena own = Arena::over(net_memory_), node = Arena::over(std::as_writable_bytes(shared_acts_->segment(0)));
    const std::size_t rank = std::size_t(comm_.rank()), ranks = std::size_t(comm_.size());
    net_ = std::make_unique<Network<float>>(cfg_.arch, layout_, local_batch_, own, RowShare{&node, rank, ranks});
    for (std::size_t l = 0; l < layout_.layers().size(); ++l) {
      const DenseSpec& s = layout_.layers()[l];
      const auto [i0, i1] = Network<float>::weight_rows(cfg_.arch, s, l, rank, ranks);
      owned_.push_back({s.w_offset + i0 * s.out, (i1 - i0) * s.out});
      if (rank == 0) owned_.push_back({s.b_offset, s.out});
    }
    shared_params_ = std::make_unique<NodeSegments>(comm_, layout_.padded_size(), true);
    params_ = shared_params_->segment(0).first(layout_.padded_size());
    shared_moments_ = std::make_unique<NodeSegments>(comm_, 2 * layout_.padded_size(), true);
  }
  // Every rank reads the checkpoint it resumes from; otherwise rank 0's initialisation is everyone's: one broadcast, or on
  // one node one shared copy.
  if (resume_) {
    if (!node_shm_ || comm_.rank() == 0) std::copy(resume_->params.begin(), resume_->params.end(), params_.begin());
    std::copy(resume_->adam_m.begin(), resume_->adam_m.end(), adam_m_.begin());
    std::copy(resume_->adam_v.begin(), resume_->adam_v.end(), adam_v_.begin());
  } else {
    if (comm_.rank() == 0) init_parameters<float>(layout_, cfg_.seed, params_);
    std::fill(adam_m_.begin(), adam_m_.end(), 0.0f);
    std::fill(adam_v_.begin(), adam_v_.end(), 0.0f);
  }
  if (node_shm_) shared_params_->fence();
  else if (!resume_) comm_.broadcast(params_.data(), params_.size_bytes());
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
}

}  // namespace vae
