// TBB driver of the SIMD kernels: splits each product into cache-sized blocks and runs them in the rank's task arena (or in order, in a single-threaded build).
#if !VAE_SINGLE_THREADED
#include <oneapi/tbb/blocked_range.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/task_arena.h>
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <utility>

#include "conv_patches.hpp"
#include "simd_ops.hpp"
#include "vae/aligned.hpp"
#include "vae/kernels.hpp"
#include "vae/rng.hpp"

namespace vae {
namespace {

#if VAE_SINGLE_THREADED
// A build without threads (WebAssembly without SharedArrayBuffer): the same tasks, run in order on the calling thread.
class TaskPool {
 public:
  explicit TaskPool(int /*threads*/) {}
  // body(begin, end) over [0, n) in pieces of about `grain` (exactly `grain` when `exact`: the product's own split).
  template <class Body>
  void run(std::size_t n, std::size_t grain, const Body& body, bool /*exact*/ = false) const {
    for (std::size_t b = 0; b < n; b += grain) body(b, std::min(n, b + grain));
  }
  std::size_t slot() const { return 0; }  // the running thread's index in the pool
};
#else
#if defined(__SANITIZE_THREAD__)
extern "C" void __tsan_acquire(void* address);
extern "C" void __tsan_release(void* address);
#endif

// The kernels' threads: a TBB task arena of the rank's size. TBB hands the tasks to its threads inside its own library,
// where ThreadSanitizer cannot see: under TSan each task acquires what the caller released before they started, and the
// caller acquires what every task released, the ordering TBB gives but a sanitizer would otherwise miss.
class TaskPool {
 public:
  explicit TaskPool(int threads) : arena_(threads) {}
  // body(begin, end) over [0, n) in pieces of about `grain` (exactly `grain` when `exact`: the product's own split).
  template <class Body>
  void run(std::size_t n, std::size_t grain, const Body& body, bool exact = false) const {
    arena_.execute([&] {
      const tbb::blocked_range<std::size_t> range(0, n, grain);
      auto task = [&](const tbb::blocked_range<std::size_t>& r) {
#if defined(__SANITIZE_THREAD__)
        __tsan_acquire(&edge_);
        body(r.begin(), r.end());
        __tsan_release(&edge_);
#else
        body(r.begin(), r.end());
#endif
      };
#if defined(__SANITIZE_THREAD__)
      __tsan_release(&edge_);
#endif
      if (exact) tbb::parallel_for(range, task, tbb::simple_partitioner());
      else tbb::parallel_for(range, task);
#if defined(__SANITIZE_THREAD__)
      __tsan_acquire(&edge_);
#endif
    });
  }
  // The running thread's index in the pool; 0 on the caller outside it (a product small enough to run there alone).
  std::size_t slot() const {
    const int i = tbb::this_task_arena::current_thread_index();
    return i < 0 ? 0 : std::size_t(i);
  }

 private:
  mutable tbb::task_arena arena_;
#if defined(__SANITIZE_THREAD__)
  mutable char edge_ = 0;
#endif
};
#endif

constexpr std::size_t kTaskFlops = 1u << 19;    // below this many multiply-adds a task costs more to schedule than to run
constexpr std::size_t kRowsPerTask = 16;        // rows of the loss and reparameterisation per task
constexpr std::size_t kSerialElements = 1u << 15;  // below this many elements a row-wise pass runs on the calling thread
constexpr std::size_t kGatherAhead = 4;            // rows of a gather whose lines are requested before the row is copied
constexpr std::size_t kCacheLine = 64;
constexpr std::size_t kAdamChunk = 1u << 14;    // floats per Adam task
constexpr std::size_t kCopyRows = 16;           // a weight row block the bf16 copy transposes in registers (its widest)
constexpr std::size_t kMaxGaussianCols = 256;   // normals made per call of the SIMD transform (even)
constexpr std::size_t kPackRows = 16;           // rows (or row pairs) of a bf16 operand packed per task
constexpr std::size_t kConvGroup = 4;           // images whose weight-gradient products one task adds up in one partial sum

// C[M × N] = A[M × K] · B[K × N] followed by an epilogue, with A and B given in any of the layouts the model needs.
struct Gemm {
  enum class ASource { rows, cols, image, image_trans };
  ASource a_source = ASource::rows;
  const float* a = nullptr;  // rows: A(i, p) = a[i·lda + p]; cols: A(i, p) = a[p·lda + i]
  std::size_t lda = 0;
  const ImageBatch* image = nullptr;  // image: A(i, p) = image(i, p); image_trans: A(i, p) = image(p, i)
  const float* b = nullptr;
  std::size_t ldb = 0;
  bool b_trans = false;  // B(p, j) = b_trans ? b[j·ldb + p] : b[p·ldb + j]
  float* c = nullptr;
  std::size_t ldc = 0;
  std::size_t M = 0, N = 0, K = 0;
  simd::Epilogue epi = simd::Epilogue::none;
  const float* bias = nullptr;
  Activation act = Activation::identity;
  const float* y = nullptr;
  std::size_t ldy = 0;
  float* b_col_sums = nullptr;  // if set: Σ_p B(p, j) for every column (the bias gradient of dW = xᵀ·dy)
  bool check_finite = false;    // note any NaN or ±Inf written to C in the per-thread flags
};

// A spinning thread's hint to the core that it waits (x86 pause, Arm yield).
inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Splits [0, n) into `parts` nearly equal contiguous ranges; returns range i.
std::pair<std::size_t, std::size_t> split(std::size_t n, std::size_t parts, std::size_t i) { return {n * i / parts, n * (i + 1) / parts}; }

class ParallelKernels final : public Kernels<float> {
 public:
  ParallelKernels(int threads, const simd::Ops& ops, Precision precision)
      : pool_(threads), threads_(std::size_t(threads)), ops_(ops), bf16_(precision == Precision::bf16) {}

  std::string name() const override { return std::string("simd ") + ops_.target + (bf16_ ? ", bf16 products" : ""); }

  std::size_t workspace_bytes(std::size_t max_rows, std::size_t max_dim, const ConvSizes& conv) const override {
    Arena probe = Arena::measure();
    carve(probe, max_rows, max_dim, conv);
    return probe.used();
  }

  void bind_workspace(std::span<std::byte> memory, std::size_t max_rows, std::size_t max_dim, const ConvSizes& conv) override {
    Arena arena = Arena::over(memory);
    ws_ = carve(arena, max_rows, max_dim, conv);
    max_rows_ = max_rows;
    panel_floats_ = panel_floats(max_rows, max_dim, conv);
    conv_ = conv;
  }

  void set_progress_hook(ProgressHook hook, void* context) override {
    hook_ = hook;
    hook_context_ = context;
  }

  void dense_forward(const float* x, std::size_t ldx, const float* w, const float* b, float* y, std::size_t n, std::size_t k, std::size_t m,
                     Activation act) const override {
    Gemm g;
    g.a = x;
    g.lda = ldx;
    forward_into(g, w, b, y, n, k, m, act);
  }

  void dense_forward_image(const ImageBatch& x, const float* w, const float* b, float* y, std::size_t n, std::size_t m,
                           Activation act) const override {
    Gemm g;
    g.a_source = Gemm::ASource::image;
    g.image = &x;
    forward_into(g, w, b, y, n, x.cols(), m, act);
  }

  bool dense_weight_grad(const float* x, std::size_t ldx, const float* dy, float* dw, float* db, std::size_t n, std::size_t k,
                         std::size_t m) const override {
    Gemm g;
    g.a_source = Gemm::ASource::cols;
    g.a = x;
    g.lda = ldx;
    return weight_grad_into(g, dy, dw, db, n, k, m);
  }

