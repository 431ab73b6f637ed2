#include "layer/gemm.hpp"

#include <cblas.h>

#include <algorithm>
#include <climits>
#include <stdexcept>

namespace sdpa::layer {
namespace {

blasint blas_int(std::int64_t n) {
  if (n < 0 || n > INT_MAX)
    throw std::length_error("sdpa layer: matrix extent exceeds OpenBLAS's int");
  return static_cast<blasint>(n);
}

}  // namespace

void gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k,
          const float* a, std::int64_t lda, const float* b, std::int64_t ldb, float beta, float* c,
          std::int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // OpenBLAS handles it, but say what happens: C = beta·C
    for (std::int64_t i = 0; i < m; ++i)
      for (std::int64_t j = 0; j < n; ++j)
        c[i * ldc + j] = beta == 0 ? 0.0f : beta * c[i * ldc + j];
    return;
  }
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, blas_int(m), blas_int(n), blas_int(k), 1.0f, a,
              blas_int(lda), b, blas_int(ldb), beta, c, blas_int(ldc));
}

void add_to_rows(float* rows, const float* vector, std::int64_t m, std::int64_t n) {
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) rows[i * n + j] += vector[j];
}

void column_sums(const float* rows, std::int64_t m, std::int64_t n, float* sums) {
  std::fill(sums, sums + n, 0.0f);
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) sums[j] += rows[i * n + j];
}

}  // namespace sdpa::layer

namespace sdpa::layer {

void set_blas_threads(int threads) { openblas_set_num_threads(threads); }

}  // namespace sdpa::layer
