// Model quality measures: the fixed-noise ELBO, the importance-weighted NLL, SSIM and pixel errors, and binarisation.
#include "vae/evaluation.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "vae/rng.hpp"

namespace vae {

void binarize_image(const std::uint8_t* in, std::uint8_t* out, std::uint64_t key) {
  Rng rng(key);
  // Two 32-bit uniforms per draw; pixel p is on when u·255 < p·2³², i.e. with probability p/255.
  for (std::size_t i = 0; i < std::size_t(kImagePixels); i += 2) {
    const std::uint64_t r = rng.next();
    for (std::size_t h = 0; h < 2; ++h) {
      const std::uint64_t u = (r >> (32 * h)) & 0xFFFF'FFFFull;
      out[i + h] = u * 255 < (std::uint64_t(in[i + h]) << 32) ? 255 : 0;
    }
  }
}

std::uint64_t test_binarize_key(std::size_t i) { return stream_key(kEvalSeed, Stream::binarize, 0, i); }

double ssim(const float* a, const float* b, std::size_t side) {
  constexpr std::size_t kWin = 11, kRadius = 5;
  constexpr double kSigma = 1.5, C1 = 0.01 * 0.01, C2 = 0.03 * 0.03;
  double w[kWin], total = 0;
  for (std::size_t i = 0; i < kWin; ++i) {
    const double x = double(i) - double(kRadius);
    total += w[i] = std::exp(-0.5 * x * x / (kSigma * kSigma));
  }
  for (double& x : w) x /= total;
  const std::size_t span = side - kWin + 1;
  double sum = 0;
  for (std::size_t y = 0; y < span; ++y)
    for (std::size_t x = 0; x < span; ++x) {
      double ma = 0, mb = 0, aa = 0, bb = 0, ab = 0;
      for (std::size_t i = 0; i < kWin; ++i)
        for (std::size_t j = 0; j < kWin; ++j) {
          const double wij = w[i] * w[j], va = a[(y + i) * side + x + j], vb = b[(y + i) * side + x + j];
          ma += wij * va;
          mb += wij * vb;
          aa += wij * va * va;
          bb += wij * vb * vb;
          ab += wij * va * vb;
        }
      const double var_a = aa - ma * ma, var_b = bb - mb * mb, cov = ab - ma * mb;
      sum += (2 * ma * mb + C1) * (2 * cov + C2) / ((ma * ma + mb * mb + C1) * (var_a + var_b + C2));
    }
  return sum / double(span * span);
}

std::vector<double> QualitySums::pack() const {
  std::vector<double> a{images, recon, kl, iw_nll, mse, bce};
  a.insert(a.end(), ssim.begin(), ssim.end());
  a.insert(a.end(), count.begin(), count.end());
  for (const std::vector<double>* v : {&kl_dim, &mu_sum, &mu_sq}) a.insert(a.end(), v->begin(), v->end());
  return a;
}

QualitySums QualitySums::unpack(std::span<const double> a, std::size_t latent) {
  constexpr std::size_t C = kNumClasses, scalars = 6 + 2 * C;
  if (a.size() != scalars + 3 * latent) throw std::logic_error("QualitySums::unpack: the sums do not have the model's latent size");
  QualitySums s;
  s.images = a[0], s.recon = a[1], s.kl = a[2], s.iw_nll = a[3], s.mse = a[4], s.bce = a[5];
  std::copy_n(a.begin() + 6, C, s.ssim.begin());
  std::copy_n(a.begin() + 6 + C, C, s.count.begin());
  std::size_t at = scalars;
  for (std::vector<double>* v : {&s.kl_dim, &s.mu_sum, &s.mu_sq}) {
    v->assign(a.begin() + std::ptrdiff_t(at), a.begin() + std::ptrdiff_t(at + latent));
    at += latent;
  }
  return s;
}

LatentUsage latent_usage(const QualitySums& sums) {
  LatentUsage u;
  const double n = sums.images;
  for (std::size_t d = 0; d < sums.kl_dim.size(); ++d) {
    const double mean = sums.mu_sum[d] / n;
    // the population variance of μ_d over the images (Burda et al.'s Cov_x), never below 0 from rounding
    u.mean_variance.push_back(std::max(0.0, sums.mu_sq[d] / n - mean * mean));
    u.kl.push_back(sums.kl_dim[d] / n);
    u.active += u.mean_variance.back() > LatentUsage::kActiveThreshold;
  }
  return u;
}

namespace {

// The eigenvalues of the symmetric matrix a [n × n] (row-major, overwritten) by cyclic Jacobi rotations, and its
// eigenvectors as the columns of v: exact to rounding for the few dozen dimensions of a classifier's features.
void symmetric_eigen(std::vector<double>& a, std::vector<double>& v, std::size_t n) {
  v.assign(n * n, 0.0);
  for (std::size_t i = 0; i < n; ++i) v[i * n + i] = 1.0;
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0, diag = 0;
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t j = 0; j < n; ++j) (i == j ? diag : off) += a[i * n + j] * a[i * n + j];
    if (off <= 1e-30 * diag || off == 0) return;
    for (std::size_t p = 0; p + 1 < n; ++p)
      for (std::size_t q = p + 1; q < n; ++q) {
        const double apq = a[p * n + q];
        if (apq == 0) continue;
        // the rotation that zeroes a[p][q]: t = tan θ, the smaller root of t² + 2τt − 1 = 0
        const double tau = (a[q * n + q] - a[p * n + p]) / (2 * apq);
        const double t = (tau >= 0 ? 1.0 : -1.0) / (std::abs(tau) + std::sqrt(1 + tau * tau));
        const double c = 1 / std::sqrt(1 + t * t), s = t * c;
        for (std::size_t k = 0; k < n; ++k) {
          const double akp = a[k * n + p], akq = a[k * n + q];
          a[k * n + p] = c * akp - s * akq;
          a[k * n + q] = s * akp + c * akq;
        }
        for (std::size_t k = 0; k < n; ++k) {
          const double apk = a[p * n + k], aqk = a[q * n + k];
          a[p * n + k] = c * apk - s * aqk;
          a[q * n + k] = s * apk + c * aqk;
        }
        for (std::size_t k = 0; k < n; ++k) {
          const double vkp = v[k * n + p], vkq = v[k * n + q];
          v[k * n + p] = c * vkp - s * vkq;
          v[k * n + q] = s * vkp + c * vkq;
        }
      }
  }
  throw std::runtime_error("the Fréchet distance: the covariance's eigendecomposition did not converge");
}

