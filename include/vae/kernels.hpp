// The numerical kernels of a dense CVAE: an interface, and the plain reference implementation every optimized kernel is tested against.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <numbers>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "vae/activation.hpp"
#include "vae/bf16.hpp"
#include "vae/conv.hpp"
#include "vae/rng.hpp"

namespace vae {

// What the products of the dense layers multiply: fp32, or bf16 operands (vae/bf16.hpp's bf16_operand) accumulated in
// fp32 (--precision). Everything else is fp32 either way.
enum class Precision { fp32, bf16 };

inline const char* precision_name(Precision p) { return p == Precision::bf16 ? "bf16" : "fp32"; }

// A batch of uint8 images and their labels, read directly by the first layer and the loss (the floats are made on the fly,
// inside the first layer's packing). Element (r, c) is pixels[r·ld + c]/255 for c < width, then the one-hot of labels[r]
// for width ≤ c < width + classes (classes = 0 for an unconditional model).
struct ImageBatch {
  const std::uint8_t* pixels = nullptr;  // [rows × ld]
  std::size_t ld = 0, width = 0;
  const std::uint8_t* labels = nullptr;  // [rows]
  std::size_t classes = 0;

  std::size_t cols() const { return width + classes; }
  template <class T>
  T at(std::size_t r, std::size_t c) const {
    if (c < width) return T(pixels[r * ld + c]) * (T(1) / T(255));
    return T(labels[r] == c - width ? 1 : 0);
  }
};

// A layer of the INT8 decoder (vae/quantized.hpp): s8 weights wq [k × m] with w ≈ wscale[j]·wq per output column j, an
// input quantized per tensor as x ≈ in_scale·(xq − in_zero), and the terms that fold both into one multiply per column.
struct Int8Weights {
  const std::int8_t* w = nullptr;           // [k × m], row-major
  std::size_t k = 0, m = 0;
  const float* scale = nullptr;             // [m]: in_scale·wscale[j]
  const std::int32_t* zero_term = nullptr;  // [m]: in_zero·Σ_i wq[i][j]
  const float* bias = nullptr;              // [m]
  Activation act = Activation::identity;
  const std::uint32_t* packed = nullptr;    // the kernels' own form of w (pack_int8_weights), if they have one
};

// Where an INT8 layer writes: fp32 y [n × m] (row stride ldy), or, quantized for the next layer, u8 q [n × ·] (row
// stride ldq bytes) = clamp(round(y·inv_scale + zero_point), 0, 255).
struct Int8Output {
  float* y = nullptr;
  std::size_t ldy = 0;
  std::uint8_t* q = nullptr;
  std::size_t ldq = 0;
  float inv_scale = 0, zero_point = 0;
};

// A u8 row of k inputs is ⌈k/4⌉ quads (4·⌈k/4⌉ bytes, zero past k): the INT8 products add four products at a time.
inline std::size_t int8_row_bytes(std::size_t k) { return 4 * ((k + 3) / 4); }

// The bf16 products' own form of every layer's weights, kept current by the optimizer pass as it updates the fp32 master
// weights, so that no product packs a weight. Layer W [k × m] at params + w_offset has its forward panels (B = W) at
// words + fwd and its transposed panels (B = Wᵀ, for the input gradient) at words + trans, in the kernels' layout
// (make_weight_copy in vae/model.hpp lays it out). The first layer has no transposed panels: its input, the image, needs
// no gradient.
struct WeightCopy {
  struct Layer {
    std::size_t w_offset = 0, k = 0, m = 0, fwd = 0, trans = 0;
    bool transposed = true;
  };
  const float* params = nullptr;
  std::uint32_t* words = nullptr;
  std::vector<Layer> layers;  // none: the kernels keep no copy
  std::size_t size = 0;       // words
};

// bf16 products: an fp32 tensor x [rows × cols] (row stride cols) that products both write (as C) and read, kept with
// its bf16 forms beside it in `words` (bf16_shadow_words of them, zero before the first use). The epilogue that writes x
// writes them too, and the products that read x take them instead of rounding x afresh. An activation is read as the A of
// the next layer's forward product and transposed as the A of its weight gradient; a gradient as the A of the next input
// gradient and as the B of a weight gradient. x holds every row of the pass (every rank's rows when ranks share one); a
// product finds its rows by where its pointer falls.
template <class T>
struct Bf16Shadow {
  enum class Use { activation, gradient };
  const T* x = nullptr;
  std::size_t rows = 0, cols = 0;
  Use use = Use::activation;
  std::uint32_t* words = nullptr;
};

// One layer of dense_forward_stack: y = act(x · w + b).            x [n × k] (row stride ldx), w [k × m], b [m], y [n × m]
template <class T>
struct DenseCall {
  const T* x = nullptr;
  std::size_t ldx = 0;
  const T* w = nullptr;
  const T* b = nullptr;
  T* y = nullptr;
  std::size_t k = 0, m = 0;
  Activation act = Activation::identity;
};

// Row-major matrices throughout: X [batch × in], W [in × out], Y [batch × out]; ld* are row strides in elements.
template <class T>
class Kernels {
 public:
  virtual ~Kernels() = default;
  virtual std::string name() const = 0;

