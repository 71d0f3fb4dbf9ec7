// The INT8 micro-kernel and block loop, included by simd_ops.cpp once per quad-dot form (emulated; native AVX512_VNNI).
// The including namespace defines dot4(di, acc, a, b): acc plus, in each i32 lane, the products of a's four u8 bytes
// with b's four s8 bytes.

// `tiles` C tiles [R × NR] down from (i, j), A in rows of quads, B one packed panel [k4 × NR].
template <std::size_t R>
HWY_NOINLINE void int8_tiles(const std::uint32_t* HWY_RESTRICT a, std::size_t lda, std::size_t tiles, const std::uint32_t* HWY_RESTRICT b,
                             std::size_t k4, const Int8Block& g, std::size_t i, std::size_t j, std::size_t cols) {
  const DF d;
  const hn::RebindToSigned<DF> di;
  const hn::RebindToUnsigned<DF> du;
  const std::size_t N = hn::Lanes(d);
  const std::size_t n0 = std::min(cols, N), n1 = cols > N ? cols - N : 0;
  for (std::size_t t = 0; t < tiles; ++t, a += R * lda, i += R) {
    auto a0 = hn::Zero(di), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, a8 = a0, a9 = a0, a10 = a0, a11 = a0,
         a12 = a0, a13 = a0, a14 = a0, a15 = a0;
    auto rows = [&](auto&& f) VAE_ALWAYS_INLINE { each_row<R>(f, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15); };
    const std::uint32_t* bp = b;
    for (std::size_t q = 0; q < k4; ++q) {
      const auto b0 = hn::BitCast(di, hn::LoadU(du, bp)), b1 = hn::BitCast(di, hn::LoadU(du, bp + N));
      rows([&](std::size_t r, auto& c0, auto& c1) VAE_ALWAYS_INLINE {
        const auto ar = hn::BitCast(di, hn::Set(du, a[r * lda + q]));
        c0 = dot4(di, c0, ar, b0);
        c1 = dot4(di, c1, ar, b1);
      });
      bp += 2 * N;
    }
    rows([&](std::size_t r, auto& c0, auto& c1) VAE_ALWAYS_INLINE {
      finish_int8(d, c0, g, i + r, j, n0);
      if (n1) finish_int8(d, c1, g, i + r, j + N, n1);
    });
  }
}

using Int8TileFn = void (*)(const std::uint32_t*, std::size_t, std::size_t, const std::uint32_t*, std::size_t, const Int8Block&, std::size_t,
                            std::size_t, std::size_t);

template <std::size_t... Rs>
constexpr std::array<Int8TileFn, sizeof...(Rs)> make_int8_tile_table(std::index_sequence<Rs...>) {
  return {&int8_tiles<Rs + 1>...};
}

void int8_block(const Int8Block& g) {
  static constexpr auto tiles_of = make_int8_tile_table(std::make_index_sequence<kMR>());
  const std::size_t NR = nr();
  for (std::size_t j = g.j0; j < g.j1; j += NR) {
    const std::size_t cols = std::min(NR, g.j1 - j);
    const std::uint32_t* b = g.b + (j / NR) * g.k4 * NR;
    for (std::size_t i = g.i0; i < g.i1;) {
      const std::size_t rows = std::min(kMR, g.i1 - i);
      const std::size_t tiles = rows == kMR ? (g.i1 - i) / kMR : 1;
      tiles_of[rows - 1](g.a + i * g.lda, g.lda, tiles, b, g.k4, g, i, j, cols);
      i += rows * tiles;
    }
  }
}
