// The softmax Jacobian: for p = softmax(x), ∂p_i/∂x_j = p_i (δ_ij − p_j), i.e. J = diag(p) − p·pᵀ.
// J is symmetric, each row sums to 0 (softmax is invariant to adding a constant to every logit),
// and J·g = p ∘ (g − p·g) costs O(n) without forming J.
#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <vector>

#include "core/errors.hpp"
#include "sdpa/sdpa.hpp"

namespace sdpa {
namespace {

// p = softmax(logits) with the max subtracted first, so large logits do not overflow.
//   all −inf (or empty)  → p = 0 (a row that sees nothing: zero Jacobian, as for masked rows)
//   some +inf            → the limit: p uniform over the +inf entries, 0 elsewhere
//   any NaN              → p all NaN
std::vector<double> softmax(std::span<const double> logits) {
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> p(logits.size(), 0.0);
  double max_logit = -inf;
  for (double x : logits) {
    if (std::isnan(x)) {
      std::fill(p.begin(), p.end(), std::numeric_limits<double>::quiet_NaN());
      return p;
    }
    max_logit = std::max(max_logit, x);
  }
  if (max_logit == -inf) return p;
  double sum = 0;
  for (std::size_t j = 0; j < logits.size(); ++j) {
    p[j] = max_logit == inf ? (logits[j] == inf ? 1.0 : 0.0) : std::exp(logits[j] - max_logit);
    sum += p[j];
  }
  for (double& x : p) x /= sum;
  return p;
}

void check_size(std::size_t size, const char* name, std::size_t expected,
                const char* expected_from) {
  if (size != expected)
    fail(name, ".size() = ", size, " does not match ", expected_from, " = ", expected);
}

}  // namespace

void softmax_jacobian(std::span<const double> logits, std::span<double> jacobian) {
  const std::size_t n = logits.size();
  check_size(jacobian.size(), "jacobian", n * n, "logits.size()²");
  const std::vector<double> p = softmax(logits);
  for (std::size_t i = 0; i < n; ++i)
    for (std::size_t j = 0; j < n; ++j) jacobian[i * n + j] = (i == j ? p[i] : 0.0) - p[i] * p[j];
}

void softmax_jacobian_vector_product(std::span<const double> logits, std::span<const double> g,
                                     std::span<double> result) {
  const std::size_t n = logits.size();
  check_size(g.size(), "g", n, "logits.size()");
  check_size(result.size(), "result", n, "logits.size()");
  const std::vector<double> p = softmax(logits);
  double p_dot_g = 0;
  for (std::size_t j = 0; j < n; ++j) p_dot_g += p[j] * g[j];
  for (std::size_t i = 0; i < n; ++i) result[i] = p[i] * (g[i] - p_dot_g);
}

}  // namespace sdpa