  // y = act(x · w + b)                                     x [n × k] (row stride ldx), w [k × m], b [m], y [n × m]
  virtual void dense_forward(const T* x, std::size_t ldx, const T* w, const T* b, T* y, std::size_t n, std::size_t k, std::size_t m,
                             Activation act) const = 0;
  // Layers in order, each free to read what an earlier one wrote: dense_forward on each in turn. The parallel kernels run
  // a single row's stack (one sample's decode) in one hand-over to the other threads, which meet between layers.
  virtual void dense_forward_stack(std::span<const DenseCall<T>> layers, std::size_t n) const {
    for (const DenseCall<T>& c : layers) dense_forward(c.x, c.ldx, c.w, c.b, c.y, n, c.k, c.m, c.act);
  }
  // y = act(x · w + b) with x an image batch: the first layer.          x [n × x.cols()], w [x.cols() × m], y [n × m]
  virtual void dense_forward_image(const ImageBatch& x, const T* w, const T* b, T* y, std::size_t n, std::size_t m, Activation act) const = 0;
  // dw = xᵀ · dy,  db = Σ_rows dy                           x [n × k] (ldx), dy [n × m], dw [k × m], db [m]
  // Both weight-gradient kernels return whether every element of dw and db is finite, found while they are written. db may
  // be nullptr: the bias gradient is another rank's to form.
  virtual bool dense_weight_grad(const T* x, std::size_t ldx, const T* dy, T* dw, T* db, std::size_t n, std::size_t k,
                                 std::size_t m) const = 0;
  // dw = xᵀ · dy,  db = Σ_rows dy with x an image batch.                  dw [x.cols() × m]
  virtual bool dense_weight_grad_image(const ImageBatch& x, const T* dy, T* dw, T* db, std::size_t n, std::size_t m) const = 0;
  // dx = (dy · wᵀ) ⊙ act'(y_prev)                          dy [n × m], w [k × m], dx [n × k] (ldx), y_prev [n × k] (ldx)
  // y_prev is the previous layer's output, from which its activation's derivative is computed (nullptr with identity).
  virtual void dense_input_grad(const T* dy, const T* w, T* dx, std::size_t ldx, std::size_t n, std::size_t k, std::size_t m,
                                Activation prev_act, const T* y_prev) const = 0;

