// The backward pass:
//   1. the fp64 reference gradients (reference::backward) against central finite differences of an
//      independent fp64 forward, for q, k, v, bias and scale, on small cases of every feature;
//   2. sdpa::backward against that reference on random configurations (every layout and option,
//      every instruction set, 1 to 4 threads) with DESIGN.md's accuracy rule plus a per-element
//      rounding bound of the prescribed algorithm (backward_support.hpp says why; set
//      SDPA_BACKWARD_STRICT=1 to check the literal rule);
//   3. fully masked rows, determinism across thread counts, and argument errors.
//
// Reproduce one property configuration with
//   SDPA_PROPERTY_SEED=<seed> ./sdpa_tests --gtest_filter='*BackwardProperty*/0'
// and run more with SDPA_BACKWARD_CONFIGS=<configurations per shard>.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "backward_support.hpp"
#include "core/reference.hpp"
#include "test_support.hpp"

namespace sdpa::test {
namespace {

std::size_t at(std::int64_t index) { return static_cast<std::size_t>(index); }

// =================================================================================================
// 1. Finite differences of the fp64 reference
// =================================================================================================

// An attention problem in double arrays (C order), independent of the library: the loss
// L = Σ dout ∘ out is computed by the loops below, with their own visibility rule. Every value is
// drawn as a float, so the same problem can also be handed to the library as float tensors.
struct Fp64Problem {
  std::int64_t B = 1, Hq = 2, Hkv = 2, Lq = 5, Lk = 5, Dk = 3, Dv = 3;
  std::vector<double> q, k, v, dout;  // [B,Hq,Lq,Dk] [B,Hkv,Lk,Dk] [B,Hkv,Lk,Dv] [B,Hq,Lq,Dv]
  std::vector<std::int64_t>
      bias_shape;  // empty: no bias; else rank 1..4, right-aligned on [B,Hq,Lq,Lk]
  std::vector<double> bias;
  std::vector<std::uint8_t> mask;  // empty, or [B, Hq, Lq, Lk]
  Causal causal = Causal::none;
  std::int64_t window_left = -1, window_right = -1;
  std::vector<std::int32_t> key_lengths, query_lengths;
  double scale = 0.5;
  double softcap = 0;          // 0 = off: logits c·tanh(scale·q·k / c) + bias
  std::vector<double> sinks;   // empty, or [Hq]: an extra logit per head with no value

  // The bias shape padded to rank 4 with leading 1s.
  std::array<std::int64_t, 4> bias_shape4() const {
    std::array<std::int64_t, 4> shape{1, 1, 1, 1};
    const std::size_t pad = 4 - bias_shape.size();
    for (std::size_t d = 0; d < bias_shape.size(); ++d) shape[pad + d] = bias_shape[d];
    return shape;
  }
  double bias_at(std::int64_t b, std::int64_t h, std::int64_t i, std::int64_t j) const {
    const auto shape = bias_shape4();
    const std::int64_t index[4] = {b, h, i, j};
    std::int64_t flat = 0;
    for (std::size_t d = 0; d < 4; ++d) flat = flat * shape[d] + (shape[d] == 1 ? 0 : index[d]);
    return bias[at(flat)];
  }
  bool visible(std::int64_t b, std::int64_t h, std::int64_t i, std::int64_t j) const {
    const std::int64_t lq = query_lengths.empty() ? Lq : query_lengths[at(b)];
    const std::int64_t lk = key_lengths.empty() ? Lk : key_lengths[at(b)];
    if (i >= lq || j >= lk) return false;
    const std::int64_t diagonal = causal == Causal::bottom_right ? i + lk - lq : i;
    if (causal != Causal::none && j > diagonal) return false;
    if (window_left >= 0 && j < diagonal - window_left) return false;
    if (window_right >= 0 && j > diagonal + window_right) return false;
    return mask.empty() || mask[at(((b * Hq + h) * Lq + i) * Lk + j)] != 0;
  }
};

// out [B, Hq, Lq, Dv] of the problem, in fp64.
std::vector<double> fp64_forward(const Fp64Problem& p) {
  std::vector<double> out(at(p.B * p.Hq * p.Lq * p.Dv), 0.0), s(at(p.Lk));
  const double neg_inf = -std::numeric_limits<double>::infinity();
  for (std::int64_t b = 0; b < p.B; ++b)
    for (std::int64_t h = 0; h < p.Hq; ++h)
      for (std::int64_t i = 0; i < p.Lq; ++i) {
        const std::int64_t hk = h / (p.Hq / p.Hkv);
        const bool real_row = i < (p.query_lengths.empty() ? p.Lq : p.query_lengths[at(b)]);
        const double sink = p.sinks.empty() || !real_row ? neg_inf : p.sinks[at(h)];
        double max_s = sink;
        for (std::int64_t j = 0; j < p.Lk; ++j) {
          s[at(j)] = neg_inf;
          if (!p.visible(b, h, i, j)) continue;
          double dot = 0;
          for (std::int64_t d = 0; d < p.Dk; ++d)
            dot += p.q[at(((b * p.Hq + h) * p.Lq + i) * p.Dk + d)] *
                   p.k[at(((b * p.Hkv + hk) * p.Lk + j) * p.Dk + d)];
          double score = p.scale * dot;
          if (p.softcap > 0) score = p.softcap * std::tanh(score / p.softcap);
          s[at(j)] = score + (p.bias.empty() ? 0.0 : p.bias_at(b, h, i, j));
          max_s = std::max(max_s, s[at(j)]);
        }
        if (max_s == neg_inf) continue;
        double sum = std::exp(sink - max_s);
        for (std::int64_t j = 0; j < p.Lk; ++j) sum += std::exp(s[at(j)] - max_s);
        for (std::int64_t j = 0; j < p.Lk; ++j)
          for (std::int64_t d = 0; d < p.Dv; ++d)
            out[at(((b * p.Hq + h) * p.Lq + i) * p.Dv + d)] +=
                std::exp(s[at(j)] - max_s) / sum *
                p.v[at(((b * p.Hkv + hk) * p.Lk + j) * p.Dv + d)];
      }
  return out;
}

double fp64_loss(const Fp64Problem& p) {
  const std::vector<double> out = fp64_forward(p);
  double loss = 0;
  for (std::size_t n = 0; n < out.size(); ++n) loss += p.dout[n] * out[n];
  return loss;
}

// Central differences of the loss with respect to every element of `values` (a member of p,
// perturbed in place and restored).
std::vector<double> numerical_gradient(Fp64Problem& p, std::vector<double>& values) {
  constexpr double h = 1e-5;
  std::vector<double> gradient(values.size());
  for (std::size_t n = 0; n < values.size(); ++n) {
    const double saved = values[n];
    values[n] = saved + h;
    const double plus = fp64_loss(p);
    values[n] = saved - h;
    const double minus = fp64_loss(p);
    values[n] = saved;
    gradient[n] = plus == minus ? 0.0 : (plus - minus) / (2 * h);  // also for saved = −inf
  }
  return gradient;
}

// The same problem as float tensors, owning their memory, with the validated BackwardProblem.
struct LibraryCall {
  std::vector<float> q, k, v, dout, bias, out, lse, dq, dk, dv, dbias, sinks, dsinks;
  std::vector<std::uint8_t> mask;
  std::vector<std::int32_t> key_lengths, query_lengths;
  BackwardProblem problem;

