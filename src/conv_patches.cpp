// im2col, im2row and col2im over the valid range of each kernel tap, so the inner loops carry no bounds tests.
#include "conv_patches.hpp"

#include <algorithm>

namespace vae {
namespace {

// The outputs o in [lo, hi) whose tap t lands inside an input of `extent`: 0 ≤ o·stride − pad + t < extent.
struct Span {
  std::size_t lo = 0, hi = 0;
};
Span valid(std::size_t outputs, std::size_t extent, std::size_t stride, std::size_t pad, std::size_t t) {
  // o·stride ≥ pad − t, and o·stride ≤ extent − 1 + pad − t
  const std::size_t lo = t >= pad ? 0 : (pad - t + stride - 1) / stride;
  if (extent + pad < t + 1) return {lo, lo};
  const std::size_t hi = std::min(outputs, (extent - 1 + pad - t) / stride + 1);
  return {lo, std::max(lo, hi)};
}

// Calls f(q, oy, iy_row, xs, ix0) for each patch row q and output row oy whose tap row is inside the image: input row
// iy_row, and output columns xs whose input column is ix0 + ox·stride.
template <class F>
void each_tap_row(const ConvShape& c, std::size_t ch0, std::size_t ch1, F&& f) {
  const std::size_t oh = c.out_h(), ow = c.out_w();
  for (std::size_t ch = ch0; ch < ch1; ++ch)
    for (std::size_t ky = 0; ky < c.k; ++ky) {
      const Span ys = valid(oh, c.in_h, c.stride, c.pad, ky);
      for (std::size_t kx = 0; kx < c.k; ++kx) {
        const Span xs = valid(ow, c.in_w, c.stride, c.pad, kx);
        const std::size_t q = (ch * c.k + ky) * c.k + kx;
        for (std::size_t oy = ys.lo; oy < ys.hi; ++oy) {
          const std::size_t iy = oy * c.stride + ky - c.pad;
          f(q, oy, ch * c.in_h + iy, xs, xs.lo * c.stride + kx - c.pad);
        }
      }
    }
}

}  // namespace

void im2col(const ConvShape& c, const float* img, float* patches) {
  const std::size_t P = c.out_h() * c.out_w(), ow = c.out_w(), s = c.stride;
  std::fill_n(patches, c.in_c * c.k * c.k * P, 0.0f);
  each_tap_row(c, 0, c.in_c, [&](std::size_t q, std::size_t oy, std::size_t row, Span xs, std::size_t ix0) {
    const float* src = img + row * c.in_w + ix0;
    float* dst = patches + q * P + oy * ow;
    for (std::size_t ox = xs.lo; ox < xs.hi; ++ox) dst[ox] = src[(ox - xs.lo) * s];
  });
}

void im2row(const ConvShape& c, const float* img, float* rows) {
  const std::size_t K = c.in_c * c.k * c.k, ow = c.out_w(), s = c.stride;
  std::fill_n(rows, c.out_h() * ow * K, 0.0f);
  each_tap_row(c, 0, c.in_c, [&](std::size_t q, std::size_t oy, std::size_t row, Span xs, std::size_t ix0) {
    const float* src = img + row * c.in_w + ix0;
    float* dst = rows + oy * ow * K + q;
    for (std::size_t ox = xs.lo; ox < xs.hi; ++ox) dst[ox * K] = src[(ox - xs.lo) * s];
  });
}

void col2im(const ConvShape& c, const float* patches, float* img, std::size_t ch0, std::size_t ch1) {
  const std::size_t P = c.out_h() * c.out_w(), ow = c.out_w(), s = c.stride, plane = c.in_h * c.in_w;
  std::fill(img + ch0 * plane, img + ch1 * plane, 0.0f);
  each_tap_row(c, ch0, ch1, [&](std::size_t q, std::size_t oy, std::size_t row, Span xs, std::size_t ix0) {
    float* dst = img + row * c.in_w + ix0;
    const float* src = patches + q * P + oy * ow;
    for (std::size_t ox = xs.lo; ox < xs.hi; ++ox) dst[(ox - xs.lo) * s] += src[ox];
  });
}

}  // namespace vae
