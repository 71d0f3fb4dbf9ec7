// Optimized kernels against the reference: shapes a reader can check by hand, awkward shapes, and the real model shapes.
#include <gtest/gtest.h>

#include <random>
#include <tuple>
#include <vector>

#include "vae/kernels.hpp"
#include "vae/optimizer.hpp"

namespace vae {
namespace {

std::vector<float> random_floats(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(gen);
  return v;
}

std::vector<float> absolute(std::vector<float> v) {
  for (auto& x : v) x = std::abs(x);
  return v;
}

// Float sums of k products can differ by rounding in proportion to Σ|aᵢbᵢ|, not to |Σ aᵢbᵢ|: tol[i] = 1e-6·(that sum) + 1e-6.
void expect_within(const std::vector<float>& got, const std::vector<float>& want, const std::vector<float>& magnitude, const char* what) {
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], 1e-6 * (magnitude[i] + 1.0f)) << what << " element " << i;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, double rel, const char* what) {
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], rel * std::max(1.0f, std::abs(want[i]))) << what << " element " << i;
}

TEST(KernelsByHand, DenseForwardTwoByThree) {
  // x = [1 2 3; 4 5 6], W = [1 0; 0 1; 1 1], b = [0.5 −100] → xW + b = [4.5 −95; 10.5 −89]; ReLU clips the negatives.
  const float x[6] = {1, 2, 3, 4, 5, 6}, w[6] = {1, 0, 0, 1, 1, 1}, b[2] = {0.5f, -100};
  for (int threads : {1, 2}) {
    auto k = make_parallel_kernels(threads);
    float y[4];
    k->dense_forward(x, 3, w, b, y, 2, 3, 2, Activation::relu);
    EXPECT_FLOAT_EQ(y[0], 4.5f);
    EXPECT_FLOAT_EQ(y[1], 0.0f);
    EXPECT_FLOAT_EQ(y[2], 10.5f);
    EXPECT_FLOAT_EQ(y[3], 0.0f);
    // dW = xᵀ·dy with dy = [1 0; 0 1] → dW = [1 4; 2 5; 3 6], db = [1 1]
    const float dy[4] = {1, 0, 0, 1};
    float dw[6], db[2];
    k->dense_weight_grad(x, 3, dy, dw, db, 2, 3, 2);
    const float want_dw[6] = {1, 4, 2, 5, 3, 6};
    for (int i = 0; i < 6; ++i) EXPECT_FLOAT_EQ(dw[i], want_dw[i]);
    EXPECT_FLOAT_EQ(db[0], 1.0f);
    EXPECT_FLOAT_EQ(db[1], 1.0f);
    // dx = dy·Wᵀ = [1 0 1; 0 1 1]
    float dx[6];
    k->dense_input_grad(dy, w, dx, 3, 2, 3, 2, Activation::identity, nullptr);
    const float want_dx[6] = {1, 0, 1, 0, 1, 1};
    for (int i = 0; i < 6; ++i) EXPECT_FLOAT_EQ(dx[i], want_dx[i]);
  }
}

// (n, k, m): rows, inner, columns.
class KernelShapes : public ::testing::TestWithParam<std::tuple<std::size_t, std::size_t, std::size_t>> {};

TEST_P(KernelShapes, ParallelMatchesReference) {
  const auto [n, k, m] = GetParam();
  ReferenceKernels<float> ref;
  for (int threads : {1, 2}) {
    auto fast = make_parallel_kernels(threads);
    const std::size_t ldx = k + 3;  // a row stride wider than the row, as for the concatenated encoder input
    auto x = random_floats(n * ldx, 1), w = random_floats(k * m, 2), b = random_floats(m, 3), dy = random_floats(n * m, 4);
    auto yprev = random_floats(n * ldx, 5);
    const auto ax = absolute(x), aw = absolute(w), ab = absolute(b), ady = absolute(dy);
    std::vector<float> mag_y(n * m), mag_dx(n * ldx), mag_dw(k * m), mag_db(m);
    ref.dense_forward(ax.data(), ldx, aw.data(), ab.data(), mag_y.data(), n, k, m, Activation::identity);
    ref.dense_input_grad(ady.data(), aw.data(), mag_dx.data(), ldx, n, k, m, Activation::identity, nullptr);
    ref.dense_weight_grad(ax.data(), ldx, ady.data(), mag_dw.data(), mag_db.data(), n, k, m);
    for (Activation act : {Activation::identity, Activation::elu, Activation::relu, Activation::leaky_relu, Activation::tanh}) {
      std::vector<float> y1(n * m), y2(n * m);
      ref.dense_forward(x.data(), ldx, w.data(), b.data(), y1.data(), n, k, m, act);
      fast->dense_forward(x.data(), ldx, w.data(), b.data(), y2.data(), n, k, m, act);
      expect_within(y2, y1, mag_y, "forward");
      std::vector<float> dx1(n * ldx, 7.0f), dx2(n * ldx, 7.0f);
      ref.dense_input_grad(dy.data(), w.data(), dx1.data(), ldx, n, k, m, act, yprev.data());
      fast->dense_input_grad(dy.data(), w.data(), dx2.data(), ldx, n, k, m, act, yprev.data());
      expect_within(dx2, dx1, mag_dx, "input_grad");  // includes the untouched padding columns
    }
    std::vector<float> dw1(k * m), db1(m), dw2(k * m), db2(m);
    ref.dense_weight_grad(x.data(), ldx, dy.data(), dw1.data(), db1.data(), n, k, m);
    fast->dense_weight_grad(x.data(), ldx, dy.data(), dw2.data(), db2.data(), n, k, m);
    expect_within(dw2, dw1, mag_dw, "weight_grad");
    expect_within(db2, db1, mag_db, "bias_grad");
  }
}

