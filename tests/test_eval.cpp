// Evaluation: SSIM against scikit-image, the importance-weighted NLL against quadrature, binarisation, the latent usage,
// the classifier against PyTorch, the Fréchet distance against scipy, k-fold splits.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <limits>
#include <numeric>
#include <set>

#include "test_util.hpp"
#include "vae/checkpoint.hpp"
#include "vae/classifier.hpp"
#include "vae/config.hpp"
#include "vae/dataset.hpp"
#include "vae/errors.hpp"
#include "vae/evaluation.hpp"
#include "vae/rng.hpp"

namespace vae {
namespace {

// The pairs of tests/ssim_reference.py, built from the same integer formulas.
std::pair<std::vector<float>, std::vector<float>> ssim_pair(int kind) {
  std::vector<float> a(784), b(784);
  for (int i = 0; i < 28; ++i)
    for (int j = 0; j < 28; ++j) {
      int x = 0, y = 0;
      if (kind == 0) x = (i * i + 3 * j) % 256, y = (i * j + 7) % 256;
      if (kind == 1) x = (i * 28 + j) * 5 % 256, y = std::clamp(x + (i * j % 17) - 8, 0, 255);
      if (kind == 2) x = std::max(0, 255 - 2 * ((i - 14) * (i - 14) + (j - 14) * (j - 14))), y = std::max(0, 255 - 2 * ((i - 14) * (i - 14) + (j - 15) * (j - 15)));
      if (kind == 3) x = 0, y = 51;
      a[std::size_t(i * 28 + j)] = float(x) / 255.0f;
      b[std::size_t(i * 28 + j)] = float(y) / 255.0f;
    }
  return {a, b};
}

TEST(Ssim, MatchesScikitImage) {
  // structural_similarity(a, b, data_range=1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False), skimage 0.19.3
  const double expected[4] = {0.333920699181, 0.997499601706, 0.945368711403, 0.002493765586};
  for (int kind = 0; kind < 4; ++kind) {
    const auto [a, b] = ssim_pair(kind);
    EXPECT_NEAR(ssim(a.data(), b.data()), expected[kind], 2e-6) << "pair " << kind;
  }
}

TEST(Ssim, IsOneForIdenticalImagesAndSymmetric) {
  const auto [a, b] = ssim_pair(1);
  EXPECT_DOUBLE_EQ(ssim(a.data(), a.data()), 1.0);
  EXPECT_DOUBLE_EQ(ssim(a.data(), b.data()), ssim(b.data(), a.data()));
}

TEST(Binarize, DrawsPixelsWithTheirIntensityAsProbability) {
  std::vector<std::uint8_t> in(784), out(784), again(784);
  for (std::size_t p = 0; p < 784; ++p) in[p] = std::uint8_t(p % 3 == 0 ? 0 : p % 3 == 1 ? 255 : 64);
  std::size_t on = 0, draws = 0;
  for (std::uint64_t key = 0; key < 300; ++key) {
    binarize_image(in.data(), out.data(), key);
    binarize_image(in.data(), again.data(), key);
    ASSERT_EQ(out, again) << "the key alone must decide the draw";
    for (std::size_t p = 0; p < 784; ++p) {
      ASSERT_TRUE(out[p] == 0 || out[p] == 255);
      if (in[p] == 0) {
        ASSERT_EQ(out[p], 0);
      } else if (in[p] == 255) {
        ASSERT_EQ(out[p], 255);
      } else {
        on += out[p] == 255;
        ++draws;
      }
    }
  }
  const double rate = double(on) / double(draws), p = 64.0 / 255.0, sd = std::sqrt(p * (1 - p) / double(draws));
  EXPECT_NEAR(rate, p, 4 * sd);
  EXPECT_NE(test_binarize_key(0), test_binarize_key(1));
}

// A tiny model with a 2-dimensional latent space, where log p(x) = log ∫ p(x|z) N(z; 0, I) dz can be computed by
// quadrature on a grid: the importance-weighted estimate must converge to it.
class TinyModel : public ::testing::Test {
 protected:
  Arch arch = [] {
    Arch a;
    a.hidden = {16};
    a.latent = 2;
    a.act = Activation::tanh;
    return a;
  }();
  ParamLayout layout{arch};
  std::vector<float> params = std::vector<float>(layout.padded_size());
  std::unique_ptr<Kernels<float>> k = make_kernels(KernelChoice::parallel, 2);
  std::vector<std::uint8_t> pixels, labels;
  void SetUp() override {
    init_parameters<float>(layout, 3, params);
    test::synthetic_images(4, 11, pixels, labels);
  }

