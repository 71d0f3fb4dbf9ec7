// vae_eval: how good a checkpoint is — test −ELBO, importance-weighted NLL, SSIM, pixel errors, conditional accuracy.
#include <boost/program_options.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "vae/checkpoint.hpp"
#include "vae/classifier.hpp"
#include "vae/communicator.hpp"
#include "vae/config.hpp"
#include "vae/dataset.hpp"
#include "vae/errors.hpp"
#include "vae/tool_options.hpp"
#include "vae/evaluation.hpp"
#include "vae/json.hpp"
#include "vae/quantized.hpp"
#include "vae/idx.hpp"
#include "vae/png.hpp"
#include "vae/progress.hpp"
#include "vae/rng.hpp"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace {

struct Request {
  std::string checkpoint, data_dir, classifier, json, recon_png, samples_png, misread_png, binarize, weights;
  std::vector<int> digits;  // empty: every class of the model
  vae::Progress progress = vae::Progress::automatic;
  int test_limit = 0, iw_samples = 0, samples_per_digit = 0, threads = 0;
  double temperature = 1.0;
  std::uint64_t seed = 1;
  bool int8 = false;  // --precision int8: generated digits through the INT8 decoder
};

// The shipped classifier: installed beside the configs (PREFIX/share/vae_dist/configs), or in the source tree's configs/
// when run from a build directory (build/PRESET/ or build/).
std::string default_classifier() {
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec).parent_path();
  for (const fs::path& p : {exe / "../share/vae_dist/configs/mnist_classifier.h5", exe / "../../configs/mnist_classifier.h5",
                            exe / "../configs/mnist_classifier.h5"})
    if (fs::is_regular_file(p, ec)) return fs::weakly_canonical(p, ec).string();
  return "configs/mnist_classifier.h5";
}

