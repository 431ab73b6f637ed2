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

// One kMicroRows × kPanel block of C, kept in registers over the whole depth.
template <bool kAccumulate, bool kTransposeA>
void gemm_microkernel(const float* a, std::int64_t lda, const float* b_panel, std::int64_t depth,
                      float* c, std::int64_t ldc) {
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