// The mean [dim] and unbiased covariance [dim × dim] of rows x [n × dim].
void moments(std::span<const float> x, std::size_t dim, std::vector<double>& mean, std::vector<double>& cov) {
  const std::size_t n = x.size() / dim;
  if (n < 2 || x.size() % dim != 0) throw std::invalid_argument("the Fréchet distance needs at least two feature rows of " + std::to_string(dim));
  mean.assign(dim, 0.0);
  cov.assign(dim * dim, 0.0);
  for (std::size_t r = 0; r < n; ++r)
    for (std::size_t i = 0; i < dim; ++i) mean[i] += x[r * dim + i];
  for (double& m : mean) m /= double(n);
  std::vector<double> centred(dim);
  for (std::size_t r = 0; r < n; ++r) {
    for (std::size_t i = 0; i < dim; ++i) centred[i] = x[r * dim + i] - mean[i];
    for (std::size_t i = 0; i < dim; ++i)
      for (std::size_t j = 0; j < dim; ++j) cov[i * dim + j] += centred[i] * centred[j];
  }
  for (double& c : cov) c /= double(n - 1);
}

}  // namespace

double frechet_distance(std::span<const float> a, std::span<const float> b, std::size_t dim) {
  std::vector<double> mean_a, cov_a, mean_b, cov_b, vec;
  moments(a, dim, mean_a, cov_a);
  moments(b, dim, mean_b, cov_b);
  double distance = 0;
  for (std::size_t i = 0; i < dim; ++i) distance += (mean_a[i] - mean_b[i]) * (mean_a[i] - mean_b[i]) + cov_a[i * dim + i] + cov_b[i * dim + i];
  // Σa^½ = V diag(√λ) Vᵀ, its eigenvalues clipped at 0 (a covariance is semi-definite; rounding can take one below)
  std::vector<double> e(cov_a);
  symmetric_eigen(e, vec, dim);
  std::vector<double> root(dim * dim, 0.0);
  for (std::size_t i = 0; i < dim; ++i)
    for (std::size_t j = 0; j < dim; ++j)
      for (std::size_t k = 0; k < dim; ++k) root[i * dim + j] += vec[i * dim + k] * std::sqrt(std::max(0.0, e[k * dim + k])) * vec[j * dim + k];
  // m = Σa^½ Σb Σa^½, symmetric and semi-definite, with the eigenvalues of Σa Σb
  std::vector<double> t(dim * dim, 0.0), m(dim * dim, 0.0);
  for (std::size_t i = 0; i < dim; ++i)
    for (std::size_t k = 0; k < dim; ++k)
      for (std::size_t j = 0; j < dim; ++j) t[i * dim + j] += root[i * dim + k] * cov_b[k * dim + j];
  for (std::size_t i = 0; i < dim; ++i)
    for (std::size_t k = 0; k < dim; ++k)
      for (std::size_t j = 0; j < dim; ++j) m[i * dim + j] += t[i * dim + k] * root[k * dim + j];
  symmetric_eigen(m, vec, dim);
  for (std::size_t i = 0; i < dim; ++i) distance -= 2 * std::sqrt(std::max(0.0, m[i * dim + i]));
  return distance;
}

