// Extreme inputs (the promises are in docs/RELIABILITY.md): logits up to ±FLT_MAX, logits that
// overflow fp32, −inf bias rows and columns, NaN and ±inf in q, k and v, subnormal inputs, the
// smallest shapes, and views whose elements lie more than 2^31 elements apart (64-bit offsets).
// Every case runs on each instruction set this CPU supports.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <xmmintrin.h>

#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "backward_support.hpp"
#include "test_support.hpp"

namespace sdpa::test {
namespace {

const float kNaN = std::numeric_limits<float>::quiet_NaN();
const float kMaxFloat = std::numeric_limits<float>::max();

// A contiguous copy of `t` (same values, fresh memory).
Strided<float> copy_of(const Strided<float>& t) {
  Strided<float> copy(DType::f32, std::vector<std::int64_t>(t.tensor.shape.begin(),
                                                            t.tensor.shape.begin() + t.rank()));
  copy.fill([&](const Index& x) { return t.at(x); });
  return copy;
}

// Fails unless out and lse of row (b, h, i) are finite.
::testing::AssertionResult row_finite(const OutputBuffers& o, std::int64_t b, std::int64_t h,
                                      std::int64_t i) {
  for (std::int64_t d = 0; d < o.out.shape()[3]; ++d)
    if (!std::isfinite(o.out.at({b, h, i, d})))
      return ::testing::AssertionFailure()
             << "out(" << b << "," << h << "," << i << "," << d << ") = " << o.out.at({b, h, i, d});
  if (!std::isfinite(o.lse->at({b, h, i, 0})))
    return ::testing::AssertionFailure()
           << "lse(" << b << "," << h << "," << i << ") = " << o.lse->at({b, h, i, 0});
  return ::testing::AssertionSuccess();
}

// Runs `in` on every ISA and checks every row of out and lse is finite.
void expect_all_rows_finite(const Inputs& in, const std::string& what) {
  OutputBuffers o = in.make_outputs();
  for (Isa isa : supported_isas()) {
    in.run(o, isa, 2);
    for (std::int64_t b = 0; b < in.batch(); ++b)
      for (std::int64_t h = 0; h < in.heads_q(); ++h)
        for (std::int64_t i = 0; i < in.len_q(); ++i)
          EXPECT_TRUE(row_finite(o, b, h, i)) << what << ", isa " << isa_name(isa);
  }
}

// ---- huge finite logits ------------------------------------------------------------------------

TEST(ExtremeInputs, LogitsUpToPlusMinusMaxFloatGiveFiniteAccurateResults) {
  Rng rng(101);
  Inputs in = random_inputs(rng, 1, 2, 1, 8, 300, 16, 16);
  in.bias = random_floats(rng, {8, 300}, {});
  in.bias->fill([&](const Index& x) {
    switch (x[0]) {
      case 0:
        return 1e38f;  // every logit +1e38: uniform weights
      case 1:
        return -1e38f;  // every logit −1e38: uniform weights
      case 2:
        return kMaxFloat;  // every logit at the top of the float range
      case 3:
        return -kMaxFloat;
      case 4:
        return x[1] % 2 ? 1e38f : -1e38f;  // ±1e38 alternating
      case 5:
        return x[1] == 299 ? 1e38f : 0.0f;  // one key beats the rest by 1e38
      default:
        return rng.pick({1e38f, -1e38f, 3e38f, -3e38f, 0.0f, rng.normal(1.0f)});
    }
  });
  EXPECT_TRUE(matches_reference_on_every_isa(in, "bias up to ±FLT_MAX"));
  expect_all_rows_finite(in, "bias up to ±FLT_MAX");
}

// Logits of magnitude ~1000, where S·scale rounded once (fma) and rounded twice differ by ~1e-4 in
// the exponent: the weights must be formed as the row sum l was (a fuzz finding: the forward took
// rows that see a whole tile from raw scores while the weights went through stored logits, and a
// row of weights summed to 1 − 2.2e-5). Every ISA, so tiles of every width are covered.
TEST(ExtremeInputs, WeightsOfLogitsNearAThousandSumToOne) {
  Rng rng(107);
  Inputs in = random_inputs(rng, 1, 2, 2, 40, 600, 40, 24);
  in.base.scale = 150.0f;
  EXPECT_TRUE(matches_reference_on_every_isa(in, "scale 150", 1));
}

// Logits near 1e30 in rows that see whole tiles (no mask or bias): the row maximum m must be the
// largest logit as rounded to fp32, and the exponent t − m formed from that same rounding. Fusing
// S·scale − m into one fma left the rounding residual of the largest logit (~1e22) in its
// exponent: p = inf and NaN rows (a fuzz finding; the reference's outputs are finite).
TEST(ExtremeInputs, LogitsNear1e30InRowsThatSeeWholeTilesGiveFiniteAccurateResults) {
  Rng rng(109);
  Inputs in = random_inputs(rng, 1, 2, 2, 24, 700, 8, 16);
  in.base.scale = 1e30f;
  EXPECT_TRUE(matches_reference_on_every_isa(in, "scale 1e30"));
}

TEST(ExtremeInputs, ScaledDotProductsOfPlusMinus1e38GiveFiniteAccurateResults) {
  Rng rng(102);
  Inputs in = random_inputs(rng, 2, 2, 2, 20, 150, 8, 8);
  in.base.scale = 1e37f;  // |q·k| up to ~30: logits up to ~3e38
  EXPECT_TRUE(matches_reference_on_every_isa(in, "scale 1e37"));
  expect_all_rows_finite(in, "scale 1e37");
}

// The backward recomputes P = exp(s − lse) from the forward's fp32 lse = m + log(l). Where |lse| is
// huge that lse cannot carry log(l): at 1e28 it rounds back to m, at 1e8 (ulp 8) to m + 8. Rows
// there are renormalised by the sum of exp(s − lse) (backward.cpp); without that, tied keys each
// got P = 1 (or e^-8) instead of 1/l and every gradient came out l times too large. Found by
// fuzz_backward (fuzz/findings/fuzz_backward-lse-loses-log-sum-at-huge-logits).
BackwardCase huge_tied_logits_case(float logit, std::int64_t len_k, bool with_sink) {
  Rng rng(104);
  BackwardCase c{random_inputs(rng, 1, 2, 1, 5, len_k, 8, 8), random_floats(rng, {1, 2, 5, 8}, {}),
                 {}, {}, 2, ""};
  // Row i: keys j ≡ i (mod 3) at `logit`, the others 3 or 2·3 ulps below it; q·k·scale ~ 1e-12
  // vanishes in the sum even in fp64, so every logit is exact and about a third of the keys tie
  // at the top. dv, dbias and dsinks do not scale with `scale` and show any error in P.
  c.inputs.base.scale = 1e-12f;
  const float ulp = std::nextafter(logit, INFINITY) - logit;
  c.inputs.bias = floats({5, len_k}, std::vector<float>(static_cast<std::size_t>(5 * len_k)));
  c.inputs.bias->fill([&](const Index& x) { return logit - 3.0f * ulp * float((x[1] - x[0] + 3) % 3); });
  if (with_sink) c.inputs.sinks = floats({2}, {logit, -INFINITY});
  c.grad_layouts.want_dbias = c.grad_layouts.want_dscale = true;
  c.grad_layouts.want_dsinks = with_sink;
  return c;
}

TEST(ExtremeInputs, BackwardAtLogitsWhoseLseCannotCarryLogSumMatchesReference) {
  struct Config {
    float logit;
    std::int64_t len_k;
    bool sink;
  };
  // 1e28: lse rounds to m (one key tile); 1e8: lse rounds to m + 8, over three key tiles, and with
  // a sink tied to the top keys; −1e28: negative logits.
  for (const Config& config : {Config{1e28f, 6, false}, Config{1e8f, 1000, true},
                               Config{-1e28f, 40, true}}) {
    const BackwardCase c = huge_tied_logits_case(config.logit, config.len_k, config.sink);
    std::ostringstream what;
    what << "logits " << config.logit << ", Lk " << config.len_k << (config.sink ? ", sink" : "");
    OutputBuffers forward_outputs = c.make_forward_outputs();
    GradBuffers grads = c.make_grads();
    // DESIGN.md's rule without the rounding bound: its term u·|lse|·P (the relative error of P
    // recomputed from an fp32 lse) is ~1e21 here and would cover any P. The logits are exact,
    // so naive32 is accurate and so must the kernel be.
    BackwardReferences refs = c.references(forward_outputs, grads);
    for (auto* bound : {&refs.bounds.dq, &refs.bounds.dk, &refs.bounds.dv, &refs.bounds.dbias,
                        &refs.bounds.dsinks})
      std::fill(bound->begin(), bound->end(), 0.0);
    refs.bounds.dscale = 0.0;
    for (Isa isa : supported_isas()) {
      c.run(forward_outputs, grads, isa, 2);
      EXPECT_TRUE(check_grads(refs, grads)) << what.str() << ", isa " << isa_name(isa);
      // The renormalisation pass keeps the backward's promise: the same bits for any threads.
      const std::vector<std::vector<float>> two = all_grads(grads);
      for (int threads : {1, 3, 7}) {
        c.run(forward_outputs, grads, isa, threads);
        const std::vector<std::vector<float>> again = all_grads(grads);
        for (std::size_t g = 0; g < two.size(); ++g)
          EXPECT_TRUE(bitwise_equal(two[g], again[g]))
              << what.str() << ", isa " << isa_name(isa) << ", threads " << threads;
      }
    }
  }
}

// The running max can grow by more than the float range between two key tiles (−1e38 first, +1e38
// later): the moment behind the entropy is rescaled by exp(m_old − m_new) = 0 then, and must not
// compute 0·(−inf). Found by fuzz_forward.
TEST(ExtremeInputs, RunningMaxJumpingByMoreThanTheFloatRangeKeepsEntropyFinite) {
  Rng rng(103);
  Inputs in = random_inputs(rng, 1, 1, 1, 2, 700, 8, 8);
  in.bias = floats({2, 700}, std::vector<float>(1400, 0.0f));
  for (std::int64_t j = 0; j < 700; ++j) {
    in.bias->at({0, j}) = j == 650 ? 1e38f : -1e38f;  // the max jumps at key 650 (a later tile)
    in.bias->at({1, j}) = j == 3 ? 1e38f : -1e38f;    // the max comes first
  }
  EXPECT_TRUE(matches_reference_on_every_isa(in, "max jumps by 2e38"));
  OutputBuffers o = in.make_outputs();
  for (Isa isa : supported_isas()) {
    in.run(o, isa, 1);
    for (std::int64_t i = 0; i < 2; ++i) {
      EXPECT_EQ(o.entropy->at({0, 0, i, 0}), 0.0f) << "row " << i << ", isa " << isa_name(isa);
      for (std::int64_t d = 0; d < 8; ++d)
        EXPECT_EQ(o.out.at({0, 0, i, d}), in.v.at({0, 0, i == 0 ? 650 : 3, d})) << isa_name(isa);
    }
  }
}

// ---- logits that overflow fp32 ------------------------------------------------------------------

// q·k·scale beyond FLT_MAX is +inf in fp32 (the logits are formed in fp32, as in every fp32
// attention): the row that meets it is NaN, and no other row changes.
TEST(ExtremeInputs, LogitOverflowingToPlusInfinityMakesOnlyItsRowNaN) {
  Rng rng(104);
  Inputs in = random_inputs(rng, 1, 2, 2, 12, 40, 4, 4);
  in.base.scale = 1e38f;
  in.q.fill([&](const Index&) { return rng.normal(0.01f); });
  in.k.fill([&](const Index&) { return rng.normal(0.01f); });
  in.k.at({0, 1, 7, 0}) = 1.0f;
  OutputBuffers clean = in.make_outputs(), overflowing = in.make_outputs();
  for (Isa isa : supported_isas()) {
    in.q.at({0, 1, 5, 0}) = 0.0f;
    in.run(clean, isa, 2);
    in.q.at({0, 1, 5, 0}) = 1e6f;  // row (h 1, i 5): q·k_7·scale ≈ 1e44, far above FLT_MAX
    in.run(overflowing, isa, 2);
    for_each_index(4, clean.out.shape(), [&](const Index& x) {
      if (x[1] == 1 && x[2] == 5) {
        EXPECT_TRUE(std::isnan(overflowing.out.at(x))) << isa_name(isa);
      } else {
        EXPECT_TRUE(same_bits(overflowing.out.at(x), clean.out.at(x)))
            << "out(" << x[1] << "," << x[2] << "," << x[3] << "), " << isa_name(isa);
      }
    });
    EXPECT_TRUE(std::isnan(overflowing.lse->at({0, 1, 5, 0}))) << isa_name(isa);
  }
}

// An overflow to −inf hides the key exactly as a false mask entry does.
TEST(ExtremeInputs, LogitOverflowingToMinusInfinityActsAsAMaskedKey) {
  Rng rng(105);
  Inputs in = random_inputs(rng, 1, 1, 1, 6, 30, 2, 3);
  in.base.scale = 1e38f;
  in.q.fill([&](const Index& x) { return x[3] == 0 ? 1.0f : 0.0f; });
  in.k.fill([&](const Index& x) { return x[3] == 0 ? rng.normal(0.5f) : 0.0f; });
  in.k.at({0, 0, 11, 0}) = -10.0f;  // q·k·scale = −1e39: −inf in fp32
  OutputBuffers overflowing = in.make_outputs(), masked = in.make_outputs();
  Inputs with_mask{copy_of(in.q), copy_of(in.k), copy_of(in.v), std::nullopt, std::nullopt, {}, {},
                   in.base};
  with_mask.mask.emplace(DType::boolean, std::vector<std::int64_t>{30});
  with_mask.mask->fill([](const Index& x) { return static_cast<std::uint8_t>(x[0] != 11); });
  for (Isa isa : supported_isas()) {
    in.run(overflowing, isa, 1);
    with_mask.run(masked, isa, 1);
    EXPECT_TRUE(same_output_bits(overflowing, masked)) << isa_name(isa);
  }
}

// ---- −inf bias rows and columns ----------------------------------------------------------------

TEST(ExtremeInputs, NegativeInfiniteBiasColumnsHideKeysExactlyAsTheMaskDoes) {
  Rng rng(106);
  Inputs in = random_inputs(rng, 2, 2, 1, 50, 260, 16, 8);
  in.base.causal = Causal::bottom_right;
  in.bias = floats({260}, std::vector<float>(260, 0.0f));
  Inputs with_mask{copy_of(in.q), copy_of(in.k), copy_of(in.v), std::nullopt, std::nullopt, {}, {},
                   in.base};
  with_mask.mask.emplace(DType::boolean, std::vector<std::int64_t>{260});
  with_mask.bias = floats({260}, std::vector<float>(260, 0.0f));
  for (std::int64_t j = 0; j < 260; ++j) {
    const bool hidden = j % 7 == 0 || (j >= 100 && j < 230);  // columns, and whole key tiles
    in.bias->at({j}) = hidden ? -kInf : 0.0f;
    with_mask.mask->at({j}) = !hidden;
  }
  EXPECT_TRUE(matches_reference_on_every_isa(in, "-inf bias columns"));
  OutputBuffers a = in.make_outputs(), b = in.make_outputs();
  for (Isa isa : supported_isas()) {
    in.run(a, isa, 2);
    with_mask.run(b, isa, 2);
    EXPECT_TRUE(same_output_bits(a, b)) << isa_name(isa);
  }
}

TEST(ExtremeInputs, NegativeInfiniteBiasRowsAndColumnsTogetherGiveZeroRowsAndFiniteOthers) {
  Rng rng(107);
  Inputs in = random_inputs(rng, 1, 3, 3, 40, 45, 8, 8);
  in.bias = random_floats(rng, {1, 3, 40, 45}, {});
  in.bias->fill([&](const Index& x) {
    const bool dead_row = x[2] % 9 == 4, dead_column = x[3] % 5 == 2;
    return dead_row || dead_column ? -kInf : rng.normal(2.0f);
  });
  EXPECT_TRUE(matches_reference_on_every_isa(in, "-inf bias rows and columns"));
}

// ---- NaN and ±inf in q, k, v
// ---------------------------------------------------------------------

// ±inf in q makes the logits of that row ±inf or NaN: only that row may change.
TEST(ExtremeInputs, InfinityInAQueryRowChangesOnlyThatRow) {
  Rng rng(108);
  Inputs in = random_inputs(rng, 2, 2, 1, 30, 70, 16, 16);
  OutputBuffers clean = in.make_outputs(), poisoned = in.make_outputs();
  for (float bad : {kInf, -kInf}) {
    for (Isa isa : supported_isas()) {
      in.q.at({1, 0, 13, 2}) = 0.5f;
      in.run(clean, isa, 2);
      in.q.at({1, 0, 13, 2}) = bad;
      in.run(poisoned, isa, 2);
      for_each_index(4, clean.out.shape(), [&](const Index& x) {
        if (x[0] != 1 || x[1] != 0 || x[2] != 13) {
          EXPECT_TRUE(same_bits(poisoned.out.at(x), clean.out.at(x))) << isa_name(isa);
        }
      });
    }
    EXPECT_TRUE(matches_reference_on_every_isa(in, "inf in q"));
  }
}

// ±inf or NaN in k: rows that do not see the key keep their bits; rows that do match the fp64
// reference, special values included (+inf logit: NaN row; −inf logit: the key drops out).
TEST(ExtremeInputs, InfinityOrNaNInAKeyChangesOnlyRowsThatSeeIt) {
  Rng rng(109);
  Inputs in = random_inputs(rng, 1, 4, 2, 30, 30, 16, 16);
  in.base.causal = Causal::top_left;  // key 9 is seen by rows i >= 9
  OutputBuffers clean = in.make_outputs(), poisoned = in.make_outputs();
  for (float bad : {kInf, -kInf, kNaN}) {
    for (Isa isa : supported_isas()) {
      in.k.at({0, 1, 9, 3}) = 0.25f;
      in.run(clean, isa, 2);
      in.k.at({0, 1, 9, 3}) = bad;
      in.run(poisoned, isa, 2);
      for_each_index(4, clean.out.shape(), [&](const Index& x) {
        if (x[1] < 2 || x[2] < 9) {
          EXPECT_TRUE(same_bits(poisoned.out.at(x), clean.out.at(x)))
              << bad << " " << isa_name(isa);
        }
      });
    }
    EXPECT_TRUE(matches_reference_on_every_isa(in, "non-finite k"));
  }
}

// NaN or ±inf in v[j][d] reaches column d of the rows that see key j, never another column and
// never another (batch, kv-head). Rows of the same kv-head that do not see key j may still get NaN
// in column d when they share a query block with a row that does (their weight 0 times NaN in the
// block's P·V product); docs/RELIABILITY.md records this. Their other columns keep their bits.
TEST(ExtremeInputs, NonFiniteValueReachesOnlyItsColumnOfItsKvHead) {
  Rng rng(110);
  Inputs in = random_inputs(rng, 1, 4, 2, 30, 30, 16, 16);
  in.base.causal = Causal::top_left;
  OutputBuffers clean = in.make_outputs(), poisoned = in.make_outputs();
  for (float bad : {kNaN, kInf}) {
    for (Isa isa : supported_isas()) {
      in.v.at({0, 1, 9, 2}) = 0.25f;
      in.run(clean, isa, 2);
      in.v.at({0, 1, 9, 2}) = bad;
      in.run(poisoned, isa, 2);
      for_each_index(4, clean.out.shape(), [&](const Index& x) {
        const float got = poisoned.out.at(x), was = clean.out.at(x);
        if (x[1] >= 2 && x[3] == 2 && x[2] >= 9) {
          EXPECT_FALSE(std::isfinite(got)) << isa_name(isa);
        } else if (x[1] >= 2 && x[3] == 2) {
          EXPECT_TRUE(same_bits(got, was) || std::isnan(got)) << isa_name(isa);
        } else {
          EXPECT_TRUE(same_bits(got, was)) << isa_name(isa);
        }
      });
      EXPECT_TRUE(bitwise_equal(clean.lse->dense(), poisoned.lse->dense())) << isa_name(isa);
    }
  }
}

// The backward reads every value of its (batch, kv-head) group for every row (dP = dO·Vᵀ, and D_i
// = dO_i·O_i with O_i NaN where the forward let NaN in): a non-finite value may turn all of that
// group's gradients NaN, but no other group's may change.
TEST(ExtremeInputs, NonFiniteValueLeavesOtherKvHeadsGradientsUnchanged) {
  Rng rng(117);
  BackwardCase c{random_inputs(rng, 2, 4, 2, 40, 40, 8, 8),
                 random_floats(rng, {2, 4, 40, 8}, {}),
                 {},
                 {},
                 2,
                 ""};
  c.inputs.base.causal = Causal::top_left;
  OutputBuffers forward_outputs = c.make_forward_outputs();
  GradBuffers clean = c.make_grads(), poisoned = c.make_grads();
  for (Isa isa : supported_isas()) {
    c.inputs.v.at({0, 1, 9, 2}) = 0.25f;
    c.run(forward_outputs, clean, isa, 2);
    c.inputs.v.at({0, 1, 9, 2}) = kNaN;  // batch 0, kv-head 1 (query heads 2 and 3)
    c.run(forward_outputs, poisoned, isa, 2);
    for (const auto& pair : {std::pair{&clean.dq, &poisoned.dq}, std::pair{&clean.dk, &poisoned.dk},
                             std::pair{&clean.dv, &poisoned.dv}}) {
      const Strided<float>& a = *pair.first;
      const Strided<float>& b = *pair.second;
      const std::int64_t heads_per_kv = a.shape()[1] / 2;  // 2 for dq, 1 for dk and dv
      for_each_index(4, a.shape(), [&](const Index& x) {
        if (x[0] != 0 || x[1] / heads_per_kv != 1) {
          EXPECT_TRUE(same_bits(a.at(x), b.at(x))) << isa_name(isa);
        }
      });
    }
  }
}

// ---- subnormals
// ----------------------------------------------------------------------------------

TEST(ExtremeInputs, SubnormalInputsAndProbabilitiesGiveAccurateResults) {
  Rng rng(111);
  Inputs in = random_inputs(rng, 1, 2, 1, 16, 40, 8, 8);
  const float tiny = 1e-40f;  // subnormal in fp32
  in.q.fill([&](const Index&) { return tiny * rng.normal(); });
  in.k.fill([&](const Index&) { return rng.normal(); });
  in.v.fill([&](const Index& x) { return x[3] % 2 ? tiny * rng.normal() : rng.normal(); });
  EXPECT_TRUE(matches_reference_on_every_isa(in, "subnormal q and v"));
  // Logits 90..110 apart: exp(t − max) is subnormal or below it (the kernel's exp gives 0 for
  // exponents below −126 in base 2, the reference keeps ~1e-44; both are within the rule).
  in.q.fill([&](const Index&) { return rng.normal(); });
  in.bias = random_floats(rng, {16, 40}, {});
  in.bias->fill([&](const Index& x) { return x[1] == 0 ? 0.0f : -90.0f - 0.5f * x[1]; });
  in.base.scale = 1e-3f;
  EXPECT_TRUE(matches_reference_on_every_isa(in, "subnormal probabilities"));
  expect_all_rows_finite(in, "subnormal probabilities");
}

TEST(ExtremeInputs, ForwardAndBackwardLeaveTheFloatingPointModeAlone) {
  Rng rng(112);
  BackwardCase c{random_inputs(rng, 1, 2, 1, 20, 30, 8, 8),
                 random_floats(rng, {1, 2, 20, 8}, {}),
                 {},
                 {},
                 2,
                 ""};
  OutputBuffers forward_outputs = c.make_forward_outputs();
  GradBuffers grads = c.make_grads();
  // MXCSR's mode bits: flush-to-zero, rounding, exception masks, denormals-are-zero (bits 0-5
  // are sticky exception flags, which arithmetic may set).
  const auto mode = [] { return _mm_getcsr() & ~0x3Fu; };
  const unsigned before = mode();
  for (Isa isa : supported_isas()) c.run(forward_outputs, grads, isa, 2);
  EXPECT_EQ(mode(), before) << "MXCSR (flush-to-zero, denormals-are-zero, rounding) changed";
}

// ---- the smallest shapes -----------------------------------------------------------------------

TEST(ExtremeInputs, OneQueryOneKeyHeadDimOneForwardAndBackwardMatchReference) {
  Rng rng(113);
  BackwardCase c{
      random_inputs(rng, 1, 1, 1, 1, 1, 1, 1), random_floats(rng, {1, 1, 1, 1}, {}), {}, {}, 1, ""};
  c.grad_layouts.want_dscale = true;
  EXPECT_TRUE(matches_reference_on_every_isa(c.inputs, "L = 1, D = 1"));
  OutputBuffers forward_outputs = c.make_forward_outputs();
  GradBuffers grads = c.make_grads();
  const BackwardReferences refs = c.references(forward_outputs, grads);
  for (Isa isa : supported_isas()) {
    c.run(forward_outputs, grads, isa, 1);
    EXPECT_TRUE(check_grads(refs, grads)) << isa_name(isa);
    EXPECT_EQ(forward_outputs.out.at({0, 0, 0, 0}), c.inputs.v.at({0, 0, 0, 0})) << isa_name(isa);
    EXPECT_EQ(grads.dq.at({0, 0, 0, 0}), 0.0f) << "one key: softmax is constant";
  }
}

TEST(ExtremeInputs, EmptyBatchRunsBackwardWithoutWriting) {
  Rng rng(114);
  BackwardCase c{
      random_inputs(rng, 0, 2, 1, 5, 6, 4, 4), random_floats(rng, {0, 2, 5, 4}, {}), {}, {}, 2, ""};
  OutputBuffers forward_outputs = c.make_forward_outputs();
  GradBuffers grads = c.make_grads();
  for (Isa isa : supported_isas()) {
    EXPECT_NO_THROW(c.run(forward_outputs, grads, isa, 2));
    for (const auto* t : {&grads.dq, &grads.dk, &grads.dv})
      for (float x : t->storage) EXPECT_TRUE(is_sentinel(x)) << isa_name(isa);
  }
}

TEST(ExtremeInputs, NoKeysGiveZeroOutputsAndZeroQueryGradients) {
  Rng rng(115);
  BackwardCase c{
      random_inputs(rng, 2, 2, 1, 5, 0, 4, 3), random_floats(rng, {2, 2, 5, 3}, {}), {}, {}, 2, ""};
  OutputBuffers forward_outputs = c.make_forward_outputs();
  GradBuffers grads = c.make_grads();
  for (Isa isa : supported_isas()) {
    c.run(forward_outputs, grads, isa, 2);
    for (float x : forward_outputs.out.dense()) EXPECT_EQ(x, 0.0f) << isa_name(isa);
    for (float x : forward_outputs.lse->dense()) EXPECT_EQ(x, -kInf) << isa_name(isa);
    for (float x : grads.dq.dense()) EXPECT_EQ(x, 0.0f) << isa_name(isa);
  }
}

// ---- 64-bit offsets
// --------------------------------------------------------------------------------

// A float view whose strides put its elements up to ~2^32 elements (16 GiB) apart, in an anonymous
// mapping reserved without backing: only the pages it touches take memory.
class SparseView {
 public:
  SparseView(std::vector<std::int64_t> shape, std::vector<std::int64_t> stride) {
    tensor_.rank = static_cast<int>(shape.size());
    std::int64_t reach = 0;
    for (std::size_t d = 0; d < shape.size(); ++d) {
      tensor_.shape[d] = shape[d];
      tensor_.stride[d] = stride[d];
      reach += (shape[d] - 1) * stride[d];
    }
    bytes_ = static_cast<std::size_t>(reach + 1) * sizeof(float);
    void* p = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p != MAP_FAILED) tensor_.data = p;
  }
  SparseView(const SparseView&) = delete;
  SparseView& operator=(const SparseView&) = delete;
  ~SparseView() {
    if (tensor_.data != nullptr) ::munmap(tensor_.data, bytes_);
  }
  bool mapped() const { return tensor_.data != nullptr; }
  const Tensor& tensor() const { return tensor_; }
  float& at(const Index& x) const {
    std::int64_t offset = 0;
    for (int d = 0; d < tensor_.rank; ++d)
      offset += x[static_cast<std::size_t>(d)] * tensor_.stride[static_cast<std::size_t>(d)];
    return static_cast<float*>(tensor_.data)[offset];
  }
  void copy_from(const Strided<float>& t) const {
    for_each_index(tensor_.rank, tensor_.shape, [&](const Index& x) { at(x) = t.at(x); });
  }
  std::vector<float> dense() const {
    std::vector<float> values;
    for_each_index(tensor_.rank, tensor_.shape, [&](const Index& x) { values.push_back(at(x)); });
    return values;
  }