  // The convolution layers (vae/conv.hpp: images [channels × height × width], weights in PyTorch's layouts).
  // y = act(conv(x, w) + b)                  x [n × s.in_size()], w [s.weight_count()], b [s.out_c], y [n × s.out_size()]
  virtual void conv_forward(const ConvShape& s, const T* x, const T* w, const T* b, T* y, std::size_t n, Activation act) const = 0;
  // dx = (∂/∂x of Σ dy ⊙ conv(x, w)) ⊙ act'(y_prev), y_prev the previous layer's output (nullptr: no slope)
  //                                                          dy [n × s.out_size()], dx and y_prev [n × s.in_size()]
  virtual void conv_input_grad(const ConvShape& s, const T* dy, const T* w, T* dx, std::size_t n, Activation prev_act,
                               const T* y_prev) const = 0;
  // dw for rows [r0, r1) of W's first dimension (ConvShape::weight_rows; dw points at row r0) and db (all of it, unless
  // nullptr), summed over the batch in an order that depends on n alone; returns whether both are finite.
  virtual bool conv_weight_grad(const ConvShape& s, const T* x, const T* dy, T* dw, T* db, std::size_t n, std::size_t r0,
                                std::size_t r1) const = 0;

  // Σ Bernoulli NLL with logits against the images' pixels, and dlogits = scale·(σ(l) − x); each row's NLL into
  // row_nll[r] as well unless nullptr (the importance weights need them, in the same pass).
  //                                                          logits, dlogits [n × x.width], row_nll [n]
  virtual double bernoulli_nll(const T* logits, const ImageBatch& x, T* dlogits, std::size_t n, T scale, double* row_nll) const = 0;
  // Each row's Bernoulli NLL into out[r] (x.ld = 0 scores every row against one image).   logits [n × x.width], out [n]
  virtual void bernoulli_nll_rows(const T* logits, const ImageBatch& x, double* out, std::size_t n) const = 0;
  // z = μ + ε·exp(½ log σ²) into z (row stride ldz); returns Σ KL(q ‖ N(0, I)).   head [n × 2L] = [μ | log σ²], eps [n × L]
  virtual double reparam_kl_forward(const T* head, const T* eps, T* z, std::size_t ldz, std::size_t n, std::size_t latent) const = 0;
  // dhead from dz (row stride ldz) through the reparameterisation, plus β·scale·∂KL.
  virtual void reparam_kl_backward(const T* head, const T* eps, const T* dz, std::size_t ldz, T* dhead, std::size_t n, std::size_t latent,
                                   T scale, T beta) const = 0;
  // Standard normals, row r of out [rows × cols] from its own generator Rng(hash_combine(key, first + r)): a row's values
  // depend on its key alone, not on which rank or thread draws it. Box-Muller on pairs of uniform24(): for the pair
  // (u, v), √(−2 ln u)·cos 2πv and √(−2 ln u)·sin 2πv; an odd last column takes the cosine of a final pair.
  virtual void gaussian_rows(T* out, std::size_t rows, std::size_t cols, std::uint64_t key, std::uint64_t first) const = 0;
  // The batch's images gathered from the data set: dst row r [width bytes] (row stride ld) = rows[r][0, width).
  virtual void gather_rows(std::span<const std::uint8_t* const> rows, std::size_t width, std::uint8_t* dst, std::size_t ld) const = 0;
  // One Adam step over the flat buffers: p ← decay·p − lr·m̂/(√v̂ + eps), with bias correction folded into lr_t and eps_t
  // (decay: 1 − lr·λ of AdamW, 1 for plain Adam). With a weight copy (p then points into copy->params), the same pass
  // writes the bf16 form of every weight it updates.
  virtual void adam_update(T* p, const T* g, T* m, T* v, std::size_t count, T lr_t, T beta1, T beta2, T eps_t, T decay,
                           const WeightCopy* copy) const = 0;
  // The weights' moving average after an update: ema ← p + d·(ema − p), each operation rounded (never fused: not every
  // instruction set has a fused multiply-add), so every kernel gives the same bits.          ema, p [count]
  virtual void ema_update(T* ema, const T* p, std::size_t count, T decay) const = 0;