  // log p(x) of image i by the midpoint rule on [−7, 7]² with h = 0.02 (its own kernels: a network binds their scratch).
  double log_px(std::size_t i) {
    const std::unique_ptr<Kernels<float>> mine = make_kernels(KernelChoice::parallel, 2);
    InferenceNetwork inf(arch, layout, *mine, 500);
    Network<float>& net = inf.net();
    const double h = 0.02;
    const int cells = int(14 / h);
    const ImageBatch target{pixels.data() + i * 784, 0, 784, nullptr, 0};
    std::vector<double> nll(500);
    double top = -std::numeric_limits<double>::infinity(), sum = 0;
    std::vector<double> zs;
    for (int a = 0; a < cells; ++a)
      for (int b = 0; b < cells; ++b) zs.push_back(-7 + (a + 0.5) * h), zs.push_back(-7 + (b + 0.5) * h);
    const std::size_t n = zs.size() / 2, dec_in = arch.dec_in();
    for (std::size_t first = 0; first < n; first += 500) {
      const std::size_t rows = std::min<std::size_t>(500, n - first);
      for (std::size_t r = 0; r < rows; ++r) {
        float* in = net.decoder_input().data() + r * dec_in;
        in[0] = float(zs[2 * (first + r)]);
        in[1] = float(zs[2 * (first + r) + 1]);
        for (std::size_t c = 2; c < dec_in; ++c) in[c] = c - 2 == labels[i] ? 1.0f : 0.0f;
      }
      net.decode(*mine, params.data(), rows);
      mine->bernoulli_nll_rows(net.logits().data(), target, nll.data(), rows);
      for (std::size_t r = 0; r < rows; ++r) {
        const double z0 = zs[2 * (first + r)], z1 = zs[2 * (first + r) + 1];
        const double lw = -nll[r] - 0.5 * (z0 * z0 + z1 * z1) - std::log(2 * std::numbers::pi) + 2 * std::log(h);
        if (lw > top) sum = sum * std::exp(top - lw) + 1, top = lw;
        else sum += std::exp(lw - top);
      }
    }
    return top + std::log(sum);
  }
};

TEST_F(TinyModel, ImportanceWeightedNllConvergesToQuadrature) {
  QualityEvaluator eval(arch, layout, params.data(), *k, 100);
  const ImageSet set{pixels.data(), labels.data(), 4};
  for (std::size_t i = 0; i < 2; ++i) {
    QualitySums few, many;
    eval.add(set, i, i + 1, {1, 5}, few);
    eval.add(set, i, i + 1, {20000, 5}, many);
    const double exact = -log_px(i);
    EXPECT_NEAR(many.iw_nll, exact, 0.02) << "image " << i;
    // The −ELBO lies nats above the true NLL here (an untrained encoder): the importance weights close that gap.
    EXPECT_GT(many.recon + many.kl - exact, 1.0) << "image " << i;
    EXPECT_TRUE(std::isfinite(few.iw_nll));
  }
}

TEST_F(TinyModel, SumsDoNotDependOnHowImagesAreSplit) {
  QualityEvaluator eval(arch, layout, params.data(), *k, 3);
  const ImageSet set{pixels.data(), labels.data(), 4};
  QualitySums whole, parts;
  eval.add(set, 0, 4, {64, 9}, whole);
  eval.add(set, 0, 1, {64, 9}, parts);
  eval.add(set, 1, 4, {64, 9}, parts);
  EXPECT_EQ(whole.images, 4);
  EXPECT_NEAR(whole.recon, parts.recon, 1e-9 * std::abs(whole.recon));
  EXPECT_NEAR(whole.kl, parts.kl, 1e-9 * std::abs(whole.kl) + 1e-12);
  EXPECT_NEAR(whole.iw_nll, parts.iw_nll, 1e-9 * std::abs(whole.iw_nll));
  EXPECT_NEAR(whole.mse, parts.mse, 1e-12);
  for (std::size_t d = 0; d < 10; ++d) EXPECT_EQ(whole.count[d], parts.count[d]);
  ASSERT_EQ(whole.kl_dim.size(), std::size_t(arch.latent));
  double kl = 0;
  for (std::size_t d = 0; d < whole.kl_dim.size(); ++d) {
    kl += whole.kl_dim[d];
    EXPECT_NEAR(whole.kl_dim[d], parts.kl_dim[d], 1e-9 * whole.kl_dim[d] + 1e-12) << "dimension " << d;
    EXPECT_NEAR(whole.mu_sq[d], parts.mu_sq[d], 1e-9 * whole.mu_sq[d] + 1e-12) << "dimension " << d;
  }
  // the ELBO's KL is the per-dimension terms' sum
  EXPECT_NEAR(kl, whole.kl, 1e-5 * whole.kl);
  const QualitySums round = QualitySums::unpack(whole.pack(), std::size_t(arch.latent));
  EXPECT_EQ(round.iw_nll, whole.iw_nll);
  EXPECT_EQ(round.ssim, whole.ssim);
  EXPECT_EQ(round.kl_dim, whole.kl_dim);
  EXPECT_EQ(round.mu_sum, whole.mu_sum);
  EXPECT_EQ(round.mu_sq, whole.mu_sq);
  EXPECT_THROW(QualitySums::unpack(whole.pack(), std::size_t(arch.latent) + 1), std::logic_error);
}

// Active units by hand: μ_0 takes 0.2 and −0.2 (variance 0.04, active), μ_1 0.05 and 0.15 (variance 0.0025, not), over 4 images.
TEST(LatentUsage, CountsDimensionsWhosePosteriorMeanVaries) {
  QualitySums s;
  s.images = 4;
  s.kl_dim = {2.0, 0.4};
  s.mu_sum = {0.0, 0.4};
  s.mu_sq = {4 * 0.04, 2 * 0.0025 + 2 * 0.0225};
  const LatentUsage u = latent_usage(s);
  ASSERT_EQ(u.kl.size(), 2u);
  EXPECT_DOUBLE_EQ(u.kl[0], 0.5);
  EXPECT_DOUBLE_EQ(u.kl[1], 0.1);
  EXPECT_NEAR(u.mean_variance[0], 0.04, 1e-15);
  EXPECT_NEAR(u.mean_variance[1], 0.0025, 1e-15);
  EXPECT_EQ(u.active, 1u);
}

TEST_F(TinyModel, GeneratedDigitsShareNoiseAcrossLabels) {
  QualityEvaluator eval(arch, layout, params.data(), *k, 100);
  const std::vector<std::uint8_t> a = eval.generate(3, 1.0, 17), b = eval.generate(3, 1.0, 17);
  EXPECT_EQ(a, b);
  ASSERT_EQ(a.size(), 30u * 784);
  EXPECT_NE(std::vector<std::uint8_t>(a.begin(), a.begin() + 784), std::vector<std::uint8_t>(a.begin() + 3 * 784, a.begin() + 4 * 784))
      << "digit 0 and digit 1 from the same noise should differ by the label";
}

const std::filesystem::path kClassifier = std::filesystem::path(VAE_SOURCE_DIR) / "configs" / "mnist_classifier.h5";

TEST(Classifier, ReproducesPyTorchLogits) {
  const ClassifierWeights w = read_classifier(kClassifier);
  Classifier c(w, 2, 8);  // a batch smaller than the 32 images: several passes
  std::vector<float> logits(32 * 10);
  c.logits(w.reference_images.data(), 32, logits.data());
  for (std::size_t i = 0; i < logits.size(); ++i) EXPECT_NEAR(logits[i], w.reference_logits[i], 2e-4 * (1 + std::abs(w.reference_logits[i]))) << i;
}

TEST(Classifier, ReadsTheMnistTestSet) {
  const std::filesystem::path data = std::filesystem::path(VAE_SOURCE_DIR) / "data" / "mnist";
  const IdxPair test = load_idx_pair(resolve_idx_path(data, "t10k-images-idx3-ubyte"), resolve_idx_path(data, "t10k-labels-idx1-ubyte"));
  const ClassifierWeights w = read_classifier(kClassifier);
  Classifier c(w, 2);
  const std::vector<int> read = c.predict(test.pixels.data(), test.count);
  std::size_t right = 0;
  for (std::size_t i = 0; i < test.count; ++i) right += read[i] == test.labels[i];
  const double accuracy = double(right) / double(test.count);
  EXPECT_GE(accuracy, 0.985);
  EXPECT_NEAR(accuracy, w.test_accuracy, 0.0005) << "PyTorch measured " << w.test_accuracy;
}

// Two Gaussians the distance can be read off: diagonal covariances, ‖μa − μb‖² + Σ (σa − σb)².
TEST(Frechet, ByHandOnDiagonalGaussians) {
  // a: the four corners (±1, ±2): mean 0, variances 4/3 and 16/3 (n − 1 = 3); b: the same scaled by 3 and moved by (1, 1)
  const std::vector<float> a{1, 2, 1, -2, -1, 2, -1, -2};
  std::vector<float> b(a);
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = 3 * b[i] + 1;
  const double sa[2] = {std::sqrt(4.0 / 3), std::sqrt(16.0 / 3)};
  const double expected = 2 + (sa[0] - 3 * sa[0]) * (sa[0] - 3 * sa[0]) + (sa[1] - 3 * sa[1]) * (sa[1] - 3 * sa[1]);
  EXPECT_NEAR(frechet_distance(a, b, 2), expected, 1e-9);
  EXPECT_NEAR(frechet_distance(a, a, 2), 0, 1e-9);
  EXPECT_THROW(frechet_distance(std::vector<float>(2), a, 2), std::invalid_argument);
}

// scipy's Fréchet distance (tests/frechet_reference.py) of features written to a file.
double scipy_frechet(const std::vector<float>& a, const std::vector<float>& b, std::size_t dim, const std::filesystem::path& dir) {
  auto put = [&](const char* name, const std::vector<float>& x) {
    test::write_bytes(dir / name, std::vector<std::uint8_t>(reinterpret_cast<const std::uint8_t*>(x.data()),
                                                            reinterpret_cast<const std::uint8_t*>(x.data() + x.size())));
    return (dir / name).string();
  };
  const std::string cmd = std::string(VAE_REFERENCE_PYTHON) + " " + (std::filesystem::path(VAE_SOURCE_DIR) / "tests" / "frechet_reference.py").string() + " " + put("a.f32", a) +
                          " " + put("b.f32", b) + " " + std::to_string(dim) + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) throw std::runtime_error("cannot run " + cmd);
  std::string out;
  char buf[256];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  if (pclose(p) != 0) throw std::runtime_error(cmd + " failed: " + out);
  return std::stod(out);
}

// Our distance on the classifier's real features against scipy's on the same features: two halves of the test set (a
// small distance, all in the trace term), and the test set against its images darkened and shifted (a large one).
TEST(Frechet, MatchesScipyOnTheClassifiersFeatures) {
  const std::filesystem::path data = std::filesystem::path(VAE_SOURCE_DIR) / "data" / "mnist";
  const IdxPair test = load_idx_pair(resolve_idx_path(data, "t10k-images-idx3-ubyte"), resolve_idx_path(data, "t10k-labels-idx1-ubyte"));
  constexpr std::size_t n = 1000, F = Classifier::kFeatures, P = kImagePixels;
  std::vector<std::uint8_t> changed(test.pixels.begin(), test.pixels.begin() + std::ptrdiff_t(n * P));
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t p = P; p-- > 0;) changed[i * P + p] = std::uint8_t(p % 28 >= 3 ? changed[i * P + p - 3] / 2 : 0);
  Classifier c(read_classifier(kClassifier), 2);
  std::vector<float> first(n * F), second(n * F), other(n * F);
  c.features(test.pixels.data(), n, first.data());
  c.features(test.pixels.data() + n * P, n, second.data());
  c.features(changed.data(), n, other.data());
  test::TempDir dir;
  for (const auto* b : {&second, &other}) {
    const double ours = frechet_distance(first, *b, F), theirs = scipy_frechet(first, *b, F, dir.path());
    EXPECT_GT(ours, 0);
    EXPECT_NEAR(ours, theirs, 1e-6 * theirs + 1e-9) << (b == &second ? "two halves of the test set" : "darkened and shifted");
  }
  // the darkened, shifted digits are much further from the test set than its other half
  EXPECT_GT(frechet_distance(first, other, F), 10 * frechet_distance(first, second, F));
}