INSTANTIATE_TEST_SUITE_P(
    Awkward, KernelShapes,
    ::testing::Values(std::make_tuple(1, 1, 1), std::make_tuple(7, 13, 5), std::make_tuple(3, 17, 33), std::make_tuple(5, 9, 70),
                      std::make_tuple(0, 4, 4), std::make_tuple(17, 31, 15), std::make_tuple(64, 1, 129)));

// Every layer shape of v1, v2 and v3 at a local batch of 16 (v1's batch) and 64.
INSTANTIATE_TEST_SUITE_P(
    ModelShapes, KernelShapes,
    ::testing::Values(std::make_tuple(64, 794, 640), std::make_tuple(64, 640, 320), std::make_tuple(64, 320, 256),
                      std::make_tuple(64, 138, 320), std::make_tuple(64, 320, 640), std::make_tuple(64, 640, 784),
                      std::make_tuple(64, 794, 512), std::make_tuple(64, 512, 256), std::make_tuple(64, 256, 128),
                      std::make_tuple(64, 74, 256), std::make_tuple(64, 256, 512), std::make_tuple(64, 512, 784),
                      std::make_tuple(16, 794, 1024), std::make_tuple(16, 1024, 512), std::make_tuple(16, 512, 256),
                      std::make_tuple(16, 138, 512), std::make_tuple(16, 512, 1024), std::make_tuple(16, 1024, 784)));

TEST(KernelsLoss, ParallelMatchesReference) {
  ReferenceKernels<float> ref;
  auto fast = make_parallel_kernels(2);
  const std::size_t n = 9, d = 784, ldx = 794, L = 13;
  auto logits = random_floats(n * d, 1), x = random_floats(n * ldx, 2);
  for (auto& v : logits) v *= 20.0f;
  for (auto& v : x) v = (v + 1.0f) / 2.0f;
  std::vector<float> g1(n * d), g2(n * d);
  const double l1 = ref.bernoulli_nll(logits.data(), x.data(), ldx, g1.data(), n, d, 0.125f);
  const double l2 = fast->bernoulli_nll(logits.data(), x.data(), ldx, g2.data(), n, d, 0.125f);
  EXPECT_NEAR(l2, l1, 1e-5 * l1);
  expect_close(g2, g1, 1e-6, "dlogits");

  auto head = random_floats(n * 2 * L, 3), eps = random_floats(n * L, 4), dz = random_floats(n * (L + 10), 5);
  std::vector<float> z1(n * (L + 10)), z2(n * (L + 10)), dh1(n * 2 * L), dh2(n * 2 * L);
  EXPECT_NEAR(fast->reparam_kl_forward(head.data(), eps.data(), z2.data(), L + 10, n, L),
              ref.reparam_kl_forward(head.data(), eps.data(), z1.data(), L + 10, n, L), 1e-4);
  expect_close(z2, z1, 1e-6, "z");
  ref.reparam_kl_backward(head.data(), eps.data(), dz.data(), L + 10, dh1.data(), n, L, 0.5f, 0.3f);
  fast->reparam_kl_backward(head.data(), eps.data(), dz.data(), L + 10, dh2.data(), n, L, 0.5f, 0.3f);
  expect_close(dh2, dh1, 1e-6, "dhead");
}

TEST(Adam, FirstStepByHand) {
  // m = 0.1·0.5 = 0.05, v = 0.001·0.25; m̂ = 0.5, v̂ = 0.25 → p = 1 − 0.1·0.5/(0.5 + 1e-8) = 0.9 + 2e-9
  ReferenceKernels<double> k;
  std::vector<double> p{1.0}, g{0.5}, m{0.0}, v{0.0};
  adam_step<double>(k, p, g, m, v, 1, {0.1, 0.9, 0.999, 1e-8});
  EXPECT_NEAR(p[0], 0.9 + 2e-9, 1e-15);
  EXPECT_DOUBLE_EQ(m[0], 0.05);
  EXPECT_DOUBLE_EQ(v[0], 0.00025);
}

TEST(Adam, MatchesTextbookWithBiasCorrection) {
  ReferenceKernels<double> k;
  auto fast = make_parallel_kernels(2);
  const std::size_t n = 40000;
  std::vector<double> p(n, 1.0), m(n, 0.0), v(n, 0.0), tp(n, 1.0), tm(n, 0.0), tv(n, 0.0);
  std::vector<float> fp(n, 1.0f), fm(n, 0.0f), fv(n, 0.0f);
  const AdamParams a{0.01, 0.9, 0.999, 1e-8};
  for (long t = 1; t <= 5; ++t) {
    std::vector<double> g(n);
    std::vector<float> fg(n);
    for (std::size_t i = 0; i < n; ++i) fg[i] = float(g[i] = std::sin(double(i) + double(t)));
    adam_step<double>(k, p, g, m, v, t, a);
    adam_step<float>(*fast, fp, fg, fm, fv, t, a);
    for (std::size_t i = 0; i < n; ++i) {
      tm[i] = a.beta1 * tm[i] + (1 - a.beta1) * g[i];
      tv[i] = a.beta2 * tv[i] + (1 - a.beta2) * g[i] * g[i];
      const double mhat = tm[i] / (1 - std::pow(a.beta1, double(t))), vhat = tv[i] / (1 - std::pow(a.beta2, double(t)));
      tp[i] -= a.lr * mhat / (std::sqrt(vhat) + a.eps);
    }
  }
  for (std::size_t i = 0; i < n; i += 997) {
    EXPECT_NEAR(p[i], tp[i], 1e-12) << i;
    EXPECT_NEAR(fp[i], tp[i], 2e-6) << i;
  }
}

}  // namespace
}  // namespace vae
