// TBB-parallel float kernels: register-tiled GEMMs with fused epilogues, dispatched at run time to AVX2/FMA or baseline x86-64.
#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/blocked_range2d.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/task_arena.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <vector>

#include "vae/aligned.hpp"
#include "vae/kernels.hpp"

#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define VAE_MULTIVERSION __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define VAE_MULTIVERSION
#endif

namespace vae {
namespace {

constexpr std::size_t kTileRows = 4;
constexpr std::size_t kTileCols = 16;
constexpr std::size_t kBlockRows = 16;
constexpr std::size_t kBlockCols = 64;

enum class Epilogue { bias_act, store, slope };

struct GemmArgs {
  const float* a;        // A(r, p) = a[r*a_rs + p*a_ps]
  std::size_t a_rs, a_ps;
  const float* b;        // B(p, c) = b[p*ldb + c]
  std::size_t ldb;
  float* out;            // out(r, c) = out[r*ldo + c]
  std::size_t ldo;
  std::size_t kdim;
  Epilogue epi;
  const float* bias;     // bias_act: [cols]
  Activation act;        // bias_act: this layer's activation; slope: the previous layer's
  const float* y_prev;   // slope: act' is evaluated on y_prev(r, c) = y_prev[r*ldo + c]
};

inline float finish(const GemmArgs& g, float acc, std::size_t r, std::size_t c) {
  switch (g.epi) {
    case Epilogue::bias_act: return activate(acc + g.bias[c], g.act);
    case Epilogue::store: return acc;
    case Epilogue::slope: return g.y_prev ? acc * activation_slope(g.y_prev[r * g.ldo + c], g.act) : acc;
  }
  return acc;
}

// One block of the output, in full tiles where possible and a plain loop at the edges.
VAE_MULTIVERSION
void gemm_block(const GemmArgs& g, std::size_t r0, std::size_t r1, std::size_t c0, std::size_t c1) {
  std::size_t r = r0;
  for (; r + kTileRows <= r1; r += kTileRows) {
    std::size_t c = c0;
    for (; c + kTileCols <= c1; c += kTileCols) {
      float acc[kTileRows][kTileCols] = {};
      for (std::size_t p = 0; p < g.kdim; ++p) {
        const float* brow = g.b + p * g.ldb + c;
        for (std::size_t i = 0; i < kTileRows; ++i) {
          const float av = g.a[(r + i) * g.a_rs + p * g.a_ps];
          for (std::size_t j = 0; j < kTileCols; ++j) acc[i][j] += av * brow[j];
        }
      }
      for (std::size_t i = 0; i < kTileRows; ++i)
        for (std::size_t j = 0; j < kTileCols; ++j) g.out[(r + i) * g.ldo + c + j] = finish(g, acc[i][j], r + i, c + j);
    }
    for (; c < c1; ++c)
      for (std::size_t i = 0; i < kTileRows; ++i) {
        float s = 0;
        for (std::size_t p = 0; p < g.kdim; ++p) s += g.a[(r + i) * g.a_rs + p * g.a_ps] * g.b[p * g.ldb + c];
        g.out[(r + i) * g.ldo + c] = finish(g, s, r + i, c);
      }
  }
  for (; r < r1; ++r)
    for (std::size_t cc = c0; cc < c1; cc += kBlockCols) {
      float acc[kBlockCols] = {};
      const std::size_t w = std::min(kBlockCols, c1 - cc);
      for (std::size_t p = 0; p < g.kdim; ++p) {
        const float av = g.a[r * g.a_rs + p * g.a_ps];
        const float* brow = g.b + p * g.ldb + cc;
        for (std::size_t j = 0; j < w; ++j) acc[j] += av * brow[j];
      }
      for (std::size_t j = 0; j < w; ++j) g.out[r * g.ldo + cc + j] = finish(g, acc[j], r, cc + j);
    }
}

class ParallelKernels final : public Kernels<float> {
 public:
  explicit ParallelKernels(int threads) : arena_(threads), threads_(threads) {}
  std::string name() const override { return "parallel(" + std::to_string(threads_) + ")"; }

  void dense_forward(const float* x, std::size_t ldx, const float* w, const float* b, float* y, std::size_t n, std::size_t k,
                     std::size_t m, Activation act) const override {
    gemm({x, ldx, 1, w, m, y, m, k, Epilogue::bias_act, b, act, nullptr}, n, m);
  }

  void dense_weight_grad(const float* x, std::size_t ldx, const float* dy, float* dw, float* db, std::size_t n, std::size_t k,
                         std::size_t m) const override {
    gemm({x, 1, ldx, dy, m, dw, m, n, Epilogue::store, nullptr, Activation::identity, nullptr}, k, m);
    arena_.execute([&] {
      tbb::parallel_for(tbb::blocked_range<std::size_t>(0, m, 64), [&](const tbb::blocked_range<std::size_t>& cols) {
        for (std::size_t j = cols.begin(); j < cols.end(); ++j) db[j] = 0;
        for (std::size_t r = 0; r < n; ++r)
          for (std::size_t j = cols.begin(); j < cols.end(); ++j) db[j] += dy[r * m + j];
      });
    });
  }

  void dense_input_grad(const float* dy, const float* w, float* dx, std::size_t ldx, std::size_t n, std::size_t k, std::size_t m,
                        Activation prev_act, const float* y_prev) const override {
    float* wt = transpose_scratch(k * m);
    arena_.execute([&] {
      tbb::parallel_for(tbb::blocked_range2d<std::size_t>(0, k, 32, 0, m, 32), [&](const tbb::blocked_range2d<std::size_t>& blk) {
        for (std::size_t i = blk.rows().begin(); i < blk.rows().end(); ++i)
          for (std::size_t j = blk.cols().begin(); j < blk.cols().end(); ++j) wt[j * k + i] = w[i * m + j];
      });
    });
    gemm({dy, m, 1, wt, k, dx, ldx, m, Epilogue::slope, nullptr, prev_act, y_prev}, n, k);
  }