  // The weight copy (bf16 products only). bf16_panel_words: u32 words of the forward panels of a W [k × m] (0: these
  // kernels keep no copy; its transposed panels take bf16_panel_words(m, k)). refresh_weight_copy writes the whole copy
  // from copy.params (after the parameters are set: drawn, read or received). From bind_weight_copy on, a product whose
  // W is a layer's of the copy reads its panels from there (nullptr: none).
  virtual std::size_t bf16_panel_words(std::size_t /*k*/, std::size_t /*m*/) const { return 0; }
  virtual void refresh_weight_copy(const WeightCopy& /*copy*/) const {}
  virtual void bind_weight_copy(const WeightCopy* /*copy*/) {}
  // The bf16 shadows (Bf16Shadow): words of one for a tensor [rows × cols] (0: these kernels keep none), and the
  // tensors products write and read through theirs from now on (empty: none).
  virtual std::size_t bf16_shadow_words(std::size_t /*rows*/, std::size_t /*cols*/) const { return 0; }
  virtual void bind_bf16_shadows(std::span<const Bf16Shadow<T>> /*shadows*/) {}

  // INT8 inference. quantize_int8: xq [n × int8_row_bytes(k)] (row stride ldq bytes) = clamp(round(x·inv_scale +
  // zero_point), 0, 255), zero past k. int8_dense_forward: out = act(scale[j]·(Σ_p xq[r, p]·wq[p, j] − zero_term[j]) +
  // bias[j]), the sum exact in int32, the multiply and the add rounded separately. n = 1 runs on the calling thread.
  virtual void quantize_int8(const float* x, std::size_t ldx, std::size_t n, std::size_t k, float inv_scale, float zero_point,
                             std::uint8_t* xq, std::size_t ldq) const = 0;
  virtual void int8_dense_forward(const Int8Weights& w, const std::uint8_t* xq, std::size_t ldq, std::size_t n, const Int8Output& out) const = 0;
  // The kernels' own form of an INT8 weight matrix, made once when a model is loaded (0 words: they read w as it is).
  virtual std::size_t int8_packed_words(std::size_t /*k*/, std::size_t /*m*/) const { return 0; }
  virtual void pack_int8_weights(const std::int8_t* /*w*/, std::size_t /*k*/, std::size_t /*m*/, std::uint32_t* /*packed*/) const {}

  // Scratch (packing buffers, per-row sums, patch matrices) for batches of up to max_rows, layer widths up to max_dim
  // and convolutions up to `conv`; the caller carves it from its memory pool and binds it before the first call, so no
  // kernel ever allocates.
  virtual std::size_t workspace_bytes(std::size_t /*max_rows*/, std::size_t /*max_dim*/, const ConvSizes& /*conv*/ = {}) const { return 0; }
  virtual void bind_workspace(std::span<std::byte> /*memory*/, std::size_t /*max_rows*/, std::size_t /*max_dim*/,
                              const ConvSizes& /*conv*/ = {}) {}

  // Called now and then from the thread that called the kernel (the one MPI may be called from), between pieces of
  // work: the trainer uses it to drive non-blocking allreduces while the kernels compute. Null to stop.
  using ProgressHook = void (*)(void* context);
  virtual void set_progress_hook(ProgressHook /*hook*/, void* /*context*/) {}
};

// log(1 + e^{-|l|}) + max(l, 0) − l·x: never overflows, exact for large |l|.
template <class T>
inline T bce_with_logits(T l, T x) {
  return std::max(l, T(0)) - l * x + std::log1p(std::exp(-std::abs(l)));
}

template <class T>
inline T sigmoid(T l) {
  return l >= T(0) ? T(1) / (T(1) + std::exp(-l)) : std::exp(l) / (T(1) + std::exp(l));
}

// Plain loops, serial, in the order a reader would write them. With bf16 products every product operand is rounded
// first (op), and the sums are still fp32 (T) in index order.
template <class T>
class ReferenceKernels final : public Kernels<T> {
 public:
  explicit ReferenceKernels(Precision precision = Precision::fp32) : bf16_(precision == Precision::bf16) {}
  std::string name() const override { return bf16_ ? "reference, bf16 products" : "reference"; }

  void dense_forward(const T* x, std::size_t ldx, const T* w, const T* b, T* y, std::size_t n, std::size_t k, std::size_t m,
                     Activation act) const override {
    for (std::size_t r = 0; r < n; ++r)
      for (std::size_t j = 0; j < m; ++j) {
        T s = b[j];
        for (std::size_t i = 0; i < k; ++i) s += op(x[r * ldx + i]) * op(w[i * m + j]);
        y[r * m + j] = activate(s, act);
      }
  }

