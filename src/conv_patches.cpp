// im2col, im2row and col2im over the valid range of each kernel tap, so the inner loops carry no bounds tests.
#include "conv_patches.hpp"

#include <algorithm>
#include <cstring>

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

// The taps t in [lo, hi) of output o that land inside an input of `extent`: 0 ≤ o·stride − pad + t < extent.
Span valid_taps(std::size_t o, std::size_t extent, std::size_t stride, std::size_t pad, std::size_t k) {
  const std::size_t start = o * stride;  // the input index of tap t is start + t − pad
  const std::size_t lo = start >= pad ? 0 : std::min(k, pad - start);
  const std::size_t hi = start + k <= extent + pad ? k : extent + pad > start ? extent + pad - start : 0;
  return {lo, std::max(lo, hi)};
}

// n floats from src to dst; the 4 taps of the conv preset's kernels inline, where a call to memmove would cost more than
// the copy.
void copy_taps(const float* src, std::size_t n, float* dst) {
  if (n == 4) std::memcpy(dst, src, 4 * sizeof(float));
  else std::copy_n(src, n, dst);
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

void im2col(const ConvShape& c, const float* img, float* patches, std::size_t ld) {
  const std::size_t ow = c.out_w(), s = c.stride;
  std::fill_n(patches, c.in_c * c.k * c.k * ld, 0.0f);
  each_tap_row(c, 0, c.in_c, [&](std::size_t q, std::size_t oy, std::size_t row, Span xs, std::size_t ix0) {
    const float* src = img + row * c.in_w + ix0;
    float* dst = patches + q * ld + oy * ow;
    for (std::size_t ox = xs.lo; ox < xs.hi; ++ox) dst[ox] = src[(ox - xs.lo) * s];
  });
}

// Position by position, so each row of the result is written in order: a patch row's k taps along x are k neighbouring
// input floats (the stride-K scatter of each_tap_row's order had cost a fifth of the conv step).
void im2row(const ConvShape& c, const float* img, float* rows) {
  const std::size_t K = c.in_c * c.k * c.k, oh = c.out_h(), ow = c.out_w(), k = c.k, plane = c.in_h * c.in_w;
  for (std::size_t oy = 0; oy < oh; ++oy) {
    const Span ys = valid_taps(oy, c.in_h, c.stride, c.pad, k);
    for (std::size_t ox = 0; ox < ow; ++ox) {
      const Span xs = valid_taps(ox, c.in_w, c.stride, c.pad, k);
      float* dst = rows + (oy * ow + ox) * K;
      if (ys.lo == ys.hi || xs.lo == xs.hi) {  // every tap in the padding (pad ≥ k): no input row to point at
        std::fill_n(dst, K, 0.0f);
        continue;
      }
      const float* src = img + (ys.lo + oy * c.stride - c.pad) * c.in_w + xs.lo + ox * c.stride - c.pad;
      if (xs.lo == 0 && xs.hi == k && ys.lo == 0 && ys.hi == k) {
        for (std::size_t ch = 0; ch < c.in_c; ++ch, src += plane)
          for (std::size_t ky = 0; ky < k; ++ky, dst += k) copy_taps(src + ky * c.in_w, k, dst);
        continue;
      }
      std::fill_n(dst, K, 0.0f);
      for (std::size_t ch = 0; ch < c.in_c; ++ch, src += plane)
        for (std::size_t ky = ys.lo; ky < ys.hi; ++ky)
          copy_taps(src + (ky - ys.lo) * c.in_w, xs.hi - xs.lo, dst + (ch * k + ky) * k + xs.lo);
    }
  }
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
