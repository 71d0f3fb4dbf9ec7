// Central finite-difference gradient checks in double: each dense layer and activation, the loss, and the whole CVAE.
#include <gtest/gtest.h>

#include <barrier>
#include <functional>
#include <random>
#include <thread>
#include <vector>

#include "gradient_check.hpp"
#include "vae/kernels.hpp"
#include "vae/model.hpp"

namespace vae {
namespace {

class LayerGradient : public ::testing::TestWithParam<Activation> {};

// Two layers x → act(x·W1 + b1) → h·W2 + b2, loss Σ c ⊙ y: exercises forward, weight_grad, and input_grad with the
// previous layer's activation slope, as the network chains them.
TEST_P(LayerGradient, MatchesFiniteDifferences) {
  const Activation act = GetParam();
  const std::size_t n = 3, k = 5, h = 4, m = 2;
  ReferenceKernels<double> K;
  std::vector<double> x = random_vector(n * k, 1), w1 = random_vector(k * h, 2, 0.5), b1 = random_vector(h, 3, 0.5);
  std::vector<double> w2 = random_vector(h * m, 4, 0.5), b2 = random_vector(m, 5), c = random_vector(n * m, 6);
  std::vector<double> hid(n * h), y(n * m);
  auto loss = [&] {
    K.dense_forward(x.data(), k, w1.data(), b1.data(), hid.data(), n, k, h, act);
    K.dense_forward(hid.data(), h, w2.data(), b2.data(), y.data(), n, h, m, Activation::identity);
    double s = 0;
    for (std::size_t i = 0; i < y.size(); ++i) s += c[i] * y[i];
    return s;
  };
  loss();
  std::vector<double> dw2(h * m), db2(m), dhid(n * h), dw1(k * h), db1(h), dx(n * k);
  K.dense_weight_grad(hid.data(), h, c.data(), dw2.data(), db2.data(), n, h, m);
  K.dense_input_grad(c.data(), w2.data(), dhid.data(), h, n, h, m, act, hid.data());
  K.dense_weight_grad(x.data(), k, dhid.data(), dw1.data(), db1.data(), n, k, h);
  K.dense_input_grad(dhid.data(), w1.data(), dx.data(), k, n, k, h, Activation::identity, nullptr);
  expect_gradient(w2, dw2, loss, "dW2");
  expect_gradient(b2, db2, loss, "db2");
  expect_gradient(w1, dw1, loss, "dW1");
  expect_gradient(b1, db1, loss, "db1");
  expect_gradient(x, dx, loss, "dx");
}

INSTANTIATE_TEST_SUITE_P(Activations, LayerGradient,
                         ::testing::Values(Activation::identity, Activation::elu, Activation::tanh, Activation::leaky_relu, Activation::relu),
                         [](const auto& p) { return activation_name(p.param); });

TEST(LossGradient, BernoulliNllWithLogits) {
  ReferenceKernels<double> K;
  const std::size_t n = 2, d = 6;
  std::vector<double> logits = random_vector(n * d, 7, 3.0), dl(n * d);
  std::uint8_t pixels[n * d];
  for (std::size_t i = 0; i < n * d; ++i) pixels[i] = std::uint8_t(i % 5 * 63);  // grayscale targets, not binarised
  const ImageBatch x{pixels, d, d, nullptr, 0};
  K.bernoulli_nll(logits.data(), x, dl.data(), n, 1.0, nullptr);
  expect_gradient(logits, dl, [&] { return K.bernoulli_nll(logits.data(), x, nullptr, n, 1.0, nullptr); }, "dlogits");
}

TEST(LossGradient, BernoulliNllIsStableForHugeLogits) {
  ReferenceKernels<float> K;
  const float l[2] = {200.0f, -200.0f};
  const std::uint8_t pixels[2] = {255, 0};
  float dl[2];
  EXPECT_NEAR(K.bernoulli_nll(l, ImageBatch{pixels, 2, 2, nullptr, 0}, dl, 1, 1.0f, nullptr), 0.0, 1e-6);
  EXPECT_FLOAT_EQ(dl[0], 0.0f);
  EXPECT_FLOAT_EQ(dl[1], 0.0f);
}

TEST(LossGradient, ReparameterisationAndKl) {
  ReferenceKernels<double> K;
  const std::size_t n = 2, L = 3;
  const double beta = 0.7, scale = 0.25;
  std::vector<double> head = random_vector(n * 2 * L, 8, 0.8), eps = random_vector(n * L, 9), c = random_vector(n * L, 10);
  std::vector<double> z(n * L), dhead(n * 2 * L), dz(n * L);
  auto loss = [&] {
    const double kl = K.reparam_kl_forward(head.data(), eps.data(), z.data(), L, n, L);
    double s = 0;
    for (std::size_t i = 0; i < z.size(); ++i) s += c[i] * z[i];
    return scale * (s + beta * kl);
  };
  for (std::size_t i = 0; i < c.size(); ++i) dz[i] = scale * c[i];
  K.reparam_kl_backward(head.data(), eps.data(), dz.data(), L, dhead.data(), n, L, scale, beta);
  expect_gradient(head, dhead, loss, "dhead");
}

TEST(LossGradient, KlOfStandardNormalIsZero) {
  ReferenceKernels<double> K;
  std::vector<double> head(8, 0.0), eps(4, 0.0), z(4);
  EXPECT_DOUBLE_EQ(K.reparam_kl_forward(head.data(), eps.data(), z.data(), 4, 1, 4), 0.0);
  head[0] = 1.0;  // μ = 1: KL = ½μ²
  EXPECT_DOUBLE_EQ(K.reparam_kl_forward(head.data(), eps.data(), z.data(), 4, 1, 4), 0.5);
}

// Conditioning: 0 unconditional, 1 the label into the decoder's first layer, 2 into every decoder layer; 3 and 4 the
// conv model, unconditional and conditional.
class ModelGradient : public ::testing::TestWithParam<int> {
 protected:
  // A CVAE small enough to check by finite differences: 10 pixels, 4 classes, 6-5 hidden, latent 3; or the conv model's
  // 28×28 image through convolutions of 2 and 3 channels (1×28×28 → 2×14×14 → 3×7×7), then 6-5 hidden.
  static Arch tiny_arch() {
    Arch arch;
    arch.hidden = {6, 5};
    arch.latent = 3;
    arch.image = 10;
    arch.classes = 4;
    arch.conditional = GetParam() % 3 > 0;
    arch.label_every_layer = GetParam() == 2;
    if (GetParam() >= 3) {
      arch.conv_channels = {2, 3};
      arch.image = kImagePixels;
    }
    return arch;
  }
  static void expect_shared_backward_equals_one_network(bool dropout, std::size_t samples = 1);
  // Deterministic pixels for rows [0, n) of an image `image` wide, mixed by `a` and `b`.
  static std::vector<std::uint8_t> pixels(std::size_t n, std::size_t image, std::size_t a, std::size_t b) {
    std::vector<std::uint8_t> p(n * image);
    for (std::size_t r = 0; r < n; ++r)
      for (std::size_t i = 0; i < image; ++i) p[r * image + i] = std::uint8_t((r * a + i * b) % 256);
    return p;
  }
};

// The whole CVAE: loss = scale·(Σ recon + β·Σ KL) with fixed ε, against its gradient from forward/loss/backward.
TEST_P(ModelGradient, EndToEnd) {
  const Arch arch = tiny_arch();
  const ParamLayout layout(arch);
  const std::size_t n = 3;
  Arena arena(Network<double>::workspace_bytes(arch, layout, n));
  Network<double> net(arch, layout, n, arena);
  ReferenceKernels<double> K;

  std::vector<double> params(layout.padded_size()), grads(layout.padded_size());
  init_parameters<double>(layout, 11, params);
  const std::size_t image = std::size_t(arch.image);
  const std::vector<std::uint8_t> px = pixels(n, image, 37, 53);
  for (std::size_t r = 0; r < n; ++r) net.load_example(r, px.data() + r * image, int(r % 4));
  const std::vector<double> eps = random_vector(n * 3, 12);
  std::copy(eps.begin(), eps.end(), net.eps().begin());
  const double beta = 0.8, scale = 1.0 / 3.0;

  auto loss = [&] {
    net.forward(K, params.data(), n);
    const auto l = net.loss(K, n, scale);
    return scale * (l.recon + beta * l.kl);
  };
  loss();
  net.backward(K, params.data(), grads.data(), n, scale, beta);
  // The conv model's loss sums 784 pixels (≈ 500 nats): a step of 1e-6 leaves ~1e-6 of rounding in the difference
  // quotient, 1e-5 a tenth of it, while the truncation error stays far below.
  expect_gradient(params, grads, loss, "parameters", arch.convolutional() ? 1e-5 : kStep);
  const std::size_t label = arch.conditional ? 4 : 0, every = GetParam() == 2 ? 4 : 0;
  if (arch.convolutional())
    EXPECT_EQ(layout.parameter_count(), (2 * 16 + 2) + (3 * 2 * 16 + 3) + ((147 + label) * 6 + 6) + (6 * 5 + 5) + (5 * 6 + 6) +
                                            ((3 + label) * 5 + 5) + (5 * 6 + 6) + (6 * 147 + 147) + (3 * 2 * 16 + 2) + (2 * 16 + 1));
  else EXPECT_EQ(layout.parameter_count(), ((10 + label) * 6 + 6) + (6 * 5 + 5) + (5 * 6 + 6) + ((3 + label) * 5 + 5) + ((5 + every) * 6 + 6) +
                                          ((6 + every) * 10 + 10));
}

// With dropout, the training pass is the network with each hidden dense layer's output times a fixed mask: backward
// gives that function's gradient (the activation's slope taken before the mask), and the evaluation pass is the network
// without dropout, to the bit.
TEST_P(ModelGradient, EndToEndWithDropout) {
  const Arch arch = tiny_arch();
  const ParamLayout layout(arch);
  const std::size_t n = 3;
  Arena arena(Network<double>::workspace_bytes(arch, layout, n, nullptr, true));
  Arena plain_arena(Network<double>::workspace_bytes(arch, layout, n));
  Network<double> net(arch, layout, n, arena, {}, nullptr, true), plain(arch, layout, n, plain_arena);
  ReferenceKernels<double> K;

  std::vector<double> params(layout.padded_size()), grads(layout.padded_size());
  init_parameters<double>(layout, 17, params);
  const std::size_t image = std::size_t(arch.image);
  const std::vector<std::uint8_t> px = pixels(n, image, 31, 47);
  const std::vector<double> eps = random_vector(n * 3, 19);
  for (Network<double>* m : {&net, &plain}) {
    for (std::size_t r = 0; r < n; ++r) m->load_example(r, px.data() + r * image, int(r % 4));
    std::copy(eps.begin(), eps.end(), m->eps().begin());
  }
  net.draw_dropout(0.4, 23, 0, n);
  const double beta = 0.9, scale = 1.0 / 3.0;
  std::size_t dropped = 0, kept = 0;
  for (std::size_t l = 0; l < layout.layers().size(); ++l) {
    const bool masked = !net.dropout_mask(l).empty();
    EXPECT_EQ(masked, Network<double>::dropped_layer(arch, layout, l)) << layout.layers()[l].name;
    for (std::size_t i = 0; i < n * layout.layers()[l].out && masked; ++i) {
      const double m = net.dropout_mask(l)[i];
      ASSERT_TRUE(m == 0.0 || m == 1.0 / 0.6) << layout.layers()[l].name << " unit " << i;
      (m == 0.0 ? dropped : kept) += 1;
    }
  }
  ASSERT_GT(dropped, 0u);
  ASSERT_GT(kept, 0u);

  auto loss = [&](Network<double>& m, Network<double>::Pass pass) {
    m.forward(K, params.data(), n, pass);
    const auto l = m.loss(K, n, scale);
    return scale * (l.recon + beta * l.kl);
  };
  const double eval = loss(net, Network<double>::Pass::eval), without = loss(plain, Network<double>::Pass::train);
  EXPECT_EQ(eval, without);
  for (std::size_t i = 0; i < n * image; ++i) ASSERT_EQ(net.logits()[i], plain.logits()[i]) << "logit " << i;
  const double train = loss(net, Network<double>::Pass::train);
  EXPECT_NE(train, eval);
  net.backward(K, params.data(), grads.data(), n, scale, beta);
  expect_gradient(params, grads, [&] { return loss(net, Network<double>::Pass::train); }, "parameters",
                  arch.convolutional() ? 1e-5 : kStep);
}

// The importance-weighted bound, 2 images × 3 draws of z: scale·Σ −log (1/K) Σₖ wₖ with fixed ε, against its gradient
// from forward/loss/backward (the weights wₖ/Σ w are functions of the parameters too, and their derivatives cancel:
// what backward leaves out must be zero).
TEST_P(ModelGradient, ImportanceWeightedBound) {
  const Arch arch = tiny_arch();
  const ParamLayout layout(arch);
  const std::size_t samples = 3, images = 2, n = samples * images;
  Arena arena(Network<double>::workspace_bytes(arch, layout, n));
  Network<double> net(arch, layout, n, arena);
  ReferenceKernels<double> K;

  std::vector<double> params(layout.padded_size()), grads(layout.padded_size());
  init_parameters<double>(layout, 31, params);
  const std::size_t image = std::size_t(arch.image);
  const std::vector<std::uint8_t> px = pixels(images, image, 43, 59);
  for (std::size_t r = 0; r < n; ++r) net.load_example(r, px.data() + r / samples * image, int(r / samples % 4));
  const std::vector<double> eps = random_vector(n * 3, 37);
  std::copy(eps.begin(), eps.end(), net.eps().begin());
  const double beta = 0.8, scale = 1.0 / double(images);

  auto bound = [&] {
    net.forward(K, params.data(), n);
    return scale * net.loss(K, n, scale, beta, samples).objective;
  };
  bound();
  net.backward(K, params.data(), grads.data(), n, scale, beta);
  expect_gradient(params, grads, bound, "parameters", arch.convolutional() ? 1e-5 : kStep);
}

// By hand: the bound of K equal draws is the one draw's −log w, which is its NLL plus β times the Monte Carlo KL
// ½Σ(z² − log σ² − ε²); of unequal draws it lies below their mean −log w (Jensen); and the Monte Carlo KL averages to the
// closed form.
TEST_P(ModelGradient, ImportanceWeightsByHand) {
  const Arch arch = tiny_arch();
  const ParamLayout layout(arch);
  const std::size_t samples = 4, L = 3;
  Arena arena(Network<double>::workspace_bytes(arch, layout, samples));
  Network<double> net(arch, layout, samples, arena);
  ReferenceKernels<double> K;
  std::vector<double> params(layout.padded_size());
  init_parameters<double>(layout, 41, params);
  const std::vector<std::uint8_t> px = pixels(1, std::size_t(arch.image), 17, 23);
  for (std::size_t r = 0; r < samples; ++r) net.load_example(r, px.data(), 1);
  const double beta = 0.6;

  const std::vector<double> one = random_vector(L, 43);
  for (std::size_t r = 0; r < samples; ++r) std::copy(one.begin(), one.end(), net.eps().begin() + std::ptrdiff_t(r * L));
  const double closed_kl = net.forward(K, params.data(), samples) / double(samples);
  const auto same = net.loss(K, samples, 1.0, beta, samples);
  double mc_kl = 0;
  for (std::size_t j = 0; j < L; ++j) {
    const double z = net.decoder_input()[j], lv = net.head()[L + j];
    mc_kl += 0.5 * (z * z - lv - one[j] * one[j]);
  }
  EXPECT_NEAR(same.kl, mc_kl, 1e-12);
  EXPECT_NEAR(same.objective, same.recon + beta * same.kl, 1e-9);

  const std::vector<double> eps = random_vector(samples * L, 47);
  std::copy(eps.begin(), eps.end(), net.eps().begin());
  net.forward(K, params.data(), samples);
  const auto mixed = net.loss(K, samples, 1.0, beta, samples);
  EXPECT_LT(mixed.objective, mixed.recon + beta * mixed.kl - 1e-6);

  // 4 draws at a time, 4,000 draws: the mean Monte Carlo KL within 4 standard errors of the closed form
  double sum = 0, sum_sq = 0;
  const int rounds = 1000;
  for (int round = 0; round < rounds; ++round) {
    const std::vector<double> e = random_vector(samples * L, 100 + unsigned(round));
    std::copy(e.begin(), e.end(), net.eps().begin());
    net.forward(K, params.data(), samples);
    const double kl = net.loss(K, samples, 1.0, beta, samples).kl;
    sum += kl;
    sum_sq += kl * kl;
  }
  const double mean = sum / rounds, sd = std::sqrt(sum_sq / rounds - mean * mean);
  EXPECT_NEAR(mean, closed_kl, 4 * sd / std::sqrt(double(rounds)) + 1e-9);
}

constexpr const char* kConditioning[] = {"unconditional", "conditional", "label_every_layer", "conv_unconditional", "conv_conditional"};
INSTANTIATE_TEST_SUITE_P(Conditioning, ModelGradient, ::testing::Values(0, 1, 2, 3, 4),
                         [](const auto& p) { return std::string(kConditioning[p.param]); });

// Ranks of one node in a shared pass, played by threads: each announces its rows and waits for the others.
class ThreadRanks final : public BackwardListener {
 public:
  explicit ThreadRanks(std::barrier<>& all) : all_(all) {}
  void layer_done(std::size_t, bool finite) override { finite_ = finite_ && finite; }
  void rows_ready(std::size_t) override { all_.arrive_and_wait(); }
  bool finite_ = true;

