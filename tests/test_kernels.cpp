// Optimized kernels against the reference, for every instruction set this CPU runs: shapes a reader can check by hand,
// awkward shapes, and the real model shapes.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>
#include <sstream>
#include <random>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "env_cap.hpp"
#include "vae/aligned.hpp"
#include "vae/bf16.hpp"
#include "vae/kernels.hpp"
#include "vae/model.hpp"
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

std::vector<std::uint8_t> random_bytes(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::vector<std::uint8_t> v(n);
  for (auto& x : v) x = std::uint8_t(gen() & 0xff);
  return v;
}

std::vector<float> absolute(std::vector<float> v) {
  for (auto& x : v) x = std::abs(x);
  return v;
}

// Float sums of k products can differ by rounding in proportion to Σ|aᵢbᵢ|, not to |Σ aᵢbᵢ|: tol[i] = 1e-6·(that sum) + 1e-6.
void expect_within(const std::vector<float>& got, const std::vector<float>& want, const std::vector<float>& magnitude, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], 1e-6 * (magnitude[i] + 1.0f)) << what << " element " << i;
}

void expect_close(const std::vector<float>& got, const std::vector<float>& want, double rel, const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  for (std::size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], rel * std::max(1.0f, std::abs(want[i]))) << what << " element " << i;
}

// Optimized kernels for one instruction set and thread count, with their workspace bound as the trainer binds it.
struct Fast {
  Fast(const std::string& isa, int threads, std::size_t max_rows, std::size_t max_dim, Precision precision = Precision::fp32,
       const ConvSizes& conv = {})
      : kernels(make_parallel_kernels(threads, isa, precision)), workspace(kernels->workspace_bytes(max_rows, max_dim, conv)) {
    kernels->bind_workspace(workspace.span(), max_rows, max_dim, conv);
    label = isa + " x" + std::to_string(threads) + (precision == Precision::bf16 ? " bf16" : "");
  }
  const Kernels<float>* operator->() const { return kernels.get(); }
  const Kernels<float>& operator*() const { return *kernels; }
  std::unique_ptr<Kernels<float>> kernels;
  AlignedBuffer<std::byte> workspace;
  std::string label;
};

// Under an emulator (docs/portability.md) SVE code runs about a thousand times slower than natively, so two variables
// narrow a run: VAE_TEST_ISAS (comma-separated) names the instruction sets compared, and VAE_TEST_MAX_ROWS caps the
// batch of the shapes below (their widths, which decide the tiling, stay the real ones). VAE_TEST_ISAS=best takes the
// best one only: ThreadSanitizer looks at how the threads share the work, which every instruction set does alike.
std::vector<std::string> tested_isas() {
  const std::vector<std::string> all = available_isas();
  const char* wanted = std::getenv("VAE_TEST_ISAS");
  if (!wanted || !*wanted) return all;
  if (std::string_view(wanted) == "best") return {all.front()};
  std::vector<std::string> chosen;
  std::istringstream list(wanted);
  for (std::string isa; std::getline(list, isa, ',');) {
    if (std::find(all.begin(), all.end(), isa) == all.end()) ADD_FAILURE() << "VAE_TEST_ISAS names " << isa << ", which this CPU does not run";
    else chosen.push_back(isa);
  }
  return chosen;
}

std::size_t test_rows(std::size_t n) { return test::env_cap("VAE_TEST_MAX_ROWS", n); }

// Every instruction set this CPU runs (or VAE_TEST_ISAS names), on 1 and 2 threads. AVX3_BF16 differs from AVX3 only
// in its bf16 products, so the fp32 checks leave it out.
template <class F>
void for_each_fast(std::size_t max_rows, std::size_t max_dim, F&& check, Precision precision = Precision::fp32) {
  const auto isas = tested_isas();
  ASSERT_FALSE(isas.empty());
  for (const std::string& isa : isas)
    for (int threads : {1, 2}) {
      if (precision == Precision::fp32 && isa.ends_with("_BF16")) continue;
      Fast fast(isa, threads, max_rows, max_dim, precision);
      SCOPED_TRACE(fast.label);
      check(fast);
    }
}

TEST(KernelsIsa, BestIsFirstAndPortablePathExists) {
  const auto isas = available_isas();
  ASSERT_GE(isas.size(), 1u);
  EXPECT_NE(make_parallel_kernels(1)->name().find(isas.front()), std::string::npos);
}

TEST(KernelsByHand, DenseForwardTwoByThree) {
  // x = [1 2 3; 4 5 6], W = [1 0; 0 1; 1 1], b = [0.5 −100] → xW + b = [4.5 −95; 10.5 −89]; ReLU clips the negatives.
  const float x[6] = {1, 2, 3, 4, 5, 6}, w[6] = {1, 0, 0, 1, 1, 1}, b[2] = {0.5f, -100};
  for_each_fast(2, 3, [&](const Fast& k) {
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
  });
}

TEST(KernelsByHand, ImageBatchIsPixelsOver255ThenOneHot) {
  // Two 2-pixel images, 3 classes: pixels [255 0; 51 102], labels 1, 2 → x = [1 0 | 0 1 0; 0.2 0.4 | 0 0 1].
  const std::uint8_t px[4] = {255, 0, 51, 102}, labels[2] = {1, 2};
  const ImageBatch x{px, 2, 2, labels, 3};
  const float w[5] = {1, 10, 100, 1000, 10000}, b[1] = {0};
  for_each_fast(2, 5, [&](const Fast& k) {
    float y[2];
    k->dense_forward_image(x, w, b, y, 2, 1, Activation::identity);
    EXPECT_FLOAT_EQ(y[0], 1 + 1000);
    EXPECT_FLOAT_EQ(y[1], 0.2f + 4 + 10000);
    const float dy[2] = {1, 2};
    float dw[5], db[1];
    k->dense_weight_grad_image(x, dy, dw, db, 2, 1);
    const float want[5] = {1 + 0.4f, 0.8f, 0, 1, 2};
    for (int i = 0; i < 5; ++i) EXPECT_FLOAT_EQ(dw[i], want[i]) << i;
    EXPECT_FLOAT_EQ(db[0], 3);
  });
}

// The weight-gradient kernels report whether what they wrote is finite: a NaN or Inf anywhere in x or dy must show.
TEST(KernelsByHand, WeightGradientReportsNonFinite) {
  const std::size_t n = 9, k = 37, m = 70;
  auto x = random_floats(n * k, 1), dy = random_floats(n * m, 2);
  ReferenceKernels<float> ref;
  for_each_fast(n, std::max(k, m), [&](const Fast& fast) {
    for (const Kernels<float>* kern : {static_cast<const Kernels<float>*>(&ref), &*fast}) {
      std::vector<float> dw(k * m), db(m);
      EXPECT_TRUE(kern->dense_weight_grad(x.data(), k, dy.data(), dw.data(), db.data(), n, k, m)) << kern->name();
      for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
        auto x2 = x, dy2 = dy;
        x2[5 * k + 36] = bad;  // a single element, in the last column of x: one row of dw
        EXPECT_FALSE(kern->dense_weight_grad(x2.data(), k, dy.data(), dw.data(), db.data(), n, k, m)) << kern->name() << " x " << bad;
        dy2[8 * m + 69] = bad;  // the last element of dy: one column of dw and db
        EXPECT_FALSE(kern->dense_weight_grad(x.data(), k, dy2.data(), dw.data(), db.data(), n, k, m)) << kern->name() << " dy " << bad;
      }
    }
  });
}

// (n, k, m): rows, inner, columns.
class KernelShapes : public ::testing::TestWithParam<std::tuple<std::size_t, std::size_t, std::size_t>> {};

