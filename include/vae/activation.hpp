// The activations of the CVAE's layers and their derivatives, shared by the reference kernels of every layer kind.
#pragma once

#include <cmath>

namespace vae {

enum class Activation { identity, elu, relu, leaky_relu, tanh };

inline constexpr double kLeakySlope = 0.01;

// A NaN stays NaN, as in PyTorch: a diverged layer must not look finite to the layers and checks after it.
template <class T>
inline T activate(T x, Activation a) {
  switch (a) {
    case Activation::identity: return x;
    case Activation::elu: return x <= T(0) ? std::expm1(x) : x;
    case Activation::relu: return x <= T(0) ? T(0) : x;
    case Activation::leaky_relu: return x <= T(0) ? T(kLeakySlope) * x : x;
    case Activation::tanh: return std::tanh(x);
  }
  return x;
}

// Every supported activation's derivative is a function of its output y = f(x).
template <class T>
inline T activation_slope(T y, Activation a) {
  switch (a) {
    case Activation::identity: return T(1);
    case Activation::elu: return y > T(0) ? T(1) : y + T(1);
    case Activation::relu: return y > T(0) ? T(1) : T(0);
    case Activation::leaky_relu: return y > T(0) ? T(1) : T(kLeakySlope);
    case Activation::tanh: return T(1) - y * y;
  }
  return T(1);
}

}  // namespace vae
