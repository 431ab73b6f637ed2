// sdpa::merge_attention: partial results over disjoint key sets merge into the one-shot result.
//
// The keys of random problems (GQA, masks, bias, causal alignments, windows, lengths) are split
// into 1–7 contiguous parts; forward() runs on each part with the keys, values and bias sliced and
// the full problem's visibility (causal, window, lengths, mask) given as an explicit mask, and the
// merged (out, lse) must satisfy the accuracy rule against the fp64 reference of the whole problem.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "core/mask.hpp"
#include "test_support.hpp"

namespace sdpa::test {
namespace {

// A view of `t` restricted to indices [begin, begin + length) of dimension `dim`.
Tensor slice(const Tensor& t, int dim, std::int64_t begin, std::int64_t length) {
  Tensor view = t;
  const auto d = static_cast<std::size_t>(dim);
  if (t.shape[d] == 1) return view;  // a broadcast dimension stays broadcast
  view.data = static_cast<char*>(t.data) +
              begin * t.stride[d] * static_cast<std::int64_t>(dtype_size(t.dtype));
  view.shape[d] = length;
  return view;
}

struct MergeCase {
  Inputs inputs;
  std::vector<std::int64_t> cuts;  // part n covers keys [cuts[n], cuts[n + 1])
  std::string what;
};

MergeCase random_merge_case(std::uint64_t seed) {
  Rng rng(seed);
  const std::int64_t B = rng.integer(1, 2), Hkv = rng.integer(1, 2), group = rng.integer(1, 3);
  const std::int64_t Lq = rng.integer(1, 20), Lk = rng.integer(1, 90);
  const std::int64_t Dk = rng.pick<std::int64_t>({3, 16, 33, 64}),
                     Dv = rng.pick<std::int64_t>({1, 8, 17, 64});
  MergeCase c{random_inputs(rng, B, Hkv * group, Hkv, Lq, Lk, Dk, Dv), {}, ""};
  Inputs& in = c.inputs;
  std::ostringstream what;
  what << "seed=" << seed << " B=" << B << " Hq=" << Hkv * group << " Hkv=" << Hkv << " Lq=" << Lq
       << " Lk=" << Lk << " Dk=" << Dk << " Dv=" << Dv;
  in.base.causal = rng.pick({Causal::none, Causal::top_left, Causal::bottom_right});
  what << " causal=" << static_cast<int>(in.base.causal);
  if (rng.chance(0.3)) {
    in.mask.emplace(DType::boolean, std::vector<std::int64_t>{B, 1, Lq, Lk});
    const double density = rng.pick({0.1, 0.5, 0.9});
    in.mask->fill([&](const Index&) { return static_cast<std::uint8_t>(rng.chance(density)); });
    what << " mask=" << density;
  }
  if (rng.chance(0.3)) {
    in.bias = random_floats(rng, {1, Hkv * group, rng.chance(0.5) ? Lq : 1, Lk}, {}, 2.0f);
    for (float& x : in.bias->storage)
      if (rng.chance(0.1)) x = -kInf;
    what << " bias" << in.bias->tensor.shape[2];
  }
  if (rng.chance(0.2)) {
    in.base.window = Window{rng.integer(-1, 10), rng.integer(-1, 10)};
    what << " window=" << in.base.window->left << "," << in.base.window->right;
  }
  if (rng.chance(0.25)) {
    for (std::int64_t b = 0; b < B; ++b)
      in.key_lengths.push_back(static_cast<std::int32_t>(rng.integer(0, Lk)));
    what << " key_lengths";
  }
  if (rng.chance(0.15)) {
    for (std::int64_t b = 0; b < B; ++b)
      in.query_lengths.push_back(static_cast<std::int32_t>(rng.integer(0, Lq)));
    what << " query_lengths";
  }
  const std::int64_t parts = std::min<std::int64_t>(rng.integer(1, 7), Lk);
  c.cuts = {0};
  for (std::int64_t n = 1; n < parts; ++n)
    c.cuts.push_back(rng.integer(0, Lk));  // parts may be empty
  c.cuts.push_back(Lk);
  std::sort(c.cuts.begin(), c.cuts.end());
  what << " parts=" << parts;
  c.what = what.str();
  return c;
}

// One part's forward: keys [begin, end) of the whole problem `p`, seen through an explicit mask.
struct Part {
  Strided<float> out, lse;
  Part(const Inputs& in, const Problem& p, std::int64_t begin, std::int64_t end, Isa isa)
      : out(DType::f32, {in.batch(), in.heads_q(), in.len_q(), in.dim_v()}),
        lse(DType::f32, {in.batch(), in.heads_q(), in.len_q()}) {
    const std::int64_t length = end - begin;
    Strided<std::uint8_t> mask(DType::boolean, {in.batch(), in.heads_q(), in.len_q(), length});
    mask.fill([&](const Index& x) {
      return static_cast<std::uint8_t>(key_visible(p, x[0], x[1], x[2], begin + x[3]));
    });
    Options o;
    o.scale = p.scale;
    o.isa = isa;
    o.threads = 1;
    o.mask = mask.tensor;
    if (in.bias) o.bias = slice(in.bias->tensor, 3, begin, length);
    Outputs outputs;
    outputs.out = out.tensor;
    outputs.lse = lse.tensor;
    forward(in.q.tensor, slice(in.k.tensor, 2, begin, length), slice(in.v.tensor, 2, begin, length),
            o, outputs);
  }
};

TEST(Merge, SplitKeysMergeToTheOneShotResultUnderTheAccuracyRule) {
  const std::vector<Isa> isas = supported_isas();
  for (std::uint64_t seed = 1; seed <= 120; ++seed) {
    const MergeCase c = random_merge_case(seed);
    const Inputs& in = c.inputs;
    OutputLayouts layouts;
    layouts.want_weights = layouts.want_entropy = false;
    OutputBuffers merged = in.make_outputs(layouts);
    const References refs = in.references(merged);
    const Problem p =
        validate_forward(in.q.tensor, in.k.tensor, in.v.tensor, in.options(), merged.outputs());
    const Isa isa = isas[seed % isas.size()];
    std::vector<Part> parts;
    std::vector<Tensor> outs, lses;
    for (std::size_t n = 0; n + 1 < c.cuts.size(); ++n)
      parts.emplace_back(in, p, c.cuts[n], c.cuts[n + 1], isa);
    for (const Part& part : parts) {
      outs.push_back(part.out.tensor);
      lses.push_back(part.lse.tensor);
    }
    merge_attention(outs, lses, merged.out.tensor, merged.lse->tensor, 2);
    ASSERT_TRUE(check_outputs(refs, merged, in.len_k(), in.dim_v()))
        << c.what << " isa=" << isa_name(isa);
  }
}

// Two hand-made parts of one row: lse 0 and log 3 weigh 1/4 and 3/4; lse log 4.
TEST(Merge, WeighsPartsByTheirExponentiatedLse) {
  std::vector<float> out0{1, 2}, out1{5, 6}, lse0{0.0f}, lse1{std::log(3.0f)}, out(2), lse(1);
  const std::vector<Tensor> outs{Tensor::contiguous(out0.data(), DType::f32, {1, 1, 1, 2}),
                                 Tensor::contiguous(out1.data(), DType::f32, {1, 1, 1, 2})};
  const std::vector<Tensor> lses{Tensor::contiguous(lse0.data(), DType::f32, {1, 1, 1}),
                                 Tensor::contiguous(lse1.data(), DType::f32, {1, 1, 1})};
  merge_attention(outs, lses, Tensor::contiguous(out.data(), DType::f32, {1, 1, 1, 2}),
                  Tensor::contiguous(lse.data(), DType::f32, {1, 1, 1}));
  EXPECT_FLOAT_EQ(out[0], 0.25f * 1 + 0.75f * 5);
  EXPECT_FLOAT_EQ(out[1], 0.25f * 2 + 0.75f * 6);
  EXPECT_FLOAT_EQ(lse[0], std::log(4.0f));
}

// Row 0: part 0 saw nothing (lse −inf, out garbage NaN) → part 1's out exactly. Row 1: no part saw
// a key → out 0, lse −inf, no NaN. Also in place (out is part 1's own view).
TEST(Merge, PartsWithNoVisibleKeyContributeNothingAndAllMaskedRowsGiveZero) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> out0{nan, nan, nan, nan}, out1{3, 4, nan, 7};
  std::vector<float> lse0{-kInf, -kInf}, lse1{1.5f, -kInf}, lse(2, 99.0f);
  const std::vector<Tensor> outs{Tensor::contiguous(out0.data(), DType::f32, {1, 1, 2, 2}),
                                 Tensor::contiguous(out1.data(), DType::f32, {1, 1, 2, 2})};
  const std::vector<Tensor> lses{Tensor::contiguous(lse0.data(), DType::f32, {1, 1, 2}),
                                 Tensor::contiguous(lse1.data(), DType::f32, {1, 1, 2})};
  merge_attention(outs, lses, outs[1], Tensor::contiguous(lse.data(), DType::f32, {1, 1, 2}));
  EXPECT_EQ(out1, (std::vector<float>{3, 4, 0, 0}));
  EXPECT_EQ(lse[0], 1.5f);
  EXPECT_EQ(lse[1], -kInf);
}

TEST(Merge, NanLseGivesANanRowOnly) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> out0{1, 2}, lse0{nan, 0.0f}, out(2), lse(2);
  const std::vector<Tensor> outs{Tensor::contiguous(out0.data(), DType::f32, {1, 1, 2, 1})};
  const std::vector<Tensor> lses{Tensor::contiguous(lse0.data(), DType::f32, {1, 1, 2})};
  merge_attention(outs, lses, Tensor::contiguous(out.data(), DType::f32, {1, 1, 2, 1}),
                  Tensor::contiguous(lse.data(), DType::f32, {1, 1, 2}));
  EXPECT_TRUE(std::isnan(out[0]) && std::isnan(lse[0]));
  EXPECT_EQ(out[1], 2.0f);
  EXPECT_EQ(lse[1], 0.0f);
}

