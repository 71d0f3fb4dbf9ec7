// CNN inference for the digit classifier: im2col patches, one GEMM per layer, max-pooling; weights from PyTorch's layout.
#include "vae/classifier.hpp"

#include <algorithm>
#include <stdexcept>

namespace vae {
namespace {

constexpr std::size_t kSide = 28, kHalf = 14, kQuarter = 7, kK = 5, kPad = 2;
constexpr std::size_t kC1 = 16, kC2 = 32, kHidden = Classifier::kFeatures, kClasses = 10;

// Rows of 5 × 5 × C patches of a side × side × C image (channels last), zero outside:     out [side² × 25·C], (ky, kx, c)
void im2col(const float* image, std::size_t side, std::size_t channels, float* out) {
  const std::size_t cols = kK * kK * channels;
  for (std::size_t y = 0; y < side; ++y)
    for (std::size_t x = 0; x < side; ++x) {
      float* row = out + (y * side + x) * cols;
      for (std::size_t ky = 0; ky < kK; ++ky)
        for (std::size_t kx = 0; kx < kK; ++kx) {
          const std::ptrdiff_t sy = std::ptrdiff_t(y + ky) - std::ptrdiff_t(kPad), sx = std::ptrdiff_t(x + kx) - std::ptrdiff_t(kPad);
          float* dst = row + (ky * kK + kx) * channels;
          if (sy < 0 || sx < 0 || sy >= std::ptrdiff_t(side) || sx >= std::ptrdiff_t(side)) std::fill_n(dst, channels, 0.0f);
          else std::copy_n(image + (std::size_t(sy) * side + std::size_t(sx)) * channels, channels, dst);
        }
    }
}

// 2 × 2 max-pooling, channels last:                                                 in [side² × C] → out [(side/2)² × C]
void max_pool(const float* in, std::size_t side, std::size_t channels, float* out) {
  const std::size_t half = side / 2;
  for (std::size_t y = 0; y < half; ++y)
    for (std::size_t x = 0; x < half; ++x)
      for (std::size_t c = 0; c < channels; ++c) {
        const auto at = [&](std::size_t dy, std::size_t dx) { return in[((2 * y + dy) * side + 2 * x + dx) * channels + c]; };
        out[(y * half + x) * channels + c] = std::max(std::max(at(0, 0), at(0, 1)), std::max(at(1, 0), at(1, 1)));
      }
}

// PyTorch's conv weight [out × in × 5 × 5] as a [(ky, kx, in) × out] matrix.
std::vector<float> conv_matrix(const std::vector<float>& w, std::size_t in, std::size_t out) {
  std::vector<float> m(kK * kK * in * out);
  for (std::size_t o = 0; o < out; ++o)
    for (std::size_t i = 0; i < in; ++i)
      for (std::size_t ky = 0; ky < kK; ++ky)
        for (std::size_t kx = 0; kx < kK; ++kx) m[((ky * kK + kx) * in + i) * out + o] = w[((o * in + i) * kK + ky) * kK + kx];
  return m;
}

void expect_size(const std::vector<float>& v, std::size_t n, const char* what) {
  if (v.size() != n) throw std::invalid_argument(std::string("classifier: ") + what + " has " + std::to_string(v.size()) + " values, expected " +
                                                 std::to_string(n));
}

}  // namespace

Classifier::Classifier(const ClassifierWeights& w, int threads, std::size_t max_batch)
    : k_(make_kernels(KernelChoice::parallel, threads)),
      max_batch_(max_batch),
      workspace_(round_up(k_->workspace_bytes(kSide * kSide, kQuarter * kQuarter * kC2), kAlign)) {
  expect_size(w.conv1_w, kC1 * kK * kK, "conv1 weight");
  expect_size(w.conv2_w, kC2 * kC1 * kK * kK, "conv2 weight");
  expect_size(w.fc1_w, kHidden * kC2 * kQuarter * kQuarter, "fc1 weight");
  expect_size(w.fc2_w, kClasses * kHidden, "fc2 weight");
  w1_ = conv_matrix(w.conv1_w, 1, kC1);
  w2_ = conv_matrix(w.conv2_w, kC1, kC2);
  // fc1: PyTorch flattens (channel, row, column); our pooled maps are (row, column, channel).
  const std::size_t cells = kQuarter * kQuarter, in = cells * kC2;
  w3_.resize(in * kHidden);
  for (std::size_t o = 0; o < kHidden; ++o)
    for (std::size_t c = 0; c < kC2; ++c)
      for (std::size_t p = 0; p < cells; ++p) w3_[(p * kC2 + c) * kHidden + o] = w.fc1_w[o * in + c * cells + p];
  w4_.resize(kHidden * kClasses);
  for (std::size_t o = 0; o < kClasses; ++o)
    for (std::size_t i = 0; i < kHidden; ++i) w4_[i * kClasses + o] = w.fc2_w[o * kHidden + i];
  b1_ = w.conv1_b;
  b2_ = w.conv2_b;
  b3_ = w.fc1_b;
  b4_ = w.fc2_b;
  expect_size(b1_, kC1, "conv1 bias");
  expect_size(b2_, kC2, "conv2 bias");
  expect_size(b3_, kHidden, "fc1 bias");
  expect_size(b4_, kClasses, "fc2 bias");

  // One image at a time through the convolutions (its patches fit in cache), the batch through the dense layers.
  const std::size_t rows = kSide * kSide, widest = kK * kK * kC1;
  patches_.resize(rows * widest);
  conv_.resize(rows * kC1);
  pooled1_.resize(kHalf * kHalf * kC1);
  pooled2_.resize(max_batch * in);
  hidden_.resize(max_batch * kHidden);
  k_->bind_workspace(workspace_.take<std::byte>(k_->workspace_bytes(rows, in)), rows, in);
}

void Classifier::logits(const std::uint8_t* images, std::size_t n, float* out) { run(images, n, out, nullptr); }

void Classifier::features(const std::uint8_t* images, std::size_t n, float* out) { run(images, n, nullptr, out); }

void Classifier::run(const std::uint8_t* images, std::size_t n, float* logits, float* features) {
  std::vector<float> image(kSide * kSide);
  const std::size_t in = kQuarter * kQuarter * kC2;
  for (std::size_t first = 0; first < n; first += max_batch_) {
    const std::size_t rows = std::min(max_batch_, n - first);
    for (std::size_t r = 0; r < rows; ++r) {
      const std::uint8_t* px = images + (first + r) * kSide * kSide;
      for (std::size_t p = 0; p < kSide * kSide; ++p) image[p] = float(px[p]) / 255.0f;
      im2col(image.data(), kSide, 1, patches_.data());                                    // [784 × 25]
      k_->dense_forward(patches_.data(), kK * kK, w1_.data(), b1_.data(), conv_.data(), kSide * kSide, kK * kK, kC1, Activation::relu);
      max_pool(conv_.data(), kSide, kC1, pooled1_.data());                                 // [196 × 16]
      im2col(pooled1_.data(), kHalf, kC1, patches_.data());                                // [196 × 400]
      k_->dense_forward(patches_.data(), kK * kK * kC1, w2_.data(), b2_.data(), conv_.data(), kHalf * kHalf, kK * kK * kC1, kC2,
                        Activation::relu);
      max_pool(conv_.data(), kHalf, kC2, pooled2_.data() + r * in);                        // [49 × 32]
    }
    k_->dense_forward(pooled2_.data(), in, w3_.data(), b3_.data(), hidden_.data(), rows, in, kHidden, Activation::relu);  // [rows × 64]
    if (features) std::copy_n(hidden_.data(), rows * kHidden, features + first * kHidden);
    if (logits) k_->dense_forward(hidden_.data(), kHidden, w4_.data(), b4_.data(), logits + first * kClasses, rows, kHidden, kClasses, Activation::identity);
  }
}

std::vector<int> Classifier::predict(const std::uint8_t* images, std::size_t n) {
  std::vector<float> l(n * kClasses);
  logits(images, n, l.data());
  return most_likely(l.data(), n);
}

std::vector<int> Classifier::most_likely(const float* logits, std::size_t n) {
  const std::span<const float> l(logits, n * kClasses);
  std::vector<int> digits(n);
  for (std::size_t i = 0; i < n; ++i) digits[i] = int(std::max_element(l.begin() + std::ptrdiff_t(i * kClasses), l.begin() + std::ptrdiff_t((i + 1) * kClasses)) -
                                                      (l.begin() + std::ptrdiff_t(i * kClasses)));
  return digits;
}

}  // namespace vae
