// The convolution layers of the conv CVAE: their shapes, and the plain reference kernels the optimized ones are tested against.
#pragma once

#include <algorithm>
#include <cstddef>
#include <stdexcept>
#include <string>

#include "vae/activation.hpp"

namespace vae {

// A 2-D convolution (k × k kernel, stride, zero padding) or its transpose, over images stored [channels × height ×
// width], row-major, one after another in a batch. Weights as PyTorch keeps them, so that a checkpoint reads the same
// in h5py and torch: a convolution's W is [out_c × in_c × k × k] (torch.nn.Conv2d), a transposed one's [in_c × out_c ×
// k × k] (torch.nn.ConvTranspose2d); the bias is [out_c] either way.
struct ConvShape {
  std::size_t in_c = 1, in_h = 1, in_w = 1, out_c = 1, k = 1, stride = 1, pad = 0;
  bool transposed = false;

  // A convolution maps in_h to ⌊(in_h + 2·pad − k)/stride⌋ + 1; its transpose maps that back, (in_h − 1)·stride − 2·pad + k.
  std::size_t out_h() const { return extent(in_h); }
  std::size_t out_w() const { return extent(in_w); }
  std::size_t in_size() const { return in_c * in_h * in_w; }      // floats of one input image
  std::size_t out_size() const { return out_c * out_h() * out_w(); }  // floats of one output image
  std::size_t weight_count() const { return out_c * in_c * k * k; }
  // W's first dimension (a convolution's output channels, a transpose's input channels): how ranks split its gradient.
  std::size_t weight_rows() const { return transposed ? in_c : out_c; }
  std::size_t weight_row_size() const { return weight_count() / weight_rows(); }

  // The convolution whose products this layer runs as: itself, or for a transpose the convolution from its output back to
  // its input, which has the same W ([in_c × out_c × k × k] read as a convolution's [out × in × k × k]): the transpose's
  // forward is that convolution's input gradient and its input gradient that convolution's forward.
  ConvShape as_convolution() const {
    return transposed ? ConvShape{out_c, out_h(), out_w(), in_c, k, stride, pad, false} : *this;
  }
  // Floats of one image's patch matrix (im2col) in the products: [in_c·k² × out_h·out_w] of as_convolution().
  std::size_t patch_floats() const {
    const ConvShape c = as_convolution();
    return c.in_c * c.k * c.k * c.out_h() * c.out_w();
  }

  // Throws if the kernel does not fit the padded input (a convolution) or the output would be empty (a transpose).
  void check() const {
    const bool empty = in_c == 0 || in_h == 0 || in_w == 0 || out_c == 0 || k == 0 || stride == 0;
    if (empty || (!transposed && (in_h + 2 * pad < k || in_w + 2 * pad < k)) ||
        (transposed && ((in_h - 1) * stride + k <= 2 * pad || (in_w - 1) * stride + k <= 2 * pad)))
      throw std::invalid_argument("convolution shape " + describe() + " has no output");
  }
  std::string describe() const {
    return std::to_string(in_c) + "x" + std::to_string(in_h) + "x" + std::to_string(in_w) + (transposed ? " transposed" : "") +
           " conv " + std::to_string(k) + "x" + std::to_string(k) + " stride " + std::to_string(stride) + " pad " +
           std::to_string(pad) + " -> " + std::to_string(out_c) + "x" + std::to_string(out_h()) + "x" + std::to_string(out_w());
  }

 private:
  std::size_t extent(std::size_t in) const { return transposed ? (in - 1) * stride + k - 2 * pad : (in + 2 * pad - k) / stride + 1; }
};

// What the optimized convolutions' scratch must hold: the largest patch matrix (ConvShape::patch_floats) and weight tensor
// of a model's convolution layers.
struct ConvSizes {
  std::size_t patch = 0, weights = 0;
  std::size_t depth = 0;      // the longest sum of a product (K): patch rows, positions or channels
  std::size_t positions = 0;  // the most output positions (out_h·out_w) of an as_convolution()
  std::size_t image = 0;      // the largest output image (out_size) of an as_convolution()
  std::size_t channels = 0;   // the most output channels of an as_convolution(): the rows of its W

