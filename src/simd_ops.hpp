// The interface between the TBB driver (kernels_parallel.cpp) and the per-ISA SIMD code (simd_ops.cpp, built by Highway for every target).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "vae/kernels.hpp"

namespace vae::simd {

// One operand element A(i, p) of a GEMM, in one of the layouts the driver hands to the SIMD code.
enum class ALayout {
  panels,  // packed: MR-row panels, panel q holds A(q·MR + r, p) at a[q·lda·MR + p·MR + r]; lda = K
  cols,    // A(i, p) = a[p·lda + i]: a transposed row-major matrix, e.g. Xᵀ in dW = Xᵀ·dY
};

// B block [kc × nc] packed into NR-column panels, panel q at dst[q·kc·NR], row p of it at + p·NR; zero-padded to NR.
struct PackB {
  const float* b = nullptr;
  std::size_t ldb = 0;
  bool trans = false;  // B(p, j) = trans ? b[j·ldb + p] : b[p·ldb + j]
  std::size_t p0 = 0, kc = 0, j0 = 0, nc = 0;
  float* dst = nullptr;
};

// A [rows × k] packed into MR-row panels (the ALayout::panels form), from floats or from a uint8 image batch.
struct PackA {
  const float* a = nullptr;  // A(i, p) = a[i·lda + p]
  std::size_t lda = 0;
  const ImageBatch* image = nullptr;  // instead of a: A(i, p) = image element (i, p), or (p, i) when image_trans
  bool image_trans = false;
  std::size_t rows = 0, k = 0;
  std::size_t panel_begin = 0, panel_end = 0;  // panels to pack (the driver splits them across threads)
  float* dst = nullptr;
};

enum class Epilogue {
  none,      // C = A·B (or C += A·B for every K block after the first)
  bias_act,  // C = act(A·B + bias)
  slope,     // C = (A·B) ⊙ act'(y), act' taken from the activation's output y
};

// C[i0:i1, j0:j1] (+)= A[i0:i1, p0:p0+kc] · B[p0:p0+kc, j0:j1], with B packed for exactly columns [j0, j1).
struct GemmBlock {
  const float* a = nullptr;
  std::size_t lda = 0;
  ALayout layout = ALayout::panels;
  const float* bpack = nullptr;
  float* c = nullptr;
  std::size_t ldc = 0;
  std::size_t i0 = 0, i1 = 0, j0 = 0, j1 = 0, p0 = 0, kc = 0;
  bool first = true, last = true;  // first K block overwrites C; the last applies the epilogue
  Epilogue epi = Epilogue::none;
  const float* bias = nullptr;  // bias_act: [N]
  Activation act = Activation::identity;
  const float* y = nullptr;  // slope: y(i, j) = y[i·ldy + j]
  std::size_t ldy = 0;
};

// Kernels of one instruction set. Every function works on a slice the driver gives it; none allocates or spawns threads.
struct Ops {
  const char* target = "";
  std::size_t mr = 0, nr = 0, kc = 0;  // micro-tile rows and columns, K block
  void (*pack_a)(const PackA&) = nullptr;
  void (*pack_b)(const PackB&) = nullptr;
  void (*gemm_block)(const GemmBlock&) = nullptr;
  // column sums of y[rows × (j1 − j0)] (row stride ldy) into out[j0:j1]
  void (*col_sums)(const float* y, std::size_t ldy, std::size_t rows, std::size_t j0, std::size_t j1, float* out) = nullptr;
  // Bernoulli NLL of rows [r0, r1), each row's sum into row_sums[r]; dlogits (may be null) = scale·(σ(l) − x)
  void (*bernoulli_rows)(const float* logits, const ImageBatch& x, float* dlogits, std::size_t r0, std::size_t r1, float scale,
                         double* row_sums) = nullptr;
  // z = μ + ε·σ for rows [r0, r1), each row's KL into row_kl[r]
  void (*reparam_forward)(const float* head, const float* eps, float* z, std::size_t ldz, std::size_t r0, std::size_t r1,
                          std::size_t latent, double* row_kl) = nullptr;
  void (*reparam_backward)(const float* head, const float* eps, const float* dz, std::size_t ldz, float* dhead, std::size_t r0,
                           std::size_t r1, std::size_t latent, float scale, float beta) = nullptr;
  void (*adam)(float* p, const float* g, float* m, float* v, std::size_t begin, std::size_t end, float lr_t, float beta1, float beta2,
               float eps_t) = nullptr;
};

// The best instruction set this CPU runs.
const Ops& best_ops();
// Every instruction set compiled in that this CPU runs, best first (tests and benchmarks compare them all).
std::vector<const Ops*> available_ops();

}  // namespace vae::simd
