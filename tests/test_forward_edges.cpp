// Targeted tests of sdpa::forward, each on every instruction set this CPU supports: fully masked
// rows, padding rows, empty and degenerate shapes, causal alignment with Lq != Lk, grouped-query
// heads, strided layouts, NaN containment, overflow safety, determinism, and "nothing written on
// error".
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace sdpa::test {
namespace {

const float kNaN = std::numeric_limits<float>::quiet_NaN();

// Fails unless row (b, h, i) is empty: out = 0, lse = −inf, weights = 0.
::testing::AssertionResult row_is_empty(const OutputBuffers& o, std::int64_t b, std::int64_t h,
                                        std::int64_t i) {
  const Index shape = o.out.shape();
  for (std::int64_t d = 0; d < shape[3]; ++d)
    if (o.out.at({b, h, i, d}) != 0.0f)
      return ::testing::AssertionFailure() << "out(" << b << "," << h << "," << i << "," << d
                                           << ") = " << o.out.at({b, h, i, d}) << ", expected 0";
  if (o.lse && o.lse->at({b, h, i, 0}) != -kInf)
    return ::testing::AssertionFailure() << "lse(" << b << "," << h << "," << i
                                         << ") = " << o.lse->at({b, h, i, 0}) << ", expected -inf";
  if (o.weights)
    for (std::int64_t j = 0; j < o.weights->shape()[3]; ++j)
      if (o.weights->at({b, h, i, j}) != 0.0f)
        return ::testing::AssertionFailure() << "weights(" << b << "," << h << "," << i << ","
                                             << j << ") = " << o.weights->at({b, h, i, j})
                                             << ", expected 0";
  return ::testing::AssertionSuccess();
}

// Fails unless every output element of row (b, h, i) is finite (lse may be −inf only if `empty`).
::testing::AssertionResult row_is_finite(const OutputBuffers& o, std::int64_t b, std::int64_t h,
                                         std::int64_t i) {
  for (std::int64_t d = 0; d < o.out.shape()[3]; ++d)
    if (!std::isfinite(o.out.at({b, h, i, d})))
      return ::testing::AssertionFailure() << "out(" << b << "," << h << "," << i << "," << d
                                           << ") = " << o.out.at({b, h, i, d});
  if (o.lse && !std::isfinite(o.lse->at({b, h, i, 0})))
    return ::testing::AssertionFailure() << "lse(" << b << "," << h << "," << i
                                         << ") = " << o.lse->at({b, h, i, 0});
  return ::testing::AssertionSuccess();
}

// Runs `inputs` on every ISA and checks, besides the reference, that the rows `empty(b, h, i)`
// names are empty and all others finite.
template <typename EmptyRow>
void expect_empty_rows(const Inputs& inputs, const std::string& what, EmptyRow empty) {
  EXPECT_TRUE(matches_reference_on_every_isa(inputs, what));
  OutputBuffers o = inputs.make_outputs();
  for (Isa isa : supported_isas()) {
    inputs.run(o, isa, 3);
    for (std::int64_t b = 0; b < inputs.batch(); ++b)
      for (std::int64_t h = 0; h < inputs.heads_q(); ++h)
        for (std::int64_t i = 0; i < inputs.len_q(); ++i) {
          if (empty(b, h, i)) {
            EXPECT_TRUE(row_is_empty(o, b, h, i)) << what << ", isa " << isa_name(isa);
          } else {
            EXPECT_TRUE(row_is_finite(o, b, h, i)) << what << ", isa " << isa_name(isa);
          }
        }
  }
}

// ---- fully masked rows -------------------------------------------------------------------------

TEST(Forward, FullyMaskedRowViaBoolMaskGivesZeroNotNaN) {
  Rng rng(11);
  Inputs in = random_inputs(rng, 2, 2, 2, 5, 7, 8, 6);
  in.mask.emplace(DType::boolean, std::vector<std::int64_t>{5, 7});
  in.mask->fill([&](const Index& ij) { return static_cast<std::uint8_t>(ij[0] != 2 && rng.chance(0.7)); });
  in.mask->at({3, 0}) = 1;  // keep row 3 non-empty
  expect_empty_rows(in, "mask row 2 all false", [&](std::int64_t, std::int64_t, std::int64_t i) {
    bool any = false;
    for (std::int64_t j = 0; j < 7; ++j) any = any || in.mask->at({i, j}) != 0;
    return !any;
  });
}

TEST(Forward, FullyMaskedRowViaNegInfBiasRowGivesZeroNotNaN) {
  Rng rng(12);
  Inputs in = random_inputs(rng, 2, 3, 1, 6, 9, 16, 16);
  in.bias = random_floats(rng, {2, 1, 6, 9}, {});
  for (std::int64_t j = 0; j < 9; ++j) in.bias->at({1, 0, 4, j}) = -kInf;
  expect_empty_rows(in, "bias row (b=1, i=4) all -inf",
                    [](std::int64_t b, std::int64_t, std::int64_t i) { return b == 1 && i == 4; });
}

TEST(Forward, NegInfBiasOnEveryVisibleKeyGivesZeroRowEvenIfHiddenKeysAreFinite) {
  // Row i sees keys 0..i (causal); the bias hides exactly those for row 2, while keys > 2 (hidden
  // by the causal mask) have finite bias. A kernel that takes the max over the whole tile before
  // masking would find a finite max and divide by a zero sum.
  Rng rng(13);
  Inputs in = random_inputs(rng, 1, 2, 2, 8, 8, 32, 32);
  in.base.causal = Causal::top_left;
  in.bias = random_floats(rng, {8, 8}, {});
  for (std::int64_t j = 0; j <= 2; ++j) in.bias->at({2, j}) = -kInf;
  expect_empty_rows(in, "causal + bias -inf on row 2's visible keys",
                    [](std::int64_t, std::int64_t, std::int64_t i) { return i == 2; });
}

TEST(Forward, ZeroKeyLengthGivesZeroRowsNotNaN) {
  Rng rng(14);
  Inputs in = random_inputs(rng, 3, 2, 1, 4, 10, 24, 40);
  in.key_lengths = {0, 10, 3};
  expect_empty_rows(in, "key_lengths 0,10,3",
                    [](std::int64_t b, std::int64_t, std::int64_t) { return b == 0; });
}

TEST(Forward, WindowThatReachesNoKeyGivesZeroRows) {
  // Lq = 6 > Lk = 4, top-left diagonal p = i, window [p, p]: rows 4 and 5 see no key.
  Rng rng(15);
  Inputs in = random_inputs(rng, 1, 2, 1, 6, 4, 8, 8);
  in.base.window = Window{0, 0};
  expect_empty_rows(in, "window 0,0 with Lq 6 > Lk 4",
                    [](std::int64_t, std::int64_t, std::int64_t i) { return i >= 4; });
}

TEST(Forward, BottomRightCausalWithMoreQueriesThanKeysGivesZeroLeadingRows) {
  // Lq = 7, Lk = 4: row i sees keys j <= i - 3, so rows 0..2 see none.
  Rng rng(16);
  Inputs in = random_inputs(rng, 2, 2, 2, 7, 4, 64, 64);
  in.base.causal = Causal::bottom_right;
  expect_empty_rows(in, "bottom-right causal Lq 7 > Lk 4",
                    [](std::int64_t, std::int64_t, std::int64_t i) { return i < 3; });
}

TEST(Forward, QueryLengthPaddingRowsAreZero) {
  Rng rng(17);
  Inputs in = random_inputs(rng, 3, 2, 2, 5, 6, 16, 8);
  in.query_lengths = {2, 5, 0};
  expect_empty_rows(in, "query_lengths 2,5,0", [](std::int64_t b, std::int64_t, std::int64_t i) {
    const std::int64_t len[] = {2, 5, 0};
    return i >= len[b];
  });
}

TEST(Forward, QueryAndKeyLengthsWithBottomRightCausalAlignPerBatchEntry) {
  // With lengths, bottom-right alignment uses each entry's own lengths: b = 0 has Lq' = 3,
  // Lk' = 5, so row i sees keys j <= i + 2.
  Rng rng(18);
  Inputs in = random_inputs(rng, 2, 1, 1, 4, 8, 8, 8);
  in.base.causal = Causal::bottom_right;
  in.query_lengths = {3, 4};
  in.key_lengths = {5, 8};
  EXPECT_TRUE(matches_reference_on_every_isa(in, "bottom-right with lengths"));
  OutputBuffers o = in.make_outputs();
  for (Isa isa : supported_isas()) {
    in.run(o, isa, 2);
    for (std::int64_t i = 0; i < 3; ++i)
      for (std::int64_t j = 0; j < 8; ++j)
        EXPECT_EQ(o.weights->at({0, 0, i, j}) > 0.0f, j <= i + 2) << "i " << i << " j " << j;
    EXPECT_TRUE(row_is_empty(o, 0, 0, 3));
  }
}

// ---- degenerate shapes -------------------------------------------------------------------------

TEST(Forward, EmptyKeySequenceGivesZeroOutputAndNegInfLse) {
  Rng rng(21);
  Inputs in = random_inputs(rng, 2, 2, 1, 3, 0, 8, 5);
  expect_empty_rows(in, "Lk = 0", [](std::int64_t, std::int64_t, std::int64_t) { return true; });
}

TEST(Forward, EmptyBatchOrQueryRunsAndWritesNothing) {
  Rng rng(22);
  for (auto [batch, len_q] : {std::pair<std::int64_t, std::int64_t>{0, 4}, {2, 0}}) {
    Inputs in = random_inputs(rng, batch, 2, 2, len_q, 5, 8, 8);
    OutputBuffers o = in.make_outputs();
    for (Isa isa : supported_isas()) {
      EXPECT_NO_THROW(in.run(o, isa, 2)) << "B " << batch << " Lq " << len_q;
      EXPECT_TRUE(is_sentinel(o.out.storage[0]));
      EXPECT_TRUE(is_sentinel(o.lse->storage[0]));
      EXPECT_TRUE(is_sentinel(o.weights->storage[0]));
    }
  }
}

TEST(Forward, SingleQueryRowMatchesReference) {
  Rng rng(23);
  for (std::int64_t len_k : {1, 2, 7, 100, 1000, 5000}) {
    Inputs in = random_inputs(rng, 1, 4, 2, 1, len_k, 64, 128);
    EXPECT_TRUE(matches_reference_on_every_isa(in, "Lq = 1, Lk = " + std::to_string(len_k)));
    in.base.causal = Causal::bottom_right;
    in.key_lengths = {static_cast<std::int32_t>(len_k * 2 / 3)};
    EXPECT_TRUE(matches_reference_on_every_isa(in, "Lq = 1 causal, Lk = " + std::to_string(len_k)));
  }
}

TEST(Forward, HeadDimOneMatchesReference) {
  Rng rng(24);
  EXPECT_TRUE(matches_reference_on_every_isa(random_inputs(rng, 2, 2, 1, 9, 13, 1, 1), "D = 1"));
  EXPECT_TRUE(matches_reference_on_every_isa(random_inputs(rng, 1, 2, 2, 9, 13, 1, 3), "Dk 1 Dv 3"));
  EXPECT_TRUE(matches_reference_on_every_isa(random_inputs(rng, 1, 2, 2, 9, 13, 5, 1), "Dk 5 Dv 1"));
}

TEST(Forward, HeadDim512MatchesReference) {
  Rng rng(25);
  Inputs in = random_inputs(rng, 1, 2, 1, 40, 70, 512, 512);
  EXPECT_TRUE(matches_reference_on_every_isa(in, "D = 512"));
  in.base.causal = Causal::top_left;
  EXPECT_TRUE(matches_reference_on_every_isa(in, "D = 512 causal"));
  EXPECT_TRUE(matches_reference_on_every_isa(random_inputs(rng, 1, 1, 1, 33, 65, 512, 64),
                                             "Dk 512 Dv 64"));
  EXPECT_TRUE(matches_reference_on_every_isa(random_inputs(rng, 1, 1, 1, 33, 65, 64, 512),
                                             "Dk 64 Dv 512"));
}

TEST(Forward, FastPathDimsAcrossTileBoundariesMatchReference) {
  Rng rng(26);
  struct Shape { std::int64_t len_q, len_k, dim; Causal causal; };
  for (const Shape& s : {Shape{511, 513, 64, Causal::none}, Shape{300, 700, 128, Causal::bottom_right},
                         Shape{600, 600, 64, Causal::top_left}, Shape{130, 257, 256, Causal::none},
                         Shape{65, 1030, 128, Causal::top_left}}) {
    Inputs in = random_inputs(rng, 1, 2, 1, s.len_q, s.len_k, s.dim, s.dim);
    in.base.causal = s.causal;
    EXPECT_TRUE(matches_reference_on_every_isa(
        in, "Lq " + std::to_string(s.len_q) + " Lk " + std::to_string(s.len_k) + " D " +
                std::to_string(s.dim)));
  }
}

TEST(Forward, ZeroScaleAveragesVisibleValues) {
  Rng rng(27);
  Inputs in = random_inputs(rng, 1, 1, 1, 4, 6, 8, 3);
  in.base.scale = 0.0f;
  in.base.causal = Causal::top_left;
  OutputBuffers o = in.make_outputs();
  for (Isa isa : supported_isas()) {
    in.run(o, isa, 1);
    for (std::int64_t i = 0; i < 4; ++i) {
      EXPECT_NEAR(o.lse->at({0, 0, i, 0}), std::log(static_cast<float>(i + 1)), 1e-6);
      for (std::int64_t d = 0; d < 3; ++d) {
        double mean = 0;
        for (std::int64_t j = 0; j <= i; ++j) mean += in.v.at({0, 0, j, d});
        EXPECT_NEAR(o.out.at({0, 0, i, d}), mean / static_cast<double>(i + 1), 1e-6);
      }
    }
  }
}

// ---- causal alignment, hand-computed -----------------------------------------------------------

// rows[i][j] == '1' when query i sees key j.
void expect_visibility(std::int64_t len_q, std::int64_t len_k, Causal causal,
                       const std::vector<std::string>& rows) {
  Rng rng(31);
  Inputs in = random_inputs(rng, 1, 1, 1, len_q, len_k, 4, 4);
  in.base.causal = causal;
  EXPECT_TRUE(matches_reference_on_every_isa(in, "hand-computed visibility"));
  OutputBuffers o = in.make_outputs();
  for (Isa isa : supported_isas()) {
    in.run(o, isa, 1);
    for (std::int64_t i = 0; i < len_q; ++i) {
      std::string seen;
      for (std::int64_t j = 0; j < len_k; ++j) seen += o.weights->at({0, 0, i, j}) > 0 ? '1' : '0';
      EXPECT_EQ(seen, rows[static_cast<std::size_t>(i)])
          << "row " << i << ", Lq " << len_q << ", Lk " << len_k << ", isa " << isa_name(isa);
      if (rows[static_cast<std::size_t>(i)].find('1') == std::string::npos) {
        EXPECT_TRUE(row_is_empty(o, 0, 0, i));
      }
    }
  }
}

TEST(Forward, CausalTopLeftWithFewerQueriesThanKeysMatchesHandComputedVisibility) {
  expect_visibility(3, 5, Causal::top_left, {"10000", "11000", "11100"});
}
TEST(Forward, CausalBottomRightWithFewerQueriesThanKeysMatchesHandComputedVisibility) {
  expect_visibility(3, 5, Causal::bottom_right, {"11100", "11110", "11111"});
}
TEST(Forward, CausalTopLeftWithMoreQueriesThanKeysMatchesHandComputedVisibility) {
  expect_visibility(5, 3, Causal::top_left, {"100", "110", "111", "111", "111"});
}
TEST(Forward, CausalBottomRightWithMoreQueriesThanKeysMatchesHandComputedVisibility) {
  expect_visibility(5, 3, Causal::bottom_right, {"000", "000", "100", "110", "111"});
}

// ---- grouped-query heads and layouts ----------------------------------------------------------

// A copy of `t` in `layout` (same values, different strides).
Strided<float> relayout(const Strided<float>& t, const Layout& layout) {
  const Index extents = t.shape();
  std::vector<std::int64_t> shape(extents.begin(), extents.begin() + t.rank());
  Strided<float> copy(DType::f32, shape, layout);
  copy.fill([&](const Index& x) { return t.at(x); });
  return copy;
}

// K or V with each of its heads repeated `group` times: [B, Hkv·group, L, D].
Strided<float> repeat_heads(const Strided<float>& t, std::int64_t group) {
  const Index s = t.shape();
  Strided<float> repeated(DType::f32, {s[0], s[1] * group, s[2], s[3]});
  repeated.fill([&](const Index& x) { return t.at({x[0], x[1] / group, x[2], x[3]}); });
  return repeated;
}

void expect_grouped_equals_repeated(std::int64_t heads_q, std::int64_t heads_kv) {
  Rng rng(41);
  Inputs grouped = random_inputs(rng, 2, heads_q, heads_kv, 37, 91, 64, 48);
  grouped.base.causal = Causal::bottom_right;
  const std::int64_t group = heads_q / heads_kv;
  Inputs repeated{relayout(grouped.q, {}), repeat_heads(grouped.k, group),
                  repeat_heads(grouped.v, group), std::nullopt, std::nullopt, {}, {}, grouped.base};
  EXPECT_TRUE(matches_reference_on_every_isa(grouped, "grouped heads"));
  OutputBuffers a = grouped.make_outputs(), b = repeated.make_outputs();
  for (Isa isa : supported_isas()) {
    grouped.run(a, isa, 2);
    repeated.run(b, isa, 2);
    const std::vector<float> out_a = a.out.dense(), out_b = b.out.dense();
    double max_difference = 0;
    for (std::size_t n = 0; n < out_a.size(); ++n)
      max_difference = std::max(max_difference, std::abs(double(out_a[n]) - double(out_b[n])));
    EXPECT_LE(max_difference, 1e-6) << "Hq " << heads_q << " Hkv " << heads_kv << ", isa "
                                     << isa_name(isa);
  }
}

TEST(Forward, GroupedQueryHeadsEqualRepeatedKeyValueHeads) { expect_grouped_equals_repeated(6, 2); }
TEST(Forward, MultiQueryHeadsEqualRepeatedKeyValueHead) { expect_grouped_equals_repeated(5, 1); }

TEST(Forward, BlhdStridedLayoutGivesSameBitsAsContiguousCopy) {
  Rng rng(42);
  Inputs contiguous = random_inputs(rng, 2, 4, 2, 77, 130, 64, 64);
  contiguous.base.causal = Causal::top_left;
  Inputs blhd{relayout(contiguous.q, blhd_layout()), relayout(contiguous.k, blhd_layout()),
              relayout(contiguous.v, blhd_layout()), std::nullopt, std::nullopt, {}, {},
              contiguous.base};
  OutputLayouts blhd_outputs;
  blhd_outputs.out = blhd_layout();
  OutputBuffers a = contiguous.make_outputs(), b = blhd.make_outputs(blhd_outputs);
  for (Isa isa : supported_isas()) {
    contiguous.run(a, isa, 2);
    blhd.run(b, isa, 2);
    EXPECT_TRUE(bitwise_equal(a.out.dense(), b.out.dense())) << "out, isa " << isa_name(isa);
    EXPECT_TRUE(bitwise_equal(a.lse->dense(), b.lse->dense())) << "lse, isa " << isa_name(isa);
    EXPECT_TRUE(padding_untouched("out", b.out));
  }
}

// ---- NaN containment and overflow --------------------------------------------------------------

TEST(Forward, NanInOneQueryRowAffectsOnlyThatRow) {
  Rng rng(51);
  Inputs in = random_inputs(rng, 2, 4, 2, 40, 50, 32, 32);
  OutputBuffers clean = in.make_outputs(), poisoned = in.make_outputs();
  const Index nan_row{1, 2, 17, 0};
  for (Isa isa : supported_isas()) {
    in.q.at({1, 2, 17, 5}) = 0.5f;
    in.run(clean, isa, 2);
    in.q.at({1, 2, 17, 5}) = kNaN;
    in.run(poisoned, isa, 2);
    for_each_index(4, poisoned.out.shape(), [&](const Index& x) {
      const bool in_nan_row = x[0] == nan_row[0] && x[1] == nan_row[1] && x[2] == nan_row[2];
      if (in_nan_row) {
        EXPECT_TRUE(std::isnan(poisoned.out.at(x))) << isa_name(isa);
      } else {
        EXPECT_TRUE(same_bits(poisoned.out.at(x), clean.out.at(x)))
            << "out(" << x[0] << "," << x[1] << "," << x[2] << "," << x[3] << "), isa "
            << isa_name(isa);
      }
    });
    EXPECT_TRUE(std::isnan(poisoned.lse->at(nan_row)));
    for_each_index(3, poisoned.lse->shape(), [&](const Index& x) {
      if (x != nan_row) {
        EXPECT_TRUE(same_bits(poisoned.lse->at(x), clean.lse->at(x)));
      }
    });
  }
  in.q.at({1, 2, 17, 5}) = kNaN;
  EXPECT_TRUE(matches_reference_on_every_isa(in, "NaN in q row"));
}

TEST(Forward, NanInOneKeyAffectsOnlyRowsThatSeeIt) {
  // Causal top-left: key 9 of kv head 1 is seen by rows i >= 9 of the query heads 2 and 3 only.
  Rng rng(52);
  Inputs in = random_inputs(rng, 1, 4, 2, 30, 30, 16, 16);
  in.base.causal = Causal::top_left;
  OutputBuffers clean = in.make_outputs(), poisoned = in.make_outputs();
  for (Isa isa : supported_isas()) {
    in.k.at({0, 1, 9, 3}) = 0.25f;
    in.run(clean, isa, 2);
    in.k.at({0, 1, 9, 3}) = kNaN;
    in.run(poisoned, isa, 2);
    for_each_index(4, poisoned.out.shape(), [&](const Index& x) {
      if (x[1] >= 2 && x[2] >= 9) {
        EXPECT_TRUE(std::isnan(poisoned.out.at(x))) << isa_name(isa);
      } else {
        EXPECT_TRUE(same_bits(poisoned.out.at(x), clean.out.at(x)))
            << "out(" << x[0] << "," << x[1] << "," << x[2] << "," << x[3] << "), isa "
            << isa_name(isa);
      }
    });
  }
  in.k.at({0, 1, 9, 3}) = kNaN;
  EXPECT_TRUE(matches_reference_on_every_isa(in, "NaN in k row"));
}

// Keys past key_lengths are padding (e.g. an unfilled KV cache): whatever their K or V rows hold,
// NaN included, must not reach any output.
void expect_padding_garbage_does_not_leak(bool poison_keys, bool poison_values) {
  Rng rng(53);
  Inputs in = random_inputs(rng, 2, 2, 2, 20, 70, 32, 32);
  in.key_lengths = {37, 70};
  OutputBuffers clean = in.make_outputs(), poisoned = in.make_outputs();
  Inputs garbage{relayout(in.q, {}), relayout(in.k, {}), relayout(in.v, {}), std::nullopt,
                 std::nullopt, in.key_lengths, {}, in.base};
  for (std::int64_t h = 0; h < 2; ++h)
    for (std::int64_t j = 37; j < 70; ++j)
      for (std::int64_t d = 0; d < 32; ++d) {
        if (poison_keys) garbage.k.at({0, h, j, d}) = kNaN;
        if (poison_values) garbage.v.at({0, h, j, d}) = kNaN;
      }
  for (Isa isa : supported_isas()) {
    in.run(clean, isa, 2);
    garbage.run(poisoned, isa, 2);
    EXPECT_TRUE(same_output_bits(clean, poisoned)) << isa_name(isa);
  }
}

TEST(Forward, NanInPaddedKeysDoesNotLeak) { expect_padding_garbage_does_not_leak(true, false); }
TEST(Forward, NanInPaddedValuesDoesNotLeak) { expect_padding_garbage_does_not_leak(false, true); }

TEST(Forward, HugeLogitsDoNotOverflow) {
  // scale·q·k around 1e4: every logit is huge and close to the others; exp must see s − max.
  Rng rng(54);
  Inputs in = random_inputs(rng, 1, 2, 1, 20, 45, 16, 8);
  in.base.scale = 1.0f;
  in.q.fill([&](const Index&) { return 25.0f + rng.normal(0.01f); });
  in.k.fill([&](const Index&) { return 25.0f + rng.normal(0.01f); });
  EXPECT_TRUE(matches_reference_on_every_isa(in, "logits ~ 1e4"));
  // Widely spread logits, |s| up to ~1e4 of either sign.
  in.q.fill([&](const Index&) { return rng.normal(25.0f); });
  in.k.fill([&](const Index&) { return rng.normal(25.0f); });
  EXPECT_TRUE(matches_reference_on_every_isa(in, "logits ~ ±1e4"));
  OutputBuffers o = in.make_outputs();
  for (Isa isa : supported_isas()) {
    in.run(o, isa, 2);
    for (std::int64_t h = 0; h < 2; ++h)
      for (std::int64_t i = 0; i < 20; ++i) EXPECT_TRUE(row_is_finite(o, 0, h, i));
  }
}

TEST(Forward, HugeFiniteBiasDoesNotOverflow) {
  Rng rng(55);
  Inputs in = random_inputs(rng, 2, 2, 2, 12, 33, 16, 16);
  in.bias = random_floats(rng, {2, 2, 12, 33}, {});
  in.bias->fill([&](const Index& x) {
    if (x[2] == 0) return 1e30f;                                  // every key +1e30
    if (x[2] == 1) return -1e30f;                                 // every key −1e30
    return rng.pick({1e30f, -1e30f, 0.0f, rng.normal(1.0f)});     // mixed
  });
  EXPECT_TRUE(matches_reference_on_every_isa(in, "bias ±1e30"));
  OutputBuffers o = in.make_outputs();
  for (Isa isa : supported_isas()) {
    in.run(o, isa, 2);
    for (std::int64_t b = 0; b < 2; ++b)
      for (std::int64_t h = 0; h < 2; ++h)
        for (std::int64_t i = 0; i < 12; ++i) EXPECT_TRUE(row_is_finite(o, b, h, i));
  }
}

// ---- determinism -------------------------------------------------------------------------------

TEST(Forward, ResultsAreBitwiseIdenticalForAnyThreadCountAndRun) {
  Rng rng(61);
  struct Shape { std::int64_t batch, heads_q, heads_kv, len_q, len_k, dim; Causal causal; };
  for (const Shape& s : {Shape{2, 4, 2, 257, 700, 64, Causal::none},
                         Shape{1, 3, 1, 300, 300, 128, Causal::top_left},
                         Shape{1, 2, 2, 1, 4000, 128, Causal::none},      // decode: split keys
                         Shape{3, 2, 1, 5, 2100, 64, Causal::bottom_right}}) {
    Inputs in = random_inputs(rng, s.batch, s.heads_q, s.heads_kv, s.len_q, s.len_k, s.dim, s.dim);
    in.base.causal = s.causal;
    OutputLayouts no_weights;
    no_weights.want_weights = false;
    OutputBuffers first = in.make_outputs(no_weights), again = in.make_outputs(no_weights);
    for (Isa isa : supported_isas()) {
      in.run(first, isa, 1);
      for (int threads : {1, 2, 3, 4, 7, 4}) {
        in.run(again, isa, threads);
        EXPECT_TRUE(bitwise_equal(first.out.dense(), again.out.dense()))
            << "out, threads " << threads << ", isa " << isa_name(isa) << ", Lq " << s.len_q
            << " Lk " << s.len_k;
        EXPECT_TRUE(bitwise_equal(first.lse->dense(), again.lse->dense()))
            << "lse, threads " << threads << ", isa " << isa_name(isa) << ", Lq " << s.len_q
            << " Lk " << s.len_k;
      }
    }
  }
}

// ---- errors ------------------------------------------------------------------------------------

TEST(Forward, OutputsUntouchedWhenForwardThrows) {
  Rng rng(71);
  Inputs in = random_inputs(rng, 2, 2, 1, 9, 11, 8, 8);
  in.key_lengths = {4, 11};
  OutputBuffers o = in.make_outputs();
  auto expect_untouched = [&](const Options& bad, const char* what) {
    o.reset();
    EXPECT_THROW(forward(in.q.tensor, in.k.tensor, in.v.tensor, bad, o.outputs()), Error) << what;
    for (float x : o.out.storage) EXPECT_TRUE(is_sentinel(x)) << what;
    for (float x : o.lse->storage) EXPECT_TRUE(is_sentinel(x)) << what;
    for (float x : o.weights->storage) EXPECT_TRUE(is_sentinel(x)) << what;
  };
  Options bad = in.options();
  bad.threads = -1;
  expect_untouched(bad, "threads -1");
  bad = in.options();
  bad.window = Window{-2, 3};
  expect_untouched(bad, "window left -2");
  bad = in.options();
  bad.scale = std::numeric_limits<float>::quiet_NaN();
  expect_untouched(bad, "scale NaN");
  const std::vector<std::int32_t> too_long{1, 2, 30};
  bad = in.options();
  bad.key_lengths = too_long;
  expect_untouched(bad, "key_lengths size 3");
  const std::vector<std::int32_t> out_of_range{4, 12};
  bad = in.options();
  bad.key_lengths = out_of_range;
  expect_untouched(bad, "key_lengths 12 > Lk");
  Strided<float> float_mask(DType::f32, {9, 11});
  bad = in.options();
  bad.mask = float_mask.tensor;
  expect_untouched(bad, "f32 mask");
  if (best_isa() != Isa::avx512) {
    bad = in.options();
    bad.isa = Isa::avx512;
    expect_untouched(bad, "unsupported isa");
  }
}

TEST(Forward, WorkspaceLimitIsHonouredOrRefusedWithoutWriting) {
  // A tiny workspace limit: the call either fits in it or throws sdpa::Error before writing.
  Rng rng(72);
  Inputs in = random_inputs(rng, 1, 2, 1, 300, 300, 64, 64);
  Options limited = in.options();
  limited.workspace_limit = 64;
  OutputLayouts no_weights;
  no_weights.want_weights = false;
  OutputBuffers o = in.make_outputs(no_weights);
  for (Isa isa : supported_isas()) {
    o.reset();
    limited.isa = isa;
    try {
      const RunInfo info = forward(in.q.tensor, in.k.tensor, in.v.tensor, limited, o.outputs());
      EXPECT_LE(info.workspace_bytes, 64u) << isa_name(isa);
    } catch (const Error&) {
      for (float x : o.out.storage) ASSERT_TRUE(is_sentinel(x)) << isa_name(isa);
      for (float x : o.lse->storage) ASSERT_TRUE(is_sentinel(x)) << isa_name(isa);
    }
  }
}

// ---- entropy telemetry ----------------------------------------------------------------------------

TEST(Forward, EntropyOfUniformAttentionIsLogOfVisibleKeys) {
  // q = 0: every visible key gets the same weight, so H = log(number of visible keys).
  Rng rng(71);
  Inputs in = random_inputs(rng, 1, 1, 1, 6, 40, 8, 8);
  std::fill(in.q.storage.begin(), in.q.storage.end(), 0.0f);
  in.base.causal = Causal::bottom_right;  // row i sees 35 + i keys
  OutputLayouts layouts;
  layouts.want_weights = false;
  OutputBuffers buffers = in.make_outputs(layouts);
  for (Isa isa : supported_isas()) {
    in.run(buffers, isa, 1);
    const std::vector<float> h = buffers.entropy->dense();
    for (std::int64_t i = 0; i < 6; ++i)
      EXPECT_NEAR(h[static_cast<std::size_t>(i)], std::log(35.0 + static_cast<double>(i)), 2e-6)
          << "row " << i << ", isa " << isa_name(isa);
  }
}

TEST(Forward, EntropyOfOneDominantKeyIsNearZeroAndMaskedRowIsZero) {
  Rng rng(72);
  Inputs in = random_inputs(rng, 1, 1, 1, 2, 30, 4, 4);
  in.bias = floats({2, 30}, std::vector<float>(60, 0.0f));
  for (std::int64_t j = 0; j < 30; ++j) {
    in.bias->at({0, j}) = j == 7 ? 0.0f : -200.0f;  // row 0: one key dominates completely
    in.bias->at({1, j}) = -kInf;                    // row 1: no visible key
  }
  OutputBuffers buffers = in.make_outputs();
  for (Isa isa : supported_isas()) {
    in.run(buffers, isa, 1);
    const std::vector<float> h = buffers.entropy->dense();
    EXPECT_NEAR(h[0], 0.0f, 1e-6f) << isa_name(isa);
    EXPECT_EQ(h[1], 0.0f) << isa_name(isa);
  }
}

TEST(Forward, AskingForEntropyLeavesOutAndLseBitwiseUnchanged) {
  Rng rng(73);
  Inputs in = random_inputs(rng, 2, 4, 2, 130, 300, 64, 32);
  in.base.causal = Causal::top_left;
  OutputLayouts with, without;
  without.want_entropy = false;
  with.want_weights = without.want_weights = false;
  OutputBuffers a = in.make_outputs(with), b = in.make_outputs(without);
  for (Isa isa : supported_isas()) {
    in.run(a, isa, 2);
    in.run(b, isa, 2);
    EXPECT_TRUE(bitwise_equal(a.out.dense(), b.out.dense())) << isa_name(isa);
    EXPECT_TRUE(bitwise_equal(a.lse->dense(), b.lse->dense())) << isa_name(isa);
  }
}

// Rows that see a whole key tile with no mask or bias skip the kernel's logits pass (their maximum
// comes from the score microkernel, exp scales the raw scores as it reads). A mask that hides
// nothing sends every row through the logits pass instead: every output must have the same bits.
// At scale 3 the logits reach ~100, where rounding S·scale once or twice would differ.
TEST(Forward, AllTrueMaskGivesTheBitsOfNoMask) {
  Rng rng(113);
  for (DType dtype : {DType::f32, DType::bf16})
    for (float scale : {0.125f, 3.0f}) {
      Inputs plain = random_inputs(rng, 1, 2, 1, 100, 1100, 32, 24);
      plain.base.scale = scale;
      plain.set_dtype(dtype);
      Inputs masked = random_inputs(rng, 1, 2, 1, 100, 1100, 32, 24);
      masked.q.storage = plain.q.storage, masked.k.storage = plain.k.storage;
      masked.v.storage = plain.v.storage;
      masked.base = plain.base;
      masked.set_dtype(dtype);
      masked.mask.emplace(DType::boolean, std::vector<std::int64_t>{100, 1100});
      masked.mask->fill([](const Index&) { return std::uint8_t{1}; });
      OutputBuffers a = plain.make_outputs(), b = masked.make_outputs();
      for (Isa isa : supported_isas()) {
        plain.run(a, isa, 2);
        masked.run(b, isa, 2);
        EXPECT_TRUE(same_output_bits(a, b))
            << dtype_name(dtype) << " scale " << scale << " " << isa_name(isa);
      }
    }
}

}  // namespace
}  // namespace sdpa::test