bool parse(int argc, char** argv, Request& q, std::string& help) {
  po::options_description desc(
      "vae_eval: the quality of a vae_dist checkpoint on the MNIST test set\n\n"
      "Usage: vae_eval --checkpoint FILE [options]       (under mpirun, the test images are split over the ranks)\n");
  desc.add_options()("help,h", "print this help and exit")("checkpoint", po::value<std::string>(), "checkpoint file (ckpt-eNNNN.h5)")(
      "data-dir", po::value<std::string>()->default_value("data/mnist"), "directory with t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (raw or .gz)")(
      "digits", po::value<std::string>()->default_value("all"), "test digits to evaluate, e.g. 0,1, or all")(
      "test-limit", po::value<int>()->default_value(0), "evaluate the first N test images of the digit set (0: all)")(
      "binarize", po::value<std::string>()->default_value("auto"),
      "auto (as the model was trained), none, or dynamic (the test set binarised once with the fixed evaluation seed)")(
      "iw-samples", po::value<int>()->default_value(100), "k importance samples per image for the NLL estimate (0: skip; Burda et al. use 5000)")(
      "samples-per-digit", po::value<int>()->default_value(1000), "generated samples of each class, which the classifier reads and the Fréchet distance compares with the test set (0: skip both)")(
      "temperature", po::value<double>()->default_value(1.0), "scale of the latent noise of the generated samples (1: the prior)")(
      "seed", po::value<std::uint64_t>()->default_value(1), "noise of the importance samples and of the generated digits")(
      "classifier", po::value<std::string>()->default_value(default_classifier()), "the digit classifier (configs/mnist_classifier.h5)")(
      "json", po::value<std::string>()->default_value(""), "also write the results to this JSON file")(
      "recon-png", po::value<std::string>()->default_value(""), "write originals above their reconstructions (ten of each digit) to this PNG")(
      "samples-png", po::value<std::string>()->default_value(""), "write the generated digits that were classified (one row per digit) to this PNG")(
      "misread-png", po::value<std::string>()->default_value(""), "write the generated digits the classifier misread (row d: asked for d, at most 20) to this PNG")(
      "threads", po::value<int>()->default_value(0), "threads per rank (0: the cores available / ranks sharing them)")(
      "weights", po::value<std::string>()->default_value("raw"),
      "raw (the parameters as trained) or ema (the moving average a run with --ema-decay keeps)")(
      "precision", po::value<std::string>()->default_value("fp32"),
      "decoder of the generated digits: fp32, or int8 (and their SSIM against the fp32 decoder's for the same noise)")(
      "progress", po::value<std::string>()->default_value("auto"), "live progress line: auto (a terminal, not under mpirun), always, never");
  const po::variables_map vm = vae::parse_tool_options(desc, argc, argv);
  if (vm.count("help")) {
    std::ostringstream os;
    os << desc;
    help = os.str();
    return false;
  }
  if (!vm.count("checkpoint")) throw vae::UsageError("option --checkpoint is required");
  q.checkpoint = vm["checkpoint"].as<std::string>();
  q.data_dir = vm["data-dir"].as<std::string>();
  const std::string digits = vm["digits"].as<std::string>();
  if (digits != "all") q.digits = vae::parse_int_list(digits, "digits");
  for (int d : q.digits)
    if (d < 0 || d >= vae::kNumClasses) throw vae::UsageError("option --digits: " + std::to_string(d) + " is not a digit");
  const std::string progress = vm["progress"].as<std::string>();
  if (progress == "always") q.progress = vae::Progress::always;
  else if (progress == "never") q.progress = vae::Progress::never;
  else if (progress != "auto") throw vae::UsageError("option --progress: unknown value " + vae::in_quotes(progress) + " (expected auto, always or never)");
  q.test_limit = vm["test-limit"].as<int>();
  q.binarize = vm["binarize"].as<std::string>();
  q.iw_samples = vm["iw-samples"].as<int>();
  q.samples_per_digit = vm["samples-per-digit"].as<int>();
  q.temperature = vm["temperature"].as<double>();
  q.seed = vm["seed"].as<std::uint64_t>();
  q.classifier = vm["classifier"].as<std::string>();
  q.json = vm["json"].as<std::string>();
  q.recon_png = vm["recon-png"].as<std::string>();
  q.samples_png = vm["samples-png"].as<std::string>();
  q.misread_png = vm["misread-png"].as<std::string>();
  q.threads = vm["threads"].as<int>();
  q.weights = vm["weights"].as<std::string>();
  const std::string precision = vm["precision"].as<std::string>();
  if (precision != "fp32" && precision != "int8")
    throw vae::UsageError("option --precision: unknown value " + vae::in_quotes(precision) + " (expected fp32 or int8)");
  q.int8 = precision == "int8";
  if (q.binarize != "auto" && q.binarize != "none" && q.binarize != "dynamic")
    throw vae::UsageError("option --binarize: unknown value " + vae::in_quotes(q.binarize) + " (expected auto, none or dynamic)");
  if (q.test_limit < 0) throw vae::UsageError("option --test-limit: must not be negative");
  if (q.iw_samples < 0 || q.iw_samples > 1000000) throw vae::UsageError("option --iw-samples: must be in 0-1000000");
  if (q.samples_per_digit < 0 || q.samples_per_digit > 100000) throw vae::UsageError("option --samples-per-digit: must be in 0-100000");
  if (!(q.temperature > 0 && q.temperature <= 10)) throw vae::UsageError("option --temperature: must be in (0, 10]");
  if (q.threads < 0 || q.threads > 1024) throw vae::UsageError("option --threads: must be in 0-1024");
  return true;
}

// {"0": x0, "1": x1, ...} for the digits evaluated.
std::string per_digit(const std::array<double, vae::kNumClasses>& v, const std::vector<int>& digits) {
  vae::JsonObject o;
  for (int d : digits) o.number(std::to_string(d), v[std::size_t(d)]);
  return o.str();
}

// The files, read and checked (every failure a UsageError) before any collective work starts.
struct Inputs {
  vae::Checkpoint c;
  vae::IdxPair test_file;
  vae::Dataset test;
  vae::ClassifierWeights weights;
  bool binarize = false;
  bool classify = false;  // the classifier reads generated digits (conditional models)
  bool frechet = false;   // the classifier's features of generated digits and test images are compared (every model)
};

