// The bf16 micro-kernel and block loop, included by simd_ops_bf16.cpp once per pair-dot form (emulated; native AVX512_BF16).
// The including namespace defines dot2(d, acc, a, b): acc plus the two products of each lane's bf16 pair, high half first.

// C's bf16 forms (GemmBlock's c16 fields) of a whole-panel tile from the values it stored, still in registers (rows
// calls f(r, c0, c1) on each row's): each pair of rows as both forms' whole vectors (store_shadow_pair). A partial
// panel, rows starting on an odd row of the shadow, and an odd tile's last row are read back from C.
template <std::size_t R, class Rows>
HWY_INLINE void shadow_tile(DF d, const GemmBlock& g, std::size_t i, std::size_t j, std::size_t cols, Rows&& rows) {
  const std::size_t N = hn::Lanes(d);
  if (cols != 2 * N || (g.c16_row0 + i) % 2 != 0) return bf16_shadow_tile(g, i, R, j, cols);
  auto p0 = hn::Zero(hn::RebindToUnsigned<DF>()), p1 = p0;  // the even row's operand bits
  std::uint32_t* pairs = g.c16_pairs + (g.c16_row0 + i) / 2 * g.pair_w + (j / g.pair_w) * g.pair_s + j % g.pair_w;
  rows([&](std::size_t r, VF& c0, VF& c1) VAE_ALWAYS_INLINE {
    const auto b0 = operand_bits(d, c0), b1 = operand_bits(d, c1);
    if (r % 2 == 0) {
      p0 = b0;
      p1 = b1;
      return;
    }
    std::uint16_t* row = g.c16_rows + (i + r) * g.c16_ld + j;
    std::uint32_t* w = pairs + (r / 2) * g.pair_w;
    store_shadow_pair(d, p0, b0, row - g.c16_ld, row, w, N);
    store_shadow_pair(d, p1, b1, row - g.c16_ld + N, row + N, w + N, N);
  });
  if (R % 2 == 1) bf16_shadow_tile(g, i + R - 1, 1, j, cols);
}

// `tiles` C tiles [R × NR] down from (i, j): C(i + r, j …) = Σ_q pair(A(i + r, q)) · pair(B(q, j …)), B a packed panel
// [k2 × NR]. A's pair (i + r, q) is one broadcast: RowsA: a[r·lda + q]; otherwise a[q·lda + r]. The next tile's A starts
// a_step further on.
template <std::size_t R, bool RowsA>
HWY_NOINLINE void bf16_tiles(const std::uint32_t* HWY_RESTRICT a, std::size_t lda, std::size_t a_step, std::size_t tiles,
                             const std::uint32_t* HWY_RESTRICT b, std::size_t k2, const GemmBlock& g, std::size_t i, std::size_t j,
                             std::size_t cols) {
  const DF d;
  const hn::RebindToUnsigned<DF> du;
  const std::size_t N = hn::Lanes(d);
  const std::size_t n0 = std::min(cols, N), n1 = cols > N ? cols - N : 0;
  VF check = hn::Zero(d);  // stays 0 while every value written is finite: x − x is NaN for NaN and ±Inf
  for (std::size_t t = 0; t < tiles; ++t, a += a_step, i += R) {
    VF a0 = hn::Zero(d), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0,
       a12 = a0, a13 = a0, a14 = a0, a15 = a0;
    auto rows = [&](auto&& f) VAE_ALWAYS_INLINE { each_row<R>(f, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15); };
    // In the training step the operands come cold: the weight copy was streamed past the cache by the last update and
    // the activation an input gradient's epilogue reads was written in the forward pass. Requested ahead, the tile's
    // activation lines arrive during its K loop, and B's lines 32 pairs (4 KB) before they are read (both together: the
    // v3 bf16 step at batch 256 1.058 times as fast; 16 pairs ahead, A's lines and C's lines measured slower,
    // docs/benchmarks.md).
    if (g.epi == Epilogue::slope)
      rows([&](std::size_t r, VF&, VF&) VAE_ALWAYS_INLINE {
        const float* y = g.y + (i + r) * g.ldy + j;
        __builtin_prefetch(y);
        __builtin_prefetch(y + N);
      });
    const std::uint32_t* ap = a;
    const std::uint32_t* bp = b;
    for (std::size_t q = 0; q < k2; ++q) {
      __builtin_prefetch(bp + 64 * N);
      __builtin_prefetch(bp + 65 * N);
      const auto b0 = hn::LoadU(du, bp), b1 = hn::LoadU(du, bp + N);
      rows([&](std::size_t r, VF& c0, VF& c1) VAE_ALWAYS_INLINE {
        const auto ar = hn::Set(du, RowsA ? ap[r * lda + q] : ap[r]);
        c0 = dot2(d, c0, ar, b0);
        c1 = dot2(d, c1, ar, b1);
      });
      if (!RowsA) ap += lda;
      bp += 2 * N;
    }
    if (g.nonfinite) rows([&](std::size_t, VF& c0, VF& c1) VAE_ALWAYS_INLINE { check = hn::Add(check, hn::Add(hn::Sub(c0, c0), hn::Sub(c1, c1))); });
    rows([&](std::size_t r, VF& c0, VF& c1) VAE_ALWAYS_INLINE {
      c0 = finish(d, c0, g, i + r, j, n0);
      if (n1) c1 = finish(d, c1, g, i + r, j + N, n1);
    });
    if (g.c16_rows) shadow_tile<R>(d, g, i, j, cols, rows);
  }
  if (g.nonfinite && !hn::AllTrue(d, hn::Eq(check, hn::Zero(d)))) *g.nonfinite = true;
}

using Bf16TileFn = void (*)(const std::uint32_t*, std::size_t, std::size_t, std::size_t, const std::uint32_t*, std::size_t,
                            const GemmBlock&, std::size_t, std::size_t, std::size_t);

template <bool RowsA, std::size_t... Rs>
constexpr std::array<Bf16TileFn, sizeof...(Rs)> make_bf16_tile_table(std::index_sequence<Rs...>) {
  return {&bf16_tiles<Rs + 1, RowsA>...};
}

void gemm_bf16(const GemmBf16Block& g) {
  static constexpr auto rows_tiles = make_bf16_tile_table<true>(std::make_index_sequence<kMR>());
  static constexpr auto cols_tiles = make_bf16_tile_table<false>(std::make_index_sequence<kMR>());
  const GemmBlock& o = g.out;
  const std::size_t NR = nr();
  for (std::size_t j = o.j0; j < o.j1; j += NR) {
    const std::size_t cols = std::min(NR, o.j1 - j);
    const std::uint32_t* b = g.b + (j / NR) * (g.b_stride ? g.b_stride : g.k2 * NR);
    for (std::size_t i = o.i0; i < o.i1;) {
      const std::size_t rows = std::min(kMR, o.i1 - i);
      const std::size_t tiles = rows == kMR ? (o.i1 - i) / kMR : 1;
      if (g.a_rows) rows_tiles[rows - 1](g.a + i * g.lda, g.lda, rows * g.lda, tiles, b, g.k2, o, i, j, cols);
      else cols_tiles[rows - 1](g.a + i, g.lda, rows, tiles, b, g.k2, o, i, j, cols);
      i += rows * tiles;
    }
  }
}