  bool dense_weight_grad_image(const ImageBatch& x, const float* dy, float* dw, float* db, std::size_t n, std::size_t m) const override {
    Gemm g;
    g.a_source = Gemm::ASource::image_trans;
    g.image = &x;
    return weight_grad_into(g, dy, dw, db, n, x.cols(), m);
  }

  void dense_input_grad(const float* dy, const float* w, float* dx, std::size_t ldx, std::size_t n, std::size_t k, std::size_t m,
                        Activation prev_act, const float* y_prev) const override {
    // dx [n × k] = dy [n × m] · wᵀ, with w [k × m]: B(p, j) = w[j·m + p]
    Gemm g;
    g.a = dy;
    g.lda = m;
    g.b = w;
    g.ldb = m;
    g.b_trans = true;
    g.c = dx;
    g.ldc = ldx;
    g.M = n;
    g.N = k;
    g.K = m;
    if (y_prev) {
      g.epi = simd::Epilogue::slope;
      g.act = prev_act;
      g.y = y_prev;
      g.ldy = ldx;
    }
    run(g);
  }

  void quantize_int8(const float* x, std::size_t ldx, std::size_t n, std::size_t k, float inv_scale, float zero_point, std::uint8_t* xq,
                     std::size_t ldq) const override {
    const std::size_t k4 = int8_row_bytes(k) / 4;
    auto rows = [&](std::size_t r0, std::size_t r1) { ops_.quantize_rows(x, ldx, r0, r1, k, k4, inv_scale, zero_point, xq, ldq); };
    if (n <= 1) return rows(0, n);
    for_rows(n, rows, k);
  }

  std::size_t int8_packed_words(std::size_t k, std::size_t m) const override {
    return round_up(m, ops_.nr) * (int8_row_bytes(k) / 4);
  }

  void pack_int8_weights(const std::int8_t* w, std::size_t k, std::size_t m, std::uint32_t* packed) const override {
    const std::size_t nr = ops_.nr, k4 = int8_row_bytes(k) / 4;
    for (std::size_t j0 = 0; j0 < m; j0 += nr) ops_.pack_int8_panel(w, k, m, j0, k4, packed + (j0 / nr) * k4 * nr);
  }

  void int8_dense_forward(const Int8Weights& w, const std::uint8_t* xq, std::size_t ldq, std::size_t n, const Int8Output& out) const override {
    if (!w.packed) throw std::logic_error("INT8 weights used before pack_int8_weights");
    if (ldq % 4 != 0 || reinterpret_cast<std::uintptr_t>(xq) % 4 != 0) throw std::logic_error("INT8 rows must be whole quads");
    simd::Int8Block g;
    g.a = reinterpret_cast<const std::uint32_t*>(xq);
    g.lda = ldq / 4;
    g.b = w.packed;
    g.k4 = int8_row_bytes(w.k) / 4;
    g.scale = w.scale;
    g.zero_term = w.zero_term;
    g.bias = w.bias;
    g.act = w.act;
    g.y = out.y;
    g.ldy = out.ldy;
    g.q = out.q;
    g.ldq = out.ldq;
    g.inv_out = out.inv_scale;
    g.zero_out = out.zero_point;
    auto block = [&](std::size_t i0, std::size_t i1, std::size_t j0, std::size_t j1) {
      simd::Int8Block b = g;
      b.i0 = i0;
      b.i1 = i1;
      b.j0 = j0;
      b.j1 = j1;
      ops_.int8_block(b);
    };
    if (n == 0) return;
    Gemm shape;
    shape.M = n;
    shape.N = w.m;
    shape.K = w.k / 4 + 1;  // a quad costs about what one fp32 multiply-add does
    run_blocks(shape, block);
  }

  void dense_forward_stack(std::span<const DenseCall<float>> layers, std::size_t n) const override {
    const bool empty = std::any_of(layers.begin(), layers.end(), [](const DenseCall<float>& c) { return c.k == 0 || c.m == 0; });
    if (n != 1 || threads_ == 1 || threads_ > kMaxStackParts || bf16_ || layers.size() > kMaxStack || ws_.b_pack.empty() || empty)
      return Kernels<float>::dense_forward_stack(layers, n);
    check_stack(layers);
    one_row_stack(layers);
  }

  // A convolution runs as one image's products per task (ConvShape::as_convolution: a transpose is the adjoint of a
  // convolution with its W), so no result depends on how images fall on threads.
  void conv_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y, std::size_t n,
                    Activation act) const override {
    ConvEpilogue e{simd::Epilogue::row_bias_act, b, act, nullptr};
    if (s.transposed) scatter_product(s.as_convolution(), x, w, y, n, e);
    else gather_product(s, x, w, y, n, e);
  }

  void conv_input_grad(const ConvShape& s, const float* dy, const float* w, float* dx, std::size_t n, Activation prev_act,
                       const float* y_prev) const override {
    ConvEpilogue e{y_prev ? simd::Epilogue::slope : simd::Epilogue::none, nullptr, prev_act, y_prev};
    if (s.transposed) gather_product(s.as_convolution(), dy, w, dx, n, e);
    else scatter_product(s, dy, w, dx, n, e);
  }

  bool conv_weight_grad(const ConvShape& s, const float* x, const float* dy, float* dw, float* db, std::size_t n, std::size_t r0,
                        std::size_t r1) const override {
    // the convolution's output side (dy of a convolution, x of a transpose) times its input side's patches
    const ConvShape c = s.as_convolution();
    weight_product(c, s.transposed ? x : dy, s.transposed ? dy : x, dw, n, r0, r1);
    bool finite = r1 == r0 || ops_.all_finite(dw, 0, (r1 - r0) * c.in_c * c.k * c.k);
    if (db) {
      const std::size_t plane = s.out_h() * s.out_w(), out = s.out_size();
      pool_.run(s.out_c, 1, [&](std::size_t c0, std::size_t c1) {
        for (std::size_t ch = c0; ch < c1; ++ch) {
          float sum = 0;
          for (std::size_t r = 0; r < n; ++r)
            for (std::size_t p = 0; p < plane; ++p) sum += dy[r * out + ch * plane + p];
          db[ch] = sum;
        }
      });
      finite = finite && ops_.all_finite(db, 0, s.out_c);
    }
    return finite;
  }

  double bernoulli_nll(const float* logits, const ImageBatch& x, float* dlogits, std::size_t n, float scale,
                       double* row_nll) const override {
    check_rows(n);
    const ShadowAt ds = dlogits ? whole_rows_shadow(dlogits, x.width) : ShadowAt{};
    for_rows(n, [&](std::size_t r0, std::size_t r1) {
      ops_.bernoulli_rows(logits, x, dlogits, r0, r1, scale, ws_.row_sums.data());
      write_shadow(ds, dlogits, r0, r1);
    }, x.width);
    if (row_nll) std::copy_n(ws_.row_sums.data(), n, row_nll);
    return ordered_sum(n);
  }

  void bernoulli_nll_rows(const float* logits, const ImageBatch& x, double* out, std::size_t n) const override {
    for_rows(n, [&](std::size_t r0, std::size_t r1) { ops_.bernoulli_rows(logits, x, nullptr, r0, r1, 0.0f, out); }, x.width);
  }

  double reparam_kl_forward(const float* head, const float* eps, float* z, std::size_t ldz, std::size_t n,
                            std::size_t latent) const override {
    check_rows(n);
    for_rows(n, [&](std::size_t r0, std::size_t r1) { ops_.reparam_forward(head, eps, z, ldz, r0, r1, latent, ws_.row_sums.data()); },
             latent);
    return ordered_sum(n);
  }

