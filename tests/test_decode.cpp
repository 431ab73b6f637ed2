// The split-KV decode plan (core/decode.cpp): chosen for few query rows, exact under the accuracy
// rule with every forward option, and bitwise independent of the thread count.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "core/decode.hpp"
#include "test_support.hpp"

namespace sdpa::test {
namespace {

// Runs the split-KV plan (forced) on every ISA and checks every output against the references.
::testing::AssertionResult split_kv_matches_reference(const Inputs& in,
                                                      const OutputLayouts& layouts,
                                                      const std::string& what, int threads) {
  OutputBuffers buffers = in.make_outputs(layouts);
  const References refs = in.references(buffers);
  for (Isa isa : supported_isas()) {
    buffers.reset();
    Options o = in.options();
    o.isa = isa;
    o.threads = threads;
    forward_with_plan(in.q.tensor, in.k.tensor, in.v.tensor, o, buffers.outputs(),
                      ForwardPlan::split_kv);
    if (auto r = check_outputs(refs, buffers, in.len_k(), in.dim_v()); !r)
      return r << "\n  case: " << what << ", isa " << isa_name(isa);
  }
  return ::testing::AssertionSuccess();
}

// Decode shapes (1–16 queries, GQA groups up to 8, keys across several chunks) with every option:
// bool mask, bias with −inf, causal alignments, windows, key and query lengths, lse and entropy,
// strided layouts (packed rows), odd head dimensions, logit softcap, attention sinks.
TEST(Decode, SplitKvMatchesFp64ReferenceWithEveryOptionOnEveryIsa) {
  for (std::uint64_t seed = 1; seed <= 80; ++seed) {
    Rng rng(seed * 31 + 5);
    const std::int64_t B = rng.integer(1, 2), Hkv = rng.integer(1, 2),
                       group = rng.pick<std::int64_t>({1, 2, 4, 8});
    const std::int64_t Lq = rng.pick<std::int64_t>({1, 1, 2, 3, 8, 16}), Lk = rng.integer(0, 700);
    const std::int64_t Dk = rng.pick<std::int64_t>({1, 7, 16, 33, 64, 128}),
                       Dv = rng.pick<std::int64_t>({1, 8, 24, 64, 128});
    const std::int64_t Hq = Hkv * group;
    if (group * Lq > kDecodeMaxRows) continue;
    std::ostringstream what;
    what << "seed=" << seed << " B=" << B << " Hq=" << Hq << " Hkv=" << Hkv << " Lq=" << Lq
         << " Lk=" << Lk << " Dk=" << Dk << " Dv=" << Dv;
    Inputs in{random_floats(rng, {B, Hq, Lq, Dk}, random_layout(rng, 4, false), 2.0f),
              random_floats(rng, {B, Hkv, Lk, Dk}, random_layout(rng, 4, false), 2.0f),
              random_floats(rng, {B, Hkv, Lk, Dv}, random_layout(rng, 4, false)),
              std::nullopt,
              std::nullopt,
              {},
              {},
              {}};
    what << " k/" << in.k.layout_name << " v/" << in.v.layout_name;
    in.base.causal = rng.pick({Causal::none, Causal::top_left, Causal::bottom_right});
    what << " causal=" << static_cast<int>(in.base.causal);
    if (rng.chance(0.3)) {
      in.mask.emplace(DType::boolean,
                      std::vector<std::int64_t>{B, rng.chance(0.5) ? Hq : 1, Lq, Lk});
      const double density = rng.pick({0.05, 0.5, 0.95});
      in.mask->fill([&](const Index&) { return static_cast<std::uint8_t>(rng.chance(density)); });
      what << " mask=" << density;
    }
    if (rng.chance(0.3)) {
      in.bias = random_floats(rng, {1, Hq, Lq, Lk}, {}, 3.0f);
      for (float& x : in.bias->storage)
        if (rng.chance(0.1)) x = -kInf;
      what << " bias";
    }
    if (rng.chance(0.25)) {
      in.base.window =
          Window{rng.pick<std::int64_t>({-1, 0, 5, 300}), rng.pick<std::int64_t>({-1, 0, 3})};
      what << " window=" << in.base.window->left << "," << in.base.window->right;
    }
    if (rng.chance(0.3)) {
      for (std::int64_t b = 0; b < B; ++b)
        in.key_lengths.push_back(static_cast<std::int32_t>(rng.integer(0, Lk)));
      what << " key_lengths";
    }
    if (rng.chance(0.15)) {
      for (std::int64_t b = 0; b < B; ++b)
        in.query_lengths.push_back(static_cast<std::int32_t>(rng.integer(0, Lq)));
      what << " query_lengths";
    }
    if (rng.chance(0.2)) in.base.scale = static_cast<float>(rng.uniform(-1, 1));
    OutputLayouts layouts;
    layouts.out = random_layout(rng, 4, false);
    layouts.want_weights = false;
    layouts.want_lse = rng.chance(0.7);
    layouts.want_entropy = rng.chance(0.5);
    const int threads = static_cast<int>(rng.integer(1, 3));
    random_softcap_and_sinks(rng, in, what);  // drawn last: the earlier draws keep their seeds
    ASSERT_TRUE(split_kv_matches_reference(in, layouts, what.str(), threads));
  }
}

TEST(Decode, PlanIsChosenForFewQueryRowsAndNotForManyOrForWeights) {
  Rng rng(3);
  const auto applies = [&](std::int64_t Hq, std::int64_t Hkv, std::int64_t Lq, bool weights) {
    const Inputs in = random_inputs(rng, 1, Hq, Hkv, Lq, 40, 16, 16);
    OutputLayouts layouts;
    layouts.want_weights = weights;
    OutputBuffers buffers = in.make_outputs(layouts);
    return decode_plan_applies(
        validate_forward(in.q.tensor, in.k.tensor, in.v.tensor, in.options(), buffers.outputs()));
  };
  EXPECT_TRUE(applies(32, 8, 1, false));
  EXPECT_TRUE(applies(8, 8, 16, false));
  EXPECT_FALSE(applies(8, 8, 17, false));  // more than kDecodeMaxQueries
  EXPECT_FALSE(applies(64, 1, 2, false));  // 128 rows per group
  EXPECT_FALSE(applies(32, 8, 1, true));   // weights need the prefill plan
  // A softcap and attention sinks do not: the split-KV kernels apply both.
  Inputs in = random_inputs(rng, 1, 8, 2, 1, 40, 16, 16);
  in.base.softcap = 30.0f;
  in.sinks = floats({8}, std::vector<float>(8, 1.5f));
  OutputLayouts layouts;
  layouts.want_weights = false;
  OutputBuffers buffers = in.make_outputs(layouts);
  EXPECT_TRUE(decode_plan_applies(
      validate_forward(in.q.tensor, in.k.tensor, in.v.tensor, in.options(), buffers.outputs())));
}

// Many chunks (Lk = 5000 → 20 chunks of 256) and 8 groups, with a mask, bias, window and lengths.
TEST(Decode, ResultsAreBitwiseIdenticalForAnyThreadCount) {
  Rng rng(11);
  Inputs in = random_inputs(rng, 2, 8, 4, 3, 5000, 64, 48);
  in.mask.emplace(DType::boolean, std::vector<std::int64_t>{2, 1, 3, 5000});
  in.mask->fill([&](const Index&) { return static_cast<std::uint8_t>(rng.chance(0.9)); });
  in.bias = random_floats(rng, {1, 8, 1, 5000}, {});
  in.base.causal = Causal::bottom_right;
  in.base.window = Window{4000, -1};
  in.key_lengths = {5000, 3100};
  OutputLayouts layouts;
  layouts.want_weights = false;
  OutputBuffers first = in.make_outputs(layouts), again = in.make_outputs(layouts);
  for (Isa isa : supported_isas()) {
    in.run(first, isa, 1);
    for (int threads : {2, 3, 4, 7, 2}) {
      in.run(again, isa, threads);
      const std::string where = std::string(isa_name(isa)) + ", threads " + std::to_string(threads);
      EXPECT_TRUE(same_output_bits(first, again)) << where;
    }
  }
}

// A long single-query decode (Lk = 20000, 79 chunks) under the accuracy rule.
TEST(Decode, LongContextSingleQueryMatchesReference) {
  Rng rng(12);
  const Inputs in = random_inputs(rng, 1, 4, 2, 1, 20000, 128, 128);
  OutputLayouts layouts;
  layouts.want_weights = false;
  EXPECT_TRUE(split_kv_matches_reference(in, layouts, "Lk=20000", 2));
}

// A value row that is NaN but hidden from a row by the mask does not reach that row (the kernel
// skips keys whose probability is 0), while rows that see it become NaN: key 300's value is NaN
// in every kv-head, and the mask hides it from query head `hidden` only (Lq = 1, Lk = 600, D = 16).
void expect_nan_value_reaches_only_heads_that_see_it(std::uint64_t seed, std::int64_t heads_q,
                                                     std::int64_t heads_kv, std::int64_t hidden) {
  Rng rng(seed);
  Inputs in = random_inputs(rng, 1, heads_q, heads_kv, 1, 600, 16, 16);
  in.mask.emplace(DType::boolean, std::vector<std::int64_t>{1, heads_q, 1, 600});
  in.mask->fill(
      [&](const Index& x) { return static_cast<std::uint8_t>(x[1] != hidden || x[3] != 300); });
  for (std::int64_t h = 0; h < heads_kv; ++h)
    for (std::int64_t d = 0; d < 16; ++d)
      in.v.at({0, h, 300, d}) = std::numeric_limits<float>::quiet_NaN();
  OutputLayouts layouts;
  layouts.want_weights = false;  // (weights would take the prefill plan)
  OutputBuffers buffers = in.make_outputs(layouts);
  for (Isa isa : supported_isas()) {
    in.run(buffers, isa, 2);
    for (std::int64_t h = 0; h < heads_q; ++h)
      for (std::int64_t d = 0; d < 16; ++d)
        EXPECT_EQ(std::isnan(buffers.out.at({0, h, 0, d})), h != hidden)
            << "head " << h << ", column " << d << ", " << isa_name(isa);
  }
}

// Four query heads of one kv-head: a block of 4 rows.
TEST(Decode, NanValueOfAMaskedKeyReachesOnlyRowsThatSeeIt) {
  expect_nan_value_reaches_only_heads_that_see_it(13, 4, 1, 2);
}

// One query row per kv-head (multi-head attention at Lq = 1 runs single-row blocks).
TEST(Decode, NanValueOfAMaskedKeyStaysOutOfASingleRowGroup) {
  expect_nan_value_reaches_only_heads_that_see_it(17, 2, 2, 1);
}

// fuzz_forward's finding (fuzz/findings/fuzz_forward-row-finite-where-reference-is-not): a key the
// row sees but whose fp32 weight underflows to 0 (logit 200 below the row's maximum) must still
// pass an infinite value on, as the prefill kernel does (0·inf = NaN) and as the fp64 reference
// does (its weight e^-200 does not underflow: out = inf). Skipping zero weights hid it.
TEST(Decode, VisibleKeyWhoseWeightUnderflowsStillPassesOnANonFiniteValue) {
  Rng rng(17);
  Inputs in = random_inputs(rng, 1, 2, 1, 1, 40, 1, 4);
  for (std::int64_t h = 0; h < 2; ++h) in.q.at({0, h, 0, 0}) = 1.0f;
  for (std::int64_t j = 0; j < 40; ++j) in.k.at({0, 0, j, 0}) = j == 7 ? -200.0f : 0.0f;
  for (std::int64_t d = 0; d < 4; ++d) in.v.at({0, 0, 7, d}) = std::numeric_limits<float>::infinity();
  in.base.scale = 1.0f;
  OutputLayouts layouts;
  layouts.want_weights = false;
  OutputBuffers buffers = in.make_outputs(layouts);
  const References refs = in.references(buffers);
  ASSERT_TRUE(std::isinf(refs.ref64.out[0])) << "the premise: the fp64 reference's row is inf";
  for (ForwardPlan plan : {ForwardPlan::split_kv, ForwardPlan::prefill})
    for (Isa isa : supported_isas()) {
      Options o = in.options();
      o.isa = isa;
      forward_with_plan(in.q.tensor, in.k.tensor, in.v.tensor, o, buffers.outputs(), plan);
      for (std::int64_t h = 0; h < 2; ++h)
        for (std::int64_t d = 0; d < 4; ++d)
          EXPECT_FALSE(std::isfinite(buffers.out.at({0, h, 0, d})))
              << "head " << h << ", column " << d << ", " << isa_name(isa)
              << (plan == ForwardPlan::split_kv ? ", split-KV" : ", prefill");
    }
}

// The same fuzz finding's input: NaN in one query row makes every logit of that row NaN, which a
// maximum may drop (reading −inf); the row must come out NaN, not as a row with no visible key.
TEST(Decode, NanQueryRowGivesANanRowNotAnEmptyOne) {
  Rng rng(19);
  Inputs in = random_inputs(rng, 1, 1, 1, 4, 25, 1, 8);
  in.q.at({0, 0, 2, 0}) = std::numeric_limits<float>::quiet_NaN();
  OutputLayouts layouts;
  layouts.want_weights = false;
  OutputBuffers buffers = in.make_outputs(layouts);
  for (Isa isa : supported_isas()) {
    Options o = in.options();
    o.isa = isa;
    forward_with_plan(in.q.tensor, in.k.tensor, in.v.tensor, o, buffers.outputs(),
                      ForwardPlan::split_kv);
    for (std::int64_t i = 0; i < 4; ++i)
      EXPECT_EQ(std::isnan(buffers.out.at({0, 0, i, 0})), i == 2) << "row " << i << ", " << isa_name(isa);
  }
}

// fuzz_forward's finding (CI, 2026-11-23): a key the row may see whose logit is −inf (here q·k
// overflows to −inf) drops out exactly like a masked key, so a NaN in its value does not reach the
// row — in the split-KV kernel and now in the fp64 / fp32 references too, which multiplied its
// weight 0 by the NaN. With a sink the row keeps a finite lse, which is how the fuzzer met it.
TEST(Decode, KeyWithMinusInfLogitDropsOutLikeAMaskedKey) {
  Rng rng(23);
  Inputs in = random_inputs(rng, 1, 2, 1, 1, 30, 8, 8);
  for (std::int64_t h = 0; h < 2; ++h) in.q.at({0, h, 0, 0}) = 1.0f;
  in.k.at({0, 0, 5, 0}) = -std::numeric_limits<float>::infinity();
  for (std::int64_t d = 0; d < 8; ++d) in.v.at({0, 0, 5, d}) = std::numeric_limits<float>::quiet_NaN();
  in.sinks.emplace(DType::f32, std::vector<std::int64_t>{2});
  in.sinks->storage = {1.5f, -0.5f};
  OutputLayouts layouts;
  layouts.want_weights = false;
  OutputBuffers buffers = in.make_outputs(layouts);
  const References refs = in.references(buffers);
  for (std::size_t n = 0; n < refs.ref64.out.size(); ++n) {
    ASSERT_TRUE(std::isfinite(refs.ref64.out[n])) << "fp64 reference, element " << n;
    ASSERT_TRUE(std::isfinite(refs.naive32.out[n])) << "fp32 reference, element " << n;
  }
  for (Isa isa : supported_isas()) {
    in.mask.reset();
    Options o = in.options();
    o.isa = isa;
    forward_with_plan(in.q.tensor, in.k.tensor, in.v.tensor, o, buffers.outputs(),
                      ForwardPlan::split_kv);
    EXPECT_TRUE(check_outputs(refs, buffers, 30, 8)) << isa_name(isa);
    in.mask.emplace(DType::boolean, std::vector<std::int64_t>{1, 1, 1, 30});  // key 5 masked
    in.mask->fill([](const Index& x) { return static_cast<std::uint8_t>(x[3] != 5); });
    OutputBuffers masked = in.make_outputs(layouts);
    Options om = in.options();
    om.isa = isa;
    forward_with_plan(in.q.tensor, in.k.tensor, in.v.tensor, om, masked.outputs(),
                      ForwardPlan::split_kv);
    for (std::int64_t h = 0; h < 2; ++h)
      for (std::int64_t d = 0; d < 8; ++d)
        EXPECT_EQ(buffers.out.at({0, h, 0, d}), masked.out.at({0, h, 0, d}))
            << "head " << h << ", column " << d << ", " << isa_name(isa);
  }
}

}  // namespace
}  // namespace sdpa::test
