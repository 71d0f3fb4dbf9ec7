// Shared by the benchmarks: the dense-layer products of a training step, and OpenBLAS doing the same products.
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

// Google Benchmark's main, after the benchmarks are registered.
inline int run_benchmarks(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace vae::bench