  void reparam_kl_backward(const float* head, const float* eps, const float* dz, std::size_t ldz, float* dhead, std::size_t n,
                           std::size_t latent, float scale, float beta) const override {
    const ShadowAt ds = whole_rows_shadow(dhead, 2 * latent);
    for_rows(n, [&](std::size_t r0, std::size_t r1) {
      ops_.reparam_backward(head, eps, dz, ldz, dhead, r0, r1, latent, scale, beta);
      write_shadow(ds, dhead, r0, r1);
    }, latent);
  }

  void gather_rows(std::span<const std::uint8_t* const> rows, std::size_t width, std::uint8_t* dst, std::size_t ld) const override {
    // A shuffled batch's rows lie anywhere in a data set far larger than the cache, and a copy that waits for each row's
    // lines in turn spends most of its time waiting: each task asks for its rows' lines kGatherAhead rows before it
    // copies them, and the tasks share the rows.
    for_rows(rows.size(), [&](std::size_t r0, std::size_t r1) {
      auto request = [&](std::size_t r) {
        for (std::size_t b = 0; b < width; b += kCacheLine) __builtin_prefetch(rows[r] + b);
      };
      for (std::size_t r = r0; r < std::min(r1, r0 + kGatherAhead); ++r) request(r);
      for (std::size_t r = r0; r < r1; ++r) {
        if (r + kGatherAhead < r1) request(r + kGatherAhead);
        std::memcpy(dst + r * ld, rows[r], width);
      }
    }, width);
  }

  void gaussian_rows(float* out, std::size_t rows, std::size_t cols, std::uint64_t key, std::uint64_t first) const override {
    for_rows(rows, [&](std::size_t r0, std::size_t r1) {
      float u[kMaxGaussianCols + 1];
      float z[kMaxGaussianCols + 1];
      for (std::size_t r = r0; r < r1; ++r) {
        Rng rng(hash_combine(key, first + r));
        for (std::size_t c0 = 0; c0 < cols; c0 += kMaxGaussianCols) {
          const std::size_t n = std::min(kMaxGaussianCols, cols - c0), pairs = (n + 1) / 2;
          for (std::size_t i = 0; i < 2 * pairs; ++i) u[i] = rng.uniform24();
          ops_.box_muller(u, z, 2 * pairs);
          std::copy_n(z, n, out + r * cols + c0);
        }
      }
    }, 8 * cols);
  }

  void adam_update(float* p, const float* g, float* m, float* v, std::size_t count, float lr_t, float beta1, float beta2, float eps_t,
                   float decay, const WeightCopy* copy) const override {
    const std::size_t base = copy ? std::size_t(p - copy->params) : 0;
    // Chunk c starts at c·kAdamChunk moved back to a multiple of kCopyRows rows of the copied layer it falls in, so the
    // copy writes whole row blocks (transposed in registers) and not the rows at the chunk's edges one element at a time.
    auto start = [&](std::size_t c) {
      const std::size_t at = std::min(count, c * kAdamChunk);
      if (!copy || at == count) return at;
      for (const WeightCopy::Layer& l : copy->layers) {
        const std::size_t e = base + at;
        if (e < l.w_offset || e >= l.w_offset + l.k * l.m) continue;
        const std::size_t row = (e - l.w_offset) / l.m;
        return std::max(base, l.w_offset + (row - row % kCopyRows) * l.m) - base;
      }
      return at;
    };
    pool_.run((count + kAdamChunk - 1) / kAdamChunk, 1, [&](std::size_t c0, std::size_t c1) {
      for (std::size_t c = c0; c < c1; ++c) {
        const std::size_t begin = start(c), end = start(c + 1);
        if (begin == end) continue;
        if (hook_ && std::this_thread::get_id() == caller_) hook_(hook_context_);
        ops_.adam(p, g, m, v, begin, end, lr_t, beta1, beta2, eps_t, decay);
        // the chunk's new weights, still in this core's cache, into their bf16 form
        if (copy) copy_weights(*copy, base + begin, base + end);
      }
    }, true);
  }

  void ema_update(float* ema, const float* p, std::size_t count, float decay) const override {
    pool_.run((count + kAdamChunk - 1) / kAdamChunk, 1, [&](std::size_t c0, std::size_t c1) {
      ops_.ema(ema, p, c0 * kAdamChunk, std::min(count, c1 * kAdamChunk), decay);
    });
  }

  std::size_t bf16_panel_words(std::size_t k, std::size_t m) const override {
    return bf16_ ? round_up(m, ops_.nr) * pairs(k) : 0;
  }

  void refresh_weight_copy(const WeightCopy& copy) const override {
    const std::size_t nr = ops_.nr;
    for (const WeightCopy::Layer& l : copy.layers) {
      const float* w = copy.params + l.w_offset;
      const std::size_t fwd_panels = (l.m + nr - 1) / nr, trans_panels = l.transposed ? (l.k + nr - 1) / nr : 0;
      pool_.run(fwd_panels + trans_panels, 1, [&](std::size_t first, std::size_t last) {
        for (std::size_t t = first; t < last; ++t)
          if (t < fwd_panels) pack_b_panel(w, l.m, false, l.k, l.m, t, copy.words + l.fwd);
          else pack_b_panel(w, l.m, true, l.m, l.k, t - fwd_panels, copy.words + l.trans);
      });
    }
  }

  void bind_weight_copy(const WeightCopy* copy) override { copy_ = copy; }

  // [row form: rows × pairs(cols) | pair form: pairs(rows) × round_up(cols, NR)], each 64-byte aligned. AMX reads its A
  // in blocks past the rows it is given and only ever in the row form, so it packs its operands itself.
  std::size_t bf16_shadow_words(std::size_t rows, std::size_t cols) const override {
    if (!bf16_ || ops_.bf16_m_block > 1 || ops_.bf16_k_block > 1) return 0;
    return round_up(rows * pairs(cols), kWordsPerLine) + round_up(pairs(rows) * round_up(cols, ops_.nr), kWordsPerLine);
  }

  void bind_bf16_shadows(std::span<const Bf16Shadow<float>> shadows) override {
    if (!shadows.empty() && bf16_shadow_words(1, 1) == 0) throw std::logic_error("bf16 shadows bound to kernels that keep none");
    shadows_.assign(shadows.begin(), shadows.end());
  }

 private:
  struct Workspace {
    std::span<float> a_pack;     // the first layer's image input in MR-row panels: [round_up(rows, MR) × K]
    std::span<float> b_pack;     // per thread: one packed B panel, [K × NR]
    std::span<double> row_sums;  // [max_rows]
    std::span<bool> nonfinite;   // one flag per thread, a cache line apart: [threads × kFlagStride]
    std::span<std::uint32_t> a16;  // bf16 products: A in pairs
    std::span<std::uint32_t> b16;  // bf16 products: B in NR-column panels of pairs
    std::span<float> patches;      // convolutions, per thread: a group's patch matrices and output images (slot_floats)
    std::span<float> partials;     // convolutions: the weight gradient's partial sums past the first group's
    std::span<std::uint32_t> conv16;  // bf16 convolutions, per thread: a product's operands in pairs (slot16_words)
  };

