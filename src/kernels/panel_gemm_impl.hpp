// Register-blocked GEMM on packed panels, the one matrix-product building block of every attention
// kernel (forward: Q·Kᵀ and P·V; backward: dO·Vᵀ, Pᵀ·dO, dSᵀ·Q, dS·K).
//
//   C[rows][cols] (+)= A[rows][depth] · B[depth][cols]
//   A: element (r, k) at a[r·lda + k] (row-major), or at a[k·lda + r] when transposed (so Pᵀ and
//      dSᵀ are read straight from P and dS); read by broadcast, one element at a time
//   B: panels of kPanel columns, panel p at b + p·b_panel_stride, laid out [depth][kPanel]
//   rows a multiple of kMicroRows, cols a multiple of kPanel (callers pad with zeros)
//
// Included by the kernel impl headers inside namespace sdpa::kernels::<isa>::(anonymous) after
// Simd and kMicroRows are defined.

constexpr int kLanes = Simd::kLanes;
constexpr int kPanel = 2 * kLanes;  // NR: columns per B panel
using V = Simd::V;

inline std::int64_t min_i64(std::int64_t a, std::int64_t b) { return a < b ? a : b; }
inline std::int64_t max_i64(std::int64_t a, std::int64_t b) { return a > b ? a : b; }
inline std::int64_t round_up(std::int64_t x, std::int64_t to) { return (x + to - 1) / to * to; }

