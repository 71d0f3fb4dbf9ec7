// each_row: a micro-tile's accumulators by row index, included where a micro-kernel is compiled (native bf16 has its own target).

// Calls f(r, c0, c1) for each row r < R of a micro-tile with that row's two accumulators. Sizeless SVE vectors cannot be
// array elements, so a tile's accumulators are named locals (kMR ≤ 8 rows), reached by index through this.
template <std::size_t R, class F>
HWY_INLINE void each_row(F&& f, VF& a0, VF& a1, VF& a2, VF& a3, VF& a4, VF& a5, VF& a6, VF& a7, VF& a8, VF& a9, VF& a10, VF& a11,
                         VF& a12, VF& a13, VF& a14, VF& a15) {
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