// Dense products with every activation against the reference. With bf16 products the reference rounds the same
// operands and the sums differ only in their order (the kernels add each pair high half first), so one tolerance holds.
void check_dense(std::size_t rows, std::size_t k, std::size_t m, Precision precision) {
  const std::size_t n = test_rows(rows);
  ReferenceKernels<float> ref(precision);
  const std::size_t ldx = k + 3;  // a row stride wider than the row, as for a concatenated input
  auto x = random_floats(n * ldx, 1), w = random_floats(k * m, 2), b = random_floats(m, 3), dy = random_floats(n * m, 4);
  auto yprev = random_floats(n * ldx, 5);
  const auto ax = absolute(x), aw = absolute(w), ab = absolute(b), ady = absolute(dy);
  std::vector<float> mag_y(n * m), mag_dx(n * ldx), mag_dw(k * m), mag_db(m);
  ref.dense_forward(ax.data(), ldx, aw.data(), ab.data(), mag_y.data(), n, k, m, Activation::identity);
  ref.dense_input_grad(ady.data(), aw.data(), mag_dx.data(), ldx, n, k, m, Activation::identity, nullptr);
  ref.dense_weight_grad(ax.data(), ldx, ady.data(), mag_dw.data(), mag_db.data(), n, k, m);
  // bf16 products share the fp32 epilogues, so two activations cover them there
  const std::vector<Activation> acts =
      precision == Precision::fp32
          ? std::vector<Activation>{Activation::identity, Activation::elu, Activation::relu, Activation::leaky_relu, Activation::tanh}
          : std::vector<Activation>{Activation::identity, Activation::elu};
  std::vector<std::vector<float>> want_y, want_dx;
  for (Activation act : acts) {
    want_y.emplace_back(n * m);
    ref.dense_forward(x.data(), ldx, w.data(), b.data(), want_y.back().data(), n, k, m, act);
    want_dx.emplace_back(n * ldx, 7.0f);
    ref.dense_input_grad(dy.data(), w.data(), want_dx.back().data(), ldx, n, k, m, act, yprev.data());
  }
  std::vector<float> want_dw(k * m), want_db(m);
  ref.dense_weight_grad(x.data(), ldx, dy.data(), want_dw.data(), want_db.data(), n, k, m);

  for_each_fast(n, std::max(k, m), [&](const Fast& fast) {
    for (std::size_t a = 0; a < acts.size(); ++a) {
      const std::string what = activation_name(acts[a]);
      std::vector<float> y(n * m);
      fast->dense_forward(x.data(), ldx, w.data(), b.data(), y.data(), n, k, m, acts[a]);
      expect_within(y, want_y[a], mag_y, "forward " + what);
      std::vector<float> dx(n * ldx, 7.0f);
      fast->dense_input_grad(dy.data(), w.data(), dx.data(), ldx, n, k, m, acts[a], yprev.data());
      expect_within(dx, want_dx[a], mag_dx, "input_grad " + what);  // includes the untouched padding columns
    }
    std::vector<float> dw(k * m, 7.0f), db(m, 7.0f);
    fast->dense_weight_grad(x.data(), ldx, dy.data(), dw.data(), db.data(), n, k, m);
    expect_within(dw, want_dw, mag_dw, "weight_grad");
    // each column of db is the reference's sum, in its row order, however the columns are shared out among tasks
    EXPECT_EQ(db, want_db) << fast.label << " bias_grad";
  }, precision);
}

// The first layer reads uint8 images (+ one-hot labels) directly: forward and weight gradient against the reference.
void check_image_batch(std::size_t rows, std::size_t k, std::size_t m, Precision precision) {
  const std::size_t n = test_rows(rows);
  const std::size_t classes = k > 10 ? 10 : 0, width = k - classes, ld = width + 5;
  const auto pixels = random_bytes(n * ld, 6);
  std::vector<std::uint8_t> labels(n);
  for (std::size_t r = 0; r < n; ++r) labels[r] = std::uint8_t((r * 7) % 10);
  const ImageBatch x{pixels.data(), ld, width, labels.data(), classes};
  ReferenceKernels<float> ref(precision);
  auto w = random_floats(k * m, 2), b = random_floats(m, 3), dy = random_floats(n * m, 4);
  const auto aw = absolute(w), ab = absolute(b), ady = absolute(dy);
  std::vector<float> mag_y(n * m), mag_dw(k * m), mag_db(m), want_y(n * m), want_dw(k * m), want_db(m);
  ref.dense_forward_image(x, aw.data(), ab.data(), mag_y.data(), n, m, Activation::identity);
  ref.dense_weight_grad_image(x, ady.data(), mag_dw.data(), mag_db.data(), n, m);
  ref.dense_forward_image(x, w.data(), b.data(), want_y.data(), n, m, Activation::elu);
  ref.dense_weight_grad_image(x, dy.data(), want_dw.data(), want_db.data(), n, m);
  for_each_fast(n, std::max(k, m), [&](const Fast& fast) {
    std::vector<float> y(n * m), dw(k * m), db(m);
    fast->dense_forward_image(x, w.data(), b.data(), y.data(), n, m, Activation::elu);
    expect_within(y, want_y, mag_y, "forward_image");
    fast->dense_weight_grad_image(x, dy.data(), dw.data(), db.data(), n, m);
    expect_within(dw, want_dw, mag_dw, "weight_grad_image");
    EXPECT_EQ(db, want_db) << fast.label << " bias_grad_image";
  }, precision);
}

TEST_P(KernelShapes, ParallelMatchesReference) { std::apply(check_dense, std::tuple_cat(GetParam(), std::make_tuple(Precision::fp32))); }
TEST_P(KernelShapes, ImageBatchMatchesReference) {
  std::apply(check_image_batch, std::tuple_cat(GetParam(), std::make_tuple(Precision::fp32)));
}
TEST_P(KernelShapes, Bf16MatchesReference) { std::apply(check_dense, std::tuple_cat(GetParam(), std::make_tuple(Precision::bf16))); }
TEST_P(KernelShapes, Bf16ImageBatchMatchesReference) {
  std::apply(check_image_batch, std::tuple_cat(GetParam(), std::make_tuple(Precision::bf16)));
}

// Each element of a bf16 product is one sum in a fixed order, whatever the tiling, so every instruction set and thread
// count gives the same bits as the first one (the native AVX512_BF16 path where the CPU has it, which the others emulate).
// AMX sums a tile in an order of its own (not documented, and no sequence of fp32 adds we tried reproduces it), so it is
// held to the reference's tolerance instead.
TEST_P(KernelShapes, Bf16IsBitForBitAlikeOnEveryPath) {
  const auto [rows, k, m] = GetParam();
  const std::size_t n = test_rows(rows);
  auto x = random_floats(n * k, 11), w = random_floats(k * m, 12), b = random_floats(m, 13), dy = random_floats(n * m, 14);
  for (std::size_t i = 0; i < x.size(); i += 7) x[i] *= 1e-37f;  // denormal operands, and sums the instruction flushes
  struct Out {
    std::vector<float> y, dx, dw;
    std::string label;
  };
  std::vector<Out> outs;
  for_each_fast(n, std::max(k, m), [&](const Fast& fast) {
    if (fast.label.starts_with("AVX3_AMX")) return;
    Out o{std::vector<float>(n * m), std::vector<float>(n * k), std::vector<float>(k * m), fast.label};
    fast->dense_forward(x.data(), k, w.data(), b.data(), o.y.data(), n, k, m, Activation::identity);
    fast->dense_input_grad(dy.data(), w.data(), o.dx.data(), k, n, k, m, Activation::identity, nullptr);
    fast->dense_weight_grad(x.data(), k, dy.data(), o.dw.data(), nullptr, n, k, m);
    outs.push_back(std::move(o));
  }, Precision::bf16);
  for (std::size_t t = 1; t < outs.size(); ++t) {
    EXPECT_EQ(outs[t].y, outs[0].y) << outs[t].label << " forward vs " << outs[0].label;
    EXPECT_EQ(outs[t].dx, outs[0].dx) << outs[t].label << " input_grad vs " << outs[0].label;
    EXPECT_EQ(outs[t].dw, outs[0].dw) << outs[t].label << " weight_grad vs " << outs[0].label;
  }
}

// A single sample (one row, its own kernel on row-major weights) gets the bits its row gets in a batch: every column is
// the same sum in the same order.
TEST_P(KernelShapes, OneRowIsItsRowOfTheBatchBitForBit) {
  const auto [rows, k, m] = GetParam();
  const std::size_t n = std::max<std::size_t>(test_rows(rows), 3);
  auto x = random_floats(n * k, 21), w = random_floats(k * m, 22), b = random_floats(m, 23);
  for_each_fast(n, std::max(k, m), [&](const Fast& fast) {
    std::vector<float> batch(n * m);
    fast->dense_forward(x.data(), k, w.data(), b.data(), batch.data(), n, k, m, Activation::elu);
    for (std::size_t r : {std::size_t(0), n - 1}) {
      std::vector<float> one(m);
      fast->dense_forward(x.data() + r * k, k, w.data(), b.data(), one.data(), 1, k, m, Activation::elu);
      EXPECT_EQ(one, std::vector<float>(batch.begin() + std::ptrdiff_t(r * m), batch.begin() + std::ptrdiff_t((r + 1) * m))) << "row " << r;
    }
  });
}

// A single sample's stack of layers (one fork-join, the threads meeting between layers) gets the bits of its layers run
// one by one: here k → m → k + 5 → m, with ELU between and identity at the end.
TEST_P(KernelShapes, OneRowStackIsItsLayersInTurn) {
  const auto [rows, k, m] = GetParam();
  const std::size_t widths[4] = {k, m, k + 5, m};
  std::vector<std::vector<float>> w, b, want(4), got(4);
  for (std::size_t l = 0; l < 3; ++l) {
    w.push_back(random_floats(widths[l] * widths[l + 1], 31 + unsigned(l)));
    b.push_back(random_floats(widths[l + 1], 41 + unsigned(l)));
  }
  want[0] = got[0] = random_floats(k, 30);
  for_each_fast(1, k + m + 5, [&](const Fast& fast) {
    std::vector<DenseCall<float>> calls;
    for (std::size_t l = 0; l < 3; ++l) {
      want[l + 1].assign(widths[l + 1], 0.0f);
      got[l + 1].assign(widths[l + 1], -1.0f);
      const Activation act = l < 2 ? Activation::elu : Activation::identity;
      fast->dense_forward(want[l].data(), widths[l], w[l].data(), b[l].data(), want[l + 1].data(), 1, widths[l], widths[l + 1], act);
      calls.push_back({got[l].data(), widths[l], w[l].data(), b[l].data(), got[l + 1].data(), widths[l], widths[l + 1], act});
    }
    fast->dense_forward_stack(calls, 1);
    for (std::size_t l = 1; l < 4; ++l) EXPECT_EQ(got[l], want[l]) << "layer " << l;
  });
}