void load(Request& q, Inputs& in) {
  in.c = vae::read_checkpoint_guarded(q.checkpoint);
  vae::select_weights(in.c, q.weights, q.checkpoint);
  const int classes = in.c.arch.classes;
  if (q.digits.empty()) q.digits.assign(vae::all_classes(in.c.arch).begin(), vae::all_classes(in.c.arch).end());
  for (int d : q.digits)
    if (d >= classes)
      throw vae::UsageError("option --digits: " + std::to_string(d) + " is not among the model's " + std::to_string(classes) + " classes");
  in.binarize = q.binarize == "auto" ? in.c.state.binarize : q.binarize == "dynamic";
  const fs::path images = vae::resolve_idx_path(q.data_dir, "t10k-images-idx3-ubyte"), labels = vae::resolve_idx_path(q.data_dir, "t10k-labels-idx1-ubyte");
  in.test_file = vae::load_idx_pair(images, labels);
  in.test = vae::Dataset::select_digits(in.test_file, q.digits);
  in.test.truncate(std::size_t(q.test_limit));
  if (in.test.size() == 0) throw vae::UsageError(labels.string() + ": no test images with the selected digits");
  in.frechet = q.samples_per_digit > 0;
  in.classify = in.c.arch.conditional && in.frechet;
  if (in.frechet) in.weights = vae::read_classifier_guarded(q.classifier);
}