// One kMicroRows × kPanel block of C, kept in registers over the whole depth. With kRowMax, also
// row_max[r·kLanes + l] = max(row_max[r·kLanes + l], C[r][l], C[r][kLanes + l]) (in that operand
// order, as a pass over C's row would: the forward's score maxima without reading the tile again).
template <bool kAccumulate, bool kTransposeA, bool kRowMax = false>
void gemm_microkernel(const float* a, std::int64_t lda, const float* b_panel, std::int64_t depth,
                      float* c, std::int64_t ldc, float* row_max = nullptr) {
  V acc[kMicroRows][2];
#pragma GCC unroll 16
  for (int r = 0; r < kMicroRows; ++r) {
    if (kAccumulate) {
      acc[r][0] = Simd::load(c + r * ldc);
      acc[r][1] = Simd::load(c + r * ldc + kLanes);
    } else {
      acc[r][0] = acc[r][1] = Simd::zero();
    }
  }
  for (std::int64_t k = 0; k < depth; ++k) {
    const V b0 = Simd::load(b_panel + k * kPanel);
    const V b1 = Simd::load(b_panel + k * kPanel + kLanes);
#pragma GCC unroll 16
    for (int r = 0; r < kMicroRows; ++r) {
      const V av = Simd::set1(kTransposeA ? a[k * lda + r] : a[r * lda + k]);
      acc[r][0] = Simd::fma(av, b0, acc[r][0]);
      acc[r][1] = Simd::fma(av, b1, acc[r][1]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < kMicroRows; ++r) {
    Simd::store(c + r * ldc, acc[r][0]);
    Simd::store(c + r * ldc + kLanes, acc[r][1]);
    if constexpr (kRowMax) {
      float* m = row_max + r * kLanes;
      Simd::store(m, Simd::max(Simd::max(Simd::load(m), acc[r][0]), acc[r][1]));
    }
  }
}

// The whole product, panel by panel (the B panel stays in L1 across the row groups).
template <bool kAccumulate, bool kTransposeA = false>
void panel_gemm(const float* a, std::int64_t lda, std::int64_t rows, const float* b,
                std::int64_t b_panel_stride, std::int64_t cols, std::int64_t depth, float* c,
                std::int64_t ldc) {
  for (std::int64_t col = 0; col < cols; col += kPanel) {
    const float* b_panel = b + col / kPanel * b_panel_stride;
    for (std::int64_t r = 0; r < rows; r += kMicroRows) {
      const float* a_rows = kTransposeA ? a + r : a + r * lda;
      gemm_microkernel<kAccumulate, kTransposeA>(a_rows, lda, b_panel, depth, c + r * ldc + col, ldc);
    }
  }
}

// Causal and windowed tiles are partly masked; these variants skip the microkernel calls that
// would only produce masked (or zero-weight) entries. Row group g = rows [g·kMicroRows, …).

// C = A·B where row group g computes only the column panels in [lo[g], hi[g]) (multiples of
// kPanel); C's other panels are left as they were (callers overwrite or ignore them). With
// row_max ([rows][kLanes]), each row's lane maxima over the panels computed are folded into it.
inline void panel_gemm_cols(const float* a, std::int64_t lda, std::int64_t rows, const float* b,
                            std::int64_t b_panel_stride, std::int64_t depth, float* c,
                            std::int64_t ldc, const std::int64_t* lo, const std::int64_t* hi,
                            float* row_max = nullptr) {
  std::int64_t cols = 0;
  for (std::int64_t g = 0; g < rows / kMicroRows; ++g) cols = max_i64(cols, hi[g]);
  for (std::int64_t col = 0; col < cols; col += kPanel) {
    const float* b_panel = b + col / kPanel * b_panel_stride;
    for (std::int64_t r = 0; r < rows; r += kMicroRows) {
      const std::int64_t g = r / kMicroRows;
      if (col < lo[g] || col >= hi[g]) continue;
      if (row_max != nullptr)
        gemm_microkernel<false, false, true>(a + r * lda, lda, b_panel, depth, c + r * ldc + col,
                                             ldc, row_max + r * kLanes);
      else
        gemm_microkernel<false, false>(a + r * lda, lda, b_panel, depth, c + r * ldc + col, ldc);
    }
  }
}

// C += A·B where row group g's depth runs over [lo[g], hi[g]) only: A is zero outside it.
template <bool kTransposeA>
void panel_gemm_depth(const float* a, std::int64_t lda, std::int64_t rows, const float* b,
                      std::int64_t b_panel_stride, std::int64_t cols, float* c, std::int64_t ldc,
                      const std::int64_t* lo, const std::int64_t* hi) {
  for (std::int64_t col = 0; col < cols; col += kPanel) {
    const float* b_panel = b + col / kPanel * b_panel_stride;
    for (std::int64_t r = 0; r < rows; r += kMicroRows) {
      const std::int64_t g = r / kMicroRows, k0 = lo[g];
      if (k0 >= hi[g]) continue;
      const float* a_rows = kTransposeA ? a + k0 * lda + r : a + r * lda + k0;
      gemm_microkernel<true, kTransposeA>(a_rows, lda, b_panel + k0 * kPanel, hi[g] - k0,
                                          c + r * ldc + col, ldc);
    }
  }
}

// Column ranges per row group: the union of the visible key ranges [begin[r], end[r]) of its rows
// (absolute keys), relative to the tile's first key t0 and clipped to [0, n_keys): exact in
// key_lo/key_hi (for depths), widened to whole panels in panel_lo/panel_hi (for panel_gemm_cols).
// Rows ≥ `rows` (padding) see nothing; a group that sees nothing gets lo ≥ hi.
inline void group_key_ranges(const std::int64_t* begin, const std::int64_t* end, int rows,
                             int groups, std::int64_t t0, std::int64_t n_keys,
                             std::int64_t* key_lo, std::int64_t* key_hi, std::int64_t* panel_lo,
                             std::int64_t* panel_hi) {
  for (int g = 0; g < groups; ++g) {
    std::int64_t l = n_keys, h = 0;
    for (int r = g * kMicroRows; r < (g + 1) * kMicroRows && r < rows; ++r) {
      const std::int64_t b0 = max_i64(begin[r] - t0, 0), e0 = min_i64(end[r] - t0, n_keys);
      if (b0 >= e0) continue;
      l = min_i64(l, b0);
      h = max_i64(h, e0);
    }
    key_lo[g] = panel_lo[g] = l;
    key_hi[g] = panel_hi[g] = h;
    if (l < h) {
      panel_lo[g] = l / kPanel * kPanel;
      panel_hi[g] = min_i64(round_up(h, kPanel), round_up(n_keys, kPanel));
    }
  }
}

// Row ranges per key group (keys [g·kMicroRows, …) of the tile, for the transposed products whose
// rows are keys and whose depth is query rows): the rows r < rows whose visible keys
// [begin[r], end[r]) − t0 meet the group. A group no row sees gets lo ≥ hi.
inline void key_group_row_ranges(const std::int64_t* begin, const std::int64_t* end, int rows,
                                 std::int64_t t0, int key_groups, std::int64_t* lo,
                                 std::int64_t* hi) {
  for (int g = 0; g < key_groups; ++g) {
    lo[g] = rows;
    hi[g] = 0;
  }
  for (int r = 0; r < rows; ++r) {
    const std::int64_t b0 = max_i64(begin[r] - t0, 0);
    const std::int64_t e0 = min_i64(end[r] - t0, static_cast<std::int64_t>(key_groups) * kMicroRows);
    if (b0 >= e0) continue;
    for (std::int64_t g = b0 / kMicroRows; g <= (e0 - 1) / kMicroRows; ++g) {
      lo[g] = min_i64(lo[g], r);
      hi[g] = max_i64(hi[g], r + 1);
    }
  }
}

#if defined(__AVX512F__)
// r[i] becomes column i of the 16 × 16 matrix whose rows are r[0..15]: pairs of rows interleaved,
// then 4 × 4 blocks within 128-bit lanes, then the lanes themselves (64 shuffles for 256 elements).
inline void transpose16(__m512 (&r)[16]) {
  __m512 t[16], u[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // u[4j + c]: lane k holds column 4k + c of rows 4j .. 4j + 3.
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    u[4 * j] = _mm512_shuffle_ps(t[4 * j], t[4 * j + 2], 0x44);
    u[4 * j + 1] = _mm512_shuffle_ps(t[4 * j], t[4 * j + 2], 0xEE);
    u[4 * j + 2] = _mm512_shuffle_ps(t[4 * j + 1], t[4 * j + 3], 0x44);
    u[4 * j + 3] = _mm512_shuffle_ps(t[4 * j + 1], t[4 * j + 3], 0xEE);
  }
  // t[c] (c < 4): columns c, 8 + c of rows 0..7 (lanes: c of rows 0–3, 8 + c of 0–3, c of 4–7,
  // 8 + c of 4–7); t[4 + c]: columns 4 + c, 12 + c likewise; t[8 + ·]: the same for rows 8..15.
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    t[c] = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88);
    t[4 + c] = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xDD);
    t[8 + c] = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
    t[12 + c] = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xDD);
  }
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) {
    r[c] = _mm512_shuffle_f32x4(t[c], t[8 + c], 0x88);
    r[8 + c] = _mm512_shuffle_f32x4(t[c], t[8 + c], 0xDD);
    r[4 + c] = _mm512_shuffle_f32x4(t[4 + c], t[12 + c], 0x88);
    r[12 + c] = _mm512_shuffle_f32x4(t[4 + c], t[12 + c], 0xDD);
  }
}
#endif