  explicit LibraryCall(const Fp64Problem& p)
      : q(p.q.begin(), p.q.end()),
        k(p.k.begin(), p.k.end()),
        v(p.v.begin(), p.v.end()),
        dout(p.dout.begin(), p.dout.end()),
        bias(p.bias.begin(), p.bias.end()),
        out(p.dout.size()),
        lse(at(p.B * p.Hq * p.Lq)),
        dq(q.size()),
        dk(k.size()),
        dv(v.size()),
        dbias(bias.size()),
        sinks(p.sinks.begin(), p.sinks.end()),
        dsinks(sinks.size()),
        mask(p.mask),
        key_lengths(p.key_lengths),
        query_lengths(p.query_lengths) {
    const auto tensor = [](std::vector<float>& data, std::initializer_list<std::int64_t> shape) {
      return Tensor::contiguous(data.data(), DType::f32, shape);
    };
    Options options;
    options.scale = static_cast<float>(p.scale);
    options.softcap = static_cast<float>(p.softcap);
    options.causal = p.causal;
    if (p.window_left >= 0 || p.window_right >= 0)
      options.window = Window{p.window_left, p.window_right};
    options.key_lengths = key_lengths;
    options.query_lengths = query_lengths;
    if (!mask.empty())
      options.mask = Tensor::contiguous(mask.data(), DType::boolean, {p.B, p.Hq, p.Lq, p.Lk});
    Grads grads;
    grads.dq = tensor(dq, {p.B, p.Hq, p.Lq, p.Dk});
    grads.dk = tensor(dk, {p.B, p.Hkv, p.Lk, p.Dk});
    grads.dv = tensor(dv, {p.B, p.Hkv, p.Lk, p.Dv});
    if (!p.bias_shape.empty()) {
      Tensor b, db;
      b.data = bias.data();
      db.data = dbias.data();
      b.rank = db.rank = static_cast<int>(p.bias_shape.size());
      std::int64_t stride = 1;
      for (int d = b.rank - 1; d >= 0; --d) {
        b.shape[at(d)] = db.shape[at(d)] = p.bias_shape[at(d)];
        b.stride[at(d)] = db.stride[at(d)] = stride;
        stride *= p.bias_shape[at(d)];
      }
      options.bias = b;
      grads.dbias = db;
    }
    if (!sinks.empty()) {
      options.sinks = tensor(sinks, {p.Hq});
      grads.dsinks = tensor(dsinks, {p.Hq});
    }
    problem = validate_backward(
        tensor(q, {p.B, p.Hq, p.Lq, p.Dk}), tensor(k, {p.B, p.Hkv, p.Lk, p.Dk}),
        tensor(v, {p.B, p.Hkv, p.Lk, p.Dv}), tensor(out, {p.B, p.Hq, p.Lq, p.Dv}),
        tensor(dout, {p.B, p.Hq, p.Lq, p.Dv}), tensor(lse, {p.B, p.Hq, p.Lq}), options, grads);
  }
  LibraryCall(const LibraryCall&) = delete;
  LibraryCall& operator=(const LibraryCall&) = delete;
};

// Fails unless |numerical − analytic| ≤ 1e-6·(1 + |analytic|) for every element.
::testing::AssertionResult matches_finite_differences(const std::string& name,
                                                      const std::vector<double>& numerical,
                                                      const std::vector<double>& analytic) {
  if (numerical.size() != analytic.size())
    return ::testing::AssertionFailure()
           << name << ": " << numerical.size() << " finite differences but " << analytic.size()
           << " gradient elements";
  for (std::size_t n = 0; n < numerical.size(); ++n)
    if (!(std::abs(numerical[n] - analytic[n]) <= 1e-6 * (1 + std::abs(analytic[n]))))
      return ::testing::AssertionFailure()
             << name << "[" << n << "]: reference::backward gives " << analytic[n]
             << ", finite differences " << numerical[n];
  return ::testing::AssertionSuccess();
}

// A problem of the given sizes with N(0, 1) float values.
Fp64Problem random_fp64_problem(std::uint64_t seed, std::int64_t B, std::int64_t Hq,
                                std::int64_t Hkv, std::int64_t Lq, std::int64_t Lk, std::int64_t Dk,
                                std::int64_t Dv) {
  Rng rng(seed);
  Fp64Problem p;
  p.B = B, p.Hq = Hq, p.Hkv = Hkv, p.Lq = Lq, p.Lk = Lk, p.Dk = Dk, p.Dv = Dv;
  const auto fill = [&](std::vector<double>& values, std::int64_t n) {
    values.resize(at(n));
    for (double& x : values) x = rng.normal();
  };
  fill(p.q, B * Hq * Lq * Dk);
  fill(p.k, B * Hkv * Lk * Dk);
  fill(p.v, B * Hkv * Lk * Dv);
  fill(p.dout, B * Hq * Lq * Dv);
  p.scale = 0.75;  // exactly a float, like every other value
  return p;
}

// Gives p a bias of `shape` with N(0, 1) values; every `neg_inf_every`-th element is −inf.
void add_bias(Fp64Problem& p, std::vector<std::int64_t> shape, int neg_inf_every = 0) {
  Rng rng(99);
  p.bias_shape = std::move(shape);
  std::int64_t n = 1;
  for (std::int64_t extent : p.bias_shape) n *= extent;
  p.bias.resize(at(n));
  for (std::size_t e = 0; e < p.bias.size(); ++e)
    p.bias[e] = neg_inf_every > 0 && e % at(neg_inf_every) == 1
                    ? -std::numeric_limits<double>::infinity()
                    : rng.normal();
}

struct FiniteDifferenceCase {
  std::string name;
  std::function<Fp64Problem()> make;
};
void PrintTo(const FiniteDifferenceCase& c, std::ostream* os) { *os << c.name; }

std::vector<FiniteDifferenceCase> finite_difference_cases() {
  return {
      {"Plain", [] { return random_fp64_problem(1, 1, 2, 2, 5, 5, 3, 3); }},
      {"LqDiffersFromLkAndDkFromDv", [] { return random_fp64_problem(2, 1, 2, 2, 4, 6, 3, 2); }},
      {"CausalTopLeft",
       [] {
         Fp64Problem p = random_fp64_problem(3, 1, 2, 2, 6, 4, 3, 3);
         p.causal = Causal::top_left;
         return p;
       }},
      {"CausalBottomRightWithEmptyFirstRows",
       [] {
         Fp64Problem p = random_fp64_problem(4, 1, 2, 2, 6, 4, 3, 3);  // rows 0, 1 see no key
         p.causal = Causal::bottom_right;
         return p;
       }},
      {"BoolMaskWithFullyMaskedRow",
       [] {
         Fp64Problem p = random_fp64_problem(5, 1, 2, 2, 5, 5, 3, 3);
         Rng rng(6);
         p.mask.resize(at(p.B * p.Hq * p.Lq * p.Lk));
         for (std::size_t e = 0; e < p.mask.size(); ++e)
           p.mask[e] = (e / at(p.Lk)) % at(p.Lq) != 2 && rng.chance(0.7);
         return p;
       }},
      {"FullBiasWithNegativeInfinity",
       [] {
         Fp64Problem p = random_fp64_problem(7, 1, 2, 2, 5, 5, 3, 3);
         add_bias(p, {1, 2, 5, 5}, 7);
         return p;
       }},
      {"BroadcastBiasOverBatchAndQueries",
       [] {
         Fp64Problem p = random_fp64_problem(8, 2, 2, 2, 4, 5, 3, 3);
         add_bias(p, {1, 2, 1, 5});
         return p;
       }},
      {"RankTwoBiasOfOneColumn",
       [] {  // a per-row constant: its gradient is zero (shift invariance)
         Fp64Problem p = random_fp64_problem(9, 1, 2, 2, 5, 5, 3, 3);
         add_bias(p, {5, 1});
         return p;
       }},
      {"WindowWithCausal",
       [] {
         Fp64Problem p = random_fp64_problem(10, 1, 2, 2, 5, 6, 3, 3);
         p.causal = Causal::bottom_right;
         p.window_left = 1;
         return p;
       }},
      {"WindowBothSides",
       [] {
         Fp64Problem p = random_fp64_problem(11, 1, 2, 2, 5, 5, 3, 3);
         p.window_left = 1, p.window_right = 2;
         return p;
       }},
      {"GroupedQueryHeads", [] { return random_fp64_problem(12, 1, 4, 2, 5, 5, 3, 3); }},
      {"MultiQueryWithBias",
       [] {
         Fp64Problem p = random_fp64_problem(13, 1, 3, 1, 4, 5, 3, 2);
         add_bias(p, {3, 4, 5});
         return p;
       }},
      {"KeyAndQueryLengths",
       [] {
         Fp64Problem p = random_fp64_problem(14, 2, 2, 1, 5, 5, 3, 3);
         p.key_lengths = {3, 5};
         p.query_lengths = {5, 2};
         p.causal = Causal::bottom_right;
         return p;
       }},
      {"NegativeScale",
       [] {
         Fp64Problem p = random_fp64_problem(15, 1, 2, 2, 5, 5, 3, 3);
         p.scale = -1.25;
         return p;
       }},
      {"SoftcapWithLogitsNearAndPastTheCap",
       [] {  // scale·q·k reaches ±10 around the cap 3: tanh in its curved part and near saturation
         Fp64Problem p = random_fp64_problem(16, 1, 2, 2, 5, 6, 3, 3);
         p.scale = 3.0;
         p.softcap = 3.0;
         return p;
       }},
      {"SoftcapWithBiasMaskAndGroupedHeads",
       [] {
         Fp64Problem p = random_fp64_problem(17, 1, 4, 2, 5, 5, 3, 2);
         p.softcap = 0.5;
         p.causal = Causal::top_left;
         add_bias(p, {1, 4, 5, 5}, 6);
         return p;
       }},
      {"SinksIncludingDominatingAndNegativeInfinite",
       [] {
         Fp64Problem p = random_fp64_problem(18, 1, 4, 2, 5, 5, 3, 3);
         p.sinks = {0.25, 4.0, -std::numeric_limits<double>::infinity(), -1.5};  // exact floats
         return p;
       }},
      {"SinksWithSoftcapEmptyRowsAndLengths",
       [] {  // bottom_right with Lq > Lk: rows 0, 1 see no key but the sink; batch 1 has padding
         Fp64Problem p = random_fp64_problem(19, 2, 2, 1, 6, 4, 3, 3);
         p.causal = Causal::bottom_right;
         p.query_lengths = {6, 5};
         p.softcap = 2.0;
         p.scale = 1.5;
         p.sinks = {0.5, -0.75};
         add_bias(p, {2, 1, 6, 4});
         return p;
       }},
  };
}

class ReferenceBackwardFiniteDifferences : public ::testing::TestWithParam<FiniteDifferenceCase> {};

TEST_P(ReferenceBackwardFiniteDifferences, IndependentForwardMatchesReferenceForward) {
  const Fp64Problem p = GetParam().make();
  const LibraryCall call(p);
  const std::vector<double> mine = fp64_forward(p);
  const std::vector<double> reference = reference::forward<double>(call.problem.forward).out;
  ASSERT_EQ(mine.size(), reference.size());
  for (std::size_t n = 0; n < mine.size(); ++n)
    EXPECT_NEAR(mine[n], reference[n], 1e-12 * (1 + std::abs(reference[n]))) << "out[" << n << "]";
}

TEST_P(ReferenceBackwardFiniteDifferences, GradientsMatchCentralDifferencesOfTheLoss) {
  Fp64Problem p = GetParam().make();
  const LibraryCall call(p);
  const reference::BackwardResult<double> r = reference::backward<double>(call.problem);
  EXPECT_TRUE(matches_finite_differences("dq", numerical_gradient(p, p.q), r.dq));
  EXPECT_TRUE(matches_finite_differences("dk", numerical_gradient(p, p.k), r.dk));
  EXPECT_TRUE(matches_finite_differences("dv", numerical_gradient(p, p.v), r.dv));
  if (!p.bias.empty()) {
    EXPECT_TRUE(matches_finite_differences("dbias", numerical_gradient(p, p.bias), r.dbias));
  }
  Fp64Problem with_scale = p;
  const auto dscale = [&] {
    constexpr double h = 1e-5;
    with_scale.scale = p.scale + h;
    const double plus = fp64_loss(with_scale);
    with_scale.scale = p.scale - h;
    return (plus - fp64_loss(with_scale)) / (2 * h);
  }();
  EXPECT_TRUE(matches_finite_differences("dscale", {dscale}, {r.dscale}));
  if (!p.sinks.empty()) {
    EXPECT_TRUE(matches_finite_differences("dsinks", numerical_gradient(p, p.sinks), r.dsinks));
  }
  for (const auto* g : {&r.dq, &r.dk, &r.dv, &r.dbias, &r.dsinks})
    for (double x : *g) ASSERT_TRUE(std::isfinite(x));
}

INSTANTIATE_TEST_SUITE_P(Cases, ReferenceBackwardFiniteDifferences,
                         ::testing::ValuesIn(finite_difference_cases()),
                         [](const auto& info) { return info.param.name; });

TEST(ReferenceBackward, FullyMaskedRowsContributeNothing) {
  Fp64Problem p = random_fp64_problem(21, 1, 1, 1, 4, 4, 3, 3);
  p.causal = Causal::bottom_right;
  p.query_lengths = {4};
  p.key_lengths = {0};  // no key at all
  const LibraryCall call(p);
  const reference::BackwardResult<double> r = reference::backward<double>(call.problem);
  for (const auto* g : {&r.dq, &r.dk, &r.dv})
    for (double x : *g) EXPECT_EQ(x, 0.0);
  EXPECT_EQ(r.dscale, 0.0);
}

TEST(ReferenceBackward, Fp32BaselineIsCloseToFp64) {
  Fp64Problem p = random_fp64_problem(22, 2, 4, 2, 7, 9, 5, 4);
  add_bias(p, {1, 4, 7, 9}, 5);
  p.causal = Causal::top_left;
  const LibraryCall call(p);
  const auto r64 = reference::backward<double>(call.problem);
  const auto r32 = reference::backward<float>(call.problem);
  for (std::size_t n = 0; n < r64.dq.size(); ++n) EXPECT_NEAR(r32.dq[n], r64.dq[n], 1e-5);
  for (std::size_t n = 0; n < r64.dk.size(); ++n) EXPECT_NEAR(r32.dk[n], r64.dk[n], 1e-5);
  for (std::size_t n = 0; n < r64.dv.size(); ++n) EXPECT_NEAR(r32.dv[n], r64.dv[n], 1e-5);
  for (std::size_t n = 0; n < r64.dbias.size(); ++n) EXPECT_NEAR(r32.dbias[n], r64.dbias[n], 1e-5);
  EXPECT_NEAR(r32.dscale, r64.dscale, 1e-4 * (1 + std::abs(r64.dscale)));
}

// =================================================================================================
// 2. Property test: sdpa::backward against the fp64 reference on random configurations
// =================================================================================================

constexpr int kShards = 8;
constexpr int kConfigsPerShard = 200;
constexpr int kMaxFailuresPerShard = 3;

// A sequence length: mostly short, sometimes empty or one row, sometimes several key tiles.
std::int64_t random_length(Rng& rng) {
  const double r = rng.uniform(0, 1);
  if (r < 0.04) return 0;
  if (r < 0.14) return 1;
  if (r < 0.55) return rng.integer(2, 16);
  if (r < 0.85) return rng.integer(17, 70);
  if (r < 0.97) return rng.integer(71, 160);
  return rng.integer(161, 300);
}

// A head dimension: mostly odd small sizes (remainder paths), often the fast-path sizes.
std::int64_t random_dim(Rng& rng) {
  const double r = rng.uniform(0, 1);
  if (r < 0.6) return rng.integer(1, 40);
  if (r < 0.75) return 64;
  if (r < 0.85) return 128;
  return rng.integer(41, 160);
}

const char* causal_name(Causal c) {
  switch (c) {
    case Causal::none:
      return "none";
    case Causal::top_left:
      return "top_left";
    case Causal::bottom_right:
      return "bottom_right";
  }
  return "?";
}

std::string shape_string(const Tensor& t) {
  std::ostringstream s;
  s << "[";
  for (int d = 0; d < t.rank; ++d) s << (d ? "," : "") << t.shape[at(d)];
  s << "]";
  return s.str();
}

// A shape broadcastable to `full` = [B, Hq, Lq, Lk]: rank `rank`, right-aligned, each dim full
// or 1.
std::vector<std::int64_t> broadcast_shape(Rng& rng, int rank, const Index& full) {
  std::vector<std::int64_t> shape;
  for (int d = 4 - rank; d < 4; ++d)
    shape.push_back(rng.chance(d < 2 ? 0.4 : 0.2) ? 1 : full[at(d)]);
  return shape;
}

// Sets every element whose dimension `dim` has index `index_at` to `value`.
template <typename T>
void set_slice(Strided<T>& t, int dim, std::int64_t index_at, T value) {
  for_each_index(t.rank(), t.shape(), [&](const Index& index) {
    if (index[at(dim)] == index_at) t.at(index) = value;
  });
}

Strided<std::uint8_t> random_mask(Rng& rng, const Index& full, std::ostringstream& what) {
  const int rank = static_cast<int>(rng.integer(2, 4));
  Strided<std::uint8_t> mask(DType::boolean, broadcast_shape(rng, rank, full),
                             random_layout(rng, rank, true));
  const double density = rng.pick({0.1, 0.5, 0.9, 1.0});
  mask.fill([&](const Index&) { return static_cast<std::uint8_t>(rng.chance(density)); });
  what << " mask" << shape_string(mask.tensor) << "/" << mask.layout_name << "/density=" << density;
  const std::int64_t rows = mask.shape()[at(rank - 2)];
  if (rows > 0 && rng.chance(0.4)) {  // one row that sees no key
    const std::int64_t row = rng.integer(0, rows - 1);
    set_slice<std::uint8_t>(mask, rank - 2, row, 0);
    what << "/masked_row=" << row;
  }
  return mask;
}

Strided<float> random_bias(Rng& rng, const Index& full, std::ostringstream& what) {
  const int rank = static_cast<int>(rng.integer(1, 4));
  Strided<float> bias(DType::f32, broadcast_shape(rng, rank, full), random_layout(rng, rank, true));
  const float sigma = rng.pick({0.1f, 1.0f, 4.0f});
  const double p_neg_inf = rng.pick({0.0, 0.0, 0.05, 0.3});
  bias.fill([&](const Index&) { return rng.chance(p_neg_inf) ? -kInf : rng.normal(sigma); });
  what << " bias" << shape_string(bias.tensor) << "/" << bias.layout_name << "/sigma=" << sigma
       << "/p_neg_inf=" << p_neg_inf;
  const std::int64_t cols = bias.shape()[at(rank - 1)];
  if (cols > 0 && rng.chance(0.2)) {  // one key hidden from every row
    const std::int64_t col = rng.integer(0, cols - 1);
    set_slice(bias, rank - 1, col, -kInf);
    what << "/neg_inf_col=" << col;
  }
  if (rank >= 2) {
    const std::int64_t rows = bias.shape()[at(rank - 2)];
    if (rows > 0 && rng.chance(0.2)) {  // one row that sees no key
      const std::int64_t row = rng.integer(0, rows - 1);
      set_slice(bias, rank - 2, row, -kInf);
      what << "/neg_inf_row=" << row;
    }
  }
  return bias;
}

std::vector<std::int32_t> random_lengths(Rng& rng, std::int64_t batch, std::int64_t max_len,
                                         std::ostringstream& what, const char* name) {
  std::vector<std::int32_t> lengths;
  what << " " << name << "=";
  for (std::int64_t b = 0; b < batch; ++b) {
    const auto len =
        rng.pick<std::int64_t>({max_len, 0, rng.integer(0, max_len), rng.integer(0, max_len)});
    lengths.push_back(static_cast<std::int32_t>(len));
    what << (b ? "," : "") << len;
  }
  return lengths;
}

BackwardCase random_backward_case(std::uint64_t seed) {
  Rng rng(seed);
  std::int64_t B = rng.integer(1, 3), Hkv = rng.integer(1, 3);
  const std::int64_t group = rng.pick<std::int64_t>({1, 1, 2, 3, 4});
  std::int64_t Lq = random_length(rng), Lk = random_length(rng);
  const std::int64_t Dk = random_dim(rng), Dv = random_dim(rng);
  // Keep the references' cost (about B·Hq·Lq·Lk·(2Dk + 2Dv) per precision) small.
  if (std::max(Lq, Lk) > 100) B = 1, Hkv = std::min<std::int64_t>(Hkv, 2);
  while (B * Hkv * group * Lq * Lk * (Dk + Dv) > 3'000'000) Lq = Lq / 2, Lk = Lk * 3 / 4;
  const std::int64_t Hq = Hkv * group;

  std::ostringstream what;
  what << "seed=" << seed << " B=" << B << " Hq=" << Hq << " Hkv=" << Hkv << " Lq=" << Lq
       << " Lk=" << Lk << " Dk=" << Dk << " Dv=" << Dv;
  const float sigma = rng.pick({0.5f, 1.0f, 3.0f});
  BackwardCase c{Inputs{random_floats(rng, {B, Hq, Lq, Dk}, random_layout(rng, 4, true), sigma),
                        random_floats(rng, {B, Hkv, Lk, Dk}, random_layout(rng, 4, true), sigma),
                        random_floats(rng, {B, Hkv, Lk, Dv}, random_layout(rng, 4, true)),
                        std::nullopt,
                        std::nullopt,
                        {},
                        {},
                        {},
                        DType::f32,
                        {},
                        {},
                        {}},
                 random_floats(rng, {B, Hq, Lq, Dv}, random_layout(rng, 4, true)),
                 {},
                 {},
                 1,
                 ""};
  Inputs& in = c.inputs;
  what << " sigma=" << sigma << " q/" << in.q.layout_name << " k/" << in.k.layout_name << " v/"
       << in.v.layout_name << " dout/" << c.dout.layout_name;

  in.base.causal = rng.pick({Causal::none, Causal::none, Causal::top_left, Causal::bottom_right});
  what << " causal=" << causal_name(in.base.causal);
  const Index full{B, Hq, Lq, Lk};
  if (rng.chance(0.3)) in.mask = random_mask(rng, full, what);
  if (rng.chance(0.4)) in.bias = random_bias(rng, full, what);
  if (rng.chance(0.25)) {
    const std::int64_t reach = std::max(Lq, Lk);
    Window window;
    window.left = rng.pick<std::int64_t>({-1, 0, rng.integer(0, reach), rng.integer(0, 8)});
    window.right = rng.pick<std::int64_t>({-1, 0, rng.integer(0, reach), rng.integer(0, 8)});
    in.base.window = window;
    what << " window=" << window.left << "," << window.right;
  }
  if (rng.chance(0.25)) in.key_lengths = random_lengths(rng, B, Lk, what, "key_lengths");
  if (rng.chance(0.15)) in.query_lengths = random_lengths(rng, B, Lq, what, "query_lengths");
  const double r = rng.uniform(0, 1);
  if (r < 0.3) {
    in.base.scale = static_cast<float>(rng.uniform(-2, 2) / std::sqrt(static_cast<double>(Dk)));
    what << " scale=" << *in.base.scale;
  } else if (r < 0.35) {
    in.base.scale = 0.0f;
    what << " scale=0";
  }

  c.forward_layouts.out = random_layout(rng, 4, false);
  c.forward_layouts.lse = random_layout(rng, 3, false);
  GradLayouts& g = c.grad_layouts;
  g.dq = random_layout(rng, 4, false);
  g.dk = random_layout(rng, 4, false);
  g.dv = random_layout(rng, 4, false);
  g.want_dbias = in.bias && rng.chance(0.8);
  if (g.want_dbias) g.dbias = random_layout(rng, in.bias->rank(), false);
  g.want_dscale = rng.chance(0.6);
  what << " out/" << c.forward_layouts.out.name << " lse/" << c.forward_layouts.lse.name << " dq/"
       << g.dq.name << " dk/" << g.dk.name << " dv/" << g.dv.name;
  if (g.want_dbias) what << " dbias/" << g.dbias.name;
  if (g.want_dscale) what << " dscale";
  // Mostly one thread: an OpenMP barrier on an oversubscribed machine (ctest -j) costs
  // milliseconds, and thread counts get their own determinism tests below.
  c.threads = rng.chance(0.2) ? static_cast<int>(rng.integer(2, 4)) : 1;
  what << " threads=" << c.threads;
  random_softcap_and_sinks(rng, in, what);
  g.want_dsinks = in.sinks && rng.chance(0.8);
  if (g.want_dsinks) {
    g.dsinks = random_layout(rng, 1, false);
    what << " dsinks/" << g.dsinks.name;
  }
  c.what = what.str();
  return c;
}

int env_int(const char* name, int fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? std::atoi(value) : fallback;
}

class BackwardProperty : public ::testing::TestWithParam<int> {};

TEST_P(BackwardProperty, RandomConfigurationsMatchFp64ReferenceOnEveryIsa) {
  const int shard = GetParam();
  const int per_shard = env_int("SDPA_BACKWARD_CONFIGS", kConfigsPerShard);
  const int only_seed = env_int("SDPA_PROPERTY_SEED", 0);
  if (only_seed > 0 && shard != 0) GTEST_SKIP() << "SDPA_PROPERTY_SEED runs in shard 0 only";
  const auto start = std::chrono::steady_clock::now();
  int configs = 0, calls = 0, failures = 0;
  for (int n = 0; n < per_shard && failures < kMaxFailuresPerShard; ++n) {
    const auto seed =
        static_cast<std::uint64_t>(only_seed > 0 ? only_seed : shard * per_shard + n + 1);
    const BackwardCase c = random_backward_case(seed);
    OutputBuffers forward_outputs = c.make_forward_outputs();
    GradBuffers grads = c.make_grads();
    const BackwardReferences refs = c.references(forward_outputs, grads);
    for (Isa isa : supported_isas()) {
      const RunInfo info = c.run(forward_outputs, grads, isa, c.threads);
      ++calls;
      ::testing::AssertionResult ok = check_grads(refs, grads);
      if (ok && info.isa != isa)
        ok = ::testing::AssertionFailure() << "RunInfo.isa = " << isa_name(info.isa);
      if (!ok) {
        ADD_FAILURE() << ok.message() << "\n  isa=" << isa_name(isa) << " " << c.what;
        ++failures;
        break;
      }
    }
    ++configs;
    if (only_seed > 0) break;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::cout << "[ property ] backward shard " << shard << ": " << configs << " configurations, "
            << calls << " backward calls on " << supported_isas().size() << " ISA(s), " << seconds
            << " s\n";
}

INSTANTIATE_TEST_SUITE_P(Shards, BackwardProperty, ::testing::Range(0, kShards));

// =================================================================================================
// 3. Fully masked rows, determinism, errors
// =================================================================================================

// A case with contiguous layouts, dbias and dscale requested.
BackwardCase plain_case(std::uint64_t seed, std::int64_t B, std::int64_t Hq, std::int64_t Hkv,
                        std::int64_t Lq, std::int64_t Lk, std::int64_t Dk, std::int64_t Dv) {
  Rng rng(seed);
  BackwardCase c{random_inputs(rng, B, Hq, Hkv, Lq, Lk, Dk, Dv),
                 random_floats(rng, {B, Hq, Lq, Dv}, {}),
                 {},
                 {},
                 2,
                 ""};
  c.grad_layouts.want_dbias = true;
  c.grad_layouts.want_dscale = true;
  return c;
}

// Runs the case on every ISA: every gradient is finite, matches the reference, and the rows of dq
// and dbias that `row_empty(b, h, i)` names are exactly zero.
template <typename RowEmpty>
void expect_zero_gradients_for_empty_rows(const BackwardCase& c, const std::string& what,
                                          RowEmpty row_empty) {
  OutputBuffers forward_outputs = c.make_forward_outputs();
  GradBuffers grads = c.make_grads();
  const BackwardReferences refs = c.references(forward_outputs, grads);
  for (Isa isa : supported_isas()) {
    SCOPED_TRACE(what + ", isa " + isa_name(isa));
    c.run(forward_outputs, grads, isa, 3);
    EXPECT_TRUE(check_grads(refs, grads));
    ASSERT_TRUE(all_finite(grads));
    const Index q_shape = grads.dq.shape();
    for (std::int64_t b = 0; b < q_shape[0]; ++b)
      for (std::int64_t h = 0; h < q_shape[1]; ++h)
        for (std::int64_t i = 0; i < q_shape[2]; ++i) {
          if (!row_empty(b, h, i)) continue;
          for (std::int64_t d = 0; d < q_shape[3]; ++d)
            ASSERT_EQ(grads.dq.at({b, h, i, d}), 0.0f)
                << "dq(" << b << "," << h << "," << i << "," << d << ")";
          const bool dbias_has_row =
              grads.dbias && grads.dbias->rank() == 4 && grads.dbias->shape()[0] == q_shape[0] &&
              grads.dbias->shape()[1] == q_shape[1] && grads.dbias->shape()[2] == q_shape[2];
          for (std::int64_t j = 0; dbias_has_row && j < grads.dbias->shape()[3]; ++j)
            ASSERT_EQ(grads.dbias->at({b, h, i, j}), 0.0f)
                << "dbias(" << b << "," << h << "," << i << "," << j << ")";
        }
  }
}

TEST(Backward, FullyMaskedRowViaBoolMaskGivesZeroGradientsNotNaN) {
  BackwardCase c = plain_case(31, 2, 2, 1, 9, 11, 8, 6);
  c.inputs.mask.emplace(DType::boolean, std::vector<std::int64_t>{9, 11});
  Rng rng(32);
  c.inputs.mask->fill(
      [&](const Index& ij) { return static_cast<std::uint8_t>(ij[0] != 4 && rng.chance(0.7)); });
  c.inputs.bias = random_floats(rng, {2, 2, 9, 11}, {});
  expect_zero_gradients_for_empty_rows(
      c, "mask row 4 all false", [](std::int64_t, std::int64_t, std::int64_t i) { return i == 4; });
}

TEST(Backward, FullyMaskedRowViaNegativeInfiniteBiasGivesZeroGradientsNotNaN) {
  BackwardCase c = plain_case(33, 1, 3, 3, 70, 90, 16, 16);
  Rng rng(34);
  c.inputs.bias = random_floats(rng, {1, 3, 70, 90}, {});
  for (std::int64_t j = 0; j < 90; ++j) c.inputs.bias->at({0, 1, 65, j}) = -kInf;
  expect_zero_gradients_for_empty_rows(
      c, "bias row (h 1, i 65) all -inf",
      [](std::int64_t, std::int64_t h, std::int64_t i) { return h == 1 && i == 65; });
}

TEST(Backward, RowsBeforeTheBottomRightDiagonalGetZeroGradients) {
  BackwardCase c = plain_case(35, 1, 2, 2, 100, 30, 12, 20);  // rows i < 70 see no key
  c.inputs.base.causal = Causal::bottom_right;
  Rng rng(36);
  c.inputs.bias = random_floats(rng, {1, 2, 100, 30}, {});
  expect_zero_gradients_for_empty_rows(
      c, "causal bottom_right, Lq 100 > Lk 30",
      [](std::int64_t, std::int64_t, std::int64_t i) { return i < 70; });
}

TEST(Backward, PaddingRowsAndEmptyBatchEntriesGetZeroGradients) {
  BackwardCase c = plain_case(37, 3, 2, 1, 40, 50, 24, 8);
  c.inputs.query_lengths = {40, 13, 40};
  c.inputs.key_lengths = {50, 50, 0};  // batch entry 2 sees no key at all
  Rng rng(38);
  c.inputs.bias = random_floats(rng, {3, 1, 40, 50}, {});
  expect_zero_gradients_for_empty_rows(
      c, "query_lengths 40,13,40, key_lengths 50,50,0",
      [](std::int64_t b, std::int64_t, std::int64_t i) { return b == 2 || (b == 1 && i >= 13); });
  // Keys no row sees get zero dk and dv.
  OutputBuffers forward_outputs = c.make_forward_outputs();
  GradBuffers grads = c.make_grads();
  for (Isa isa : supported_isas()) {
    c.run(forward_outputs, grads, isa, 2);
    for_each_index(4, grads.dk.shape(), [&](const Index& index) {
      if (index[0] == 2) {
        ASSERT_EQ(grads.dk.at(index), 0.0f) << isa_name(isa);
      }
    });
    for_each_index(4, grads.dv.shape(), [&](const Index& index) {
      if (index[0] == 2) {
        ASSERT_EQ(grads.dv.at(index), 0.0f) << isa_name(isa);
      }
    });
  }
}

// ---- NaN containment: garbage in padding (rows or keys past their lengths, which callers often
// leave uninitialized) must not reach any gradient; the reference gives those gradients exactly.

// Puts NaN into q, k, v or dout elements of batch entry `b` whose index along dimension 2 (the
// sequence) is >= `from`.
void fill_nan_from(Strided<float>& t, std::int64_t b, std::int64_t from) {
  for_each_index(4, t.shape(), [&](const Index& index) {
    if (index[0] == b && index[2] >= from) t.at(index) = std::numeric_limits<float>::quiet_NaN();
  });
}

// Runs the case on every ISA: every gradient finite and matching the reference.
void expect_nan_contained(const BackwardCase& c, const std::string& what) {
  OutputBuffers forward_outputs = c.make_forward_outputs();
  GradBuffers grads = c.make_grads();
  const BackwardReferences refs = c.references(forward_outputs, grads);
  for (Isa isa : supported_isas()) {
    c.run(forward_outputs, grads, isa, 2);
    EXPECT_TRUE(all_finite(grads)) << what << ", isa " << isa_name(isa);
    EXPECT_TRUE(check_grads(refs, grads)) << what << ", isa " << isa_name(isa);
  }
}

// D = 8 and D = 64 (panel remainders, whole panels on every ISA).
BackwardCase padded_case(std::int64_t dim = 8) {
  BackwardCase c = plain_case(39, 2, 2, 2, 20, 30, dim, dim);
  c.grad_layouts.want_dbias = false;
  c.inputs.key_lengths = {30, 17};
  c.inputs.query_lengths = {20, 12};
  return c;
}

TEST(Backward, NaNInPaddedKeysDoesNotReachAnyGradient) {
  BackwardCase c = padded_case();
  fill_nan_from(c.inputs.k, 1, 17);
  fill_nan_from(c.inputs.v, 1, 17);
  expect_nan_contained(c, "NaN in k and v of keys >= key_lengths[1] = 17");
}

TEST(Backward, NaNInPaddedQueryRowsDoesNotReachAnyGradient) {
  BackwardCase c = padded_case();
  fill_nan_from(c.inputs.q, 1, 12);
  expect_nan_contained(c, "NaN in q of rows >= query_lengths[1] = 12");
}

TEST(Backward, NaNInTheUpstreamGradientOfAPaddedRowDoesNotReachAnyGradient) {
  BackwardCase c = padded_case();
  fill_nan_from(c.dout, 1, 12);
  expect_nan_contained(c, "NaN in dout of rows >= query_lengths[1] = 12");
}

TEST(Backward, NaNInPaddingDoesNotReachAnyGradientWhenRowsCouldBeReadInPlace) {
  for (int which = 0; which < 3; ++which) {
    BackwardCase c = padded_case(64);
    if (which == 0) {
      fill_nan_from(c.inputs.k, 1, 17);
      fill_nan_from(c.inputs.v, 1, 17);
    }
    if (which == 1) fill_nan_from(c.inputs.q, 1, 12);
    if (which == 2) fill_nan_from(c.dout, 1, 12);
    expect_nan_contained(c, which == 0   ? "D = 64, NaN in k and v of keys >= key_lengths[1] = 17"
                            : which == 1 ? "D = 64, NaN in q of rows >= query_lengths[1] = 12"
                                         : "D = 64, NaN in dout of rows >= query_lengths[1] = 12");
  }
}

// A row the bool mask hides entirely still lies inside the tile's row ranges (unlike padding rows),
// so only the zeroing of its packed Q and dO keeps NaN there out of dK and dV (0·NaN).
TEST(Backward, NaNInQueryAndUpstreamGradientOfAFullyMaskedRowDoesNotReachAnyGradient) {
  for (std::int64_t dim : {8, 64}) {
    BackwardCase c = plain_case(41, 1, 2, 1, 20, 30, dim, dim);
    c.grad_layouts.want_dbias = false;
    c.inputs.mask.emplace(DType::boolean, std::vector<std::int64_t>{20, 30});
    c.inputs.mask->fill([](const Index& ij) { return static_cast<std::uint8_t>(ij[0] != 7); });
    for (const auto* name : {"q", "dout"}) {
      Strided<float>& t = std::string(name) == "q" ? c.inputs.q : c.dout;
      for_each_index(4, t.shape(), [&](const Index& index) {
        if (index[2] == 7) t.at(index) = std::numeric_limits<float>::quiet_NaN();
      });
    }
    expect_nan_contained(c, "D = " + std::to_string(dim) +
                                ", NaN in q and dout of row 7, which the mask hides from every key");
  }
}

// ---- workspace ----------------------------------------------------------------------------------

TEST(Backward, WorkspaceLimitGivesTheSameGradientsInRounds) {
  // 8 (batch, kv-head) groups; half the unlimited workspace makes the call process them in rounds.
  BackwardCase c = plain_case(45, 4, 4, 2, 150, 170, 32, 24);
  Rng rng(46);
  c.inputs.bias = random_floats(rng, {1, 4, 150, 170}, {});
  OutputBuffers forward_outputs = c.make_forward_outputs();
  GradBuffers grads = c.make_grads();
  const BackwardReferences refs = c.references(forward_outputs, grads);
  for (Isa isa : supported_isas()) {
    const RunInfo unlimited = c.run(forward_outputs, grads, isa, 2);
    const std::vector<std::vector<float>> expected = all_grads(grads);
    grads.reset();
    Options o = c.inputs.options();
    o.isa = isa;
    o.threads = 2;
    o.workspace_limit = unlimited.workspace_bytes / 2;
    const RunInfo limited = backward(c.inputs.q.tensor, c.inputs.k.tensor, c.inputs.v.tensor,
                                     forward_outputs.out.tensor, c.dout.tensor,
                                     forward_outputs.lse->tensor, o, grads.grads());
    EXPECT_LE(limited.workspace_bytes, o.workspace_limit) << isa_name(isa);
    EXPECT_TRUE(check_grads(refs, grads)) << isa_name(isa);
    const std::vector<std::vector<float>> got = all_grads(grads);
    for (std::size_t n = 0; n < expected.size(); ++n)
      EXPECT_TRUE(bitwise_equal(expected[n], got[n])) << "gradient " << n << ", " << isa_name(isa);
  }
}

TEST(Backward, TooSmallWorkspaceLimitIsAnErrorAndWritesNothing) {
  BackwardCase c = plain_case(47, 1, 2, 2, 30, 30, 16, 16);
  OutputBuffers forward_outputs = c.make_forward_outputs();
  c.inputs.run(forward_outputs, Isa::automatic, 1);
  GradBuffers grads = c.make_grads();
  Options o = c.inputs.options();
  o.workspace_limit = 1000;
  try {
    backward(c.inputs.q.tensor, c.inputs.k.tensor, c.inputs.v.tensor, forward_outputs.out.tensor,
             c.dout.tensor, forward_outputs.lse->tensor, o, grads.grads());
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("options.workspace_limit"), std::string::npos) << e.what();
  }
  for (const auto& g : all_grads(grads))
    for (float x : g) EXPECT_TRUE(is_sentinel(x)) << "a gradient was written before the error";
}

// Runs the case with every ISA and threads 1, 2, 3, 4, 7 (twice each): all gradients bitwise equal.
void expect_deterministic(const BackwardCase& c, const std::string& what) {
  OutputBuffers forward_outputs = c.make_forward_outputs();
  GradBuffers grads = c.make_grads();
  for (Isa isa : supported_isas()) {
    c.run(forward_outputs, grads, isa, 1);
    const std::vector<std::vector<float>> first = all_grads(grads);
    for (int threads : {1, 2, 3, 4, 7, 2, 7}) {
      c.run(forward_outputs, grads, isa, threads);
      const std::vector<std::vector<float>> again = all_grads(grads);
      ASSERT_EQ(again.size(), first.size());
      for (std::size_t n = 0; n < first.size(); ++n)
        ASSERT_TRUE(bitwise_equal(first[n], again[n]))
            << what << ": gradient " << n << " (dq, dk, dv, dbias, dscale) differs with " << threads
            << " threads, isa " << isa_name(isa);
    }
  }
}

TEST(Backward, BitwiseIdenticalForEveryThreadCountAndRun) {
  BackwardCase c = plain_case(41, 2, 4, 2, 150, 260, 64, 48);
  c.inputs.base.causal = Causal::bottom_right;
  Rng rng(42);
  c.inputs.bias = random_floats(rng, {1, 4, 150, 260}, {});
  expect_deterministic(c, "B2 Hq4 Hkv2 Lq150 Lk260 causal bias");
}

TEST(Backward, BitwiseIdenticalForEveryThreadCountWithFewQueries) {
  // One head and a handful of queries: any parallelism has to come from splitting the keys.
  BackwardCase c = plain_case(43, 1, 1, 1, 3, 700, 32, 32);
  Rng rng(44);
  c.inputs.bias = random_floats(rng, {1, 700}, {});
  expect_deterministic(c, "B1 H1 Lq3 Lk700 bias[1,Lk]");
}

// ---- argument errors -------------------------------------------------------------------------

// A valid call (q [2, 4, 5, 8], k [2, 2, 7, 8], v [2, 2, 7, 6], bias [4, 5, 7]); each test breaks
// one thing and expects validate_backward and backward to throw naming it, writing nothing.
class BackwardErrors : public ::testing::Test {
 protected:
  BackwardCase c = plain_case(51, 2, 4, 2, 5, 7, 8, 6);
  OutputBuffers forward_outputs = c.make_forward_outputs();