  void dense_forward_image(const ImageBatch& x, const T* w, const T* b, T* y, std::size_t n, std::size_t m, Activation act) const override {
    const std::size_t k = x.cols();
    for (std::size_t r = 0; r < n; ++r)
      for (std::size_t j = 0; j < m; ++j) {
        T s = b[j];
        for (std::size_t i = 0; i < k; ++i) s += op(x.at<T>(r, i)) * op(w[i * m + j]);
        y[r * m + j] = activate(s, act);
      }
  }

  bool dense_weight_grad_image(const ImageBatch& x, const T* dy, T* dw, T* db, std::size_t n, std::size_t m) const override {
    const std::size_t k = x.cols();
    for (std::size_t i = 0; i < k; ++i)
      for (std::size_t j = 0; j < m; ++j) {
        T s = 0;
        for (std::size_t r = 0; r < n; ++r) s += op(x.at<T>(r, i)) * op(dy[r * m + j]);
        dw[i * m + j] = s;
      }
    if (db) column_sums(dy, db, n, m);
    return all_finite(dw, k * m) && (!db || all_finite(db, m));
  }

  bool dense_weight_grad(const T* x, std::size_t ldx, const T* dy, T* dw, T* db, std::size_t n, std::size_t k,
                         std::size_t m) const override {
    for (std::size_t i = 0; i < k; ++i)
      for (std::size_t j = 0; j < m; ++j) {
        T s = 0;
        for (std::size_t r = 0; r < n; ++r) s += op(x[r * ldx + i]) * op(dy[r * m + j]);
        dw[i * m + j] = s;
      }
    if (db) column_sums(dy, db, n, m);
    return all_finite(dw, k * m) && (!db || all_finite(db, m));
  }

  void dense_input_grad(const T* dy, const T* w, T* dx, std::size_t ldx, std::size_t n, std::size_t k, std::size_t m,
                        Activation prev_act, const T* y_prev) const override {
    for (std::size_t r = 0; r < n; ++r)
      for (std::size_t i = 0; i < k; ++i) {
        T s = 0;
        for (std::size_t j = 0; j < m; ++j) s += op(dy[r * m + j]) * op(w[i * m + j]);
        dx[r * ldx + i] = y_prev ? s * activation_slope(y_prev[r * ldx + i], prev_act) : s;
      }
  }

  void conv_forward(const ConvShape& s, const T* x, const T* w, const T* b, T* y, std::size_t n, Activation act) const override {
    conv_forward_reference(s, operands(x, n * s.in_size()).data(), operands(w, s.weight_count()).data(), b, y, n, act);
  }

  void conv_input_grad(const ConvShape& s, const T* dy, const T* w, T* dx, std::size_t n, Activation prev_act, const T* y_prev) const override {
    conv_input_grad_reference(s, operands(dy, n * s.out_size()).data(), operands(w, s.weight_count()).data(), dx, n, prev_act, y_prev);
  }

  // The bias gradient sums dY as it is, as dense_weight_grad's does: it is no product's operand.
  bool conv_weight_grad(const ConvShape& s, const T* x, const T* dy, T* dw, T* db, std::size_t n, std::size_t r0, std::size_t r1) const override {
    conv_weight_grad_reference(s, operands(x, n * s.in_size()).data(), operands(dy, n * s.out_size()).data(), dw, static_cast<T*>(nullptr), n, r0, r1);
    if (db) conv_bias_grad_reference(s, dy, db, n);
    return all_finite(dw, (r1 - r0) * s.weight_row_size()) && (!db || all_finite(db, s.out_c));
  }

  double bernoulli_nll(const T* logits, const ImageBatch& x, T* dlogits, std::size_t n, T scale, double* row_nll) const override {
    const std::size_t d = x.width;
    double total = 0;
    for (std::size_t r = 0; r < n; ++r) {
      double row = 0;
      for (std::size_t j = 0; j < d; ++j) {
        const T l = logits[r * d + j], t = x.at<T>(r, j);
        const double v = double(bce_with_logits(l, t));
        total += v;
        row += v;
        if (dlogits) dlogits[r * d + j] = scale * (sigmoid(l) - t);
      }
      if (row_nll) row_nll[r] = row;
    }
    return total;
  }

