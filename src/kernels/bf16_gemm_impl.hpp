// Register-blocked GEMM with bf16 dot products (AVX512_BF16 vdpbf16ps): the matrix products of the
// forward kernel for bf16 inputs. Compiled only into the AVX-512-BF16 translation unit, called only
// after a CPUID check.
//
//   C[rows][cols] (+)= A[rows][depth] · B[depth][cols]     in fp32, from bf16 A and B
//   A: bf16 row-major, pairs (k, k+1) read as one 32-bit word: pair p of row r at a[r·lda + p]
//      (lda counts 32-bit words); broadcast to all lanes
//   B: panels of kPanel = 32 columns, [depth / 2][32 columns][2] bf16 (pair-interleaved: columns
//      n's elements k and k+1 adjacent), panel p at b + p·b_panel_stride (in bf16 elements)
//   vdpbf16ps: c[n] += a[k]·b[k][n] + a[k+1]·b[k+1][n], products exact in fp32 (8-bit mantissas),
//   sums rounded to fp32 (denormal bf16 inputs and results flush to zero).
// A depth range [k0, k1) with odd ends reads the pairs around it; the B elements outside it are
// zeroed in registers, so whatever A holds there meets 0 (and B's values there — keys this row
// group does not see — never reach C).
//
// Included inside namespace sdpa::kernels::<isa>::(anonymous) after panel_gemm_impl.hpp.

static_assert(kPanel == 32, "bf16 panels are two 16-lane vectors of 32-bit pairs");

// Keeps one bf16 of every 32-bit pair of B: the low (even) element with 0x0000ffff, the high (odd)
// one with 0xffff0000.
inline __m512bh bf16_half_pairs(const std::uint16_t* b, int keep) {
  return (__m512bh)_mm512_and_si512(_mm512_loadu_si512(b), _mm512_set1_epi32(keep));
}

// One kMicroRows × kPanel block of C over depth elements [k0, k1): pairs [k0 / 2, ⌈k1 / 2⌉), the
// element before k0 (odd k0) and after k1 − 1 (odd k1) zeroed in B, so that neither A's nor B's
// values there (a key this row group does not see, NaN perhaps) reach C.
// kRowMax: row maxima as gemm_microkernel's (panel_gemm_impl.hpp).
template <bool kAccumulate, bool kRowMax = false>
void bf16_microkernel(const std::uint32_t* a, std::int64_t lda, const std::uint16_t* b_panel,
                      std::int64_t k0, std::int64_t k1, float* c, std::int64_t ldc,
                      float* row_max = nullptr) {
  __m512 acc[kMicroRows][2];
#pragma GCC unroll 16
  for (int r = 0; r < kMicroRows; ++r) {
    if (kAccumulate) {
      acc[r][0] = _mm512_loadu_ps(c + r * ldc);
      acc[r][1] = _mm512_loadu_ps(c + r * ldc + kLanes);
    } else {
      acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    }
  }
  const auto step = [&](std::int64_t p, __m512bh b0, __m512bh b1) {
#pragma GCC unroll 16
    for (int r = 0; r < kMicroRows; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[r * lda + p]));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, b1);
    }
  };
  std::int64_t p = k0 / 2;
  const std::int64_t full_end = k1 / 2;  // pairs [p, full_end) have both elements in range
  if (k0 % 2 != 0 && p < (k1 + 1) / 2) {  // odd start: the pair's high element only
    const std::uint16_t* b = b_panel + p * 2 * kPanel;
    step(p, bf16_half_pairs(b, static_cast<int>(0xffff0000u)),
         bf16_half_pairs(b + kPanel, static_cast<int>(0xffff0000u)));
    ++p;
  }
  for (; p < full_end; ++p) {
    const std::uint16_t* b = b_panel + p * 2 * kPanel;
    step(p, (__m512bh)_mm512_loadu_si512(b), (__m512bh)_mm512_loadu_si512(b + kPanel));
  }
  if (k1 % 2 != 0 && p == full_end && p * 2 >= k0) {  // odd end: the pair's low element only
    const std::uint16_t* b = b_panel + p * 2 * kPanel;
    step(p, bf16_half_pairs(b, 0x0000ffff), bf16_half_pairs(b + kPanel, 0x0000ffff));
  }