  // Sized for the largest product of the model: A is at most max_rows × max_dim, or its transpose.
  Workspace carve(Arena& arena, std::size_t max_rows, std::size_t max_dim, const ConvSizes& conv) const {
    const std::size_t mr = ops_.mr;
    Workspace w;
    w.a_pack = arena.take<float>(std::max(round_up(max_rows, mr) * max_dim, round_up(max_dim, mr) * max_rows));
    w.b_pack = arena.take<float>(threads_ * panel_floats(max_rows, max_dim, conv));
    if (conv.patch) {
      w.patches = arena.take<float>(threads_ * slot_floats(conv));
      w.partials = arena.take<float>(conv_groups(max_rows) * conv.weights);
    }
    w.row_sums = arena.take<double>(max_rows);
    w.nonfinite = arena.take<bool>(threads_ * kFlagStride);
    if (bf16_) {
      // A: [rows padded to the product's blocks × pairs padded likewise], either way round; B: panels × pairs
      const std::size_t mb = ops_.bf16_m_block, kb = ops_.bf16_k_block, big = std::max({max_rows, max_dim, conv.depth});
      w.a16 = arena.take<std::uint32_t>((round_up(big, mb) + mb) * round_up((big + 1) / 2, kb));
      w.b16 = arena.take<std::uint32_t>(round_up(max_dim, ops_.nr) * round_up((big + 1) / 2, kb));
      if (conv.patch) w.conv16 = arena.take<std::uint32_t>(threads_ * slot16_words(conv));
    }
    return w;
  }

  // A packed B panel is K × NR with K a layer width (forward, input gradient), the batch (weight gradient), a
  // convolution's depth or a group's positions (a convolution's weight gradient).
  std::size_t panel_floats(std::size_t max_rows, std::size_t max_dim, const ConvSizes& conv) const {
    return std::max({max_rows, max_dim, conv.depth, kConvGroup * conv.positions}) * ops_.nr;
  }
  // A thread's convolution scratch: the patch rows of a group of images, then their output sides side by side; or one
  // image's patch matrix with its rows padded to whole panels (at most K·(NR − 1) floats more).
  std::size_t slot_floats(const ConvSizes& conv) const {
    return round_up(std::max(kConvGroup * (conv.patch + conv.image), conv.patch + conv.depth * ops_.nr), kAlign / sizeof(float));
  }
  static std::size_t conv_groups(std::size_t n) { return (n + kConvGroup - 1) / kConvGroup; }
  // A thread's bf16 convolution scratch: one image's patches or output side as B panels (K or the channels in pairs), or
  // a weight gradient's A (its rows of a group's output sides, in pairs along the group's positions) and B panels.
  std::size_t slot16_words(const ConvSizes& conv) const {
    const std::size_t nr = ops_.nr, depth = pairs(kConvGroup * conv.positions);
    const std::size_t image = pairs(conv.depth) * round_up(conv.positions, nr);
    const std::size_t group = round_up(a16_rows(conv.channels) * depth, kWordsPerLine) + depth * round_up(conv.depth, nr);
    return round_up(std::max(image, group), kWordsPerLine);
  }
  // Rows of a bf16 A of `rows` rows as the product reads them: AMX reads whole blocks, and one block past the last.
  std::size_t a16_rows(std::size_t rows) const { return ops_.bf16_m_block > 1 ? round_up(rows, ops_.bf16_m_block) + ops_.bf16_m_block : rows; }

  // How a convolution's product ends: the epilogue, with a bias per output channel or the previous layer's output.
  struct ConvEpilogue {
    simd::Epilogue epi = simd::Epilogue::none;
    const float* bias = nullptr;
    Activation act = Activation::identity;
    const float* y_prev = nullptr;
  };

  void check_conv(const ConvShape& c, std::size_t n) const {
    if (c.patch_floats() > conv_.patch || c.weight_count() > conv_.weights || n > max_rows_)
      throw std::logic_error("kernel workspace is not bound for " + c.describe() + " on " + std::to_string(n) + " images");
  }
  float* slot_patches() const { return ws_.patches.data() + pool_.slot() * slot_floats(conv_); }
  std::uint32_t* slot16() const { return ws_.conv16.data() + pool_.slot() * slot16_words(conv_); }
  void progress() const {
    if (hook_ && std::this_thread::get_id() == caller_) hook_(hook_context_);
  }
  // Tasks per image: one when there are images enough for every thread, else the image's rows split across threads.
  std::size_t conv_parts(std::size_t n, std::size_t rows) const { return n >= threads_ ? 1 : std::min(threads_, rows); }

  // Rows [i0, i1) of one image's output, [channels × cols] from images + offset, and the epilogue.
  static simd::GemmBlock conv_out(const ConvEpilogue& e, float* images, std::size_t offset, std::size_t cols, std::size_t i0, std::size_t i1) {
    return {.c = images + offset, .ldc = cols, .i0 = i0, .i1 = i1, .j1 = cols, .epi = e.epi, .bias = e.bias, .act = e.act,
            .y = e.y_prev ? e.y_prev + offset : nullptr, .ldy = cols};
  }

  // small = W · patches(big), per image: a convolution's forward (big = x) or a transpose's input gradient (big = dy).
  // bf16: W rounded into rows of pairs once, in a16; each image's patches into B panels, per task.
  //                       c a convolution; big [n × c.in_size()], w [c.out_c × K], small [n × c.out_size()]
  void gather_product(const ConvShape& c, const float* big, const float* w, float* small, std::size_t n, const ConvEpilogue& e) const {
    check_conv(c, n);
    const std::size_t K = c.in_c * c.k * c.k, P = c.out_h() * c.out_w(), tiles = (c.out_c + ops_.mr - 1) / ops_.mr;
    const std::size_t parts = conv_parts(n, tiles), k2 = pairs(K);
    if (bf16_) ops_.bf16_rows({w, K, nullptr, c.out_c, K}, 0, a16_rows(c.out_c), k2, ws_.a16.data(), k2);
    pool_.run(n * parts, 1, [&](std::size_t first, std::size_t last) {
      for (std::size_t t = first; t < last; ++t) {
        progress();
        const std::size_t r = t / parts;
        const auto [q0, q1] = split(tiles, parts, t % parts);
        float* patches = slot_patches();
        const std::size_t ld = round_up(P, ops_.nr);  // padded with zeros to whole panels, which the product reads in place
        im2col(c, big + r * c.in_size(), patches, ld);
        const simd::GemmBlock out = conv_out(e, small, r * c.out_size(), P, q0 * ops_.mr, std::min(c.out_c, q1 * ops_.mr));
        if (out.i1 == out.i0) continue;
        if (bf16_) {
          std::uint32_t* panels = slot16();
          for (std::size_t p = 0; p < ld / ops_.nr; ++p) pack_b_panel(patches, ld, false, K, P, p, panels);
          ops_.gemm_bf16_block({.a = ws_.a16.data(), .lda = k2, .b = panels, .k2 = k2, .out = out});
          continue;
        }
        simd::GemmBlock g = out;
        g.a = w;
        g.lda = K;
        g.b = patches;
        g.ldb = ld;
        g.b_padded = true;
        g.bpack = ws_.b_pack.data() + pool_.slot() * panel_floats_;
        g.k = K;
        ops_.gemm_block(g);
      }
    }, true);
  }