TEST(Classifier, DamagedFileIsAUsageError) {
  test::TempDir dir;
  const std::filesystem::path bad = dir.path() / "c.h5";
  test::write_bytes(bad, std::vector<std::uint8_t>(100, 7));
  try {
    read_classifier(bad);
    FAIL() << "read a damaged file";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("c.h5: not an HDF5 file"), std::string::npos) << e.what();
  }
}

TEST(KFold, FoldsPartitionTheTrainingSet) {
  std::vector<std::uint8_t> pixels, labels;
  test::synthetic_images(103, 1, pixels, labels);
  const IdxPair source = IdxPair::from_memory(pixels, labels);
  const std::vector<int> all{0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  std::multiset<const std::uint8_t*> held_out;
  for (std::size_t i = 0; i < 5; ++i) {
    Dataset train = Dataset::select_digits(source, all);
    const Dataset fold = train.split_fold(i, 5);
    EXPECT_EQ(train.size() + fold.size(), 103u);
    EXPECT_TRUE(fold.size() == 20 || fold.size() == 21) << fold.size();
    std::set<const std::uint8_t*> in_train;
    for (std::size_t r = 0; r < train.size(); ++r) in_train.insert(train.image(r));
    for (std::size_t r = 0; r < fold.size(); ++r) {
      EXPECT_EQ(in_train.count(fold.image(r)), 0u);
      held_out.insert(fold.image(r));
    }
  }
  EXPECT_EQ(held_out.size(), 103u);
  EXPECT_EQ(std::set<const std::uint8_t*>(held_out.begin(), held_out.end()).size(), 103u) << "every image is held out exactly once";
}

TEST(EvalConfig, PresetsAndOptions) {
  const char* burda[] = {"vae_dist", "--preset", "burda", "--conditional", "off", "--binarize", "dynamic", "--kfold", "5", "--fold", "4"};
  const Config c = parse_args(11, burda).config;
  EXPECT_EQ(c.arch.hidden, (std::vector<int>{200, 200}));
  EXPECT_EQ(c.arch.latent, 50);
  EXPECT_EQ(c.arch.act, Activation::tanh);
  EXPECT_FALSE(c.arch.conditional);
  EXPECT_TRUE(c.binarize);
  EXPECT_EQ(c.kfold, 5);
  EXPECT_EQ(c.fold, 4);
  const auto message = [](std::vector<const char*> args) {
    try {
      parse_args(int(args.size()), args.data());
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_EQ(message({"vae_dist", "--kfold", "5", "--fold", "5"}), "option --fold: must be in 0-4 with --kfold 5");
  EXPECT_EQ(message({"vae_dist", "--binarize", "static"}), "option --binarize: unknown value 'static' (expected none or dynamic)");
  EXPECT_EQ(message({"vae_dist", "--conditional", "maybe"}), "option --conditional: unknown value 'maybe' (expected on or off)");
  EXPECT_EQ(message({"vae_dist", "--preset", "burda", "--activation", "elu"}), "");
}

}  // namespace
}  // namespace vae