  double bernoulli_nll(const float* logits, const float* x, std::size_t ldx, float* dlogits, std::size_t n, std::size_t d,
                       float scale) const override {
    double* rows = row_scratch(n);
    arena_.execute([&] {
      tbb::parallel_for(tbb::blocked_range<std::size_t>(0, n, 1), [&](const tbb::blocked_range<std::size_t>& rr) {
        for (std::size_t r = rr.begin(); r < rr.end(); ++r) rows[r] = nll_row(logits + r * d, x + r * ldx, dlogits ? dlogits + r * d : nullptr, d, scale);
      });
    });
    double total = 0;
    for (std::size_t r = 0; r < n; ++r) total += rows[r];
    return total;
  }

  double reparam_kl_forward(const float* head, const float* eps, float* z, std::size_t ldz, std::size_t n,
                            std::size_t latent) const override {
    double kl = 0;
    for (std::size_t r = 0; r < n; ++r) {
      const float* mu = head + r * 2 * latent;
      const float* lv = mu + latent;
      double row = 0;
      for (std::size_t j = 0; j < latent; ++j) {
        const float sd = std::exp(0.5f * lv[j]);
        z[r * ldz + j] = mu[j] + eps[r * latent + j] * sd;
        row += -0.5 * double(1.0f + lv[j] - mu[j] * mu[j] - sd * sd);
      }
      kl += row;
    }
    return kl;
  }

  void reparam_kl_backward(const float* head, const float* eps, const float* dz, std::size_t ldz, float* dhead, std::size_t n,
                           std::size_t latent, float scale, float beta) const override {
    const float sb = scale * beta;
    for (std::size_t r = 0; r < n; ++r) {
      const float* mu = head + r * 2 * latent;
      const float* lv = mu + latent;
      float* dmu = dhead + r * 2 * latent;
      float* dlv = dmu + latent;
      for (std::size_t j = 0; j < latent; ++j) {
        const float g = dz[r * ldz + j], sd = std::exp(0.5f * lv[j]);
        dmu[j] = g + sb * mu[j];
        dlv[j] = g * eps[r * latent + j] * 0.5f * sd + sb * 0.5f * (sd * sd - 1.0f);
      }
    }
  }

  void adam_update(float* p, const float* g, float* m, float* v, std::size_t count, float lr_t, float beta1, float beta2,
                   float eps_t) const override {
    arena_.execute([&] {
      tbb::parallel_for(tbb::blocked_range<std::size_t>(0, count, 16384), [&](const tbb::blocked_range<std::size_t>& rr) {
        adam_range(p, g, m, v, rr.begin(), rr.end(), lr_t, beta1, beta2, eps_t);
      });
    });
  }

 private:
  VAE_MULTIVERSION
  static double nll_row(const float* l, const float* x, float* dl, std::size_t d, float scale) {
    double s = 0;
    for (std::size_t j = 0; j < d; ++j) {
      const float e = std::exp(-std::abs(l[j]));
      s += double(std::max(l[j], 0.0f) - l[j] * x[j] + std::log1p(e));
      if (dl) {
        const float sig = l[j] >= 0 ? 1.0f / (1.0f + e) : e / (1.0f + e);
        dl[j] = scale * (sig - x[j]);
      }
    }
    return s;
  }

  VAE_MULTIVERSION
  static void adam_range(float* p, const float* g, float* m, float* v, std::size_t b, std::size_t e, float lr_t, float beta1, float beta2,
                         float eps_t) {
    for (std::size_t i = b; i < e; ++i) {
      m[i] = beta1 * m[i] + (1.0f - beta1) * g[i];
      v[i] = beta2 * v[i] + (1.0f - beta2) * g[i] * g[i];
      p[i] -= lr_t * m[i] / (std::sqrt(v[i]) + eps_t);
    }
  }

  void gemm(const GemmArgs& g, std::size_t rows, std::size_t cols) const {
    if (rows == 0 || cols == 0) return;
    arena_.execute([&] {
      tbb::parallel_for(tbb::blocked_range2d<std::size_t>(0, rows, kBlockRows, 0, cols, kBlockCols),
                        [&](const tbb::blocked_range2d<std::size_t>& blk) {
                          gemm_block(g, blk.rows().begin(), blk.rows().end(), blk.cols().begin(), blk.cols().end());
                        },
                        tbb::simple_partitioner());
    });
  }

  // Scratch grows on first use only, so steady-state steps never allocate.
  float* transpose_scratch(std::size_t n) const {
    if (wt_.size() < n) wt_ = AlignedBuffer<float>(n);
    return wt_.data();
  }
  double* row_scratch(std::size_t n) const {
    if (rows_.size() < n) rows_ = AlignedBuffer<double>(n);
    return rows_.data();
  }

  mutable tbb::task_arena arena_;
  int threads_;
  mutable AlignedBuffer<float> wt_;
  mutable AlignedBuffer<double> rows_;
};

}  // namespace

std::unique_ptr<Kernels<float>> make_parallel_kernels(int threads) { return std::make_unique<ParallelKernels>(threads); }

std::unique_ptr<Kernels<float>> make_kernels(KernelChoice choice, int threads) {
  if (choice == KernelChoice::reference) return std::make_unique<ReferenceKernels<float>>();
  return make_parallel_kernels(threads);
}

}  // namespace vae