#pragma GCC unroll 16
  for (int r = 0; r < kMicroRows; ++r) {
    _mm512_storeu_ps(c + r * ldc, acc[r][0]);
    _mm512_storeu_ps(c + r * ldc + kLanes, acc[r][1]);
    if constexpr (kRowMax) {
      float* m = row_max + r * kLanes;
      Simd::store(m, Simd::max(Simd::max(Simd::load(m), acc[r][0]), acc[r][1]));
    }
  }
}

// C = A·B where row group g computes only the column panels in [lo[g], hi[g)) (multiples of
// kPanel), over the whole (even) depth; C's other panels are left as they were. Each row's lane
// maxima over the panels computed are folded into row_max ([rows][kLanes]), as panel_gemm_cols's.
inline void bf16_panel_gemm_cols(const std::uint32_t* a, std::int64_t lda, std::int64_t rows,
                                 const std::uint16_t* b, std::int64_t b_panel_stride,
                                 std::int64_t depth, float* c, std::int64_t ldc,
                                 const std::int64_t* lo, const std::int64_t* hi, float* row_max) {
  std::int64_t cols = 0;
  for (std::int64_t g = 0; g < rows / kMicroRows; ++g) cols = max_i64(cols, hi[g]);
  for (std::int64_t col = 0; col < cols; col += kPanel) {
    const std::uint16_t* b_panel = b + col / kPanel * b_panel_stride;
    for (std::int64_t r = 0; r < rows; r += kMicroRows) {
      const std::int64_t g = r / kMicroRows;
      if (col < lo[g] || col >= hi[g]) continue;
      bf16_microkernel<false, true>(a + r * lda, lda, b_panel, 0, depth, c + r * ldc + col, ldc,
                                    row_max + r * kLanes);
    }
  }
}

// C += A·B where row group g's depth runs over [lo[g], hi[g)) only (A is zero outside it).
inline void bf16_panel_gemm_depth(const std::uint32_t* a, std::int64_t lda, std::int64_t rows,
                                  const std::uint16_t* b, std::int64_t b_panel_stride,
                                  std::int64_t cols, float* c, std::int64_t ldc,
                                  const std::int64_t* lo, const std::int64_t* hi) {
  for (std::int64_t col = 0; col < cols; col += kPanel) {
    const std::uint16_t* b_panel = b + col / kPanel * b_panel_stride;
    for (std::int64_t r = 0; r < rows; r += kMicroRows) {
      const std::int64_t g = r / kMicroRows;
      if (lo[g] >= hi[g]) continue;
      bf16_microkernel<true>(a + r * lda, lda, b_panel, lo[g], hi[g], c + r * ldc + col, ldc);
    }
  }
}

// Rounds row `r`'s first n (a multiple of kPanel) fp32 values to bf16 (nearest even) in place:
// the bf16 row occupies the first half of the fp32 row's bytes (each 32-value chunk is loaded
// before the stores that could overlap it).
void round_row_to_bf16(float* row, std::int64_t n) {
  auto* dst = reinterpret_cast<std::uint16_t*>(row);
  for (std::int64_t c = 0; c < n; c += kPanel) {
    const __m512 lo = _mm512_loadu_ps(row + c), hi = _mm512_loadu_ps(row + c + kLanes);
    _mm512_storeu_si512(dst + c, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
  }
}

// exp_row (softmax_rows_impl.hpp) for the bf16 P·V product: row[c] = exp(row[c] − base) summed in
// fp32 as exp_row does, and stored rounded to bf16 (nearest even) in the first half of the row's
// bytes as round_row_to_bf16 would — one pass instead of two. n a multiple of kPanel. kScaled:
// from raw scores, as exp_row<true>.
template <bool kScaled>
float exp_row_to_bf16(float* row, std::int64_t n, float base, float scale) {
  const V vbase = Simd::set1(base), vscale = Simd::set1(scale);
  const V log2e = Simd::set1(kLog2e);
  auto* dst = reinterpret_cast<std::uint16_t*>(row);
  V vsum = Simd::zero();
  for (std::int64_t c = 0; c < n; c += kPanel) {
    const V lo = Simd::softmax_exp2(
        Simd::mul(logit_gap<kScaled>(row, c, vscale, vbase), log2e));
    const V hi = Simd::softmax_exp2(
        Simd::mul(logit_gap<kScaled>(row, c + kLanes, vscale, vbase), log2e));
    vsum = Simd::add(vsum, lo);
    vsum = Simd::add(vsum, hi);
    _mm512_storeu_si512(dst + c, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
  }
  return Simd::reduce_add(vsum);
}