 private:
  Tensor tensor_;
  std::size_t bytes_ = 0;
};

// Strides of a [2, 2, L, D]-style view (rank 3 or 4): batch 2^31 + 5 elements apart, heads 2^30 +
// 3, rows 2^28 + 1, columns 1 or 3. The last element lies beyond 2^32 elements.
std::vector<std::int64_t> far_strides(int rank, std::int64_t column_stride) {
  std::vector<std::int64_t> s{(std::int64_t{1} << 31) + 5, (std::int64_t{1} << 30) + 3,
                              (std::int64_t{1} << 28) + 1, column_stride};
  s.resize(static_cast<std::size_t>(rank));
  return s;
}

SparseView far_view(const std::vector<std::int64_t>& shape, std::int64_t column_stride = 1) {
  return SparseView(shape, far_strides(static_cast<int>(shape.size()), column_stride));
}

TEST(ExtremeInputs, ViewsWithElementsBeyond2To31ElementsApartGiveTheSameBitsAsContiguousOnes) {
  Rng rng(116);
  BackwardCase c{
      random_inputs(rng, 2, 2, 2, 3, 4, 5, 5), random_floats(rng, {2, 2, 3, 5}, {}), {}, {}, 2, ""};
  c.inputs.base.causal = Causal::bottom_right;
  c.inputs.bias = random_floats(rng, {2, 2, 3, 4}, {});
  c.grad_layouts.want_dbias = c.grad_layouts.want_dscale = true;
  SparseView q = far_view({2, 2, 3, 5}), k = far_view({2, 2, 4, 5}), v = far_view({2, 2, 4, 5});
  SparseView bias = far_view({2, 2, 3, 4}, 3), dout = far_view({2, 2, 3, 5});
  SparseView out = far_view({2, 2, 3, 5}), lse = far_view({2, 2, 3}),
             weights = far_view({2, 2, 3, 4}, 3);
  SparseView dq = far_view({2, 2, 3, 5}), dk = far_view({2, 2, 4, 5}), dv = far_view({2, 2, 4, 5});
  SparseView dbias = far_view({2, 2, 3, 4}, 3);
  for (const SparseView* t :
       {&q, &k, &v, &bias, &dout, &out, &lse, &weights, &dq, &dk, &dv, &dbias})
    if (!t->mapped()) GTEST_SKIP() << "cannot reserve 14 GiB of address space";
  q.copy_from(c.inputs.q);
  k.copy_from(c.inputs.k);
  v.copy_from(c.inputs.v);
  bias.copy_from(*c.inputs.bias);
  dout.copy_from(c.dout);
  OutputBuffers dense_outputs = c.make_forward_outputs(), dense_weights = c.inputs.make_outputs();
  GradBuffers dense_grads = c.make_grads();
  for (Isa isa : supported_isas()) {
    c.run(dense_outputs, dense_grads, isa, 2);
    c.inputs.run(dense_weights, isa, 2);
    Options o = c.inputs.options();
    o.bias = bias.tensor();
    o.isa = isa;
    o.threads = 2;
    // With weights (the prefill plan), then without (3 queries: the split-KV decode plan), each
    // against the contiguous call that takes the same plan.
    Outputs outputs;
    outputs.out = out.tensor();
    outputs.lse = lse.tensor();
    outputs.weights = weights.tensor();
    forward(q.tensor(), k.tensor(), v.tensor(), o, outputs);
    EXPECT_TRUE(bitwise_equal(out.dense(), dense_weights.out.dense())) << isa_name(isa);
    EXPECT_TRUE(bitwise_equal(weights.dense(), dense_weights.weights->dense())) << isa_name(isa);
    outputs.weights.reset();
    forward(q.tensor(), k.tensor(), v.tensor(), o, outputs);
    EXPECT_TRUE(bitwise_equal(out.dense(), dense_outputs.out.dense())) << isa_name(isa);
    EXPECT_TRUE(bitwise_equal(lse.dense(), dense_outputs.lse->dense())) << isa_name(isa);
    Grads g;
    g.dq = dq.tensor();
    g.dk = dk.tensor();
    g.dv = dv.tensor();
    g.dbias = dbias.tensor();
    float dscale = 0;
    g.dscale = &dscale;
    backward(q.tensor(), k.tensor(), v.tensor(), out.tensor(), dout.tensor(), lse.tensor(), o, g);
    EXPECT_TRUE(bitwise_equal(dq.dense(), dense_grads.dq.dense())) << isa_name(isa);
    EXPECT_TRUE(bitwise_equal(dk.dense(), dense_grads.dk.dense())) << isa_name(isa);
    EXPECT_TRUE(bitwise_equal(dv.dense(), dense_grads.dv.dense())) << isa_name(isa);
    EXPECT_TRUE(bitwise_equal(dbias.dense(), dense_grads.dbias->dense())) << isa_name(isa);
    EXPECT_TRUE(same_bits(dscale, *dense_grads.dscale)) << isa_name(isa);
  }
}

}  // namespace
}  // namespace sdpa::test
