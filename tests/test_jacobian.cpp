// The softmax Jacobian utilities: J = diag(p) − p·pᵀ of p = softmax(x), and J·g without forming J.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "sdpa/sdpa.hpp"
#include "test_support.hpp"

namespace sdpa::test {
namespace {

constexpr double kInf64 = std::numeric_limits<double>::infinity();

std::vector<double> jacobian_of(const std::vector<double>& logits) {
  std::vector<double> j(logits.size() * logits.size(), -1.0);
  softmax_jacobian(logits, j);
  return j;
}

std::vector<double> softmax64(const std::vector<double>& x) {
  double max_x = -kInf64, sum = 0;
  for (double v : x) max_x = std::max(max_x, v);
  std::vector<double> p(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) sum += p[i] = std::exp(x[i] - max_x);
  for (double& v : p) v /= sum;
  return p;
}

std::vector<double> random_logits(Rng& rng, std::size_t n, double sigma) {
  std::vector<double> x(n);
  for (double& v : x) v = rng.uniform(-sigma, sigma);
  return x;
}

TEST(SoftmaxJacobian, RowsSumToZero) {
  Rng rng(1);
  for (std::size_t n : {1u, 2u, 5u, 17u}) {
    const std::vector<double> x = random_logits(rng, n, 4.0);
    const std::vector<double> j = jacobian_of(x);
    for (std::size_t r = 0; r < n; ++r) {
      double sum = 0;
      for (std::size_t c = 0; c < n; ++c) sum += j[r * n + c];
      EXPECT_NEAR(sum, 0.0, 1e-15) << "n = " << n << ", row " << r;
    }
  }
}

TEST(SoftmaxJacobian, IsSymmetricWithDiagonalPTimesOneMinusP) {
  Rng rng(2);
  const std::vector<double> x = random_logits(rng, 9, 3.0);
  const std::vector<double> p = softmax64(x);
  const std::vector<double> j = jacobian_of(x);
  for (std::size_t r = 0; r < 9; ++r) {
    EXPECT_NEAR(j[r * 9 + r], p[r] * (1 - p[r]), 1e-15);
    for (std::size_t c = 0; c < 9; ++c) EXPECT_EQ(j[r * 9 + c], j[c * 9 + r]);
  }
}

TEST(SoftmaxJacobian, MatchesFiniteDifferencesOfSoftmax) {
  Rng rng(3);
  const std::size_t n = 7;
  std::vector<double> x = random_logits(rng, n, 2.0);
  const std::vector<double> j = jacobian_of(x);
  constexpr double h = 1e-6;
  for (std::size_t c = 0; c < n; ++c) {  // column c = ∂p/∂x_c
    const double saved = x[c];
    x[c] = saved + h;
    const std::vector<double> plus = softmax64(x);
    x[c] = saved - h;
    const std::vector<double> minus = softmax64(x);
    x[c] = saved;
    for (std::size_t r = 0; r < n; ++r)
      EXPECT_NEAR(j[r * n + c], (plus[r] - minus[r]) / (2 * h), 1e-9)
          << "J[" << r << "][" << c << "]";
  }
}

TEST(SoftmaxJacobian, VectorProductEqualsJacobianTimesVector) {
  Rng rng(4);
  for (std::size_t n : {1u, 3u, 8u, 33u}) {
    const std::vector<double> x = random_logits(rng, n, 5.0), g = random_logits(rng, n, 1.0);
    const std::vector<double> j = jacobian_of(x);
    std::vector<double> jvp(n, -1.0);
    softmax_jacobian_vector_product(x, g, jvp);
    for (std::size_t r = 0; r < n; ++r) {
      double expected = 0;
      for (std::size_t c = 0; c < n; ++c) expected += j[r * n + c] * g[c];
      EXPECT_NEAR(jvp[r], expected, 1e-14) << "n = " << n << ", element " << r;
    }
  }
}

TEST(SoftmaxJacobian, ShiftingEveryLogitChangesNothing) {
  const std::vector<double> x{0.5, -1.0, 2.0, 0.0}, shifted{1000.5, 999.0, 1002.0, 1000.0};
  const std::vector<double> a = jacobian_of(x), b = jacobian_of(shifted);
  for (std::size_t e = 0; e < a.size(); ++e) EXPECT_NEAR(a[e], b[e], 1e-13);
}

TEST(SoftmaxJacobian, SaturatesToZeroForOneDominantLogit) {
  // p → one-hot as x grows, and J = diag(p) − p·pᵀ → 0: the vanishing gradient of a saturated
  // softmax.
  double previous = kInf64;
  for (double x0 : {1.0, 5.0, 10.0, 20.0, 40.0, 800.0}) {
    const std::vector<double> j = jacobian_of({x0, 0.0, 0.0, 0.0});
    double norm = 0;
    for (double v : j) norm += v * v;
    norm = std::sqrt(norm);
    EXPECT_TRUE(std::isfinite(norm)) << "x = " << x0;
    EXPECT_LT(norm, previous) << "x = " << x0;
    previous = norm;
  }
  EXPECT_LT(previous, 1e-300);
  const std::vector<double> j = jacobian_of({40.0, 0.0, 0.0, 0.0});
  for (double v : j) EXPECT_LT(std::abs(v), 1e-16);
}

TEST(SoftmaxJacobian, FullyNegativeInfiniteLogitsGiveZeroNotNaN) {
  const std::vector<double> x(4, -kInf64);
  for (double v : jacobian_of(x)) EXPECT_EQ(v, 0.0);
  std::vector<double> jvp(4, -1.0);
  softmax_jacobian_vector_product(x, std::vector<double>{1, 2, 3, 4}, jvp);
  for (double v : jvp) EXPECT_EQ(v, 0.0);
}

TEST(SoftmaxJacobian, NegativeInfiniteLogitHasZeroRowAndColumn) {
  const std::vector<double> x{1.0, -kInf64, 0.5};
  const std::vector<double> j = jacobian_of(x);
  for (std::size_t c = 0; c < 3; ++c) {
    EXPECT_EQ(j[1 * 3 + c], 0.0);
    EXPECT_EQ(j[c * 3 + 1], 0.0);
  }
  EXPECT_GT(j[0], 0.0);
}

TEST(SoftmaxJacobian, HugeLogitsDoNotOverflow) {
  const std::vector<double> x{1e300, 1e300 - 1e285, -1e300};
  for (double v : jacobian_of(x)) EXPECT_TRUE(std::isfinite(v));
  const std::vector<double> j = jacobian_of({1e308, 1e308});  // two equal huge logits: p = ½, ½
  EXPECT_DOUBLE_EQ(j[0], 0.25);
  EXPECT_DOUBLE_EQ(j[1], -0.25);
}

TEST(SoftmaxJacobian, EmptyLogitsGiveAnEmptyJacobian) {
  std::vector<double> none;
  EXPECT_NO_THROW(softmax_jacobian(none, none));
  EXPECT_NO_THROW(softmax_jacobian_vector_product(none, none, none));
}

// Expects `call` to throw sdpa::Error whose message contains every one of `parts`.
template <typename Call>
void expect_error(Call call, std::initializer_list<std::string> parts) {
  try {
    call();
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    const std::string message = e.what();
    for (const std::string& part : parts)
      EXPECT_NE(message.find(part), std::string::npos)
          << "\"" << message << "\" lacks \"" << part << "\"";
  }
}

TEST(SoftmaxJacobian, WrongSizesNameTheArgumentAndWriteNothing) {
  const std::vector<double> x{1, 2, 3};
  std::vector<double> small(8, 7.0), g(2, 1.0), result(3, 7.0), short_result(2, 7.0);
  expect_error([&] { softmax_jacobian(x, small); }, {"jacobian.size() = 8", "9"});
  for (double v : small) EXPECT_EQ(v, 7.0);
  expect_error([&] { softmax_jacobian_vector_product(x, g, result); }, {"g.size() = 2", "3"});
  for (double v : result) EXPECT_EQ(v, 7.0);
  expect_error(
      [&] {
        softmax_jacobian_vector_product(x, std::vector<double>{1, 2, 3}, short_result);
      },
      {"result.size() = 2", "3"});
  for (double v : short_result) EXPECT_EQ(v, 7.0);
}

}  // namespace
}  // namespace sdpa::test