  void SetUp() override {
    Rng rng(52);
    c.inputs.bias = random_floats(rng, {4, 5, 7}, {});
    c.inputs.run(forward_outputs, Isa::automatic, 1);
  }

  void expect_error(Tensor dout, Grads grads, const Options& options,
                    std::initializer_list<std::string> parts) {
    const Tensor& q = c.inputs.q.tensor;
    const Tensor& k = c.inputs.k.tensor;
    const Tensor& v = c.inputs.v.tensor;
    const Tensor& out = forward_outputs.out.tensor;
    const Tensor& lse = forward_outputs.lse->tensor;
    const std::function<void()> calls[] = {
        [&] { validate_backward(q, k, v, out, dout, lse, options, grads); },
        [&] { backward(q, k, v, out, dout, lse, options, grads); },
    };
    for (const auto& call : calls) {
      try {
        call();
        ADD_FAILURE() << "no error thrown; expected one mentioning " << *parts.begin();
      } catch (const Error& e) {
        const std::string message = e.what();
        for (const std::string& part : parts)
          EXPECT_NE(message.find(part), std::string::npos)
              << "\"" << message << "\" lacks \"" << part << "\"";
      }
    }
  }
};

TEST_F(BackwardErrors, ValidCallPassesAndWritesEveryGradient) {
  GradBuffers grads = c.make_grads();
  EXPECT_NO_THROW(validate_backward(
      c.inputs.q.tensor, c.inputs.k.tensor, c.inputs.v.tensor, forward_outputs.out.tensor,
      c.dout.tensor, forward_outputs.lse->tensor, c.inputs.options(), grads.grads()));
  c.run(forward_outputs, grads, Isa::automatic, 2);
  for (const auto& g : all_grads(grads))
    for (float x : g) EXPECT_FALSE(is_sentinel(x));
}

TEST_F(BackwardErrors, DoutShapeMismatchNamesDoutAndOut) {
  GradBuffers grads = c.make_grads();
  Strided<float> wrong(DType::f32, {2, 4, 5, 5});
  expect_error(wrong.tensor, grads.grads(), c.inputs.options(),
               {"dout.shape[3] = 5", "out.shape[3] = 6"});
  Strided<float> rank3(DType::f32, {2, 4, 5});
  expect_error(rank3.tensor, grads.grads(), c.inputs.options(), {"dout.rank", "4", "3"});
  for (const auto& g : all_grads(grads))
    for (float x : g) EXPECT_TRUE(is_sentinel(x)) << "a gradient was written before the error";
}

TEST_F(BackwardErrors, GradientShapeMismatchNamesTheGradientAndItsInput) {
  GradBuffers grads = c.make_grads();
  Strided<float> wrong_dq(DType::f32, {2, 4, 6, 8});
  Grads g = grads.grads();
  g.dq = wrong_dq.tensor;
  expect_error(c.dout.tensor, g, c.inputs.options(), {"grads.dq.shape[2] = 6", "q.shape[2] = 5"});
  Strided<float> wrong_dk(DType::f32, {2, 4, 7, 8});
  g = grads.grads();
  g.dk = wrong_dk.tensor;
  expect_error(c.dout.tensor, g, c.inputs.options(), {"grads.dk.shape[1] = 4", "k.shape[1] = 2"});
  Strided<float> wrong_dv(DType::f32, {2, 2, 7, 8});
  g = grads.grads();
  g.dv = wrong_dv.tensor;
  expect_error(c.dout.tensor, g, c.inputs.options(), {"grads.dv.shape[3] = 8", "v.shape[3] = 6"});
  for (const auto& all : all_grads(grads))
    for (float x : all) EXPECT_TRUE(is_sentinel(x)) << "a gradient was written before the error";
}

TEST_F(BackwardErrors, BroadcastGradientIsRejected) {
  GradBuffers grads = c.make_grads();
  Grads g = grads.grads();
  g.dk.stride[2] = 0;
  expect_error(c.dout.tensor, g, c.inputs.options(), {"grads.dk.stride[2] = 0"});
}

TEST_F(BackwardErrors, DbiasWithoutBiasIsRejected) {
  GradBuffers grads = c.make_grads();
  Options options = c.inputs.options();
  options.bias.reset();
  expect_error(c.dout.tensor, grads.grads(), options, {"grads.dbias", "options.bias"});
}

TEST_F(BackwardErrors, DsinksWithoutSinksIsRejected) {
  GradBuffers grads = c.make_grads();
  std::vector<float> dsinks(4);
  Grads g = grads.grads();
  g.dsinks = Tensor::contiguous(dsinks.data(), DType::f32, {4});
  expect_error(c.dout.tensor, g, c.inputs.options(), {"grads.dsinks", "options.sinks"});
}

TEST_F(BackwardErrors, DsinksShapeOrStrideMismatchIsRejected) {
  GradBuffers grads = c.make_grads();
  std::vector<float> sinks(4, 0.5f), dsinks(8, 0.0f);
  Options options = c.inputs.options();
  options.sinks = Tensor::contiguous(sinks.data(), DType::f32, {4});
  Grads g = grads.grads();
  g.dsinks = Tensor::contiguous(dsinks.data(), DType::f32, {5});
  expect_error(c.dout.tensor, g, options, {"grads.dsinks.shape[0] = 5", "q.shape[1] (Hq) = 4"});
  g.dsinks = Tensor::contiguous(dsinks.data(), DType::f32, {2, 4});
  expect_error(c.dout.tensor, g, options, {"grads.dsinks.rank", "got 2"});
  g.dsinks = Tensor::strided(dsinks.data(), DType::f32, {4}, {0});
  expect_error(c.dout.tensor, g, options, {"grads.dsinks.stride[0] = 0"});
  for (const auto& all : all_grads(grads))
    for (float x : all) EXPECT_TRUE(is_sentinel(x)) << "a gradient was written before the error";
  for (float x : dsinks) EXPECT_EQ(x, 0.0f) << "dsinks was written before the error";
}

TEST_F(BackwardErrors, DbiasShapeMismatchNamesDbiasAndBias) {
  GradBuffers grads = c.make_grads();
  Strided<float> wrong(DType::f32, {4, 1, 7});
  Grads g = grads.grads();
  g.dbias = wrong.tensor;
  expect_error(c.dout.tensor, g, c.inputs.options(),
               {"grads.dbias.shape[1] = 1", "options.bias.shape[1] = 5"});
  Strided<float> wrong_rank(DType::f32, {1, 4, 5, 7});
  g.dbias = wrong_rank.tensor;
  expect_error(c.dout.tensor, g, c.inputs.options(),
               {"grads.dbias.rank = 4", "options.bias.rank = 3"});
  for (const auto& all : all_grads(grads))
    for (float x : all) EXPECT_TRUE(is_sentinel(x)) << "a gradient was written before the error";
}

}  // namespace
}  // namespace sdpa::test
