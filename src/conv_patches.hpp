// The patch matrices a convolution's products run on (im2col and its adjoint), for the TBB driver of the kernels.
#pragma once

#include <cstddef>

#include "vae/conv.hpp"

namespace vae {

// c is a convolution (not transposed), from images [in_c × H × W] to [out_c × out_h × out_w]; K = in_c·k², P = out_h·out_w.
// A patch element (q, p), q = (channel·k + ky)·k + kx and p = oy·out_w + ox, is input (channel, oy·stride − pad + ky,
// ox·stride − pad + kx), 0 in the padding: the output is W [out_c × K] · patches [K × P].

// patches [K × P] of one image, row stride ld ≥ P, zeros in columns [P, ld)                     img [in_c × H × W]
void im2col(const ConvShape& c, const float* img, float* patches, std::size_t ld);
// the same, transposed: rows [P × K], one output position's patch per row (the B of a weight gradient dW = dY·rowsᵀ…ᵀ)
void im2row(const ConvShape& c, const float* img, float* rows);
// img = the adjoint of im2col, for input channels [ch0, ch1): each patch element added back where im2col read it, the
// image's other channels untouched                                                            patches [K × P] (row stride P)
void col2im(const ConvShape& c, const float* patches, float* img, std::size_t ch0, std::size_t ch1);

}  // namespace vae
