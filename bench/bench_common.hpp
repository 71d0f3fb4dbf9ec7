// Shared by the benchmarks: the dense-layer and convolution products of a training step, and OpenBLAS doing the dense ones.
#pragma once

#include <benchmark/benchmark.h>
#include <cblas.h>

#include <string>
#include <vector>

#include "vae/config.hpp"
#include "vae/model.hpp"

namespace vae::bench {

enum class Op { forward, weight_grad, input_grad };

inline const char* op_name(Op op) { return op == Op::forward ? "forward" : op == Op::weight_grad ? "weight_grad" : "input_grad"; }

// One matrix product of a training step: Y[B × out] = X[B × in]·W, dW[in × out] = Xᵀ·dY, or dX[B × cols] = dY·Wᵀ.
struct Product {
  std::string layer;
  Op op;
  std::size_t batch, in, out;
  std::size_t cols;  // input_grad: the columns of dX the step needs (dec.0 needs only z's, not the label's)
  Activation act;    // forward: the layer's own; input_grad: the previous layer's
  double flops() const { return 2.0 * double(batch) * double(op == Op::input_grad ? cols : in) * double(out); }
};

inline Config preset_config(const std::string& preset) {
  // MNIST's ten classes, as the trainer would find them in the data
  const char* argv[] = {"bench", "--preset", preset.c_str(), "--classes", "10"};
  return parse_args(5, argv).config;
}

// The 17 products of one step, in the order the step runs them: 6 forward, then per layer backward dW and (except
// for enc.0, whose input is data) dX.
inline std::vector<Product> step_products(const Arch& arch, std::size_t batch) {
  const ParamLayout layout(arch);
  const auto& layers = layout.layers();
  std::vector<Product> all;
  for (const LayerSpec& s : layers) all.push_back({s.name, Op::forward, batch, s.in, s.out, s.out, s.act});
  for (std::size_t l = layers.size(); l-- > 0;) {
    const LayerSpec& s = layers[l];
    all.push_back({s.name, Op::weight_grad, batch, s.in, s.out, s.out, s.act});
    if (l == 0) continue;
    const bool first_dec = l == layout.encoder_layers();
    const std::size_t cols = first_dec ? std::size_t(arch.latent) : s.in;
    all.push_back({s.name, Op::input_grad, batch, s.in, s.out, cols, first_dec ? Activation::identity : layers[l - 1].act});
  }
  return all;
}

// Buffers for one product, filled with small values.
struct Operands {
  explicit Operands(const Product& p)
      : x(p.batch * p.in, 0.01f), w(p.in * p.out, 0.02f), b(p.out, 0.1f), y(p.batch * p.out), dy(p.batch * p.out, 0.03f),
        dw(p.in * p.out), db(p.out), dx(p.batch * p.in), y_prev(p.batch * p.in, 0.5f) {}
  std::vector<float> x, w, b, y, dy, dw, db, dx, y_prev;
};

inline void run_ours(const Kernels<float>& k, const Product& p, Operands& o) {
  switch (p.op) {
    case Op::forward: return k.dense_forward(o.x.data(), p.in, o.w.data(), o.b.data(), o.y.data(), p.batch, p.in, p.out, p.act);
    case Op::weight_grad: k.dense_weight_grad(o.x.data(), p.in, o.dy.data(), o.dw.data(), o.db.data(), p.batch, p.in, p.out); return;
    case Op::input_grad:
      return k.dense_input_grad(o.dy.data(), o.w.data(), o.dx.data(), p.cols, p.batch, p.cols, p.out, p.act,
                                p.act == Activation::identity ? nullptr : o.y_prev.data());
  }
}

// The same product as one cblas_sgemm (no bias, activation or bias gradient: OpenBLAS does less work than we do).
inline void run_openblas(const Product& p, Operands& o) {
  const int B = int(p.batch), in = int(p.in), out = int(p.out), cols = int(p.cols);
  switch (p.op) {
    case Op::forward:
      return cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, out, in, 1.0f, o.x.data(), in, o.w.data(), out, 0.0f, o.y.data(), out);
    case Op::weight_grad:
      return cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, in, out, B, 1.0f, o.x.data(), in, o.dy.data(), out, 0.0f, o.dw.data(),
                         out);
    case Op::input_grad:
      return cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, cols, out, 1.0f, o.dy.data(), out, o.w.data(), out, 0.0f,
                         o.dx.data(), cols);
  }
}

// One convolution product of the conv model's step: y = act(conv(x, W) + b), dW and db, or dx = conv's adjoint(dy) ⊙ act'.
struct ConvProduct {
  std::string layer;
  Op op;
  std::size_t batch;
  ConvShape shape;
  Activation act;  // forward: the layer's own; input_grad: the previous layer's
  // 2·k²·in_c·out_c per output position of the equivalent convolution, as cuDNN and PyTorch's profiler count it (taps in
  // the padding included); the three products of a layer do the same work.
  double flops() const {
    const ConvShape c = shape.as_convolution();
    return 2.0 * double(batch) * double(c.weight_count()) * double(c.out_h() * c.out_w());
  }
};

// The convolution products of one step in the order it runs them: forward, then backward dW and (except for the first
// layer, whose input is the image) dx.
inline std::vector<ConvProduct> conv_step_products(const Arch& arch, std::size_t batch) {
  const ParamLayout layout(arch);
  const auto& layers = layout.layers();
  std::vector<ConvProduct> all;
  for (const LayerSpec& s : layers)
    if (s.conv) all.push_back({s.name, Op::forward, batch, *s.conv, s.act});
  for (std::size_t l = layers.size(); l-- > 0;) {
    if (!layers[l].conv) continue;
    all.push_back({layers[l].name, Op::weight_grad, batch, *layers[l].conv, layers[l].act});
    if (l > 0) all.push_back({layers[l].name, Op::input_grad, batch, *layers[l].conv, layers[l - 1].act});
  }
  return all;
}

struct ConvOperands {
  explicit ConvOperands(const ConvProduct& p)
      : x(p.batch * p.shape.in_size(), 0.01f), w(p.shape.weight_count(), 0.02f), b(p.shape.out_c, 0.1f), y(p.batch * p.shape.out_size()),
        dy(p.batch * p.shape.out_size(), 0.03f), dw(p.shape.weight_count()), db(p.shape.out_c), dx(p.batch * p.shape.in_size()),
        y_prev(p.batch * p.shape.in_size(), 0.5f) {}
  std::vector<float> x, w, b, y, dy, dw, db, dx, y_prev;
};

inline void run_conv(const Kernels<float>& k, const ConvProduct& p, ConvOperands& o) {
  switch (p.op) {
    case Op::forward: return k.conv_forward(p.shape, o.x.data(), o.w.data(), o.b.data(), o.y.data(), p.batch, p.act);
    case Op::weight_grad:
      k.conv_weight_grad(p.shape, o.x.data(), o.dy.data(), o.dw.data(), o.db.data(), p.batch, 0, p.shape.weight_rows());
      return;
    case Op::input_grad: return k.conv_input_grad(p.shape, o.dy.data(), o.w.data(), o.dx.data(), p.batch, p.act, o.y_prev.data());
  }
}

// Google Benchmark's main, after the benchmarks are registered.
inline int run_benchmarks(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace vae::bench
