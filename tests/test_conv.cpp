// The convolution layers' reference kernels: shapes, small cases by hand, the transpose as the adjoint, and finite-difference gradients.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "gradient_check.hpp"
#include "vae/conv.hpp"
#include "vae/model.hpp"

namespace vae {
namespace {

// The conv preset's layers (issue 13): 1×28×28 → 32×14×14 → 64×7×7, and back through two transposed convolutions.
TEST(ConvShape, TheConvPresetsLayers) {
  const ConvShape e1{1, 28, 28, 32, 4, 2, 1, false}, e2{32, 14, 14, 64, 4, 2, 1, false};
  const ConvShape d1{64, 7, 7, 32, 4, 2, 1, true}, d2{32, 14, 14, 1, 4, 2, 1, true};
  EXPECT_EQ(e1.out_size(), 32u * 14 * 14);
  EXPECT_EQ(e2.out_size(), 3136u);
  EXPECT_EQ(d1.out_size(), 32u * 14 * 14);
  EXPECT_EQ(d2.out_size(), 784u);
  EXPECT_EQ(e1.weight_count(), 32u * 1 * 4 * 4);
  EXPECT_EQ(d1.weight_count(), 64u * 32 * 4 * 4);
  EXPECT_NO_THROW(e1.check());
  EXPECT_THROW((ConvShape{1, 2, 2, 1, 5, 1, 1, false}.check()), std::invalid_argument);  // 5×5 kernel on a padded 4×4
  EXPECT_THROW((ConvShape{1, 1, 1, 1, 1, 1, 1, true}.check()), std::invalid_argument);   // a 1×1 transpose cropped by 2
}

// x = [1 2 3; 4 5 6; 7 8 9], W = [1 0; 0 −1], b = 10, stride 1, no padding: each output is x(y, x) − x(y + 1, x + 1) +
// 10 = −4 + 10 = 6. With padding 1 and stride 2, output (y, x) starts at input (2y − 1, 2x − 1): W's −1 meets x(0,0),
// x(0,2), x(2,0), x(2,2) and its +1 falls in the padding but for the last output, where it meets x(1,1):
// [10 − 1, 10 − 3; 10 − 7, 10 + 5 − 9].
TEST(ConvReference, ByHand) {
  const std::vector<double> x{1, 2, 3, 4, 5, 6, 7, 8, 9}, w{1, 0, 0, -1}, b{10};
  const ConvShape plain{1, 3, 3, 1, 2, 1, 0, false};
  std::vector<double> y(plain.out_size());
  conv_forward_reference(plain, x.data(), w.data(), b.data(), y.data(), 1, Activation::identity);
  EXPECT_EQ(y, (std::vector<double>{6, 6, 6, 6}));
  const ConvShape strided{1, 3, 3, 1, 2, 2, 1, false};
  ASSERT_EQ(strided.out_size(), 4u);
  conv_forward_reference(strided, x.data(), w.data(), b.data(), y.data(), 1, Activation::identity);
  EXPECT_EQ(y, (std::vector<double>{9, 7, 3, 6}));
}

// A transposed convolution stamps the kernel, scaled by each input pixel, at stride steps: input [1 2] (1 × 2), a 2 × 2
// kernel [1 2; 3 4], stride 2 → output 2 × 4 = [1 2 2 4; 3 4 6 8]; with stride 1 the stamps overlap and add.
TEST(ConvReference, TransposedByHand) {
  const std::vector<double> x{1, 2}, w{1, 2, 3, 4}, b{0};
  const ConvShape apart{1, 1, 2, 1, 2, 2, 0, true};
  std::vector<double> y(apart.out_size());
  ASSERT_EQ(apart.out_h(), 2u);
  ASSERT_EQ(apart.out_w(), 4u);
  conv_forward_reference(apart, x.data(), w.data(), b.data(), y.data(), 1, Activation::identity);
  EXPECT_EQ(y, (std::vector<double>{1, 2, 2, 4, 3, 4, 6, 8}));
  const ConvShape overlap{1, 1, 2, 1, 2, 1, 0, true};
  y.assign(overlap.out_size(), 0);
  conv_forward_reference(overlap, x.data(), w.data(), b.data(), y.data(), 1, Activation::identity);
  EXPECT_EQ(y, (std::vector<double>{1, 4, 4, 3, 10, 8}));
}

// The weight layouts, with 1 × 1 kernels on one-pixel images of channels x = [1 2]: a convolution to 3 channels with
// W [out × in] = [1 2; 3 4; 5 6] gives [1 + 4, 3 + 8, 5 + 12]; a transposed one with W [in × out] = [1 2 3; 4 5 6] gives
// [1 + 8, 2 + 10, 3 + 12].
TEST(ConvReference, WeightLayoutsByHand) {
  const std::vector<double> x{1, 2}, w{1, 2, 3, 4, 5, 6}, b{0, 0, 0};
  std::vector<double> y(3);
  conv_forward_reference(ConvShape{2, 1, 1, 3, 1, 1, 0, false}, x.data(), w.data(), b.data(), y.data(), 1, Activation::identity);
  EXPECT_EQ(y, (std::vector<double>{5, 11, 17}));
  conv_forward_reference(ConvShape{2, 1, 1, 3, 1, 1, 0, true}, x.data(), w.data(), b.data(), y.data(), 1, Activation::identity);
  EXPECT_EQ(y, (std::vector<double>{9, 12, 15}));
}

// The awkward shapes: 1 × 1 kernels, stride 1 and 2, odd and non-square sizes, padding 0 and 1, more than one channel.
std::vector<ConvShape> awkward_shapes() {
  std::vector<ConvShape> all;
  for (bool transposed : {false, true}) {
    all.push_back({2, 5, 7, 3, 1, 1, 0, transposed});
    all.push_back({1, 5, 5, 2, 3, 1, 1, transposed});
    all.push_back({3, 7, 5, 2, 3, 2, 0, transposed});
    all.push_back({2, 6, 6, 3, 4, 2, 1, transposed});
    all.push_back({2, 3, 4, 1, 2, 2, 1, transposed});
  }
  return all;
}

// The input gradient is the adjoint of the forward map (without bias): ⟨conv(x), g⟩ = ⟨x, conv_input_grad(g)⟩; and a
// transposed convolution's forward is a convolution's input gradient, with the same weights.
TEST(ConvReference, InputGradientIsTheAdjoint) {
  for (const ConvShape& s : awkward_shapes()) {
    SCOPED_TRACE(s.describe());
    const std::size_t n = 2;
    const std::vector<double> x = random_vector(n * s.in_size(), 1), w = random_vector(s.weight_count(), 2),
                              g = random_vector(n * s.out_size(), 3), zero(s.out_c, 0.0);
    std::vector<double> y(n * s.out_size()), dx(n * s.in_size());
    conv_forward_reference(s, x.data(), w.data(), zero.data(), y.data(), n, Activation::identity);
    conv_input_grad_reference(s, g.data(), w.data(), dx.data(), n, Activation::identity, static_cast<const double*>(nullptr));
    const double lhs = std::inner_product(y.begin(), y.end(), g.begin(), 0.0), rhs = std::inner_product(x.begin(), x.end(), dx.begin(), 0.0);
    EXPECT_NEAR(lhs, rhs, 1e-10 * std::max(1.0, std::abs(lhs)));

    ConvShape t = s;  // the other kind, mapping s's output back to its input
    t.transposed = !s.transposed;
    t.in_c = s.out_c;
    t.in_h = s.out_h();
    t.in_w = s.out_w();
    t.out_c = s.in_c;
    if (t.out_h() != s.in_h || t.out_w() != s.in_w) continue;  // a strided convolution that drops input rows has no such inverse shape
    std::vector<double> back(n * s.in_size());
    const std::vector<double> no_bias(t.out_c, 0.0);
    conv_forward_reference(t, g.data(), w.data(), no_bias.data(), back.data(), n, Activation::identity);
    EXPECT_EQ(back, dx);
  }
}

// Loss Σ c ⊙ act(conv(x)) against central differences in double, for x, W and b, every awkward shape, convolution and
// transpose; the input gradient with the slope of an activation x came out of.
TEST(ConvGradient, MatchesFiniteDifferences) {
  for (const ConvShape& s : awkward_shapes())
    for (const Activation act : {Activation::identity, Activation::elu, Activation::tanh}) {
      SCOPED_TRACE(s.describe() + ", " + activation_name(act));
      const std::size_t n = 2;
      std::vector<double> pre = random_vector(n * s.in_size(), 4), w = random_vector(s.weight_count(), 5, 0.5),
                          b = random_vector(s.out_c, 6), c = random_vector(n * s.out_size(), 7);
      std::vector<double> x(pre.size()), y(n * s.out_size());
      // x = elu(pre): the previous layer's output, whose slope the input gradient applies
      auto loss = [&] {
        for (std::size_t i = 0; i < pre.size(); ++i) x[i] = activate(pre[i], Activation::elu);
        conv_forward_reference(s, x.data(), w.data(), b.data(), y.data(), n, act);
        return std::inner_product(y.begin(), y.end(), c.begin(), 0.0);
      };
      loss();
      // dL/d(pre-activation of y) = c ⊙ act'(y)
      std::vector<double> dy(y.size()), dpre(pre.size()), dw(w.size()), db(b.size());
      for (std::size_t i = 0; i < y.size(); ++i) dy[i] = c[i] * activation_slope(y[i], act);
      conv_weight_grad_reference(s, x.data(), dy.data(), dw.data(), db.data(), n);
      conv_input_grad_reference(s, dy.data(), w.data(), dpre.data(), n, Activation::elu, x.data());
      expect_gradient(w, dw, loss, "dW");
      expect_gradient(b, db, loss, "db");
      expect_gradient(pre, dpre, loss, "dx");
    }
}

}  // namespace
}  // namespace vae