TEST(Merge, ResultIsBitwiseIdenticalForAnyThreadCount) {
  Rng rng(77);
  std::vector<Strided<float>> out_parts, lse_parts;
  std::vector<Tensor> outs, lses;
  for (int n = 0; n < 5; ++n) {
    out_parts.push_back(random_floats(rng, {2, 3, 50, 20}, {}));
    lse_parts.push_back(random_floats(rng, {2, 3, 50}, {}, 5.0f));
    outs.push_back(out_parts.back().tensor);
    lses.push_back(lse_parts.back().tensor);
  }
  Strided<float> first(DType::f32, {2, 3, 50, 20}), again(DType::f32, {2, 3, 50, 20});
  merge_attention(outs, lses, first.tensor, std::nullopt, 1);
  for (int threads : {2, 3, 4, 7}) {
    merge_attention(outs, lses, again.tensor, std::nullopt, threads);
    EXPECT_TRUE(bitwise_equal(first.dense(), again.dense())) << "threads " << threads;
  }
}

// Errors name the argument; nothing is written.
TEST(Merge, BadArgumentsAreRejectedNamingTheArgumentAndNothingIsWritten) {
  std::vector<float> a(24, 1.0f), b(24, 2.0f), la(6, 0.0f), lb(6, 0.0f), out(24, 7.0f),
      lse(6, 7.0f);
  const Tensor ta = Tensor::contiguous(a.data(), DType::f32, {1, 2, 3, 4});
  const Tensor tb = Tensor::contiguous(b.data(), DType::f32, {1, 2, 3, 4});
  const Tensor tla = Tensor::contiguous(la.data(), DType::f32, {1, 2, 3});
  const Tensor tout = Tensor::contiguous(out.data(), DType::f32, {1, 2, 3, 4});
  const Tensor tlse = Tensor::contiguous(lse.data(), DType::f32, {1, 2, 3});
  const auto expect_error = [&](std::vector<Tensor> outs, std::vector<Tensor> lses, Tensor o,
                                std::optional<Tensor> l, int threads, const std::string& text) {
    try {
      merge_attention(outs, lses, o, l, threads);
      ADD_FAILURE() << "no error; expected one containing: " << text;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
    }
    EXPECT_EQ(out, std::vector<float>(24, 7.0f));
    EXPECT_EQ(lse, std::vector<float>(6, 7.0f));
  };
  expect_error({}, {}, tout, tlse, 0, "outs: expected at least one part");
  expect_error({ta, tb}, {tla}, tout, tlse, 0, "lses.size() = 1 does not match outs.size() = 2");
  expect_error({ta, Tensor::contiguous(b.data(), DType::f32, {1, 2, 4, 3})}, {tla, tla}, tout, tlse,
               0, "outs[1].shape[2] = 4 does not match out.shape[2] = 3");
  expect_error({ta}, {Tensor::contiguous(lb.data(), DType::f32, {1, 3, 2})}, tout, tlse, 0,
               "lses[0].shape[1] = 3 does not match out.shape[1] = 2");
  expect_error({ta}, {Tensor::contiguous(lb.data(), DType::f32, {1, 2, 3, 1})}, tout, tlse, 0,
               "lses[0].rank: expected 3");
  expect_error({ta}, {Tensor::contiguous(lb.data(), DType::i32, {1, 2, 3})}, tout, tlse, 0,
               "lses[0].dtype: expected f32, got i32");
  expect_error({ta}, {tla}, tout, Tensor::contiguous(lse.data(), DType::f32, {1, 2, 2}), 0,
               "lse.shape[2] = 2 does not match out.shape[2] = 3");
  expect_error({ta}, {tla}, Tensor::strided(out.data(), DType::f32, {1, 2, 3, 4}, {24, 0, 4, 1}),
               tlse, 0, "out.stride[1] = 0");
  expect_error({ta}, {tla}, tout, tlse, -1, "threads = -1");
}

}  // namespace
}  // namespace sdpa::test