  // big = the patches Wᵀ · small added back into the image (col2im), then the epilogue, per image: a convolution's input
  // gradient (small = dy) or a transpose's forward (small = x). An image split across threads is split by input
  // channel, whose patch rows add into that channel's plane alone. bf16: Wᵀ rounded into rows of pairs along the output
  // channels once, in a16; each image's small side into B panels, per task.
  //                       c a convolution; small [n × c.out_size()], w [c.out_c × K], big [n × c.in_size()]
  void scatter_product(const ConvShape& c, const float* small, const float* w, float* big, std::size_t n, const ConvEpilogue& e) const {
    check_conv(c, n);
    const std::size_t kk = c.k * c.k, K = c.in_c * kk, P = c.out_h() * c.out_w(), plane = c.in_h * c.in_w;
    const std::size_t parts = conv_parts(n, c.in_c), k2 = pairs(c.out_c);
    if (bf16_) ops_.bf16_pairs_rows({w, K, nullptr, c.out_c, K}, 0, a16_rows(K), k2, ws_.a16.data(), k2);
    pool_.run(n * parts, 1, [&](std::size_t first, std::size_t last) {
      for (std::size_t t = first; t < last; ++t) {
        progress();
        const std::size_t r = t / parts;
        const auto [ch0, ch1] = split(c.in_c, parts, t % parts);
        if (ch1 == ch0) continue;
        float* patches = slot_patches();
        const simd::GemmBlock out{.c = patches, .ldc = P, .i0 = ch0 * kk, .i1 = ch1 * kk, .j1 = P};
        const float* side = small + r * c.out_size();
        if (bf16_) {
          std::uint32_t* panels = slot16();
          for (std::size_t p = 0; p < (P + ops_.nr - 1) / ops_.nr; ++p) pack_b_panel(side, P, false, c.out_c, P, p, panels);
          ops_.gemm_bf16_block({.a = ws_.a16.data(), .lda = k2, .b = panels, .k2 = k2, .out = out});
        } else {
          simd::GemmBlock g = out;
          g.a = w;  // A(q, o) = W(o, q): W read down its columns
          g.lda = K;
          g.layout = simd::ALayout::cols;
          g.b = side;
          g.ldb = P;
          g.bpack = ws_.b_pack.data() + pool_.slot() * panel_floats_;
          g.k = c.out_c;
          ops_.gemm_block(g);
        }
        float* img = big + r * c.in_size();
        col2im(c, patches, img, ch0, ch1);
        if (e.epi != simd::Epilogue::none) ops_.apply_epilogue(conv_out(e, big, r * c.in_size(), plane, ch0, ch1));
      }
    }, true);
  }

  // dw rows [r0, r1) = Σ_images small[r0:r1] · rows(big), rows = im2row, the images in groups of kConvGroup: each group
  // one product whose sum runs over its images' positions in image order (A = their rows [r0, r1) of small side by side,
  // B = their patch rows stacked), so C is written once per group rather than once per image; the first group's product
  // goes straight into dw, the others into partial sums, which are then added to dw in group order. A group split
  // across threads is split by columns of dw.
  //                       c a convolution; small [n × c.out_size()], big [n × c.in_size()], dw [(r1 − r0) × K]
  void weight_product(const ConvShape& c, const float* small, const float* big, float* dw, std::size_t n, std::size_t r0,
                      std::size_t r1) const {
    check_conv(c, n);
    const std::size_t K = c.in_c * c.k * c.k, P = c.out_h() * c.out_w(), M = r1 - r0, size = M * K;
    if (M == 0) return;
    if (n == 0) {
      std::fill_n(dw, size, 0.0f);
      return;
    }
    const std::size_t groups = conv_groups(n), panels = (K + ops_.nr - 1) / ops_.nr;
    const std::size_t parts = groups >= threads_ ? 1 : std::min(panels, (threads_ + groups - 1) / groups);
    pool_.run(groups * parts, 1, [&](std::size_t first, std::size_t last) {
      for (std::size_t t = first; t < last; ++t) {
        const std::size_t grp = t / parts;
        const auto [p0, p1] = split(panels, parts, t % parts);
        if (p1 == p0) continue;
        progress();
        const std::size_t i0 = grp * kConvGroup, images = std::min(n, i0 + kConvGroup) - i0, depth = images * P;
        float* rows = slot_patches();                    // [depth × K]
        float* sides = rows + kConvGroup * conv_.patch;  // [M × depth]
        for (std::size_t img = 0; img < images; ++img) {
          im2row(c, big + (i0 + img) * c.in_size(), rows + img * P * K);
          const float* src = small + (i0 + img) * c.out_size() + r0 * P;
          for (std::size_t i = 0; i < M; ++i) std::copy_n(src + i * P, P, sides + i * depth + img * P);
        }
        float* c_out = grp == 0 ? dw : ws_.partials.data() + (grp - 1) * size;
        if (bf16_) {
          // A: the sides in rows of pairs; B: the patch rows from column j0 = p0·NR on, as panels from the scratch's start
          const std::size_t k2 = pairs(depth), j0 = p0 * ops_.nr, cols = std::min(K, p1 * ops_.nr) - j0;
          std::uint32_t* a16 = slot16();
          std::uint32_t* b16 = a16 + round_up(a16_rows(M) * k2, kWordsPerLine);
          ops_.bf16_rows({sides, depth, nullptr, M, depth}, 0, a16_rows(M), k2, a16, k2);
          for (std::size_t p = 0; p < p1 - p0; ++p) pack_b_panel(rows + j0, K, false, depth, cols, p, b16);
          const simd::GemmBlock out{.c = c_out + j0, .ldc = K, .i1 = M, .j1 = cols};
          ops_.gemm_bf16_block({.a = a16, .lda = k2, .b = b16, .k2 = k2, .out = out});
          continue;
        }
        simd::GemmBlock g;
        g.a = sides;
        g.lda = depth;
        g.b = rows;
        g.ldb = K;
        g.bpack = ws_.b_pack.data() + pool_.slot() * panel_floats_;
        g.c = c_out;
        g.ldc = K;
        g.k = depth;
        g.i1 = M;
        g.j0 = p0 * ops_.nr;
        g.j1 = std::min(K, p1 * ops_.nr);
        ops_.gemm_block(g);
      }
    }, true);
    if (groups == 1) return;
    pool_.run(size, kAdamChunk, [&](std::size_t e0, std::size_t e1) {
      for (std::size_t grp = 1; grp < groups; ++grp) {
        const float* part = ws_.partials.data() + (grp - 1) * size;
        for (std::size_t e = e0; e < e1; ++e) dw[e] += part[e];
      }
    });
  }

  void check_rows(std::size_t n) const {
    if (n > max_rows_) throw std::logic_error("kernel workspace is bound for " + std::to_string(max_rows_) + " rows, asked for " + std::to_string(n));
  }

  void forward_into(Gemm& g, const float* w, const float* b, float* y, std::size_t n, std::size_t k, std::size_t m, Activation act) const {
    forward_gemm(g, w, b, y, n, k, m, act);
    run(g);
  }

  void forward_gemm(Gemm& g, const float* w, const float* b, float* y, std::size_t n, std::size_t k, std::size_t m, Activation act) const {
    g.b = w;
    g.ldb = m;
    g.c = y;
    g.ldc = m;
    g.M = n;
    g.N = m;
    g.K = k;
    g.epi = simd::Epilogue::bias_act;
    g.bias = b;
    g.act = act;
  }

  bool weight_grad_into(Gemm& g, const float* dy, float* dw, float* db, std::size_t n, std::size_t k, std::size_t m) const {
    // dw [k × m] = xᵀ [k × n] · dy [n × m]
    g.b = dy;
    g.ldb = m;
    g.c = dw;
    g.ldc = m;
    g.M = k;
    g.N = m;
    g.K = n;
    g.b_col_sums = db;
    // One flag per thread slot, so tasks never write the same byte; the bias gradient is checked after.
    for (std::size_t t = 0; t < threads_; ++t) ws_.nonfinite[t * kFlagStride] = false;
    g.check_finite = true;
    run(g);
    bool finite = !db || ops_.all_finite(db, 0, m);
    for (std::size_t t = 0; t < threads_; ++t) finite = finite && !ws_.nonfinite[t * kFlagStride];
    return finite;
  }

  // Rows in parallel when there is enough work per row (elements) to pay for waking the other threads.
  template <class F>
  void for_rows(std::size_t n, F&& body, std::size_t elements_per_row = kSerialElements) const {
    if (n * elements_per_row < kSerialElements) return body(std::size_t(0), n);
    pool_.run(n, kRowsPerTask, body);
  }