  ConvSizes& add(const ConvShape& s) {
    const ConvShape c = s.as_convolution();
    patch = std::max(patch, s.patch_floats());
    weights = std::max(weights, s.weight_count());
    depth = std::max({depth, c.in_c * c.k * c.k, c.out_h() * c.out_w(), c.out_c});
    positions = std::max(positions, c.out_h() * c.out_w());
    image = std::max(image, c.out_size());
    channels = std::max(channels, c.out_c);
    return *this;
  }
};

// Calls f(in, out, w) for every tap of one image: input element `in`, output element `out` and weight `w` (flat indices
// into the image's [in_c × in_h × in_w], [out_c × out_h × out_w] and W) such that out gets w·in. A convolution's output
// (o, y, x) reads input (c, y·stride − pad + ky, x·stride − pad + kx); a transposed one's input (c, y, x) writes output
// (o, y·stride − pad + ky, x·stride − pad + kx): the same relation with the roles of input and output swapped. Taps that
// fall in the padding are skipped.
template <class F>
void for_each_tap(const ConvShape& s, F&& f) {
  const std::size_t oh = s.out_h(), ow = s.out_w();
  // (small, large): the side that is read at stride steps, and the side its taps land on
  const std::size_t sc = s.transposed ? s.in_c : s.out_c, sh = s.transposed ? s.in_h : oh, sw = s.transposed ? s.in_w : ow;
  const std::size_t lc = s.transposed ? s.out_c : s.in_c, lh = s.transposed ? oh : s.in_h, lw = s.transposed ? ow : s.in_w;
  for (std::size_t a = 0; a < sc; ++a)
    for (std::size_t y = 0; y < sh; ++y)
      for (std::size_t x = 0; x < sw; ++x)
        for (std::size_t b = 0; b < lc; ++b)
          for (std::size_t ky = 0; ky < s.k; ++ky) {
            const std::ptrdiff_t ly = std::ptrdiff_t(y * s.stride + ky) - std::ptrdiff_t(s.pad);
            if (ly < 0 || ly >= std::ptrdiff_t(lh)) continue;
            for (std::size_t kx = 0; kx < s.k; ++kx) {
              const std::ptrdiff_t lx = std::ptrdiff_t(x * s.stride + kx) - std::ptrdiff_t(s.pad);
              if (lx < 0 || lx >= std::ptrdiff_t(lw)) continue;
              const std::size_t small = (a * sh + y) * sw + x, large = (b * lh + std::size_t(ly)) * lw + std::size_t(lx);
              const std::size_t w = ((a * lc + b) * s.k + ky) * s.k + kx;  // [out_c × in_c × k × k] or [in_c × out_c × k × k]
              if (s.transposed) f(small, large, w);
              else f(large, small, w);
            }
          }
}

// y = act(conv(x, w) + b)                                 x [n × in_size], w [weight_count], b [out_c], y [n × out_size]
template <class T>
void conv_forward_reference(const ConvShape& s, const T* x, const T* w, const T* b, T* y, std::size_t n, Activation act) {
  const std::size_t in = s.in_size(), out = s.out_size(), plane = s.out_h() * s.out_w();
  for (std::size_t r = 0; r < n; ++r) {
    T* yr = y + r * out;
    for (std::size_t i = 0; i < out; ++i) yr[i] = b[i / plane];
    for_each_tap(s, [&](std::size_t i, std::size_t o, std::size_t k) { yr[o] += w[k] * x[r * in + i]; });
    for (std::size_t i = 0; i < out; ++i) yr[i] = activate(yr[i], act);
  }
}

// dx = (∂/∂x of Σ dy ⊙ conv(x, w)) ⊙ act'(y_prev), y_prev the previous layer's output (nullptr: no slope)
//                                                          dy [n × out_size], dx and y_prev [n × in_size]
template <class T>
void conv_input_grad_reference(const ConvShape& s, const T* dy, const T* w, T* dx, std::size_t n, Activation prev_act, const T* y_prev) {
  const std::size_t in = s.in_size(), out = s.out_size();
  for (std::size_t r = 0; r < n; ++r) {
    T* dxr = dx + r * in;
    for (std::size_t i = 0; i < in; ++i) dxr[i] = 0;
    for_each_tap(s, [&](std::size_t i, std::size_t o, std::size_t k) { dxr[i] += w[k] * dy[r * out + o]; });
    if (y_prev)
      for (std::size_t i = 0; i < in; ++i) dxr[i] *= activation_slope(y_prev[r * in + i], prev_act);
  }
}

// db = ∂/∂b of Σ dy ⊙ conv(x, w) over the batch: each output channel's plane summed.      dy [n × out_size], db [out_c]
template <class T>
void conv_bias_grad_reference(const ConvShape& s, const T* dy, T* db, std::size_t n) {
  const std::size_t out = s.out_size(), plane = s.out_h() * s.out_w();
  for (std::size_t c = 0; c < s.out_c; ++c) db[c] = 0;
  for (std::size_t r = 0; r < n; ++r)
    for (std::size_t o = 0; o < out; ++o) db[o / plane] += dy[r * out + o];
}

// dw = ∂/∂w and db = ∂/∂b of Σ dy ⊙ conv(x, w) over the batch, for rows [r0, r1) of W's first dimension (dw points at
// row r0); db (all of it) unless nullptr.                 x [n × in_size], dy [n × out_size], dw [(r1 − r0) × weight_row_size], db
template <class T>
void conv_weight_grad_reference(const ConvShape& s, const T* x, const T* dy, T* dw, T* db, std::size_t n, std::size_t r0, std::size_t r1) {
  const std::size_t in = s.in_size(), out = s.out_size();
  const std::size_t lo = r0 * s.weight_row_size(), hi = r1 * s.weight_row_size();
  for (std::size_t k = lo; k < hi; ++k) dw[k - lo] = 0;
  for (std::size_t r = 0; r < n; ++r)
    for_each_tap(s, [&](std::size_t i, std::size_t o, std::size_t k) {
      if (k >= lo && k < hi) dw[k - lo] += x[r * in + i] * dy[r * out + o];
    });
  if (db) conv_bias_grad_reference(s, dy, db, n);
}

template <class T>
void conv_weight_grad_reference(const ConvShape& s, const T* x, const T* dy, T* dw, T* db, std::size_t n) {
  conv_weight_grad_reference(s, x, dy, dw, db, n, 0, s.weight_rows());
}

}  // namespace vae