QualityEvaluator::QualityEvaluator(const Arch& arch, const ParamLayout& layout, const float* params, Kernels<float>& k, std::size_t batch)
    : arch_(arch),
      params_(params),
      k_(k),
      batch_(batch),
      inference_(arch, layout, k, batch),
      head_(batch * 2 * std::size_t(arch.latent)),
      eps_(batch * std::size_t(arch.latent)),
      sd_(std::size_t(arch.latent)),
      row_nll_(batch),
      extra_(batch) {}

void QualityEvaluator::add(const ImageSet& set, std::size_t lo, std::size_t hi, const QualityOptions& options, QualitySums& sums,
                           std::span<std::uint8_t> recon, const std::function<void(std::size_t)>& progress) {
  Network<float>& net = inference_.net();
  const std::size_t L = std::size_t(arch_.latent), dec_in = arch_.dec_in(), P = std::size_t(kImagePixels);
  const std::uint64_t eps_key = stream_key(kEvalSeed, Stream::eval, 0);
  std::vector<float> a(P), b(P);
  for (std::size_t first = lo; first < hi; first += batch_) {
    const std::size_t n = std::min(batch_, hi - first);
    for (std::size_t r = 0; r < n; ++r) net.load_example(r, set.pixels + (first + r) * P, set.labels[first + r]);
    // The ELBO with the trainer's evaluation noise (ε of image i from its index), so it matches the test −ELBO.
    k_.gaussian_rows(net.eps().data(), n, L, eps_key, first);
    net.forward(k_, params_, n);
    const Network<float>::Losses l = net.loss(k_, n, 0.0f);
    sums.recon += l.recon;
    sums.kl += l.kl;
    std::copy_n(net.head().data(), n * 2 * L, head_.data());
    if (sums.kl_dim.empty()) sums.kl_dim.assign(L, 0.0), sums.mu_sum.assign(L, 0.0), sums.mu_sq.assign(L, 0.0);
    for (std::size_t r = 0; r < n; ++r)
      for (std::size_t d = 0; d < L; ++d) {
        // head [2L] = [μ | log σ²]: KL(N(μ, σ²) ‖ N(0, 1)) = ½ (μ² + σ² − log σ² − 1)
        const double mu = head_[r * 2 * L + d], log_var = head_[r * 2 * L + L + d];
        sums.kl_dim[d] += 0.5 * (mu * mu + std::exp(log_var) - log_var - 1);
        sums.mu_sum[d] += mu;
        sums.mu_sq[d] += mu * mu;
      }

    // Reconstruction: the decoder mean at z = μ (the label columns of the decoder input are still the one-hots).
    const std::span<float> in = net.decoder_input();
    for (std::size_t r = 0; r < n; ++r) std::copy_n(head_.data() + r * 2 * L, L, in.data() + r * dec_in);
    net.decode(k_, params_, n);
    k_.bernoulli_nll_rows(net.logits().data(), net.images(), row_nll_.data(), n);
    for (std::size_t r = 0; r < n; ++r) {
      const std::uint8_t* px = set.pixels + (first + r) * P;
      const float* logits = net.logits().data() + r * P;
      double se = 0;
      for (std::size_t p = 0; p < P; ++p) {
        a[p] = float(px[p]) / 255.0f;
        b[p] = 1.0f / (1.0f + std::exp(-logits[p]));
        se += double(a[p] - b[p]) * double(a[p] - b[p]);
        if (!recon.empty()) recon[(first - lo + r) * P + p] = std::uint8_t(std::lround(255.0f * b[p]));
      }
      const int digit = set.labels[first + r];
      sums.mse += se / double(P);
      sums.bce += row_nll_[r] / double(P);
      sums.ssim[std::size_t(digit)] += ssim(a.data(), b.data());
      sums.count[std::size_t(digit)] += 1;
    }
    if (options.iw_samples > 0)
      for (std::size_t r = 0; r < n; ++r) {
        sums.iw_nll += iw_nll(set.pixels + (first + r) * P, set.labels[first + r], head_.data() + r * 2 * L, first + r, options);
        if (progress) progress(first - lo + r + 1);
      }
    sums.images += double(n);
    if (progress) progress(first - lo + n);
  }
}