  // Row sums added in row order, so the result does not depend on how rows were spread over threads.
  double ordered_sum(std::size_t n) const {
    double total = 0;
    for (std::size_t r = 0; r < n; ++r) total += ws_.row_sums[r];
    return total;
  }

  void run(const Gemm& g) const {
    if (g.N == 0) return;
    if (g.M == 0 || g.K == 0) return empty_product(g);
    if (ws_.b_pack.empty()) throw std::logic_error("kernel workspace used before bind_workspace");
    if (bf16_) return run_bf16(g);
    const std::size_t mr = ops_.mr, nr = ops_.nr;
    const bool pack_a = g.a_source == Gemm::ASource::image || g.a_source == Gemm::ASource::image_trans;
    if (round_up(g.M, mr) * g.K > ws_.a_pack.size() && pack_a)
      throw std::logic_error("kernel workspace too small for a " + std::to_string(g.M) + "x" + std::to_string(g.K) + " operand");
    if (g.K * nr > panel_floats_) throw std::logic_error("kernel workspace too small for K = " + std::to_string(g.K));

    const std::size_t m_tiles = (g.M + mr - 1) / mr;
    if (pack_a) {
      pool_.run(m_tiles, 1, [&](std::size_t q0, std::size_t q1) {
        simd::PackA s;
        s.image = g.image;
        s.trans = g.a_source == Gemm::ASource::image_trans;
        s.rows = g.M;
        s.k = g.K;
        s.panel_begin = q0;
        s.panel_end = q1;
        s.dst = ws_.a_pack.data();
        ops_.pack_a(s);
      });
    }
    run_blocks(g, [&](std::size_t i0, std::size_t i1, std::size_t j0, std::size_t j1) { fp32_block(g, pack_a, i0, i1, j0, j1); });
  }

  void check_stack(std::span<const DenseCall<float>> layers) const {
    for (const DenseCall<float>& c : layers)
      if (c.k * ops_.nr > panel_floats_) throw std::logic_error("kernel workspace too small for K = " + std::to_string(c.k));
  }

  // Rows [i0, i1) × columns [j0, j1) of an fp32 product, A packed (pack_a) or read where it is.
  void fp32_block(const Gemm& g, bool pack_a, std::size_t i0, std::size_t i1, std::size_t j0, std::size_t j1) const {
    simd::GemmBlock gb = block_out(g, i0, i1, j0, j1);
    gb.a = pack_a ? ws_.a_pack.data() : g.a;
    gb.lda = g.lda;
    gb.layout = pack_a ? simd::ALayout::panels : g.a_source == Gemm::ASource::cols ? simd::ALayout::cols : simd::ALayout::rows;
    gb.b = g.b;
    gb.ldb = g.ldb;
    gb.b_trans = g.b_trans;
    gb.bpack = ws_.b_pack.data() + pool_.slot() * panel_floats_;
    ops_.gemm_block(gb);
  }

  // One row through a stack of layers in one fork-join of one task per thread. Each layer's columns are split into one
  // block per task; a task claims its own block first (so each core keeps reading the same part of every W, from its own
  // cache), then any block no task has claimed, then waits until every block of the layer is written. A task only ever
  // waits for blocks that a running task has claimed, so the stack finishes even if one task runs them all (a pool whose
  // other threads are busy).
  void one_row_stack(std::span<const DenseCall<float>> layers) const {
    const std::size_t parts = threads_, nr = ops_.nr;
    for (std::size_t l = 0; l < layers.size(); ++l) {
      stack_claimed_[l].store(0, std::memory_order_relaxed);
      stack_done_[l].store(0, std::memory_order_relaxed);
    }
    pool_.run(parts, 1, [&](std::size_t first, std::size_t last) {
      for (std::size_t task = first; task < last; ++task)
        for (std::size_t l = 0; l < layers.size(); ++l) {
          const DenseCall<float>& c = layers[l];
          Gemm g;
          g.a = c.x;
          g.lda = c.ldx;
          forward_gemm(g, c.w, c.b, c.y, 1, c.k, c.m, c.act);
          const std::size_t panels = (c.m + nr - 1) / nr;
          for (std::size_t i = 0; i < parts; ++i) {
            const std::size_t part = (task + i) % parts;
            const std::uint32_t bit = std::uint32_t(1) << part;
            if (stack_claimed_[l].fetch_or(bit, std::memory_order_relaxed) & bit) continue;
            const auto [q0, q1] = split(panels, parts, part);
            if (q1 > q0) fp32_block(g, false, 0, 1, q0 * nr, std::min(c.m, q1 * nr));
            stack_done_[l].fetch_add(1, std::memory_order_release);
          }
          while (stack_done_[l].load(std::memory_order_acquire) < parts) cpu_relax();
        }
    }, true);
  }

  // The task count of a product: a multiple of the thread count, so that equal tasks end together, as row blocks ×
  // column blocks (of whole micro-tiles and panels).
  std::pair<std::size_t, std::size_t> task_grid(const Gemm& g) const {
    const std::size_t m_tiles = (g.M + ops_.mr - 1) / ops_.mr, n_panels = (g.N + ops_.nr - 1) / ops_.nr;
    const std::size_t wanted = std::clamp<std::size_t>(g.M * g.N * g.K / kTaskFlops / threads_, 1, 8) * threads_;
    const std::size_t col_blocks = std::min(n_panels, wanted);
    return {std::min(m_tiles, (wanted + col_blocks - 1) / col_blocks), col_blocks};
  }

  // Runs task(i0, i1, j0, j1, first_row_block) for every block of the product's task grid.
  template <class Task>
  void run_blocks(const Gemm& g, const Task& task) const {
    // One row (a single sample's decode) on one thread: the whole product on the calling thread, no task to hand over.
    // With more threads the row's columns are split: each core then reads its part of W from its own cache.
    if (g.M == 1 && threads_ == 1) {
      if (g.b_col_sums) ops_.col_sums(g.b, g.ldb, g.K, 0, g.N, g.b_col_sums);
      return task(0, 1, 0, g.N);
    }
    const std::pair<std::size_t, std::size_t> grid = task_grid(g);  // not a structured binding: clang 14 cannot capture one
    const std::size_t row_blocks = grid.first, col_blocks = grid.second;
    const std::size_t mr = ops_.mr, nr = ops_.nr, m_tiles = (g.M + mr - 1) / mr, n_panels = (g.N + nr - 1) / nr;
    pool_.run(row_blocks * col_blocks, 1, [&](std::size_t first, std::size_t last) {
      for (std::size_t t = first; t < last; ++t) {
        const auto [t0, t1] = split(m_tiles, row_blocks, t / col_blocks);
        const auto [q0, q1] = split(n_panels, col_blocks, t % col_blocks);
        if (hook_ && std::this_thread::get_id() == caller_) hook_(hook_context_);
        const std::size_t j0 = q0 * nr, j1 = std::min(g.N, q1 * nr);
        if (t / col_blocks == 0 && g.b_col_sums) ops_.col_sums(g.b, g.ldb, g.K, j0, j1, g.b_col_sums);
        task(t0 * mr, std::min(g.M, t1 * mr), j0, j1);
      }
    }, true);
  }

  // The C side of a block: rows [i0, i1) × columns [j0, j1), the epilogue and this thread's finiteness flag.
  simd::GemmBlock block_out(const Gemm& g, std::size_t i0, std::size_t i1, std::size_t j0, std::size_t j1) const {
    simd::GemmBlock gb;
    gb.c = g.c;
    gb.ldc = g.ldc;
    gb.k = g.K;
    gb.i0 = i0;
    gb.i1 = i1;
    gb.j0 = j0;
    gb.j1 = j1;
    gb.epi = g.epi;
    gb.bias = g.bias;
    gb.act = g.act;
    gb.y = g.y;
    gb.ldy = g.ldy;
    if (g.check_finite) {
      gb.nonfinite = &ws_.nonfinite[pool_.slot() * kFlagStride];
      gb.stream = true;
    }
    return gb;
  }

