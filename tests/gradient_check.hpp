// Central finite differences in double, for the gradient checks of test_gradients.cpp and test_conv.cpp.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <vector>

namespace vae {

inline constexpr double kStep = 1e-6;
inline constexpr double kTol = 1e-6;  // |analytic − numeric| ≤ kTol·max(1, |numeric|)

inline std::vector<double> random_vector(std::size_t n, unsigned seed, double scale = 1.0) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> d(0.0, scale);
  std::vector<double> v(n);
  for (auto& x : v) x = d(gen);
  return v;
}

// Compares grad against central differences of f with respect to every element of x, in steps of `step`.
inline void expect_gradient(std::vector<double>& x, const std::vector<double>& grad, const std::function<double()>& f, const char* what,
                            double step = kStep) {
  ASSERT_EQ(x.size(), grad.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double keep = x[i];
    x[i] = keep + step;
    const double up = f();
    x[i] = keep - step;
    const double down = f();
    x[i] = keep;
    const double numeric = (up - down) / (2 * step);
    ASSERT_NEAR(grad[i], numeric, kTol * std::max(1.0, std::abs(numeric))) << what << " element " << i;
  }
}

}  // namespace vae
