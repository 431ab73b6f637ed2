// The naive baseline: fp32 attention in three steps with OpenBLAS, materializing every L×L score
// matrix (one (batch, head) at a time, so the workspace is L² floats, not B·H·L²).
#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "bench/bench.hpp"
#include "core/errors.hpp"

namespace sdpa::bench {
namespace {

// One row of S [n] → softmax in place; with `visible` < n the tail is masked (-inf → weight 0).
void softmax_row(float* row, std::int64_t n, std::int64_t visible) {
  for (std::int64_t j = visible; j < n; ++j) row[j] = -std::numeric_limits<float>::infinity();
  float max = row[0];
  for (std::int64_t j = 1; j < n; ++j) max = std::max(max, row[j]);
  float sum = 0;
  for (std::int64_t j = 0; j < n; ++j) {
    row[j] = std::exp(row[j] - max);
    sum += row[j];
  }
  const float inverse = 1.0f / sum;
  for (std::int64_t j = 0; j < n; ++j) row[j] *= inverse;
}

// S [L, L] row by row on `threads` OpenMP threads; causal: row i sees keys j <= i.
void softmax_rows(float* scores, std::int64_t length, bool causal, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (std::int64_t i = 0; i < length; ++i)
    softmax_row(scores + i * length, length, causal ? i + 1 : length);
}

}  // namespace

std::size_t naive_scores_floats(const AttentionShape& shape) {
  return static_cast<std::size_t>(shape.length) * static_cast<std::size_t>(shape.length);
}

NaiveSteps naive_forward(AttentionData& data, std::span<float> scores, int threads) {
  const AttentionShape& s = data.shape;
  if (scores.size() < naive_scores_floats(s))
    fail("naive_forward: scores holds ", scores.size(), " floats, expected ",
         naive_scores_floats(s));
  const auto n = static_cast<blasint>(s.length);
  const auto d = static_cast<blasint>(s.dim);
  const float scale = 1.0f / std::sqrt(static_cast<float>(s.dim));
  const std::int64_t head_size = s.length * s.dim;
  openblas_set_num_threads(threads);
  NaiveSteps steps;
  for (std::int64_t head = 0; head < s.batch * s.heads; ++head) {
    const float* q = data.q.data() + head * head_size;  // [L, D]
    const float* k = data.k.data() + head * head_size;  // [L, D]
    const float* v = data.v.data() + head * head_size;  // [L, D]
    float* out = data.out.data() + head * head_size;    // [L, D]
    double start = now_seconds();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, d, scale, q, d, k, d, 0.0f,
                scores.data(), n);
    steps.scores_s += now_seconds() - start;
    start = now_seconds();
    softmax_rows(scores.data(), s.length, s.causal, threads);
    steps.softmax_s += now_seconds() - start;
    start = now_seconds();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, n, 1.0f, scores.data(), n, v, d,
                0.0f, out, d);
    steps.output_s += now_seconds() - start;
  }
  return steps;
}

}  // namespace sdpa::bench