  // Pairs along K of a bf16 operand, padded to the product's K blocks.
  std::size_t pairs(std::size_t K) const { return round_up((K + 1) / 2, ops_.bf16_k_block); }

  // Panel t of B [K × N] in bf16 pairs, B = b [K × N] or, b_trans, bᵀ with b [N × K] (row stride ldb either way).
  void pack_b_panel(const float* b, std::size_t ldb, bool b_trans, std::size_t K, std::size_t N, std::size_t t, std::uint32_t* panels) const {
    const std::size_t nr = ops_.nr, k2 = pairs(K), j0 = t * nr;
    const simd::Bf16Source s{b, ldb, nullptr, b_trans ? N : K, b_trans ? K : N};
    if (b_trans) ops_.bf16_trans_panel(s, j0, k2, panels + t * k2 * nr);
    else ops_.bf16_pairs(s, 0, k2, j0, std::min(N, j0 + nr), nr, panels + t * k2 * nr, nr);
  }

  // Flat elements [e0, e1) of the parameters into the weight copy, layer by layer (the biases have no copy).
  void copy_weights(const WeightCopy& copy, std::size_t e0, std::size_t e1) const {
    for (const WeightCopy::Layer& l : copy.layers) {
      const std::size_t lo = std::max(e0, l.w_offset), hi = std::min(e1, l.w_offset + l.k * l.m);
      if (lo < hi)
        ops_.bf16_copy_range(copy.params + l.w_offset, l.m, lo - l.w_offset, hi - l.w_offset, pairs(l.k), pairs(l.m), copy.words + l.fwd,
                             l.transposed ? copy.words + l.trans : nullptr);
    }
  }

  // The bound weight copy's panels of B, if B is a layer's W (forward) or Wᵀ (input gradient), or Wᵀ's first columns (the
  // first decoder layer's input gradient, z's columns only: the panels past them are never read); else nullptr.
  const std::uint32_t* copied_panels(const Gemm& g) const {
    if (!copy_) return nullptr;
    for (const WeightCopy::Layer& l : copy_->layers) {
      if (g.b != copy_->params + l.w_offset) continue;
      if (!g.b_trans && g.K == l.k && g.N == l.m && g.ldb == l.m) return copy_->words + l.fwd;
      if (g.b_trans && l.transposed && g.K == l.m && g.N <= l.k && g.ldb == l.m) return copy_->words + l.trans;
    }
    return nullptr;
  }

  // Where p (a matrix of row stride ld) falls in a bound bf16 shadow: the shadow, and p's row and column in it.
  struct ShadowAt {
    const Bf16Shadow<float>* s = nullptr;
    std::size_t row = 0, col = 0;
  };
  ShadowAt shadow_at(const void* p, std::size_t ld) const {
    const float* x = static_cast<const float*>(p);
    for (const Bf16Shadow<float>& s : shadows_) {
      if (ld == s.cols && x >= s.x && x < s.x + s.rows * s.cols) return {&s, std::size_t(x - s.x) / s.cols, std::size_t(x - s.x) % s.cols};
    }
    return {};
  }
  std::uint32_t* pair_form(const Bf16Shadow<float>& s) const { return s.words + round_up(s.rows * pairs(s.cols), kWordsPerLine); }
  // An activation's pair form is A = xᵀ in the column form (pair (q, i) at q·cols + i); a gradient's is B = x in panels.
  std::size_t pair_w(const Bf16Shadow<float>& s) const { return s.use == Bf16Shadow<float>::Use::activation ? s.cols : ops_.nr; }
  std::size_t pair_s(const Bf16Shadow<float>& s) const { return s.use == Bf16Shadow<float>::Use::activation ? 0 : pairs(s.rows) * ops_.nr; }

  // A product that reads the first K < s.rows rows of s's pair form, K odd: the half past row K − 1 of the last pair
  // holds a row of an earlier, larger batch. Zero it, columns [c0, c1).
  void zero_pair_tail(const Bf16Shadow<float>& s, std::size_t K, std::size_t c0, std::size_t c1) const {
    if (K % 2 == 0 || K >= s.rows) return;
    std::uint16_t* high = reinterpret_cast<std::uint16_t*>(pair_form(s)) + 1;
    const std::size_t w = pair_w(s), st = pair_s(s);
    for (std::size_t c = c0; c < c1; ++c) high[2 * ((c / w) * st + (K / 2) * w + c % w)] = 0;
  }

  // The shadow of x [· × cols] if x is whole rows of one (each row all its columns), else none.
  ShadowAt whole_rows_shadow(const float* x, std::size_t cols) const {
    const ShadowAt xs = shadow_at(x, cols);
    return xs.s && xs.col == 0 ? xs : ShadowAt{};
  }
  // C's shadow, if C is a whole shadowed tensor's rows (found once per product): the epilogue writes both of its forms.
  ShadowAt c_shadow(const Gemm& g) const {
    if (g.epi == simd::Epilogue::none) return {};
    const ShadowAt cs = whole_rows_shadow(g.c, g.ldc);
    return cs.s && g.N == cs.s->cols && cs.row + g.M <= cs.s->rows ? cs : ShadowAt{};
  }
  // Rows [r0, r1) of x, a tensor just written outside a product (still in this core's cache), into both bf16 forms of
  // its shadow xs (none: nothing to do). The products that read x then pack nothing.
  void write_shadow(const ShadowAt& xs, float* x, std::size_t r0, std::size_t r1) const {
    if (!xs.s || r1 <= r0) return;
    simd::GemmBlock out;
    out.c = x;
    out.ldc = xs.s->cols;
    shadow_out(xs, out);
    ops_.bf16_shadow_rows(out, r0, r1 - r0, xs.s->cols);
  }
  void shadow_out(const ShadowAt& cs, simd::GemmBlock& out) const {
    if (!cs.s) return;
    const std::size_t k2 = pairs(cs.s->cols);
    out.c16_rows = reinterpret_cast<std::uint16_t*>(cs.s->words + cs.row * k2);
    out.c16_ld = 2 * k2;
    out.c16_pairs = pair_form(*cs.s);
    out.c16_row0 = cs.row;
    out.pair_w = pair_w(*cs.s);
    out.pair_s = pair_s(*cs.s);
  }