// One B panel from rows: dst[d][n] = src[n·row_stride + d] for d < dim and n < rows (rows ≤
// kPanel, each row's dim elements contiguous), 0 for n ≥ rows — K (and, in the backward, Vᵀ)
// packed for the microkernel. On AVX-512 by 16 × 16 register transposes, else element by element.
void transpose_panel(const float* src, std::int64_t row_stride, int rows, std::int64_t dim,
                     float* dst) {
#if defined(__AVX512F__)
  static_assert(kPanel == 32, "two 16-row halves per panel");
  for (std::int64_t d0 = 0; d0 < dim; d0 += 16) {
    const int width = static_cast<int>(min_i64(16, dim - d0));
    const __mmask16 columns = static_cast<__mmask16>((1u << width) - 1);
    for (int half = 0; half < 2; ++half) {
      __m512 r[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) {
        const int n = 16 * half + i;
        r[i] = n < rows ? _mm512_maskz_loadu_ps(columns, src + n * row_stride + d0)
                        : _mm512_setzero_ps();
      }
      transpose16(r);
      for (int i = 0; i < width; ++i) _mm512_storeu_ps(dst + (d0 + i) * kPanel + 16 * half, r[i]);
    }
  }
#else
  for (std::int64_t d = 0; d < dim; ++d)
    for (int n = 0; n < kPanel; ++n)
      dst[d * kPanel + n] = n < rows ? src[n * row_stride + d] : 0.0f;
#endif
}
