// Register-resident loops shared by the micro-kernels and the throughput ceilings, included wherever they are compiled (native bf16 has its own target).

// Calls f(r, c0, c1) for each row r < R of a micro-tile with that row's two accumulators. Sizeless SVE vectors cannot be
// array elements, so a tile's accumulators are named locals (kMR ≤ 8 rows), reached by index through this.
template <std::size_t R, class F, class V>
HWY_INLINE void each_row(F&& f, V& a0, V& a1, V& a2, V& a3, V& a4, V& a5, V& a6, V& a7, V& a8, V& a9, V& a10, V& a11, V& a12, V& a13,
                         V& a14, V& a15) {
  static_assert(R >= 1 && R <= 8);
  f(0, a0, a1);
  if constexpr (R > 1) f(1, a2, a3);
  if constexpr (R > 2) f(2, a4, a5);
  if constexpr (R > 3) f(3, a6, a7);
  if constexpr (R > 4) f(4, a8, a9);
  if constexpr (R > 5) f(5, a10, a11);
  if constexpr (R > 6) f(6, a12, a13);
  if constexpr (R > 7) f(7, a14, a15);
}

// kPeakChains accumulators, each fed by `step` every iteration: the loop body of a throughput ceiling.
template <class Step>
HWY_INLINE float peak_chains(std::size_t iterations, Step step) {
  const DF d;
  // distinct starting values, or the compiler would see sixteen copies of one chain
  VF c0 = hn::Set(d, 1.0f), c1 = hn::Set(d, 2.0f), c2 = hn::Set(d, 3.0f), c3 = hn::Set(d, 4.0f), c4 = hn::Set(d, 5.0f), c5 = hn::Set(d, 6.0f),
     c6 = hn::Set(d, 7.0f), c7 = hn::Set(d, 8.0f), c8 = hn::Set(d, 9.0f), c9 = hn::Set(d, 10.0f), c10 = hn::Set(d, 11.0f),
     c11 = hn::Set(d, 12.0f), c12 = hn::Set(d, 13.0f), c13 = hn::Set(d, 14.0f), c14 = hn::Set(d, 15.0f), c15 = hn::Set(d, 16.0f);
  static_assert(kPeakChains == 16);
  for (std::size_t i = 0; i < iterations; ++i) {
    c0 = step(c0), c1 = step(c1), c2 = step(c2), c3 = step(c3), c4 = step(c4), c5 = step(c5), c6 = step(c6), c7 = step(c7);
    c8 = step(c8), c9 = step(c9), c10 = step(c10), c11 = step(c11), c12 = step(c12), c13 = step(c13), c14 = step(c14), c15 = step(c15);
  }
  const VF sum = hn::Add(hn::Add(hn::Add(hn::Add(c0, c1), hn::Add(c2, c3)), hn::Add(hn::Add(c4, c5), hn::Add(c6, c7))),
                         hn::Add(hn::Add(hn::Add(c8, c9), hn::Add(c10, c11)), hn::Add(hn::Add(c12, c13), hn::Add(c14, c15))));
  return hn::GetLane(hn::SumOfLanes(d, sum));
}