  // The bf16 product: both operands rounded into their pair forms in one parallel pass (A whole: rows of pairs for
  // A = X or dY, pairs of rows for A = Xᵀ; B as panels), unless the weight copy or a shadow holds them, then the blocks.
  void run_bf16(const Gemm& g) const {
    const std::size_t nr = ops_.nr, k2 = pairs(g.K), n_panels = (g.N + nr - 1) / nr;
    const bool image = g.a_source == Gemm::ASource::image || g.a_source == Gemm::ASource::image_trans;
    const bool a_given_rows = g.a_source == Gemm::ASource::rows || g.a_source == Gemm::ASource::image;
    const bool a_rows = a_given_rows || ops_.bf16_a_rows_only;
    const std::size_t m_rows = a16_rows(g.M);
    // A as the matrix s it is read from: A itself [M × K], or the [K × M] matrix it is the transpose of
    simd::Bf16Source a{image ? nullptr : g.a, g.lda, image ? g.image : nullptr, a_given_rows ? g.M : g.K, a_given_rows ? g.K : g.M};
    if (k2 * m_rows > ws_.a16.size() || k2 * n_panels * nr > ws_.b16.size())
      throw std::logic_error("bf16 kernel workspace too small for a " + std::to_string(g.M) + "x" + std::to_string(g.K) + "x" +
                             std::to_string(g.N) + " product");
    // A and B as their shadows hold them, where they have one (an activation or gradient an epilogue wrote)
    const std::uint32_t* a16 = ws_.a16.data();
    std::size_t lda16 = a_rows ? k2 : g.M;
    bool a_ready = false;
    if (const ShadowAt as = image ? ShadowAt{} : shadow_at(g.a, g.lda); as.s) {
      if (a_given_rows && as.col == 0 && g.K == as.s->cols && as.row + g.M <= as.s->rows) {
        a16 = as.s->words + as.row * k2;
        a_ready = true;
      } else if (!a_rows && as.s->use == Bf16Shadow<float>::Use::activation && as.row == 0 && g.K <= as.s->rows && as.col + g.M <= as.s->cols) {
        zero_pair_tail(*as.s, g.K, as.col, as.col + g.M);
        a16 = pair_form(*as.s) + as.col;
        lda16 = as.s->cols;
        a_ready = true;
      }
    }
    const std::uint32_t* b16 = copied_panels(g);
    std::size_t b_stride = 0;
    if (const ShadowAt bs = g.b_trans || b16 ? ShadowAt{} : shadow_at(g.b, g.ldb);
        bs.s && bs.s->use == Bf16Shadow<float>::Use::gradient && bs.row == 0 && bs.col == 0 && g.N == bs.s->cols && g.K <= bs.s->rows) {
      zero_pair_tail(*bs.s, g.K, 0, g.N);
      b16 = pair_form(*bs.s);
      b_stride = pairs(bs.s->rows) * nr;
    }
    const bool pack_b = !b16;
    if (pack_b) b16 = ws_.b16.data();
    const std::size_t a_units = a_rows ? m_rows : k2, a_pieces = a_ready ? 0 : (a_units + kPackRows - 1) / kPackRows;
    const std::size_t pieces = a_pieces + (pack_b ? n_panels : 0);
    if (pieces) pool_.run(pieces, 1, [&](std::size_t first, std::size_t last) {
      for (std::size_t t = first; t < last; ++t) {
        if (t >= a_pieces) {
          pack_b_panel(g.b, g.ldb, g.b_trans, g.K, g.N, t - a_pieces, ws_.b16.data());
          continue;
        }
        const auto u0 = t * kPackRows, u1 = std::min(a_units, u0 + kPackRows);
        std::uint32_t* packed = ws_.a16.data();
        if (a_given_rows) ops_.bf16_rows(a, u0, u1, k2, packed, k2);
        else if (a_rows) ops_.bf16_pairs_rows(a, u0, u1, k2, packed, k2);
        else ops_.bf16_pairs(a, u0, u1, 0, g.M, g.M, packed, g.M);
      }
    }, true);
    const ShadowAt cs = c_shadow(g);
    run_blocks(g, [&](std::size_t i0, std::size_t i1, std::size_t j0, std::size_t j1) {
      simd::GemmBf16Block gb;
      gb.a = a16;
      gb.lda = lda16;
      gb.a_rows = a_rows;
      gb.b = b16;
      gb.k2 = k2;
      gb.b_stride = b_stride;
      gb.out = block_out(g, i0, i1, j0, j1);
      shadow_out(cs, gb.out);
      ops_.gemm_bf16_block(gb);
    });
  }

  // No rows (dW of a layer with no inputs) or K = 0 (dW of a batch of no rows): the product is empty or zero.
  void empty_product(const Gemm& g) const {
    for (std::size_t i = 0; i < g.M; ++i)
      for (std::size_t j = 0; j < g.N; ++j)
        g.c[i * g.ldc + j] = g.epi == simd::Epilogue::bias_act ? activate(g.bias[j], g.act) : 0.0f;
    if (!g.b_col_sums) return;
    if (g.K == 0) std::fill(g.b_col_sums, g.b_col_sums + g.N, 0.0f);
    else ops_.col_sums(g.b, g.ldb, g.K, 0, g.N, g.b_col_sums);
  }

  TaskPool pool_;
  std::size_t threads_;
  const simd::Ops& ops_;
  bool bf16_;
  std::size_t max_rows_ = 0, panel_floats_ = 0;
  ConvSizes conv_;
  Workspace ws_;
  static constexpr std::size_t kFlagStride = 64;  // a cache line per thread's flag
  static constexpr std::size_t kWordsPerLine = 16;  // u32 words in 64 bytes
  static constexpr std::size_t kMaxStack = 16, kMaxStackParts = 32;  // one_row_stack: layers, and tasks (bits of a claim word)
  mutable std::array<std::atomic<std::uint32_t>, kMaxStack> stack_claimed_{}, stack_done_{};
  ProgressHook hook_ = nullptr;
  void* hook_context_ = nullptr;
  const WeightCopy* copy_ = nullptr;  // bf16: the weights the optimizer keeps in panel form (bind_weight_copy)
  std::vector<Bf16Shadow<float>> shadows_;  // bf16: the tensors whose epilogues write their bf16 forms (bind_bf16_shadows)
  std::thread::id caller_ = std::this_thread::get_id();  // the thread that made the kernels: the trainer's
};

const simd::Ops& ops_named(const std::string& isa) {
  if (isa.empty()) return simd::best_ops();
  for (const simd::Ops* o : simd::available_ops())
    if (isa == o->target) return *o;
  throw std::invalid_argument("instruction set " + isa + " is not available on this CPU");
}

}  // namespace

std::unique_ptr<Kernels<float>> make_parallel_kernels(int threads, const std::string& isa, Precision precision) {
  return std::make_unique<ParallelKernels>(threads, ops_named(isa), precision);
}

std::unique_ptr<Kernels<float>> make_kernels(KernelChoice choice, int threads, Precision precision) {
  if (choice == KernelChoice::reference) return std::make_unique<ReferenceKernels<float>>(precision);
  return make_parallel_kernels(threads, "", precision);
}

void to_bf16(const float* x, std::uint16_t* out, std::size_t n, const std::string& isa) { ops_named(isa).to_bf16(x, out, n); }
void from_bf16(const std::uint16_t* h, float* out, std::size_t n, const std::string& isa) { ops_named(isa).from_bf16(h, out, n); }
void add_bf16(const std::uint16_t* a, std::uint16_t* b, std::size_t n, const std::string& isa) { ops_named(isa).add_bf16(a, b, n); }

double peak_int8_ops(std::size_t iterations) {
  const simd::Ops& o = simd::best_ops();
  if (!o.int8_dot_loop) return 0;
  o.int8_dot_loop(iterations);
  return double(iterations) * simd::kPeakChains * 8 * double(o.nr / 2);
}

double peak_loop_flops(Precision precision, std::size_t iterations) {
  // The loops are called through the Ops table, opaque to the optimiser, so their results need no keeping.
  const simd::Ops& o = simd::best_ops();
  const double per_op = 2.0 * double(o.nr / 2);
  if (precision == Precision::fp32) {
    o.fma_loop(iterations);
    return double(iterations) * simd::kPeakChains * per_op;
  }
  // the instruction the bf16 product runs on: AMX's tile sums where it has them, else the vector dot product
  if (o.amx_dot_loop) {
    o.amx_dot_loop(iterations);
    return double(iterations) * 4 * 16 * 16 * 32 * 2;
  }
  if (!o.bf16_dot_loop) return 0;
  o.bf16_dot_loop(iterations);
  return double(iterations) * simd::kPeakChains * 2 * per_op;
}

std::vector<std::string> available_isas() {
  std::vector<std::string> names;
  for (const simd::Ops* o : simd::available_ops()) names.emplace_back(o->target);
  return names;
}

}  // namespace vae
