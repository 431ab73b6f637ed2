// The dense algebra of the layers: row-major sgemm (OpenBLAS) and the two bias helpers.
#pragma once

#include <cstdint>

namespace sdpa::layer {

/// C [m, n] = op(A)·op(B) + beta·C, row-major; op(A) is [m, k] (A itself [k, m] when trans_a),
/// op(B) is [k, n] (B itself [n, k] when trans_b). lda/ldb/ldc are the row strides. Sizes must
/// fit in int (OpenBLAS's blasint); the callers' shapes are checked long before.
void gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k,
          const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
          std::int64_t ldc);

/// rows [m, n] += vector [n] on every row.
void add_to_rows(float* rows, const float* vector, std::int64_t m, std::int64_t n);

/// sums [n] = Σ over the m rows of rows [m, n] (written, not accumulated), summed in row order.
void column_sums(const float* rows, std::int64_t m, std::int64_t n, float* sums);

}  // namespace sdpa::layer

namespace sdpa::layer {

/// Threads OpenBLAS may use for gemm() from now on (process-wide).
void set_blas_threads(int threads);

}  // namespace sdpa::layer
