// Model quality: test −ELBO, the importance-weighted likelihood, SSIM and pixel errors of reconstructions, and binarisation.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "vae/idx.hpp"
#include "vae/model.hpp"

namespace vae {

// The fixed noise of every evaluation: the ε of the test −ELBO and the test set's binarisation.
inline constexpr std::uint64_t kEvalSeed = 0x5eed'e1b0ull;

// Dynamic binarisation of one image: pixel p becomes 255 with probability p/255, else 0, from Rng(key) alone (in may be
// out).
void binarize_image(const std::uint8_t* in, std::uint8_t* out, std::uint64_t key);

// The key of test image i's fixed binarisation (the same in the trainer and in vae_eval).
std::uint64_t test_binarize_key(std::size_t i);

// SSIM (Wang et al., 2004) of two side × side images with values in [0, 1]: an 11 × 11 Gaussian window with σ = 1.5,
// K1 = 0.01, K2 = 0.03, dynamic range 1, population (not sample) statistics, averaged over the positions where the window
// lies inside the image. That is skimage.metrics.structural_similarity(a, b, data_range=1, gaussian_weights=True,
// sigma=1.5, use_sample_covariance=False).
double ssim(const float* a, const float* b, std::size_t side = kImageSide);
// The mean SSIM of n pairs of 28 × 28 images of grey levels (0 … 255, read as /255).
double mean_ssim(const std::uint8_t* a, const std::uint8_t* b, std::size_t n);

// Sums over the images one rank evaluated: add them across ranks, then divide by `images` (or the per-digit counts).
struct QualitySums {
  double images = 0;
  double recon = 0, kl = 0;  // the ELBO's terms with one fixed ε per image, as the trainer's test −ELBO
  double iw_nll = 0;         // Σ −log p̂_k(x), the importance-weighted estimate with k samples (0 when k = 0)
  double mse = 0, bce = 0;   // Σ over images of the per-pixel mean error of the reconstruction at z = μ
  std::array<double, kNumClasses> ssim{}, count{};  // Σ SSIM of the reconstructions, and images, per digit
  // Per latent dimension d [L], over images: Σ KL(q(z_d|x) ‖ N(0, 1)), and Σ μ_d and Σ μ_d² of the posterior means, from
  // which the active units follow (Burda et al. 2016: Cov_x(E[z_d|x]) > 0.01). Sized by the first add().
  std::vector<double> kl_dim, mu_sum, mu_sq;

  // Every field as one array of doubles (the latent ones last) for a sum across ranks, and back.
  std::vector<double> pack() const;
  static QualitySums unpack(std::span<const double> a, std::size_t latent);
};

// What the per-dimension sums say once every rank's are added: KL per dimension and the variance over x of μ_d.
struct LatentUsage {
  std::vector<double> kl, mean_variance;
  std::size_t active = 0;  // dimensions with mean_variance > kActiveThreshold
  static constexpr double kActiveThreshold = 0.01;
};
LatentUsage latent_usage(const QualitySums& sums);

// The Fréchet distance between two Gaussians fitted to feature sets a [na × dim] and b [nb × dim] (row-major), with
// unbiased (n − 1) covariances: ‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½), as the FID computes it (Heusel et al. 2017). The
// square root's trace comes from symmetric eigendecompositions in double: Tr (Σa Σb)^½ = Σ √λ of Σa^½ Σb Σa^½.
double frechet_distance(std::span<const float> a, std::span<const float> b, std::size_t dim);

struct QualityOptions {
  int iw_samples = 0;      // k; 0 skips the importance-weighted estimate
  std::uint64_t seed = 1;  // of the importance samples
};

// Images with labels, as evaluated: pixels [n × 784] (already binarised for a binarised model), labels [n].
struct ImageSet {
  const std::uint8_t* pixels = nullptr;
  const std::uint8_t* labels = nullptr;
  std::size_t n = 0;
};

// Evaluates a model on slices of an image set, batch by batch, in memory it allocates once.
class QualityEvaluator {
 public:
  QualityEvaluator(const Arch& arch, const ParamLayout& layout, const float* params, Kernels<float>& k, std::size_t batch = 500);

  // Adds images [lo, hi) of set to sums. Image i's noise depends only on i, so any split over ranks gives the same terms.
  // recon, if not empty, receives the reconstructions at z = μ as grey levels, [(hi − lo) × 784]. progress, if given, is
  // told the images done so far (of hi − lo) after each batch, and after each image of the importance-weighted estimate.
  void add(const ImageSet& set, std::size_t lo, std::size_t hi, const QualityOptions& options, QualitySums& sums,
           std::span<std::uint8_t> recon = {}, const std::function<void(std::size_t)>& progress = {});

  // per_digit generated digits of each class (digit_decoder_inputs), decoder means as grey levels, [10·per_digit × 784],
  // through `decoder` if given (the INT8 one), else the evaluator's fp32 network.
  std::vector<std::uint8_t> generate(std::size_t per_digit, double temperature, std::uint64_t key, Decoder* decoder = nullptr);

 private:
  // Σ over k samples of q(z|x, y) of the importance weights of one image, as −log p̂(x).          head [2L] = [μ | log σ²]
  double iw_nll(const std::uint8_t* pixels, int label, const float* head, std::size_t index, const QualityOptions& options);

  Arch arch_;
  const float* params_;
  Kernels<float>& k_;
  std::size_t batch_;
  InferenceNetwork inference_;
  std::vector<float> head_, eps_, sd_;  // sd_ [L]: σ of the image whose importance samples are drawn
  std::vector<double> row_nll_, extra_;  // per row of a chunk: NLL, and the rest of log w
};

}  // namespace vae