INSTANTIATE_TEST_SUITE_P(
    Awkward, KernelShapes,
    ::testing::Values(std::make_tuple(1, 1, 1), std::make_tuple(7, 13, 5), std::make_tuple(3, 17, 33), std::make_tuple(5, 9, 70),
                      std::make_tuple(0, 4, 4), std::make_tuple(17, 31, 15), std::make_tuple(64, 1, 129),
                      std::make_tuple(3, 0, 5), std::make_tuple(13, 300, 47), std::make_tuple(30, 600, 20)));

// Every layer shape of v1, v2 and v3 at a local batch of 16 (v1's batch) and 64, and v3 at 256.
INSTANTIATE_TEST_SUITE_P(
    ModelShapes, KernelShapes,
    ::testing::Values(std::make_tuple(64, 794, 640), std::make_tuple(64, 640, 320), std::make_tuple(64, 320, 256),
                      std::make_tuple(64, 138, 320), std::make_tuple(64, 320, 640), std::make_tuple(64, 640, 784),
                      std::make_tuple(64, 794, 512), std::make_tuple(64, 512, 256), std::make_tuple(64, 256, 128),
                      std::make_tuple(64, 74, 256), std::make_tuple(64, 256, 512), std::make_tuple(64, 512, 784),
                      std::make_tuple(16, 794, 1024), std::make_tuple(16, 1024, 512), std::make_tuple(16, 512, 256),
                      std::make_tuple(16, 138, 512), std::make_tuple(16, 512, 1024), std::make_tuple(16, 1024, 784),
                      std::make_tuple(256, 794, 640), std::make_tuple(256, 640, 784)));

TEST(KernelsLoss, ParallelMatchesReference) {
  ReferenceKernels<float> ref;
  const std::size_t n = 19, d = 784, ld = 790, L = 13;
  auto logits = random_floats(n * d, 1);
  for (auto& v : logits) v *= 20.0f;
  const auto pixels = random_bytes(n * ld, 2);
  const ImageBatch x{pixels.data(), ld, d, nullptr, 0};
  std::vector<float> want_g(n * d);
  std::vector<double> want_rows(n);
  const double want_loss = ref.bernoulli_nll(logits.data(), x, want_g.data(), n, 0.125f, want_rows.data());
  EXPECT_NEAR(std::accumulate(want_rows.begin(), want_rows.end(), 0.0), want_loss, 1e-9 * want_loss);

  auto head = random_floats(n * 2 * L, 3), eps = random_floats(n * L, 4), dz = random_floats(n * (L + 10), 5);
  std::vector<float> want_z(n * (L + 10)), want_dh(n * 2 * L);
  const double want_kl = ref.reparam_kl_forward(head.data(), eps.data(), want_z.data(), L + 10, n, L);
  ref.reparam_kl_backward(head.data(), eps.data(), dz.data(), L + 10, want_dh.data(), n, L, 0.5f, 0.3f);

  for_each_fast(n, d, [&](const Fast& fast) {
    std::vector<float> g(n * d), z(n * (L + 10)), dh(n * 2 * L);
    std::vector<double> rows(n);
    EXPECT_NEAR(fast->bernoulli_nll(logits.data(), x, g.data(), n, 0.125f, rows.data()), want_loss, 1e-5 * want_loss);
    expect_close(g, want_g, 1e-6, "dlogits");
    for (std::size_t r = 0; r < n; ++r) EXPECT_NEAR(rows[r], want_rows[r], 1e-5 * want_rows[r]) << "row " << r;
    EXPECT_NEAR(fast->reparam_kl_forward(head.data(), eps.data(), z.data(), L + 10, n, L), want_kl, 1e-4);
    expect_close(z, want_z, 1e-6, "z");
    fast->reparam_kl_backward(head.data(), eps.data(), dz.data(), L + 10, dh.data(), n, L, 0.5f, 0.3f);
    expect_close(dh, want_dh, 1e-6, "dhead");
  });
}

TEST(KernelsGather, RowsByHandAndOnTheBatchesShapes) {
  const std::uint8_t a[] = {1, 2, 3, 4}, b[] = {5, 6, 7, 8};
  const std::uint8_t* two[] = {b, a};
  for_each_fast(2, 4, [&](const Fast& fast) {
    std::vector<std::uint8_t> dst(8, 0xAB);
    fast->gather_rows(two, 3, dst.data(), 4);  // 3 bytes of each row, 4 apart: the 4th byte of each untouched
    EXPECT_EQ(dst, (std::vector<std::uint8_t>{5, 6, 7, 0xAB, 1, 2, 3, 0xAB}));
  });
  // a data set of 1,000 rows, batches of 19 (one task) and 300 (the real rows, shared among threads) in a scattered
  // order with repeats, at widths 784 and 5, into rows 790 bytes apart
  ReferenceKernels<float> ref;
  const std::size_t N = 1000, ld = 790;
  const auto data = random_bytes(N * 784, 7);
  for (std::size_t n : {std::size_t(19), std::size_t(300)})
    for (std::size_t width : {std::size_t(784), std::size_t(5)}) {
      std::vector<const std::uint8_t*> rows(n);
      for (std::size_t r = 0; r < n; ++r) rows[r] = data.data() + (r * 7919 % N) * 784;
      std::vector<std::uint8_t> want(n * ld, 0xAB);
      ref.gather_rows(rows, width, want.data(), ld);
      for_each_fast(n, 784, [&](const Fast& fast) {
        std::vector<std::uint8_t> got(n * ld, 0xAB);
        fast->gather_rows(rows, width, got.data(), ld);
        EXPECT_EQ(got, want) << n << " rows of " << width;
      });
    }
}

// ema ← p + d·(ema − p): at d = 0.75, ema 1 and p 5 give 2, and ema 5, p 1 give 4; every kernel gives the reference's
// bits, on a count that ends inside a vector and spans several tasks.
TEST(Ema, ByHandAndMatchesReferenceBitForBit) {
  ReferenceKernels<float> ref;
  const std::size_t n = (1u << 15) + 37;
  const auto p = random_floats(n, 11), start = random_floats(n, 12);
  std::vector<float> want = start;
  want[0] = 1, want[1] = 5;
  std::vector<float> p_hand = p;
  p_hand[0] = 5, p_hand[1] = 1;
  const std::vector<float> begin = want;
  ref.ema_update(want.data(), p_hand.data(), n, 0.75f);
  EXPECT_EQ(want[0], 2.0f);
  EXPECT_EQ(want[1], 4.0f);
  for_each_fast(64, 64, [&](const Fast& fast) {
    std::vector<float> got = begin;
    fast->ema_update(got.data(), p_hand.data(), n, 0.75f);
    EXPECT_EQ(std::memcmp(got.data(), want.data(), n * sizeof(float)), 0);
  });
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

TEST(Adam, WeightDecayFirstStepByHand) {
  // AdamW, λ = 0.5 at lr 0.1: p × (1 − 0.05) first, then the step above: 0.95 − 0.1·0.5/(0.5 + 1e-8) = 0.85 + 2e-9; a zero
  // gradient leaves only the decay: 2 × 0.95 = 1.9
  ReferenceKernels<double> k;
  std::vector<double> p{1.0, 2.0}, g{0.5, 0.0}, m{0.0, 0.0}, v{0.0, 0.0};
  adam_step<double>(k, p, g, m, v, 1, {0.1, 0.9, 0.999, 1e-8, 0.5});
  EXPECT_NEAR(p[0], 0.85 + 2e-9, 1e-15);
  EXPECT_DOUBLE_EQ(p[1], 1.9);
}

class AdamTextbook : public ::testing::TestWithParam<double> {};

// Every kernel set against the textbook recurrences, with and without AdamW's decay.
TEST_P(AdamTextbook, MatchesWithBiasCorrection) {
  ReferenceKernels<double> k;
  const std::size_t n = 40000;
  for_each_fast(1, 1, [&](const Fast& fast) {
  std::vector<double> p(n, 1.0), m(n, 0.0), v(n, 0.0), tp(n, 1.0), tm(n, 0.0), tv(n, 0.0);
  std::vector<float> fp(n, 1.0f), fm(n, 0.0f), fv(n, 0.0f);
  const AdamParams a{0.01, 0.9, 0.999, 1e-8, GetParam()};
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
      tp[i] = tp[i] * (1 - a.lr * a.weight_decay) - a.lr * mhat / (std::sqrt(vhat) + a.eps);
    }
  }
  for (std::size_t i = 0; i < n; i += 997) {
    EXPECT_NEAR(p[i], tp[i], 1e-12) << i;
    EXPECT_NEAR(fp[i], tp[i], 2e-6) << i;
  }
  });
}

