// The interface between the TBB driver (kernels_parallel.cpp) and the per-ISA SIMD code (simd_ops.cpp, built by Highway for every target).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "vae/kernels.hpp"

namespace vae::simd {

// One operand element A(i, p) of a GEMM, in one of the layouts the driver hands to the SIMD code.
enum class ALayout {
  rows,    // A(i, p) = a[i·lda + p]: row-major, e.g. X in Y = X·W
  cols,    // A(i, p) = a[p·lda + i]: a transposed row-major matrix, e.g. Xᵀ in dW = Xᵀ·dY
  panels,  // packed: MR-row panels, panel q holds A(q·MR + r, p) at a[q·k·MR + p·MR + r]
};

// A [rows × k] packed into MR-row panels (the ALayout::panels form) from a uint8 image batch: the first layer's input,
// converted to floats on the way.
struct PackA {
  const ImageBatch* image = nullptr;
  bool trans = false;  // A(i, p) = image element (i, p), or (p, i) when trans
  std::size_t rows = 0, k = 0;
  std::size_t panel_begin = 0, panel_end = 0;  // panels to pack (the driver splits them across threads)
  float* dst = nullptr;
};

enum class Epilogue {
  none,      // C = A·B
  bias_act,  // C = act(A·B + bias)
  slope,     // C = (A·B) ⊙ act'(y), act' taken from the activation's output y
  row_bias_act,  // C = act(A·B + bias[i]): a convolution's output channels are C's rows
};

// C[i0:i1, j0:j1] = A[i0:i1, :k] · B[:k, j0:j1] and the epilogue.
struct GemmBlock {
  const float* a = nullptr;
  std::size_t lda = 0;
  ALayout layout = ALayout::rows;
  const float* b = nullptr;
  std::size_t ldb = 0;
  bool b_trans = false;      // B(p, j) = b_trans ? b[j·ldb + p] : b[p·ldb + j]
  float* bpack = nullptr;    // [k × NR] scratch for a panel that must be packed (transposed or narrower than NR)
  bool b_padded = false;     // B row-major with finite values in the columns up to j1 rounded up to NR: read in place
  float* c = nullptr;
  std::size_t ldc = 0;
  std::size_t k = 0;
  std::size_t i0 = 0, i1 = 0, j0 = 0, j1 = 0;
  Epilogue epi = Epilogue::none;
  const float* bias = nullptr;  // bias_act: [N]
  Activation act = Activation::identity;
  const float* y = nullptr;  // slope: y(i, j) = y[i·ldy + j]
  std::size_t ldy = 0;
  bool* nonfinite = nullptr;  // if set (Epilogue::none): becomes true when a NaN or ±Inf is written (never reset)
  bool stream = false;        // Epilogue::none: C is not read again soon (a weight gradient), so full vectors bypass the cache
  // bf16 products whose C has a shadow (Bf16Shadow): after C, its elements rounded as operands, (i, j) at
  // c16_rows[i·c16_ld + j] and as half (c16_row0 + i) % 2 of pair word (j / pair_w)·pair_s + ((c16_row0 + i) / 2)·pair_w +
  // j % pair_w of c16_pairs (the rows of this block lie from row c16_row0 of the shadow on).
  std::uint16_t* c16_rows = nullptr;
  std::size_t c16_ld = 0;
  std::uint32_t* c16_pairs = nullptr;
  std::size_t c16_row0 = 0, pair_w = 0, pair_s = 0;
};

// A matrix S [rows × cols] read as floats for packing into bf16: fp32 (s(r, c) = x[r·ld + c]) or, with image set, the
// image batch's elements (pixels/255, then the one-hot label columns). Elements past rows or cols read as 0.
struct Bf16Source {
  const float* x = nullptr;
  std::size_t ld = 0;
  const ImageBatch* image = nullptr;
  std::size_t rows = 0, cols = 0;
};

// C[i0:i1, j0:j1] = A · B on bf16 operands in the dot-product instruction's pair form, accumulated in fp32, and the
// epilogue (out's c, ldc, i0 … j1, epi, bias, act, y, ldy and nonfinite; its a, b and k are unused). A pair (i, q) holds
// A(i, 2q) in its low half and A(i, 2q + 1) in its high half: at a[i·lda + q] (a_rows) or a[q·lda + i]. B is NR-column
// panels, panel t (columns t·NR …) at b + t·k2·NR with pair (q, c) of B(2q, ·), B(2q + 1, ·) at [q·NR + c].
struct GemmBf16Block {
  const std::uint32_t* a = nullptr;
  std::size_t lda = 0;
  bool a_rows = true;
  const std::uint32_t* b = nullptr;
  std::size_t k2 = 0;  // pairs along K: ⌈K/2⌉, the odd K's last pair padded with a zero
  std::size_t b_stride = 0;  // words from one B panel to the next (0: k2·NR)
  GemmBlock out;
};

// Rows [i0, i1) × columns [j0, j1) of an INT8 product: u8 activations A in rows of quads (A(i, 4q … 4q + 3) in the bytes
// of a[i·lda + q]) times s8 weights B in NR-column panels of quads (panel t at b + t·k4·NR, quad (q, c) at [q·NR + c]),
// summed exactly in int32, then v = scale[j]·(acc − zero_term[j]) + bias[j] (a multiply, then an add), activated, and
// written as fp32 (y) or quantized again as u8 (q: clamp(round(v·inv_out + zero_out), 0, 255), round to nearest even).
struct Int8Block {
  const std::uint32_t* a = nullptr;
  std::size_t lda = 0;
  const std::uint32_t* b = nullptr;
  std::size_t k4 = 0;
  const float* scale = nullptr;
  const std::int32_t* zero_term = nullptr;
  const float* bias = nullptr;
  Activation act = Activation::identity;
  float* y = nullptr;
  std::size_t ldy = 0;
  std::uint8_t* q = nullptr;
  std::size_t ldq = 0;
  float inv_out = 0, zero_out = 0;
  std::size_t i0 = 0, i1 = 0, j0 = 0, j1 = 0;
};

inline constexpr std::size_t kPeakChains = 16;

// Kernels of one instruction set. Every function works on a slice the driver gives it; none allocates or spawns threads.
struct Ops {
  const char* target = "";
  std::size_t mr = 0, nr = 0;  // micro-tile rows and columns
  void (*pack_a)(const PackA&) = nullptr;
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
  // C[i0:i1, j0:j1] = epilogue(C) in place (row_bias_act or slope; g's a, b and k are unused): a convolution's output
  // after its patches are added back into the image (col2im)
  void (*apply_epilogue)(const GemmBlock& g) = nullptr;
  // true when x[begin:end) has no NaN or ±Inf
  bool (*all_finite)(const float* x, std::size_t begin, std::size_t end) = nullptr;
  // Box-Muller: out[2i] = √(−2 ln u[2i])·cos 2πu[2i+1], out[2i+1] = … sin …, for pairs i < n/2 (n even)
  void (*box_muller)(const float* u, float* out, std::size_t n) = nullptr;
  void (*adam)(float* p, const float* g, float* m, float* v, std::size_t begin, std::size_t end, float lr_t, float beta1, float beta2,
               float eps_t, float decay) = nullptr;
  // ema[i] ← p[i] + d·(ema[i] − p[i]) (= d·ema + (1 − d)·p), each operation rounded, for i in [begin, end).
  void (*ema)(float* ema, const float* p, std::size_t begin, std::size_t end, float decay) = nullptr;
  // The bf16 wire format (vae/bf16.hpp is the scalar definition): out[i] = bf16(x[i]) rounded to nearest even, out[i] =
  // float(h[i]), and b[i] = bf16(float(a[i]) + float(b[i])).
  void (*to_bf16)(const float* x, std::uint16_t* out, std::size_t n) = nullptr;
  void (*from_bf16)(const std::uint16_t* h, float* out, std::size_t n) = nullptr;
  void (*add_bf16)(const std::uint16_t* a, std::uint16_t* b, std::size_t n) = nullptr;

