// merge_attention: partial attention results over disjoint key sets → the result over their union.
//
// Part i saw keys K_i and reports out_i = Σ_{j∈K_i} e^{s_j} v_j / Σ_{j∈K_i} e^{s_j} and
// lse_i = log Σ_{j∈K_i} e^{s_j}. Over K = ∪ K_i:  lse = log Σ_i e^{lse_i},
// out = Σ_i e^{lse_i − lse} out_i. Computed per row in fp64 relative to the largest lse_i (no
// overflow), parts in index order; rows are independent, so any thread count gives the same bits.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/problem.hpp"

namespace sdpa {
namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// Row (b, h, i) of the merge: writes out[b, h, i, :] and lse[b, h, i]. `weights` is scratch of
// one double per part.
void merge_row(const MergeProblem& m, std::int64_t b, std::int64_t h, std::int64_t i,
               std::vector<double>& weights) {
  const std::size_t parts = m.outs.size();
  double largest = kNegInf;
  bool nan = false;
  for (std::size_t n = 0; n < parts; ++n) {
    const double x = m.lses[n].at(b, h, i, 0);
    nan |= std::isnan(x);
    if (x > largest) largest = x;
  }
  float* out = &m.out.at(b, h, i, 0);
  if (nan || largest == kNegInf) {  // a NaN input, or no part saw a key
    const float fill = nan ? std::numeric_limits<float>::quiet_NaN() : 0.0f;
    for (std::int64_t d = 0; d < m.dim; ++d) out[d * m.out.s3] = fill;
    if (m.lse) m.lse->at(b, h, i, 0) = nan ? fill : -std::numeric_limits<float>::infinity();
    return;
  }
  double sum = 0;
  for (std::size_t n = 0; n < parts; ++n) {
    const double x = m.lses[n].at(b, h, i, 0);
    // exp(−inf − largest) is 0 already; +inf − +inf gives NaN, as an infinite input should.
    weights[n] = x == kNegInf ? 0.0 : std::exp(x - largest);
    sum += weights[n];
  }
  for (std::size_t n = 0; n < parts; ++n) weights[n] /= sum;
  // Element d of every part is read before out[d] is written: out may be one of the parts.
  for (std::int64_t d = 0; d < m.dim; ++d) {
    double acc = 0;
    for (std::size_t n = 0; n < parts; ++n)
      if (weights[n] != 0.0) acc += weights[n] * m.outs[n].at(b, h, i, d);
    out[d * m.out.s3] = static_cast<float>(acc);
  }
  if (m.lse) m.lse->at(b, h, i, 0) = static_cast<float>(largest + std::log(sum));
}

}  // namespace

void merge_attention(std::span<const Tensor> outs, std::span<const Tensor> lses, const Tensor& out,
                     const std::optional<Tensor>& lse, int threads) {
  const MergeProblem m = validate_merge(outs, lses, out, lse, threads);
  const std::int64_t rows = m.batch * m.heads * m.len;
  if (rows == 0) return;
  const int team = static_cast<int>(std::min<std::int64_t>(m.threads, rows));
#pragma omp parallel num_threads(team)
  {
    std::vector<double> weights(m.outs.size());
#pragma omp for schedule(static)
    for (std::int64_t r = 0; r < rows; ++r)
      merge_row(m, r / (m.heads * m.len), r / m.len % m.heads, r % m.len, weights);
  }
}

}  // namespace sdpa