  void bernoulli_nll_rows(const T* logits, const ImageBatch& x, double* out, std::size_t n) const override {
    const std::size_t d = x.width;
    for (std::size_t r = 0; r < n; ++r) {
      double row = 0;
      for (std::size_t j = 0; j < d; ++j) row += double(bce_with_logits(logits[r * d + j], x.at<T>(r, j)));
      out[r] = row;
    }
  }

  double reparam_kl_forward(const T* head, const T* eps, T* z, std::size_t ldz, std::size_t n, std::size_t latent) const override {
    double kl = 0;
    for (std::size_t r = 0; r < n; ++r)
      for (std::size_t j = 0; j < latent; ++j) {
        const T mu = head[r * 2 * latent + j], lv = head[r * 2 * latent + latent + j];
        z[r * ldz + j] = mu + eps[r * latent + j] * std::exp(T(0.5) * lv);
        kl += -0.5 * double(T(1) + lv - mu * mu - std::exp(lv));
      }
    return kl;
  }

  void reparam_kl_backward(const T* head, const T* eps, const T* dz, std::size_t ldz, T* dhead, std::size_t n, std::size_t latent, T scale,
                           T beta) const override {
    for (std::size_t r = 0; r < n; ++r)
      for (std::size_t j = 0; j < latent; ++j) {
        const T mu = head[r * 2 * latent + j], lv = head[r * 2 * latent + latent + j];
        const T g = dz[r * ldz + j], sd = std::exp(T(0.5) * lv);
        dhead[r * 2 * latent + j] = g + scale * beta * mu;
        dhead[r * 2 * latent + latent + j] = g * eps[r * latent + j] * T(0.5) * sd + scale * beta * T(0.5) * (sd * sd - T(1));
      }
  }

  void gather_rows(std::span<const std::uint8_t* const> rows, std::size_t width, std::uint8_t* dst, std::size_t ld) const override {
    for (std::size_t r = 0; r < rows.size(); ++r)
      for (std::size_t c = 0; c < width; ++c) dst[r * ld + c] = rows[r][c];
  }

  void gaussian_rows(T* out, std::size_t rows, std::size_t cols, std::uint64_t key, std::uint64_t first) const override {
    for (std::size_t r = 0; r < rows; ++r) {
      Rng rng(hash_combine(key, first + r));
      T* row = out + r * cols;
      for (std::size_t i = 0; i < cols; i += 2) {
        const double u = rng.uniform24(), v = rng.uniform24();
        const double radius = std::sqrt(-2.0 * std::log(u)), angle = 2.0 * std::numbers::pi * v;
        row[i] = T(radius * std::cos(angle));
        if (i + 1 < cols) row[i + 1] = T(radius * std::sin(angle));
      }
    }
  }

  void quantize_int8(const float* x, std::size_t ldx, std::size_t n, std::size_t k, float inv_scale, float zero_point, std::uint8_t* xq,
                     std::size_t ldq) const override {
    for (std::size_t r = 0; r < n; ++r)
      for (std::size_t c = 0; c < int8_row_bytes(k); ++c) xq[r * ldq + c] = c < k ? quantize_u8(x[r * ldx + c], inv_scale, zero_point) : 0;
  }

  void int8_dense_forward(const Int8Weights& w, const std::uint8_t* xq, std::size_t ldq, std::size_t n, const Int8Output& out) const override {
    for (std::size_t r = 0; r < n; ++r)
      for (std::size_t j = 0; j < w.m; ++j) {
        std::int32_t acc = 0;
        for (std::size_t p = 0; p < w.k; ++p) acc += std::int32_t(xq[r * ldq + p]) * std::int32_t(w.w[p * w.m + j]);
        const float v = activate(float(acc - w.zero_term[j]) * w.scale[j] + w.bias[j], w.act);
        if (out.y) out.y[r * out.ldy + j] = v;
        else out.q[r * out.ldq + j] = quantize_u8(v, out.inv_scale, out.zero_point);
      }
  }