 private:
  std::barrier<>& all_;
};

// R networks sharing a backward pass (RowShare), each with n rows, write together exactly the gradient one network
// computes for all R·n rows: the weight gradients sum the same rows in the same order, only split by input unit. With
// dropout, each rank draws the masks of its rows from their global positions, so they are the one network's.
// With importance samples, each rank holds whole groups of an image's draws.
void ModelGradient::expect_shared_backward_equals_one_network(bool dropout, std::size_t samples) {
  const Arch arch = tiny_arch();
  const ParamLayout layout(arch);
  const std::size_t n = 2, R = 3;
  ReferenceKernels<double> K;
  std::vector<double> params(layout.padded_size());
  init_parameters<double>(layout, 5, params);
  const std::size_t image = std::size_t(arch.image);
  const std::vector<std::uint8_t> px = pixels(R * n, image, 41, 29);
  const std::vector<double> eps = random_vector(R * n * 3, 13);
  const double beta = 0.7, scale = 1.0 / double(R * n);
  auto load = [&](Network<double>& net, std::size_t first, std::size_t rows) {
    for (std::size_t r = 0; r < rows; ++r) {
      const std::size_t img = (first + r) / samples;
      net.load_example(r, px.data() + img * image, int(img % 4));
    }
    std::copy_n(eps.begin() + std::ptrdiff_t(first * 3), rows * 3, net.eps().begin());
  };

  const auto pass = dropout ? Network<double>::Pass::train : Network<double>::Pass::eval;
  Arena alone(Network<double>::workspace_bytes(arch, layout, R * n, nullptr, dropout));
  Network<double> whole(arch, layout, R * n, alone, {}, nullptr, dropout);
  load(whole, 0, R * n);
  whole.draw_dropout(0.3, 29, 0, R * n);
  std::vector<double> want(layout.padded_size(), 0.0);
  whole.forward(K, params.data(), R * n, pass);
  whole.loss(K, R * n, scale, beta, samples);
  whole.backward(K, params.data(), want.data(), R * n, scale, beta);

  const auto [own_bytes, node_bytes] = Network<double>::arena_bytes(arch, layout, n, R, nullptr, dropout);
  AlignedBuffer<std::byte> node(node_bytes);  // the node's shared memory, carved alike by every rank
  std::vector<double> got(layout.padded_size(), std::nan(""));
  std::barrier<> all{std::ptrdiff_t(R)};
  std::vector<int> finite(R, 0);
  std::vector<std::thread> ranks;
  for (std::size_t rank = 0; rank < R; ++rank)
    ranks.emplace_back([&, rank] {
      Arena own(own_bytes), shared = Arena::over(node.span());
      Network<double> net(arch, layout, n, own, {&shared, rank, R}, nullptr, dropout);
      load(net, rank * n, n);
      net.draw_dropout(0.3, 29, rank * n, n);
      ThreadRanks listener(all);
      net.forward(K, params.data(), n, pass);
      net.loss(K, n, scale, beta, samples);
      net.backward(K, params.data(), got.data(), n, scale, beta, &listener);
      finite[rank] = listener.finite_;
    });
  for (auto& t : ranks) t.join();
  EXPECT_EQ(finite, std::vector<int>(R, 1));
  // Every weight and bias was written by one rank, and holds the single network's value to the last bit.
  for (const LayerSpec& s : layout.layers()) {
    for (std::size_t i = 0; i < s.weight_count(); ++i) ASSERT_EQ(got[s.w_offset + i], want[s.w_offset + i]) << s.name << " weight " << i;
    for (std::size_t j = 0; j < s.bias_count(); ++j) ASSERT_EQ(got[s.b_offset + j], want[s.b_offset + j]) << s.name << " bias " << j;
  }
  // The shares of each layer's rows are contiguous, in rank order, and cover the layer.
  for (std::size_t l = 0; l < layout.layers().size(); ++l) {
    std::size_t next = 0;
    for (std::size_t rank = 0; rank < 5; ++rank) {
      const auto [i0, i1] = Network<double>::weight_rows(arch, layout.layers()[l], l, rank, 5);
      EXPECT_EQ(i0, next);
      EXPECT_LE(i0, i1);
      next = i1;
    }
    EXPECT_EQ(next, layout.layers()[l].weight_rows());
  }
}

TEST_P(ModelGradient, SharedBackwardEqualsOneNetwork) { expect_shared_backward_equals_one_network(false); }
TEST_P(ModelGradient, SharedBackwardWithDropoutEqualsOneNetwork) { expect_shared_backward_equals_one_network(true); }
TEST_P(ModelGradient, SharedBackwardWithImportanceSamplesEqualsOneNetwork) { expect_shared_backward_equals_one_network(false, 2); }

// A sample's masks depend on its global position only: rows 32-63 drawn by a network holding them as its rows 0-31 are
// rows 32-63 of a network holding all 64. On the v3 widths, p of the units are dropped and the rest scaled by 1/(1 − p).
TEST(Dropout, MasksFollowTheGlobalRowAndKeepOneMinusP) {
  Arch arch;
  arch.hidden = {640, 320};
  arch.latent = 128;
  const ParamLayout layout(arch);
  Arena a(Network<float>::workspace_bytes(arch, layout, 64, nullptr, true)), b(Network<float>::workspace_bytes(arch, layout, 32, nullptr, true));
  Network<float> all(arch, layout, 64, a, {}, nullptr, true), half(arch, layout, 32, b, {}, nullptr, true);
  all.draw_dropout(0.25, 7, 0, 64);
  half.draw_dropout(0.25, 7, 32, 32);
  std::size_t units = 0, zeros = 0, layers = 0;
  for (std::size_t l = 0; l < layout.layers().size(); ++l) {
    const std::span<const float> m = all.dropout_mask(l), h = half.dropout_mask(l);
    if (m.empty()) continue;
    ++layers;
    const std::size_t width = layout.layers()[l].out;
    for (std::size_t i = 0; i < 32 * width; ++i) ASSERT_EQ(h[i], m[32 * width + i]) << layout.layers()[l].name << " unit " << i;
    for (float x : m) {
      ASSERT_TRUE(x == 0.0f || x == float(1.0 / 0.75)) << x;
      zeros += x == 0.0f;
    }
    units += m.size();
  }
  EXPECT_EQ(layers, 4u);  // enc.0, enc.1, dec.0, dec.1
  // 122,880 draws: the fraction's standard deviation is 0.0012
  EXPECT_NEAR(double(zeros) / double(units), 0.25, 0.006);
}

TEST(ParamLayoutTest, V3CountAndAlignment) {
  Arch arch;
  arch.hidden = {640, 320};
  arch.latent = 128;
  const ParamLayout layout(arch);
  // (794·640+640) + (640·320+320) + (320·256+256) + (138·320+320) + (320·640+640) + (640·784+784)
  EXPECT_EQ(layout.parameter_count(), 1548560u);
  for (const LayerSpec& s : layout.layers()) {
    EXPECT_EQ(s.w_offset % 16, 0u) << s.name;
    EXPECT_EQ(s.b_offset % 16, 0u) << s.name;
  }
  // Backward order: the decoder's output layer comes first in the buffer.
  EXPECT_EQ(layout.layers().back().name, "dec.out");
  EXPECT_EQ(layout.layers().back().b_offset, 0u);
}

}  // namespace
}  // namespace vae