INSTANTIATE_TEST_SUITE_P(AdamDecay, AdamTextbook, ::testing::Values(0.0, 1.0));


// The bf16 wire format by hand: 1 + 2⁻⁸ is a tie between 1 and 1 + 2⁻⁷ and rounds to even (1); just above it rounds up;
// NaN stays NaN, ±Inf stay, and the largest float rounds to +Inf as IEEE's nearest-even does.
TEST(Bf16, RoundsToNearestEvenByHand) {
  EXPECT_EQ(bf16_round(1.0f), 0x3f80);
  EXPECT_EQ(bf16_round(1.0f + 0x1p-8f), 0x3f80);
  EXPECT_EQ(bf16_round(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);
  EXPECT_EQ(bf16_round(1.0f + 3 * 0x1p-8f), 0x3f82);  // the tie between 0x3f81 and 0x3f82 goes to the even 0x3f82
  EXPECT_EQ(bf16_round(-2.5f), 0xc020);
  EXPECT_EQ(bf16_round(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(bf16_round(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_TRUE(std::isnan(bf16_widen(bf16_round(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(bf16_widen(0x3f81), 1.0f + 0x1p-7f);
}

// Every instruction set's conversions and sums equal the scalar definition, bit for bit, on an awkward length (a SIMD
// body and a tail) with ties, NaN and infinities in it.
TEST(Bf16, SimdMatchesScalarOnEveryIsa) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  const std::size_t n = 1000 + 13;
  std::vector<float> x(n);
  for (float& v : x) v = normal(rng);
  x[3] = 1.0f + 0x1p-8f;
  x[17] = std::numeric_limits<float>::quiet_NaN();
  x[n - 1] = -std::numeric_limits<float>::infinity();
  x[n - 2] = std::numeric_limits<float>::max();
  std::vector<std::uint16_t> ref(n), a(n), b_ref(n);
  for (std::size_t i = 0; i < n; ++i) {
    ref[i] = bf16_round(x[i]);
    a[i] = bf16_round(x[n - 1 - i] * 0.5f);
    b_ref[i] = bf16_round(bf16_widen(a[i]) + bf16_widen(ref[i]));
  }
  for (const std::string& isa : tested_isas()) {
    std::vector<std::uint16_t> h(n);
    to_bf16(x.data(), h.data(), n, isa);
    EXPECT_EQ(h, ref) << isa;
    std::vector<float> back(n);
    from_bf16(h.data(), back.data(), n, isa);
    for (std::size_t i = 0; i < n; ++i)
      if (!std::isnan(x[i])) {
        ASSERT_EQ(back[i], bf16_widen(ref[i])) << isa << " element " << i;
      }
    EXPECT_TRUE(std::isnan(back[17])) << isa;
    add_bf16(a.data(), h.data(), n, isa);
    for (std::size_t i = 0; i < n; ++i)
      if (!std::isnan(bf16_widen(b_ref[i]))) {
        ASSERT_EQ(h[i], b_ref[i]) << isa << " element " << i;
      }
  }
}

// bf16 products by hand. Operands round to nearest even: 1 + 2⁻⁸ (a tie) to 1, 1 + 3·2⁻⁸ (a tie) to 1 + 2⁻⁶. So
// [1 + 2⁻⁸, 1 + 3·2⁻⁸] · [1; 2] is 1 + 2·(1 + 2⁻⁶) = 3.03125 in bf16, where fp32 gives 3.02734375.
TEST(Bf16Products, OperandsRoundToNearestEvenByHand) {
  const float x[2] = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f}, w[2] = {1.0f, 2.0f}, b[1] = {0.0f};
  for_each_fast(1, 2, [&](const Fast& k) {
    float y[1];
    k->dense_forward(x, 2, w, b, y, 1, 2, 1, Activation::identity);
    EXPECT_EQ(y[0], 3.03125f);
  }, Precision::bf16);
  ReferenceKernels<float> ref(Precision::bf16), exact;
  float y[1];
  ref.dense_forward(x, 2, w, b, y, 1, 2, 1, Activation::identity);
  EXPECT_EQ(y[0], 3.03125f);
  exact.dense_forward(x, 2, w, b, y, 1, 2, 1, Activation::identity);
  EXPECT_EQ(y[0], 3.02734375f);
}

// The order of a pair: products p = (1, 2²⁴, −2²⁴, 1) over K = 4 are two pairs. The instruction adds each pair high half
// first: ((0 + 2²⁴) + 1) rounds to 2²⁴ (a tie, to even), + 1 again 2²⁴, − 2²⁴ = 0. In index order (the reference):
// (1 + 2²⁴) = 2²⁴, − 2²⁴ = 0, + 1 = 1. Every path, native or emulated, gives the instruction's 0; AMX has an order of
// its own (here it gives 1).
TEST(Bf16Products, PairsAddHighHalfFirstByHand) {
  const float x[4] = {1.0f, 0x1p12f, -0x1p12f, 1.0f}, w[4] = {1.0f, 0x1p12f, 0x1p12f, 1.0f}, b[1] = {0.0f};
  for_each_fast(1, 4, [&](const Fast& k) {
    if (k.label.starts_with("AVX3_AMX")) return;
    float y[1];
    k->dense_forward(x, 4, w, b, y, 1, 4, 1, Activation::identity);
    EXPECT_EQ(y[0], 0.0f);
  }, Precision::bf16);
  ReferenceKernels<float> ref(Precision::bf16);
  float y[1];
  ref.dense_forward(x, 4, w, b, y, 1, 4, 1, Activation::identity);
  EXPECT_EQ(y[0], 1.0f);
}

// Denormals: an fp32 denormal operand is read as zero, and a sum below the smallest normal is flushed: 2⁻⁷⁰·2⁻⁷⁰ = 2⁻¹⁴⁰
// is 0, and so is 1e-39·1.
TEST(Bf16Products, DenormalsFlushToZeroByHand) {
  EXPECT_EQ(bf16_operand(1e-39f), 0x0000);
  EXPECT_EQ(bf16_operand(-1e-39f), 0x8000);
  EXPECT_EQ(bf16_operand(1.0f + 0x1p-8f), 0x3f80);
  const float x[2] = {0x1p-70f, 1e-39f}, w[2] = {0x1p-70f, 1.0f}, b[1] = {0.0f};
  for_each_fast(1, 2, [&](const Fast& k) {
    float y[2];
    k->dense_forward(x, 1, w, b, y, 1, 1, 1, Activation::identity);
    k->dense_forward(x + 1, 1, w + 1, b, y + 1, 1, 1, 1, Activation::identity);
    EXPECT_EQ(y[0], 0.0f);
    EXPECT_EQ(y[1], 0.0f);
  }, Precision::bf16);
}

// The bf16 path is there on every CPU: natively where AVX512_BF16 is, emulated everywhere.
TEST(Bf16Products, NativePathIsChosenWhereTheCpuHasIt) {
  const auto isas = available_isas();
  const bool native = std::find(isas.begin(), isas.end(), "AVX3_BF16") != isas.end();
  const bool amx = std::find(isas.begin(), isas.end(), "AVX3_AMX") != isas.end();
  if (amx) {
    EXPECT_EQ(isas.front(), "AVX3_AMX");
    EXPECT_EQ(isas[1], "AVX3_BF16");
  } else if (native) {
    EXPECT_EQ(isas.front(), "AVX3_BF16");
  }
  EXPECT_NE(make_parallel_kernels(1, "", Precision::bf16)->name().find("bf16 products"), std::string::npos);
}

// The bf16 weight copy: Adam over ranges that start and end anywhere (mid-row, odd, across layers, in chunks spread
// over threads) leaves it word for word what packing the new weights afresh gives, and the products that read it give
// the bits of the products that pack their weights, forward and input gradient, on every bf16 path. The layers are
// awkward (widths 13, 130, 33, 5: partial panels, odd K) and two are larger than an Adam task, so that tasks begin
// inside them (where the pass moves a task's start back to a block of whole rows).
TEST(Bf16WeightCopy, AdamKeepsItFreshAndProductsReadIt) {
  Arch arch;
  arch.hidden = {130, 33};
  arch.latent = 5;
  arch.image = 13 * 13;
  arch.classes = 3;
  const ParamLayout layout(arch);
  const std::size_t P = layout.padded_size(), n = 7;
  std::vector<float> params0(P), g = random_floats(P, 51), x = random_floats(n * layout.max_dim(), 52);
  init_parameters<float>(layout, 5, params0);
  for_each_fast(n, layout.max_dim(), [&](const Fast& fast) {
    // the copy 64-byte aligned (the pass streams whole lines past the cache) and one word off (it stores them)
    for (const std::size_t shift : {std::size_t(0), std::size_t(1)}) {
      std::vector<float> p = params0, m(P, 0.0f), v(P, 0.0f);
      const std::size_t copy_words = weight_copy_words(layout, *fast);
      AlignedBuffer<std::uint32_t> kept_storage(copy_words + 1);
      const std::span<std::uint32_t> kept_words(kept_storage.data() + shift, copy_words);
      std::vector<std::uint32_t> fresh_words(copy_words);
      ASSERT_GT(kept_words.size(), 0u);
      const WeightCopy kept = make_weight_copy(layout, *fast, p.data(), kept_words.data());
      fast->refresh_weight_copy(kept);
      const std::size_t cuts[] = {0, 1, 1001, 1002, P / 2 + 3, P - 17, P};
      for (long t = 1; t <= 2; ++t)
        for (std::size_t c = 0; c + 1 < std::size(cuts); ++c) {
          const std::size_t b = cuts[c], count = cuts[c + 1] - b;
          adam_step<float>(*fast, std::span(p).subspan(b, count), std::span<const float>(g).subspan(b, count), std::span(m).subspan(b, count),
                           std::span(v).subspan(b, count), t, {0.01, 0.9, 0.999, 1e-8}, &kept);
        }
      ASSERT_NE(p, params0);
      // and the pass updated every parameter once: the reference's Adam over the same ranges (an element updated twice or
      // not at all would be off by about the learning rate)
      ReferenceKernels<float> ref;
      std::vector<float> ref_p = params0, ref_m(P, 0.0f), ref_v(P, 0.0f);
      for (long t = 1; t <= 2; ++t)
        adam_step<float>(ref, ref_p, g, ref_m, ref_v, t, {0.01, 0.9, 0.999, 1e-8});
      for (std::size_t i = 0; i < P; ++i) ASSERT_NEAR(p[i], ref_p[i], 1e-5) << "parameter " << i;
      const WeightCopy fresh = make_weight_copy(layout, *fast, p.data(), fresh_words.data());
      fast->refresh_weight_copy(fresh);
      for (const WeightCopy::Layer& l : kept.layers) {
        const auto words = [&](std::size_t at, std::size_t count) { return std::vector<std::uint32_t>(kept_words.begin() + std::ptrdiff_t(at), kept_words.begin() + std::ptrdiff_t(at + count)); };
        const auto fresh_of = [&](std::size_t at, std::size_t count) { return std::vector<std::uint32_t>(fresh_words.begin() + std::ptrdiff_t(at), fresh_words.begin() + std::ptrdiff_t(at + count)); };
        const std::size_t fwd = fast->bf16_panel_words(l.k, l.m), trans = fast->bf16_panel_words(l.m, l.k);
        EXPECT_EQ(words(l.fwd, fwd), fresh_of(l.fwd, fwd)) << "forward panels of a " << l.k << "x" << l.m << " layer";
        if (l.transposed) {
          EXPECT_EQ(words(l.trans, trans), fresh_of(l.trans, trans)) << "transposed panels of a " << l.k << "x" << l.m << " layer";
        }
      }
      for (const LayerSpec& s : layout.layers()) {
        const float* w = p.data() + s.w_offset;
        const float* bias = p.data() + s.b_offset;
        // the input gradient of every input column, and of the first 37 only (as the first decoder layer's of z's)
        const std::size_t part = std::min<std::size_t>(s.in, 37);
        std::vector<float> y_packed(n * s.out), y_copied(n * s.out), dx_packed(n * s.in), dx_copied(n * s.in), dx_part_packed(n * s.in),
            dx_part_copied(n * s.in);
        const std::vector<float> dy = random_floats(n * s.out, 53);
        fast.kernels->bind_weight_copy(nullptr);
        fast->dense_forward(x.data(), s.in, w, bias, y_packed.data(), n, s.in, s.out, Activation::elu);
        fast->dense_input_grad(dy.data(), w, dx_packed.data(), s.in, n, s.in, s.out, Activation::identity, nullptr);
        fast->dense_input_grad(dy.data(), w, dx_part_packed.data(), s.in, n, part, s.out, Activation::identity, nullptr);
        fast.kernels->bind_weight_copy(&kept);
        fast->dense_forward(x.data(), s.in, w, bias, y_copied.data(), n, s.in, s.out, Activation::elu);
        fast->dense_input_grad(dy.data(), w, dx_copied.data(), s.in, n, s.in, s.out, Activation::identity, nullptr);
        fast->dense_input_grad(dy.data(), w, dx_part_copied.data(), s.in, n, part, s.out, Activation::identity, nullptr);
        EXPECT_EQ(y_copied, y_packed) << s.name << " forward";
        EXPECT_EQ(dx_copied, dx_packed) << s.name << " input gradient";
        EXPECT_EQ(dx_part_copied, dx_part_packed) << s.name << " input gradient of the first " << part << " columns";
      }
      // and they do read it: a copy of zero weights gives the bias alone
      std::fill(kept_words.begin(), kept_words.end(), 0u);
      const LayerSpec& s = layout.layers().front();
      std::vector<float> y(n * s.out);
      fast->dense_forward(x.data(), s.in, p.data() + s.w_offset, p.data() + s.b_offset, y.data(), n, s.in, s.out, Activation::identity);
      fast.kernels->bind_weight_copy(nullptr);
      EXPECT_EQ(std::vector<float>(y.begin(), y.begin() + std::ptrdiff_t(s.out)), std::vector<float>(p.begin() + std::ptrdiff_t(s.b_offset), p.begin() + std::ptrdiff_t(s.b_offset + s.out)));
    }
  }, Precision::bf16);
}

// A NaN reaching a layer stays NaN through every activation, in the reference and every optimized path: a diverged
// layer must not turn into finite numbers (x86's min and max return the other operand of a NaN). Row 0 of x holds a NaN,
// row 1 a −Inf (a column of W picks it: ELU's −1, ReLU's 0), row 2 plain numbers.
TEST(KernelsNan, EveryActivationPassesNanOn) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const float x[9] = {1, nan, 2, -inf, 0, 0, -1, 0.5f, 3};
  const float w[6] = {1, 0, 1, 0, 0, 1};  // y(r, ·) = [x(r, 0) + x(r, 1), x(r, 2)]
  const float b[2] = {0, 0};
  for (const Activation act : {Activation::identity, Activation::elu, Activation::relu, Activation::leaky_relu, Activation::tanh}) {
    SCOPED_TRACE(activation_name(act));
    float want[6];
    ReferenceKernels<float>().dense_forward(x, 3, w, b, want, 3, 3, 2, act);
    EXPECT_TRUE(std::isnan(want[0]));
    EXPECT_FALSE(std::isnan(want[2]));
    for (const Precision p : {Precision::fp32, Precision::bf16})
      for_each_fast(3, 3, [&](const Fast& fast) {
        float y[6];
        fast->dense_forward(x, 3, w, b, y, 3, 3, 2, act);
        for (int i = 0; i < 6; ++i) EXPECT_EQ(std::isnan(y[i]), std::isnan(want[i])) << "element " << i;
        EXPECT_EQ(y[2], want[2]);
      }, p);
  }
}

// bf16 shadows: a two-layer chain, forward and backward, on an activation Y1 and a gradient D1 that have shadows gives
// the bits of the same chain packing its operands, on every bf16 path: Y1 read as the next forward's A and as the Aᵀ of
// its weight gradient, D1 as the B of a weight gradient and the A of an input gradient. Widths 13, 33, 70 (partial panels,
// odd K); 9 rows of shadow used by 9, then by 7 (an odd batch below the shadow's rows, after a larger one whose row 7 is
// NaN: a row past the batch must read as zero, not as what an earlier batch left), then 4 rows. A corrupted shadow then
// changes the results: the products do read it.
TEST(Bf16Shadows, EpiloguesWriteThemAndProductsReadThem) {
  const std::size_t rows = 9, k = 13, h = 33, m = 70;
  std::vector<float> x = random_floats(rows * k, 61);
  x[7 * k + 3] = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> w1 = random_floats(k * h, 62), b1 = random_floats(h, 63),
                           w2 = random_floats(h * m, 64), b2 = random_floats(m, 65), dy2 = random_floats(rows * m, 66);
  struct Out {
    std::vector<float> y1, y2, dw2, db2, d1, dw1, db1, dx;
    // bit for bit, NaN included
    std::vector<std::uint32_t> bits() const {
      std::vector<std::uint32_t> b;
      for (const std::vector<float>* v : {&y1, &y2, &dw2, &db2, &d1, &dw1, &db1, &dx})
        for (float f : *v) b.push_back(std::bit_cast<std::uint32_t>(f));
      return b;
    }
  };
  auto chain = [&](const Kernels<float>& f, std::size_t n, float* y1, float* d1) {
    Out o{{}, std::vector<float>(n * m), std::vector<float>(h * m), std::vector<float>(m), {}, std::vector<float>(k * h),
          std::vector<float>(h), std::vector<float>(n * k)};
    f.dense_forward(x.data(), k, w1.data(), b1.data(), y1, n, k, h, Activation::elu);
    f.dense_forward(y1, h, w2.data(), b2.data(), o.y2.data(), n, h, m, Activation::identity);
    f.dense_weight_grad(y1, h, dy2.data(), o.dw2.data(), o.db2.data(), n, h, m);
    f.dense_input_grad(dy2.data(), w2.data(), d1, h, n, h, m, Activation::elu, y1);
    f.dense_weight_grad(x.data(), k, d1, o.dw1.data(), o.db1.data(), n, k, h);
    f.dense_input_grad(d1, w1.data(), o.dx.data(), k, n, k, h, Activation::identity, nullptr);
    o.y1.assign(y1, y1 + n * h);
    o.d1.assign(d1, d1 + n * h);
    return o;
  };
  for_each_fast(rows, m, [&](const Fast& fast) {
    const std::size_t words = fast->bf16_shadow_words(rows, h);
    ASSERT_GT(words, 0u);
    std::vector<float> y1(rows * h), d1(rows * h);
    std::vector<std::uint32_t> y1_words(words, 0u), d1_words(words, 0u);
    const Bf16Shadow<float> shadows[] = {{y1.data(), rows, h, Bf16Shadow<float>::Use::activation, y1_words.data()},
                                         {d1.data(), rows, h, Bf16Shadow<float>::Use::gradient, d1_words.data()}};
    for (const std::size_t n : {rows, std::size_t(7), std::size_t(4)}) {
      SCOPED_TRACE(n);
      fast.kernels->bind_bf16_shadows({});
      const Out packed = chain(*fast, n, y1.data(), d1.data());
      fast.kernels->bind_bf16_shadows(shadows);
      const Out shadowed = chain(*fast, n, y1.data(), d1.data());
      EXPECT_EQ(shadowed.bits(), packed.bits());
      if (n < 8) {
        EXPECT_TRUE(std::all_of(shadowed.dw2.begin(), shadowed.dw2.end(), [](float v) { return std::isfinite(v); }));
      }
    }
    // a shadow of zeros in place of D1's: dW1 = Xᵀ·D1 becomes 0 (over the 7 rows before X's NaN)
    std::vector<std::uint32_t> zeros(words, 0u);
    const Bf16Shadow<float> zeroed[] = {{d1.data(), rows, h, Bf16Shadow<float>::Use::gradient, zeros.data()}};
    fast.kernels->bind_bf16_shadows(zeroed);
    std::vector<float> dw1(k * h, 1.0f), db1(h);
    fast->dense_weight_grad(x.data(), k, d1.data(), dw1.data(), db1.data(), 7, k, h);
    EXPECT_EQ(dw1, std::vector<float>(k * h, 0.0f));
    fast.kernels->bind_bf16_shadows({});
  }, Precision::bf16);
}

// The loss's and the reparameterisation's gradients, written with their bf16 forms by the kernels that write them, give
// the products that read them the bits of packing them, on every bf16 path. Three "ranks" of 3 rows each write their
// rows of one 9-row tensor (so a pair of rows straddles two writers: rows 2 and 3, 6 and 7), widths 70 (the image: two
// whole panels and a partial one) and 10 (the head, 2L for L = 5); then the weight gradient reads all 9 rows (as the
// shared pass does) and the input gradient the middle writer's 3, at an odd row of the shadow.
TEST(Bf16Shadows, LossAndReparameterisationWriteTheirGradientsForms) {
  const std::size_t rows = 9, per = 3, k = 11, d = 70, L = 5;
  auto logits = random_floats(rows * d, 71);
  for (float& v : logits) v *= 8.0f;
  const std::vector<std::uint8_t> pixels = random_bytes(rows * d, 72);
  const std::vector<float> x = random_floats(rows * k, 73), head = random_floats(rows * 2 * L, 74), eps = random_floats(rows * L, 75),
                           dz = random_floats(rows * L, 76), w_d = random_floats(k * d, 77), w_h = random_floats(k * 2 * L, 78);
  auto bits = [](const std::vector<float>& v) {
    std::vector<std::uint32_t> b;
    for (float f : v) b.push_back(std::bit_cast<std::uint32_t>(f));
    return b;
  };
  // each writer's rows of the two gradients, then the products that read them
  auto pass = [&](const Kernels<float>& f, float* dl, float* dh) {
    for (std::size_t r = 0; r < rows; r += per) {
      const ImageBatch batch{pixels.data() + r * d, d, d, nullptr, 0};
      f.bernoulli_nll(logits.data() + r * d, batch, dl + r * d, per, 0.25f, nullptr);
      f.reparam_kl_backward(head.data() + r * 2 * L, eps.data() + r * L, dz.data() + r * L, L, dh + r * 2 * L, per, L, 0.25f, 0.5f);
    }
    std::vector<float> out;
    for (const auto& [g, m, w] : {std::tuple{dl, d, &w_d}, std::tuple{dh, 2 * L, &w_h}}) {
      std::vector<float> dw(k * m), db(m), dx(per * k);
      f.dense_weight_grad(x.data(), k, g, dw.data(), db.data(), rows, k, m);
      f.dense_input_grad(g + per * m, w->data(), dx.data(), k, per, k, m, Activation::identity, nullptr);
      for (const std::vector<float>* v : {&dw, &db, &dx}) out.insert(out.end(), v->begin(), v->end());
    }
    return out;
  };
  for_each_fast(rows, d, [&](const Fast& fast) {
    std::vector<float> dl(rows * d), dh(rows * 2 * L);
    std::vector<std::uint32_t> dl_words(fast->bf16_shadow_words(rows, d), 0u), dh_words(fast->bf16_shadow_words(rows, 2 * L), 0u);
    ASSERT_FALSE(dl_words.empty());
    const Bf16Shadow<float> shadows[] = {{dl.data(), rows, d, Bf16Shadow<float>::Use::gradient, dl_words.data()},
                                         {dh.data(), rows, 2 * L, Bf16Shadow<float>::Use::gradient, dh_words.data()}};
    fast.kernels->bind_bf16_shadows({});
    const std::vector<float> packed = pass(*fast, dl.data(), dh.data());
    fast.kernels->bind_bf16_shadows(shadows);
    const std::vector<float> shadowed = pass(*fast, dl.data(), dh.data());
    fast.kernels->bind_bf16_shadows({});
    EXPECT_EQ(bits(shadowed), bits(packed));
    EXPECT_TRUE(std::any_of(packed.begin(), packed.end(), [](float v) { return v != 0.0f; }));
  }, Precision::bf16);
}

// INT8 products by hand: xq = [1 2 3], zero point 1 (so x ∝ [0 1 2]), wq = [1; 2; −3], scale 0.5, bias 1:
// Σ xq·wq = 1 + 4 − 9 = −4, zero term 1·(1 + 2 − 3) = 0, y = 0.5·(−4 − 0) + 1 = −1; as u8 with inv_scale 2 and zero
// point 10: round(−2 + 10) = 8. The input quantizes as round(x·4 + 1): x = [0, 0.25, 0.5] gives [1 2 3].
TEST(Int8Products, DenseForwardByHand) {
  const std::int8_t w[3] = {1, 2, -3};
  const float scale[1] = {0.5f}, bias[1] = {1.0f}, x[3] = {0.0f, 0.25f, 0.5f};
  const std::int32_t zero_term[1] = {0};
  ReferenceKernels<float> ref;
  std::vector<const Kernels<float>*> all{&ref};
  std::vector<Fast> fast;
  for (const std::string& isa : tested_isas()) fast.emplace_back(isa, 1, 1, 3);
  for (const Fast& f : fast) all.push_back(&*f);
  for (const Kernels<float>* k : all) {
    SCOPED_TRACE(k->name());
    alignas(4) std::uint8_t xq[4] = {9, 9, 9, 9};
    k->quantize_int8(x, 3, 1, 3, 4.0f, 1.0f, xq, 4);
    EXPECT_EQ(xq[0], 1);
    EXPECT_EQ(xq[1], 2);
    EXPECT_EQ(xq[2], 3);
    EXPECT_EQ(xq[3], 0);
    std::vector<std::uint32_t> packed(k->int8_packed_words(3, 1));
    k->pack_int8_weights(w, 3, 1, packed.data());
    const Int8Weights iw{w, 3, 1, scale, zero_term, bias, Activation::identity, packed.empty() ? nullptr : packed.data()};
    float y[1] = {0};
    k->int8_dense_forward(iw, xq, 4, 1, {y, 1});
    EXPECT_EQ(y[0], -1.0f);
    std::uint8_t q[4] = {0};
    Int8Output out;
    out.q = q;
    out.ldq = 4;
    out.inv_scale = 2.0f;
    out.zero_point = 10.0f;
    k->int8_dense_forward(iw, xq, 4, 1, out);
    EXPECT_EQ(q[0], 8);
  }
}

// Random INT8 layers against the reference: the sums are exact, so with the identity the fp32 outputs and the u8 ones
// are the same bits on every instruction set, thread count and batch (one row takes the single-sample path); with ELU
// (a polynomial in the kernels) within 2e-7 of the output's size, and u8 within one step.
class Int8Shapes : public ::testing::TestWithParam<std::tuple<std::size_t, std::size_t, std::size_t>> {};

TEST_P(Int8Shapes, MatchesReference) {
  const auto [rows, k, m] = GetParam();
  const std::size_t n = test_rows(rows), ld = int8_row_bytes(k) + 4;
  std::mt19937 gen(5);
  std::vector<std::int8_t> w(k * m);
  for (auto& v : w) v = std::int8_t(int(gen() % 255) - 127);
  const auto x = random_floats(n * k, 6), scale0 = random_floats(m, 7), bias = random_floats(m, 8);
  std::vector<float> scale(m);
  for (std::size_t j = 0; j < m; ++j) scale[j] = 1e-3f * (1.5f + scale0[j]);
  std::vector<std::int32_t> zero_term(m);
  for (std::size_t j = 0; j < m; ++j) zero_term[j] = std::int32_t(j * 37 % 2000) - 1000;
  ReferenceKernels<float> ref;
  std::vector<std::uint8_t> want_xq(n * ld, 0);
  ref.quantize_int8(x.data(), k, n, k, 100.0f, 128.0f, want_xq.data(), ld);
  for (Activation act : {Activation::identity, Activation::elu}) {
    const Int8Weights rw{w.data(), k, m, scale.data(), zero_term.data(), bias.data(), act, nullptr};
    std::vector<float> want_y(n * m);
    std::vector<std::uint8_t> want_q(n * m);
    ref.int8_dense_forward(rw, want_xq.data(), ld, n, {want_y.data(), m});
    Int8Output wq;
    wq.q = want_q.data();
    wq.ldq = m;
    wq.inv_scale = 40.0f;
    wq.zero_point = 100.0f;
    ref.int8_dense_forward(rw, want_xq.data(), ld, n, wq);
    for_each_fast(n, std::max(k, m), [&](const Fast& fast) {
      std::vector<std::uint8_t> xq(n * ld, 0);
      fast->quantize_int8(x.data(), k, n, k, 100.0f, 128.0f, xq.data(), ld);
      ASSERT_EQ(xq, want_xq);
      std::vector<std::uint32_t> packed(fast->int8_packed_words(k, m));
      fast->pack_int8_weights(w.data(), k, m, packed.data());
      Int8Weights fw = rw;
      fw.packed = packed.data();
      std::vector<float> y(n * m);
      std::vector<std::uint8_t> q(n * m);
      fast->int8_dense_forward(fw, xq.data(), ld, n, {y.data(), m});
      Int8Output fq = wq;
      fq.q = q.data();
      fast->int8_dense_forward(fw, xq.data(), ld, n, fq);
      for (std::size_t i = 0; i < n * m; ++i) {
        if (act == Activation::identity) {
          ASSERT_EQ(y[i], want_y[i]) << "identity, element " << i;
          ASSERT_EQ(q[i], want_q[i]) << "identity u8, element " << i;
        } else {
          ASSERT_NEAR(y[i], want_y[i], 2e-7 * (std::abs(want_y[i]) + 1)) << "elu, element " << i;
          ASSERT_LE(std::abs(int(q[i]) - int(want_q[i])), 1) << "elu u8, element " << i;
        }
      }
    });
  }
}

INSTANTIATE_TEST_SUITE_P(Awkward, Int8Shapes,
                         ::testing::Values(std::make_tuple(1, 1, 1), std::make_tuple(1, 138, 320), std::make_tuple(7, 13, 5),
                                           std::make_tuple(3, 17, 33), std::make_tuple(9, 5, 70), std::make_tuple(17, 31, 15)));
// The v3 and v2 decoders' layers, at one sample and at a batch.
INSTANTIATE_TEST_SUITE_P(ModelShapes, Int8Shapes,
                         ::testing::Values(std::make_tuple(1, 138, 320), std::make_tuple(1, 320, 640), std::make_tuple(1, 640, 784),
                                           std::make_tuple(100, 138, 320), std::make_tuple(100, 320, 640), std::make_tuple(100, 640, 784),
                                           std::make_tuple(256, 74, 256), std::make_tuple(256, 512, 784)));

// Convolutions: the optimized products (patches and micro-kernels, vae/conv.hpp's layouts) against the reference loops,
// on every instruction set, and bit for bit alike on 1 and 2 threads (each image's products run on one task, and the
// weight gradient adds its images in an order set by n alone). With bf16 products the reference rounds the same
// operands, and every path but AMX gives the bits of the first (as Bf16IsBitForBitAlikeOnEveryPath for dense layers).
struct ConvRun {
  std::vector<float> y, y_linear, dx, dx_plain, dw, db, dw_part;
  bool finite = false;
};

ConvRun run_conv(const Kernels<float>& k, const ConvShape& s, std::size_t n, const std::vector<float>& x, const std::vector<float>& w,
                 const std::vector<float>& b, const std::vector<float>& dy, const std::vector<float>& y_prev, std::size_t r0, std::size_t r1) {
  ConvRun o;
  o.y.assign(n * s.out_size(), -7.0f);
  o.dx.assign(n * s.in_size(), -7.0f);
  o.dx_plain.assign(n * s.in_size(), -7.0f);
  o.dw.assign(s.weight_count(), -7.0f);
  o.db.assign(s.out_c, -7.0f);
  o.dw_part.assign((r1 - r0) * s.weight_row_size(), -7.0f);
  k.conv_forward(s, x.data(), w.data(), b.data(), o.y.data(), n, Activation::elu);
  o.y_linear.assign(n * s.out_size(), -7.0f);
  k.conv_forward(s, x.data(), w.data(), b.data(), o.y_linear.data(), n, Activation::identity);
  k.conv_input_grad(s, dy.data(), w.data(), o.dx.data(), n, Activation::elu, y_prev.data());
  k.conv_input_grad(s, dy.data(), w.data(), o.dx_plain.data(), n, Activation::identity, nullptr);
  o.finite = k.conv_weight_grad(s, x.data(), dy.data(), o.dw.data(), o.db.data(), n, 0, s.weight_rows());
  o.finite = k.conv_weight_grad(s, x.data(), dy.data(), o.dw_part.data(), nullptr, n, r0, r1) && o.finite;
  return o;
}

// 1 × 1 kernels, stride 1 and 2, odd and non-square sizes, padding 0, 1 and 2, convolutions and transposes, batches
// across the weight gradient's groups of four images.
std::vector<ConvShape> awkward_conv_shapes() {
  return {
      {3, 5, 7, 4, 1, 1, 0, false}, {2, 7, 5, 3, 3, 2, 1, false}, {3, 9, 6, 5, 4, 2, 0, false}, {1, 6, 6, 2, 5, 1, 2, false},
      {5, 4, 3, 3, 2, 1, 0, false}, {3, 5, 5, 2, 1, 1, 0, true},  {2, 3, 4, 3, 3, 2, 1, true},  {4, 4, 3, 2, 4, 2, 1, true},
      {1, 5, 2, 3, 3, 1, 0, true},  {3, 2, 2, 17, 2, 2, 0, true}, {17, 5, 5, 9, 3, 1, 1, false},
      {2, 3, 3, 2, 1, 1, 1, false},  // pad ≥ k: the border outputs' taps all fall in the padding
  };
}

std::vector<ConvShape> preset_conv_shapes() {
  return {ConvShape{1, 28, 28, 32, 4, 2, 1, false}, ConvShape{32, 14, 14, 64, 4, 2, 1, false}, ConvShape{64, 7, 7, 32, 4, 2, 1, true},
          ConvShape{32, 14, 14, 1, 4, 2, 1, true}};
}

void check_conv(const ConvShape& s, std::size_t n, Precision precision = Precision::fp32) {
  SCOPED_TRACE(s.describe() + ", " + std::to_string(n) + " images, " + precision_name(precision));
  s.check();
  const unsigned seed = unsigned(s.in_size() * 31 + s.out_size() + n);
  const std::vector<float> x = random_floats(n * s.in_size(), seed), w = random_floats(s.weight_count(), seed + 1);
  const std::vector<float> b = random_floats(s.out_c, seed + 2), dy = random_floats(n * s.out_size(), seed + 3);
  // an ELU output: > −1
  std::vector<float> y_prev = random_floats(n * s.in_size(), seed + 4);
  const std::size_t r0 = s.weight_rows() / 3, r1 = std::max(r0 + 1, 2 * s.weight_rows() / 3);
  const ReferenceKernels<float> reference(precision);
  const ConvRun want = run_conv(reference, s, n, x, w, b, dy, y_prev, r0, r1);
  ASSERT_TRUE(want.finite);
  // |x|·|w| sums: the rounding a float sum of those products may carry
  ConvRun bound;
  {
    const std::vector<float> ax = absolute(x), aw = absolute(w), ab = absolute(b), ady = absolute(dy);
    bound.y.resize(want.y.size());
    conv_forward_reference(s, ax.data(), aw.data(), ab.data(), bound.y.data(), n, Activation::identity);
    bound.dx.resize(want.dx.size());
    conv_input_grad_reference(s, ady.data(), aw.data(), bound.dx.data(), n, Activation::identity, static_cast<const float*>(nullptr));
    bound.dw.resize(want.dw.size());
    bound.db.resize(want.db.size());
    conv_weight_grad_reference(s, ax.data(), ady.data(), bound.dw.data(), bound.db.data(), n);
  }
  const std::vector<float> part_bound(bound.dw.begin() + std::ptrdiff_t(r0 * s.weight_row_size()),
                                      bound.dw.begin() + std::ptrdiff_t(r1 * s.weight_row_size()));
  ConvSizes sizes;
  sizes.add(s);
  std::optional<ConvRun> first_path;
  std::string first_isa;
  for (const std::string& isa : tested_isas()) {
    if (precision == Precision::fp32 && isa.ends_with("_BF16")) continue;
    std::vector<ConvRun> runs;
    for (int threads : {1, 2}) {
      Fast fast(isa, threads, n, 1, precision, sizes);
      SCOPED_TRACE(fast.label);
      runs.push_back(run_conv(*fast, s, n, x, w, b, dy, y_prev, r0, r1));
      const ConvRun& got = runs.back();
      EXPECT_TRUE(got.finite);
      expect_within(got.y, want.y, bound.y, "forward");
      expect_within(got.dx, want.dx, bound.dx, "input gradient");
      expect_within(got.dx_plain, want.dx_plain, bound.dx, "input gradient without a slope");
      expect_within(got.dw, want.dw, bound.dw, "weight gradient");
      expect_within(got.db, want.db, bound.db, "bias gradient");
      expect_within(got.dw_part, want.dw_part, part_bound, "weight gradient rows " + std::to_string(r0) + " to " + std::to_string(r1));
    }
    SCOPED_TRACE(isa + ": 1 against 2 threads");
    EXPECT_EQ(runs[0].y, runs[1].y);
    EXPECT_EQ(runs[0].dx, runs[1].dx);
    EXPECT_EQ(runs[0].dw, runs[1].dw);
    EXPECT_EQ(runs[0].db, runs[1].db);
    EXPECT_EQ(runs[0].dw_part, runs[1].dw_part);
    if (precision == Precision::fp32 || isa == "AVX3_AMX") continue;
    if (!first_path) {
      first_path = runs[0];
      first_isa = isa;
      continue;
    }
    // the products' bits: ELU's exp differs between instruction sets, so the forward is compared before it
    SCOPED_TRACE(isa + " against " + first_isa);
    EXPECT_EQ(runs[0].y_linear, first_path->y_linear);
    EXPECT_EQ(runs[0].dx, first_path->dx);
    EXPECT_EQ(runs[0].dw, first_path->dw);
  }
}

// 3 × 3 input, 2 × 2 kernel [1 0; 0 −1], bias 10: every output is x(y, x) − x(y + 1, x + 1) + 10 = 6 (test_conv.cpp
// works the strided case by hand); and the transposed stamp [1 2] ⊗ [1 2; 3 4].
TEST(ConvKernels, ByHand) {
  const ConvShape plain{1, 3, 3, 1, 2, 1, 0, false}, stamp{1, 1, 2, 1, 2, 2, 0, true};
  ConvSizes sizes;
  sizes.add(plain).add(stamp);
  for (const std::string& isa : tested_isas())
    for (const Precision precision : {Precision::fp32, Precision::bf16}) {  // every operand here is a bf16 number
      Fast fast(isa, 2, 1, 1, precision, sizes);
      SCOPED_TRACE(fast.label);
      const std::vector<float> x{1, 2, 3, 4, 5, 6, 7, 8, 9}, w{1, 0, 0, -1}, b{10};
      std::vector<float> y(4);
      fast->conv_forward(plain, x.data(), w.data(), b.data(), y.data(), 1, Activation::identity);
      EXPECT_EQ(y, (std::vector<float>{6, 6, 6, 6}));
      const std::vector<float> sx{1, 2}, sw{1, 2, 3, 4}, zero{0};
      std::vector<float> sy(8);
      fast->conv_forward(stamp, sx.data(), sw.data(), zero.data(), sy.data(), 1, Activation::identity);
      EXPECT_EQ(sy, (std::vector<float>{1, 2, 2, 4, 3, 4, 6, 8}));
    }
}

TEST(ConvKernels, AwkwardShapesMatchReference) {
  for (const ConvShape& s : awkward_conv_shapes())
    for (std::size_t n : {std::size_t(1), std::size_t(5)}) check_conv(s, n);
}
TEST(ConvKernels, Bf16AwkwardShapesMatchReference) {
  for (const ConvShape& s : awkward_conv_shapes())
    for (std::size_t n : {std::size_t(1), std::size_t(5)}) check_conv(s, n, Precision::bf16);
}

// The conv preset's layers (issue 13) on a batch of nine: two full groups of four and one image more.
TEST(ConvKernels, ThePresetsShapesMatchReference) {
  for (const ConvShape& s : preset_conv_shapes()) check_conv(s, test_rows(9));
}
TEST(ConvKernels, Bf16ThePresetsShapesMatchReference) {
  for (const ConvShape& s : preset_conv_shapes()) check_conv(s, test_rows(9), Precision::bf16);
}

TEST(ConvKernels, WeightGradientReportsNonFinite) {
  const ConvShape s{2, 5, 5, 3, 3, 2, 1, false};
  ConvSizes sizes;
  sizes.add(s);
  const std::size_t n = 6;
  std::vector<float> x = random_floats(n * s.in_size(), 1), dy = random_floats(n * s.out_size(), 2);
  std::vector<float> dw(s.weight_count()), db(s.out_c);
  for (const std::string& isa : tested_isas()) {
    Fast fast(isa, 2, n, 1, Precision::fp32, sizes);
    SCOPED_TRACE(fast.label);
    EXPECT_TRUE(fast->conv_weight_grad(s, x.data(), dy.data(), dw.data(), db.data(), n, 0, s.weight_rows()));
    x[5 * s.in_size() + 7] = std::numeric_limits<float>::quiet_NaN();  // in the last group
    EXPECT_FALSE(fast->conv_weight_grad(s, x.data(), dy.data(), dw.data(), nullptr, n, 0, s.weight_rows()));
    x[5 * s.in_size() + 7] = 0.5f;
    dy[2] = std::numeric_limits<float>::infinity();
    EXPECT_FALSE(fast->conv_weight_grad(s, x.data(), dy.data(), dw.data(), db.data(), n, 0, s.weight_rows()));
    dy[2] = 0.5f;
  }
}

// The bf16 rounding by hand, as Bf16Products.OperandsRoundToNearestEvenByHand: a 1 × 1 convolution of two channels
// [1 + 2⁻⁸, 1 + 3·2⁻⁸] with weights [1, 2] is 3.03125 in bf16 (3.02734375 in fp32), its input gradient for dy = 1 + 2⁻⁸
// is [1, 2] and its weight gradient for that dy is [1, 1 + 2⁻⁶].
TEST(ConvKernels, Bf16OperandsRoundToNearestEvenByHand) {
  const ConvShape s{2, 1, 1, 1, 1, 1, 0, false};
  ConvSizes sizes;
  sizes.add(s);
  const float x[2] = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f}, w[2] = {1.0f, 2.0f}, b[1] = {0.0f}, dy[1] = {1.0f + 0x1p-8f};
  const ReferenceKernels<float> reference(Precision::bf16);
  std::vector<const Kernels<float>*> kernels{&reference};
  std::vector<std::unique_ptr<Fast>> fast;
  for (const std::string& isa : tested_isas()) {
    fast.push_back(std::make_unique<Fast>(isa, 2, 1, 1, Precision::bf16, sizes));
    kernels.push_back(&**fast.back());
  }
  for (const Kernels<float>* k : kernels) {
    SCOPED_TRACE(k->name());
    float y[1], dx[2], dw[2], db[1];
    k->conv_forward(s, x, w, b, y, 1, Activation::identity);
    EXPECT_EQ(y[0], 3.03125f);
    k->conv_input_grad(s, dy, w, dx, 1, Activation::identity, nullptr);
    EXPECT_EQ(dx[0], 1.0f);
    EXPECT_EQ(dx[1], 2.0f);
    EXPECT_TRUE(k->conv_weight_grad(s, x, dy, dw, db, 1, 0, 1));
    EXPECT_EQ(dw[0], 1.0f);
    EXPECT_EQ(dw[1], 1.0f + 0x1p-6f);
    EXPECT_EQ(db[0], 1.0f + 0x1p-8f);  // the bias gradient sums dY itself
  }
}

}  // namespace
}  // namespace vae