double mean_ssim(const std::uint8_t* a, const std::uint8_t* b, std::size_t n) {
  const std::size_t P = std::size_t(kImagePixels);
  std::vector<float> x(P), y(P);
  double sum = 0;
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t p = 0; p < P; ++p) {
      x[p] = float(a[i * P + p]) / 255.0f;
      y[p] = float(b[i * P + p]) / 255.0f;
    }
    sum += ssim(x.data(), y.data());
  }
  return n ? sum / double(n) : NAN;
}

std::vector<std::uint8_t> QualityEvaluator::generate(std::size_t per_digit, double temperature, std::uint64_t key, Decoder* decoder) {
  const std::vector<float> inputs = digit_decoder_inputs(arch_, k_, all_classes(arch_), per_digit, temperature, key);
  const std::size_t n = std::size_t(arch_.classes) * per_digit;
  std::vector<std::uint8_t> images(n * std::size_t(kImagePixels));
  if (decoder) decode_to_pixels(*decoder, inputs, n, images.data());
  else decode_to_pixels(inference_.net(), k_, params_, inputs, n, images.data());
  return images;
}

double QualityEvaluator::iw_nll(const std::uint8_t* pixels, int label, const float* head, std::size_t index, const QualityOptions& options) {
  Network<float>& net = inference_.net();
  const std::size_t L = std::size_t(arch_.latent), dec_in = arch_.dec_in(), k = std::size_t(options.iw_samples);
  const float* mu = head;
  const float* log_var = head + L;
  double half_log_var = 0;
  for (std::size_t j = 0; j < L; ++j) {
    half_log_var += 0.5 * double(log_var[j]);
    sd_[j] = std::exp(0.5f * log_var[j]);
  }
  const ImageBatch target{pixels, 0, std::size_t(kImagePixels), nullptr, 0};  // ld = 0: every row is this image
  const std::uint64_t key = stream_key(options.seed, Stream::importance, index);
  // log w = log p(x|z) + log p(z) − log q(z|x) = −NLL − ½‖z‖² + ½‖ε‖² + ½ Σ log σ² (the 2π terms cancel); the running
  // log-sum-exp keeps its maximum apart, so no weight overflows or vanishes.
  double top = -std::numeric_limits<double>::infinity(), scaled_sum = 0;
  const std::span<float> in = net.decoder_input();
  for (std::size_t first = 0; first < k; first += batch_) {
    const std::size_t rows = std::min(batch_, k - first);
    k_.gaussian_rows(eps_.data(), rows, L, key, first);
    for (std::size_t r = 0; r < rows; ++r) {
      float* z = in.data() + r * dec_in;
      const float* e = eps_.data() + r * L;
      double zz = 0, ee = 0;
      for (std::size_t j = 0; j < L; ++j) {
        z[j] = mu[j] + sd_[j] * e[j];
        zz += double(z[j]) * z[j];
        ee += double(e[j]) * e[j];
      }
      for (std::size_t c = L; c < dec_in; ++c) z[c] = c - L == std::size_t(label) ? 1.0f : 0.0f;
      extra_[r] = 0.5 * (ee - zz) + half_log_var;
    }
    net.decode(k_, params_, rows);
    k_.bernoulli_nll_rows(net.logits().data(), target, row_nll_.data(), rows);
    for (std::size_t r = 0; r < rows; ++r) {
      const double log_w = extra_[r] - row_nll_[r];
      if (log_w > top) {
        scaled_sum = scaled_sum * std::exp(top - log_w) + 1.0;
        top = log_w;
      } else {
        scaled_sum += std::exp(log_w - top);
      }
    }
  }
  return -(top + std::log(scaled_sum) - std::log(double(k)));
}

}  // namespace vae