// Evaluates this rank's share, and on rank 0 classifies generated digits, prints and writes the results.
void evaluate(const Request& q, const Inputs& in, const vae::Communicator& comm) {
  const auto start = std::chrono::steady_clock::now();
  const vae::Checkpoint& c = in.c;
  const vae::Dataset& test = in.test;
  const vae::IdxPair& test_file = in.test_file;
  const bool binarize = in.binarize, classify = in.classify, frechet = in.frechet;

  // The evaluated images in one buffer: the selected digits, binarised with the fixed evaluation seed if asked.
  const std::size_t N = test.size(), P = std::size_t(vae::kImagePixels);
  std::vector<std::uint8_t> pixels(N * P), digit_of(N);
  for (std::size_t i = 0; i < N; ++i) {
    if (binarize) vae::binarize_image(test.image(i), pixels.data() + i * P, vae::test_binarize_key(i));
    else std::copy_n(test.image(i), P, pixels.data() + i * P);
    digit_of[i] = std::uint8_t(test.label(i));
  }
  const vae::ImageSet set{pixels.data(), digit_of.data(), N};

  const int threads = q.threads > 0 ? q.threads : vae::default_threads(comm);
  if (const std::string warning = vae::oversubscription_warning(comm, threads); !warning.empty())
    std::fprintf(stderr, "vae_eval: warning: %s\n", warning.c_str());
  const auto kernels = vae::make_kernels(vae::KernelChoice::parallel, threads);
  const vae::ParamLayout layout(c.arch);
  vae::QualityEvaluator evaluator(c.arch, layout, c.params.data(), *kernels);
  const std::size_t lo = N * std::size_t(comm.rank()) / std::size_t(comm.size()), hi = N * std::size_t(comm.rank() + 1) / std::size_t(comm.size());
  vae::QualitySums mine;
  std::vector<std::uint8_t> recon(q.recon_png.empty() ? 0 : (hi - lo) * P);
  {
    // Rank 0 shows its share's progress, scaled to the whole set: every rank has as many images to the image.
    vae::ProgressLine line(comm.rank() == 0 && q.progress == vae::Progress::always, N, "images");
    evaluator.add(set, lo, hi, {q.iw_samples, q.seed}, mine, recon,
                  [&](std::size_t done) { line.update(std::min(N, done * std::size_t(comm.size()))); });
  }
  std::vector<double> packed = mine.pack();
  comm.allreduce_sum(packed);
  const vae::QualitySums all = vae::QualitySums::unpack(packed, std::size_t(c.arch.latent));
  const vae::LatentUsage usage = vae::latent_usage(all);

  // Reconstructions: ten originals of each digit above their reconstructions, from the images rank 0 holds.
  if (comm.rank() == 0 && !q.recon_png.empty()) {
    std::vector<std::uint8_t> tiles;
    for (int d : q.digits) {
      std::vector<std::size_t> picked;
      for (std::size_t i = lo; i < hi && picked.size() < 10; ++i)
        if (digit_of[i] == d) picked.push_back(i);
      if (picked.empty()) continue;
      for (int row = 0; row < 2; ++row)
        for (std::size_t j = 0; j < 10; ++j) {
          const std::uint8_t* src = j < picked.size() ? (row == 0 ? set.pixels + picked[j] * P : recon.data() + (picked[j] - lo) * P) : nullptr;
          for (std::size_t p = 0; p < P; ++p) tiles.push_back(src ? src[p] : 0);
        }
    }
    const std::vector<std::uint8_t> grid = vae::tile_images(tiles.data(), tiles.size() / P, 10);
    vae::write_png_gray(q.recon_png, 10 * vae::kImageSide, grid.size() / (10 * vae::kImageSide), grid.data());
  }
  if (comm.rank() != 0) return;

  // Conditional accuracy: the classifier reads samples_per_digit generated digits of each class.
  std::array<double, vae::kNumClasses> accuracy{};
  accuracy.fill(NAN);
  double overall = NAN, classifier_accuracy = NAN, int8_ssim = NAN, frechet_distance = NAN;
  std::size_t generated = 0;
  std::array<std::array<std::size_t, vae::kNumClasses>, vae::kNumClasses> read_as{};  // [asked][read], the samples misread
  if (frechet) {
    // The Fréchet distance: the classifier's penultimate features of every generated digit against those of the whole
    // MNIST test set (grey levels, as the decoder's means are).
    vae::Classifier reader(in.weights, threads);
    const std::size_t per = std::size_t(q.samples_per_digit), F = vae::Classifier::kFeatures;
    const std::uint64_t key = vae::stream_key(q.seed, vae::Stream::samples, 2);
    std::unique_ptr<vae::Int8Decoder> int8;
    if (q.int8) int8 = std::make_unique<vae::Int8Decoder>(c.arch, layout, c.params.data(), *kernels, vae::kSampleBatch);
    const std::vector<std::uint8_t> samples = evaluator.generate(per, q.temperature, key, int8.get());
    generated = samples.size() / P;
    // one pass of the classifier over each set gives both its features and its reading
    std::vector<float> sample_features(generated * F), test_features(test_file.count * F), sample_logits(generated * 10),
        test_logits(test_file.count * 10);
    reader.run(samples.data(), generated, sample_logits.data(), sample_features.data());
    reader.run(test_file.pixels.data(), test_file.count, test_logits.data(), test_features.data());
    frechet_distance = vae::frechet_distance(sample_features, test_features, F);
    if (int8) int8_ssim = vae::mean_ssim(samples.data(), evaluator.generate(per, q.temperature, key).data(), generated);
    if (classify) {
      const std::vector<int> seen = vae::Classifier::most_likely(test_logits.data(), test_file.count);
      std::size_t right = 0;
      for (std::size_t i = 0; i < test_file.count; ++i) right += seen[i] == test_file.labels[i];
      classifier_accuracy = double(right) / double(test_file.count);
      const std::vector<int> read = vae::Classifier::most_likely(sample_logits.data(), generated);
      std::size_t total = 0, asked = 0;
      for (int d : q.digits) {
        std::size_t ok = 0;
        for (std::size_t i = 0; i < per; ++i) {
          const int r = read[std::size_t(d) * per + i];
          ok += r == d;
          if (r != d) ++read_as[std::size_t(d)][std::size_t(r)];
        }
        accuracy[std::size_t(d)] = double(ok) / double(per);
        total += ok;
        asked += per;
      }
      overall = double(total) / double(asked);
      if (!q.samples_png.empty()) {
        std::vector<std::uint8_t> rows;
        for (int d : q.digits) rows.insert(rows.end(), samples.begin() + std::ptrdiff_t(std::size_t(d) * per * P), samples.begin() + std::ptrdiff_t((std::size_t(d) + 1) * per * P));
        const std::vector<std::uint8_t> grid = vae::tile_images(rows.data(), rows.size() / P, per);
        vae::write_png_gray(q.samples_png, per * vae::kImageSide, grid.size() / (per * vae::kImageSide), grid.data());
      }
      if (!q.misread_png.empty()) {
        constexpr std::size_t kColumns = 20;
        std::vector<std::uint8_t> rows(q.digits.size() * kColumns * P, 0);  // black where a row has fewer misread digits
        for (std::size_t row = 0; row < q.digits.size(); ++row) {
          const std::size_t d = std::size_t(q.digits[row]);
          std::size_t col = 0;
          for (std::size_t i = 0; i < per && col < kColumns; ++i)
            if (read[d * per + i] != int(d))
              std::copy_n(samples.begin() + std::ptrdiff_t((d * per + i) * P), P, rows.begin() + std::ptrdiff_t((row * kColumns + col++) * P));
        }
        const std::vector<std::uint8_t> grid = vae::tile_images(rows.data(), rows.size() / P, kColumns);
        vae::write_png_gray(q.misread_png, kColumns * vae::kImageSide, grid.size() / (kColumns * vae::kImageSide), grid.data());
      }
    }
  }

  const double n = all.images;
  std::array<double, vae::kNumClasses> ssim_digit{};
  double ssim_digit_mean = 0, ssim_all = 0;
  for (int d : q.digits) {
    const std::size_t i = std::size_t(d);
    ssim_digit[i] = all.count[i] > 0 ? all.ssim[i] / all.count[i] : NAN;
    ssim_all += all.ssim[i];
    ssim_digit_mean += std::isfinite(ssim_digit[i]) ? ssim_digit[i] : 0;
  }
  std::size_t present = 0;
  for (int d : q.digits) present += all.count[std::size_t(d)] > 0;
  ssim_digit_mean /= double(present);
  ssim_all /= n;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  std::printf("vae_eval: %s (%s, epoch %d), %.0f test images%s, %d rank%s\n", q.checkpoint.c_str(), c.arch.describe().c_str(), c.state.epoch, n,
              binarize ? " binarised" : "", comm.size(), comm.size() > 1 ? "s" : "");
  std::printf("  test -ELBO            %9.3f nats   (reconstruction %.3f + KL %.3f)\n", (all.recon + all.kl) / n, all.recon / n, all.kl / n);
  if (q.iw_samples > 0) std::printf("  IW NLL, k = %-8d  %9.3f nats\n", q.iw_samples, all.iw_nll / n);
  std::printf("  reconstruction        MSE %.5f, BCE %.5f per pixel (decoder mean at z = mu)\n", all.mse / n, all.bce / n);
  std::printf("  SSIM                  %.4f over images, %.4f mean of digits\n", ssim_all, ssim_digit_mean);
  if (classify)
    std::printf("  conditional accuracy  %.2f%% of %d samples per digit at temperature %g (the classifier reads %.2f%% of the MNIST test set right)\n",
                100 * overall, q.samples_per_digit, q.temperature, 100 * classifier_accuracy);
  if (frechet)
    std::printf("  Frechet distance      %9.3f   (the classifier's %zu penultimate features, %zu generated digits against %zu test images)\n",
                frechet_distance, vae::Classifier::kFeatures, generated, test_file.count);
  if (q.int8 && frechet)
    std::printf("  INT8 decoder          generated digits above; SSIM %.4f against the fp32 decoder's for the same noise\n", int8_ssim);
  std::printf("  active units          %zu of %zu latent dimensions (Cov_x(E[z_d|x]) > %g); KL per dimension, largest first:\n   ",
              usage.active, usage.kl.size(), vae::LatentUsage::kActiveThreshold);
  std::vector<std::size_t> by_kl(usage.kl.size());
  for (std::size_t d = 0; d < by_kl.size(); ++d) by_kl[d] = d;
  std::stable_sort(by_kl.begin(), by_kl.end(), [&](std::size_t a, std::size_t b) { return usage.kl[a] > usage.kl[b]; });
  for (std::size_t i = 0; i < by_kl.size(); ++i) std::printf(" z%zu %.3f%s", by_kl[i], usage.kl[by_kl[i]], (i + 1) % 8 == 0 && i + 1 < by_kl.size() ? "\n   " : "");
  std::printf("\n");
  std::printf("  digit   images    SSIM%s\n", classify ? "   accuracy   misread as" : "");
  for (int d : q.digits) {
    const std::size_t i = std::size_t(d);
    std::printf("  %5d  %7.0f  %.4f", d, all.count[i], ssim_digit[i]);
    if (classify) {
      std::printf("   %7.2f%%  ", 100 * accuracy[i]);
      for (std::size_t r = 0; r < vae::kNumClasses; ++r)
        if (read_as[i][r] > 0) std::printf(" %zu×%zu", r, read_as[i][r]);
    }
    std::printf("\n");
  }
  std::printf("  %.1f s\n", seconds);

  if (!q.json.empty()) {
    vae::JsonObject j;
    j.text("checkpoint", q.checkpoint).number("epoch", c.state.epoch).number("images", n).raw("binarized", binarize ? "true" : "false");
    j.number("ranks", comm.size()).number("test_elbo", (all.recon + all.kl) / n).number("test_recon", all.recon / n).number("test_kl", all.kl / n);
    j.number("iw_samples", q.iw_samples).number("iw_nll", q.iw_samples > 0 ? all.iw_nll / n : NAN);
    j.number("mse_per_pixel", all.mse / n).number("bce_per_pixel", all.bce / n).number("ssim", ssim_all).number("ssim_digit_mean", ssim_digit_mean);
    j.raw("ssim_per_digit", per_digit(ssim_digit, q.digits));
    j.number("active_units", double(usage.active)).numbers("kl_per_dim", usage.kl.data(), usage.kl.size());
    j.numbers("posterior_mean_variance_per_dim", usage.mean_variance.data(), usage.mean_variance.size());
    if (frechet) {
      j.number("frechet_distance", frechet_distance).number("frechet_generated", double(generated)).number("frechet_test_images", double(test_file.count));
      j.text("frechet_features", "classifier fc1 after ReLU (64)");
    }
    if (classify) {
      j.number("samples_per_digit", q.samples_per_digit).number("temperature", q.temperature).number("conditional_accuracy", overall);
      j.text("precision", q.int8 ? "int8" : "fp32").number("int8_vs_fp32_ssim", int8_ssim);
      j.number("classifier_test_accuracy", classifier_accuracy).raw("conditional_accuracy_per_digit", per_digit(accuracy, q.digits));
      vae::JsonObject misread;
      for (int d : q.digits) {
        vae::JsonObject as;
        for (std::size_t r = 0; r < vae::kNumClasses; ++r)
          if (read_as[std::size_t(d)][r] > 0) as.number(std::to_string(r), double(read_as[std::size_t(d)][r]));
        misread.raw(std::to_string(d), as.str());
      }
      j.raw("misread_as", misread.str());
    }
    j.number("seconds", seconds);
    std::ofstream out(q.json);
    out << j.str() << "\n";
    if (!out) throw std::runtime_error(q.json + ": cannot write");
  }
}

}  // namespace

int main(int argc, char** argv) {
  vae::MpiSession mpi(argc, argv);
  const vae::Communicator comm = vae::Communicator::world();
  try {
    // Arguments and files are checked on every rank, then agreed on, so a usage error exits 2 everywhere and never hangs.
    std::string error, help;
    Request q;
    bool run = false;
    try {
      run = parse(argc, argv, q, help);
    } catch (const vae::UsageError& e) {
      error = e.what();
    }
    if (comm.any_failed(error, "vae_eval")) return vae::kExitUsage;
    q.progress = vae::resolve_progress(q.progress, mpi.launched());
    if (!run) {
      if (comm.rank() == 0) std::fputs(help.c_str(), stdout);
      return 0;
    }
    // Inputs is large (the checkpoint and the test set): on the heap.
    auto inputs = std::make_unique<Inputs>();
    try {
      load(q, *inputs);
    } catch (const vae::UsageError& e) {
      error = e.what();
    }
    if (comm.any_failed(error, "vae_eval")) return vae::kExitUsage;
    evaluate(q, *inputs, comm);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vae_eval: rank %d: error: %s\n", comm.rank(), e.what());
    comm.abort(vae::kExitFailure);
  }
  return 0;
}