  void ema_update(T* ema, const T* p, std::size_t count, T decay) const override {
    for (std::size_t i = 0; i < count; ++i) ema[i] = p[i] + decay * (ema[i] - p[i]);
  }

  void adam_update(T* p, const T* g, T* m, T* v, std::size_t count, T lr_t, T beta1, T beta2, T eps_t, T decay,
                   const WeightCopy*) const override {
    for (std::size_t i = 0; i < count; ++i) {
      m[i] = beta1 * m[i] + (T(1) - beta1) * g[i];
      v[i] = beta2 * v[i] + (T(1) - beta2) * g[i] * g[i];
      p[i] = decay * p[i] - lr_t * m[i] / (std::sqrt(v[i]) + eps_t);
    }
  }

 private:
  T op(T x) const { return bf16_ ? T(bf16_widen(bf16_operand(float(x)))) : x; }
  // x [count] as a product reads it
  std::vector<T> operands(const T* x, std::size_t count) const {
    std::vector<T> v(count);
    for (std::size_t i = 0; i < count; ++i) v[i] = op(x[i]);
    return v;
  }

  static std::uint8_t quantize_u8(float x, float inv_scale, float zero_point) {
    const float q = std::nearbyint(x * inv_scale + zero_point);
    return std::uint8_t(std::clamp(q, 0.0f, 255.0f));
  }

  static bool all_finite(const T* x, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i)
      if (!std::isfinite(x[i])) return false;
    return true;
  }

  static void column_sums(const T* dy, T* db, std::size_t n, std::size_t m) {
    for (std::size_t j = 0; j < m; ++j) {
      T s = 0;
      for (std::size_t r = 0; r < n; ++r) s += dy[r * m + j];
      db[j] = s;
    }
  }

  bool bf16_;
};

enum class KernelChoice { reference, parallel };

// The TBB-parallel SIMD float kernels; threads is the size of the task arena they run in. isa names an instruction set
// ("AVX3_BF16", "AVX3", "AVX2", "SSE4", "EMU128", …; "" for the best this CPU runs). AVX3_BF16 is AVX3 with the bf16
// products on the AVX512_BF16 instruction; every other set emulates it, bit for bit.
std::unique_ptr<Kernels<float>> make_parallel_kernels(int threads, const std::string& isa = "", Precision precision = Precision::fp32);
std::unique_ptr<Kernels<float>> make_kernels(KernelChoice choice, int threads, Precision precision = Precision::fp32);
// The instruction sets this binary carries that this CPU runs, best first.
std::vector<std::string> available_isas();

// A throughput ceiling for the benchmarks: `iterations` rounds of independent vector multiply-adds on the calling thread,
// fp32 FMAs or bf16 products on the best instruction set (AMX tile sums where the bf16 product runs on them, else pair
// dot products). Returns the flops done (2 per multiply-add), 0 for bf16 on a CPU without either (its emulation is no
// ceiling).
double peak_loop_flops(Precision precision, std::size_t iterations);
// The same for INT8: native vpdpbusd chains; returns the integer operations done (2 per multiply-add), 0 without VNNI.
double peak_int8_ops(std::size_t iterations);

// The bf16 wire format of gradient sums (--wire bf16), on the best instruction set, single-threaded (they run inside MPI
// progress): out = bf16(x) rounded to nearest even; out = float(h); b = bf16(float(a) + float(b)). vae/bf16.hpp has the
// scalar definition they are tested against; isa as for make_parallel_kernels.
void to_bf16(const float* x, std::uint16_t* out, std::size_t n, const std::string& isa = "");
void from_bf16(const std::uint16_t* h, float* out, std::size_t n, const std::string& isa = "");
void add_bf16(const std::uint16_t* a, std::uint16_t* b, std::size_t n, const std::string& isa = "");

}  // namespace vae