  // bf16 products. Operands are rounded as bf16_operand (vae/bf16.hpp) while they are packed; the product adds each pair
  // as the AVX512_BF16 dot-product instruction does (high half first, fp32 round-to-nearest-even, results below the
  // smallest normal flushed to zero). bf16_native: by that instruction; otherwise emulated with FMAs, bit for bit alike.
  bool bf16_native = false;
  // How the product wants its packed operands: K in pairs padded with zeros to a multiple of bf16_k_block, A's rows to a
  // multiple of bf16_m_block and one block more, and A always in the a_rows form when bf16_a_rows_only.
  std::size_t bf16_k_block = 1, bf16_m_block = 1;
  bool bf16_a_rows_only = false;
  bool bf16_bit_exact = true;  // gives the bits of the instruction's pair order (AMX adds in an order of its own)
  // Rows [r0, r1) of s as bf16 rows of k2 pairs (zero past s), row r at dst + r·ldd: A in the a_rows form.
  void (*bf16_rows)(const Bf16Source& s, std::size_t r0, std::size_t r1, std::size_t k2, std::uint32_t* dst, std::size_t ldd) = nullptr;
  // Columns [i0, i1) of s as rows of k2 pairs along s's rows: dst[i·ldd + q] = (s(2q, i), s(2q + 1, i)). A = sᵀ in the
  // a_rows form.
  void (*bf16_pairs_rows)(const Bf16Source& s, std::size_t i0, std::size_t i1, std::size_t k2, std::uint32_t* dst, std::size_t ldd) = nullptr;
  // Row pairs [q0, q1) of s, columns [c0, c1) zero-padded to `width`: dst[q·ldd + c − c0] = (s(2q, c), s(2q + 1, c)). A in
  // the column form (width = cols, ldd = cols), or one B panel (width = ldd = NR) of B = s.
  void (*bf16_pairs)(const Bf16Source& s, std::size_t q0, std::size_t q1, std::size_t c0, std::size_t c1, std::size_t width,
                     std::uint32_t* dst, std::size_t ldd) = nullptr;
  // One B panel of B = sᵀ (B(p, j) = s(j, p)): rows [j0, j0 + NR) of s, zero past s, dst[q·NR + j − j0] = (s(j, 2q),
  // s(j, 2q + 1)) for q < k2.
  void (*bf16_trans_panel)(const Bf16Source& s, std::size_t j0, std::size_t k2, std::uint32_t* dst) = nullptr;
  // Elements [e0, e1) of a weight matrix w [k × m] (row-major, flat index i·m + j), rounded as operands, into the two
  // panel forms of the weight copy: the forward one (B = w, as bf16_pairs packs its panels: panel t at fwd + t·k2f·NR)
  // and the transposed one (B = wᵀ, as bf16_trans_panel packs them: panel t at trans + t·k2t·NR; none if trans is null).
  // Each element is its own u16 in each form, so ranges written side by side never share a byte.
  void (*bf16_copy_range)(const float* w, std::size_t m, std::size_t e0, std::size_t e1, std::size_t k2f, std::size_t k2t,
                          std::uint32_t* fwd, std::uint32_t* trans) = nullptr;
  // Rows [i, i + R) of g.c [· × cols] into its bf16 forms (GemmBlock's c16 fields), as a product's epilogue writes those
  // of its C: for a tensor written outside the products (the loss's and the reparameterisation's gradients). The panels
  // of the pair form are pair_w columns wide, a multiple of the vector width or the whole width.
  void (*bf16_shadow_rows)(const GemmBlock& g, std::size_t i, std::size_t R, std::size_t cols) = nullptr;
  void (*gemm_bf16_block)(const GemmBf16Block&) = nullptr;
  // INT8 inference. int8_native: the sums by AVX512_VNNI's vpdpbusd; otherwise by widened integer multiplies, which are
  // exact alike. pack_int8_panel: columns [j0, j0 + NR) of w [k × m] (s8, row-major) as one B panel of k4 quads, zero
  // past k and m. quantize_rows: rows [r0, r1) of x [· × k] as u8 rows of k4 quads (clamp(round(x·inv_scale +
  // zero_point), 0, 255), zero past k), row r at dst + r·ldd bytes.
  bool int8_native = false;
  void (*int8_block)(const Int8Block&) = nullptr;
  void (*pack_int8_panel)(const std::int8_t* w, std::size_t k, std::size_t m, std::size_t j0, std::size_t k4, std::uint32_t* dst) = nullptr;
  void (*quantize_rows)(const float* x, std::size_t ldx, std::size_t r0, std::size_t r1, std::size_t k, std::size_t k4, float inv_scale,
                        float zero_point, std::uint8_t* dst, std::size_t ldd) = nullptr;
  // Throughput loops for the benchmarks' ceilings: `iterations` rounds of kPeakChains independent vector multiply-adds,
  // fp32 FMAs (2·lanes flops each) or native bf16 pair dot products (4·lanes flops each; null without them). The result
  // only keeps the work from being optimised away.
  float (*fma_loop)(std::size_t iterations) = nullptr;
  float (*bf16_dot_loop)(std::size_t iterations) = nullptr;
  float (*int8_dot_loop)(std::size_t iterations) = nullptr;  // native vpdpbusd: 8·lanes integer ops each
  float (*amx_dot_loop)(std::size_t iterations) = nullptr;   // 4 AMX bf16 tile sums per iteration, 16·16·32·2 flops each
  // This instruction set with a faster bf16 product the CPU has (AVX512_BF16, then AMX), or null: best_ops() follows the
  // chain to its end, available_ops() lists it best first.
  const Ops* faster = nullptr;
};

// The best instruction set this CPU runs.
const Ops& best_ops();
// Every instruction set compiled in that this CPU runs, best first (tests and benchmarks compare them all).
std::vector<const Ops*> available_ops();

}  // namespace vae::simd
