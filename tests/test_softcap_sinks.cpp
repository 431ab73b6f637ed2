// Logit softcap and attention sinks beyond the property tests:
//   - the kernels' vectorized tanh against std::tanh (dense sweep, every ISA, special values);
//   - softcap with logits of ±1e38 (no overflow, the cap bounds every logit);
//   - a sink is exactly an extra key with a zero key vector, a zero value and the sink as its bias:
//     forward outputs and every gradient (dsinks = that column's dbias) of the two formulations
//     agree, which checks the kernels' sink handling independently of the references;
//   - rows with no visible key and a sink: out = 0, lse = sink, entropy 0, zero gradients; padding
//     rows have no sink; a −inf sink is bitwise the same as no sink;
//   - dsinks bitwise identical for 1, 2, 3, 4 and 7 threads.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "backward_support.hpp"
#include "kernels/flash_forward.hpp"
#include "test_support.hpp"

namespace sdpa::test {
namespace {

const kernels::FlashKernel& kernel_of(Isa isa) {
  switch (isa) {
    case Isa::avx512: return kernels::flash_kernel_avx512();
    case Isa::avx2: return kernels::flash_kernel_avx2();
    default: return kernels::flash_kernel_scalar();
  }
}

// Runs the backward case on every ISA (2 threads); every gradient must be finite.
void expect_finite_gradients_on_every_isa(const BackwardCase& c) {
  OutputBuffers forward_outputs = c.make_forward_outputs();
  GradBuffers grads = c.make_grads();
  for (Isa isa : supported_isas()) {
    c.run(forward_outputs, grads, isa, 2);
    EXPECT_TRUE(all_finite(grads)) << isa_name(isa);
  }
}

// Distance of `got` from the exact `ref` in units of the fp32 spacing at ref.
double ulps(float got, double ref) {
  const double spacing = std::ldexp(1.0, std::ilogb(static_cast<float>(ref)) - 23);
  return std::abs(static_cast<double>(got) - ref) / spacing;
}

TEST(KernelTanh, WithinTwoUlpOfStdTanhOnADenseSweepOnEveryIsa) {
  // 2^20 points: uniform over [−12, 12] (both branches, the switch at 0.625, the clamp at 9) and
  // log-spaced magnitudes from 1e-30 to 1 (the polynomial near 0, where exp-based formulas cancel).
  std::vector<float> x;
  constexpr int kUniform = 1 << 19, kLog = 1 << 19;
  for (int n = 0; n < kUniform; ++n) x.push_back(-12.0f + 24.0f * static_cast<float>(n) / kUniform);
  for (int n = 0; n < kLog; ++n) {
    const float magnitude = static_cast<float>(std::pow(10.0, -30.0 + 30.0 * n / kLog));
    x.push_back(n % 2 ? magnitude : -magnitude);
  }
  for (Isa isa : supported_isas()) {
    std::vector<float> y = x;
    kernel_of(isa).tanh(y.data(), static_cast<std::int64_t>(y.size()));
    double worst = 0;
    float worst_x = 0;
    for (std::size_t n = 0; n < x.size(); ++n) {
      const double ref = std::tanh(static_cast<double>(x[n]));
      if (ref == 0) {
        EXPECT_EQ(y[n], 0.0f);
        continue;
      }
      const double e = ulps(y[n], ref);
      if (e > worst) worst = e, worst_x = x[n];
    }
    EXPECT_LE(worst, 2.0) << isa_name(isa) << ": worst at x = " << worst_x;
    std::cout << "[ tanh ] " << isa_name(isa) << ": max error " << worst << " ulp (at x = "
              << worst_x << ")\n";
  }
}

TEST(KernelTanh, SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float denormal = std::numeric_limits<float>::denorm_min();
  for (Isa isa : supported_isas()) {
    std::vector<float> y{inf, -inf, 1e38f, -1e38f, 0.0f, -0.0f, denormal, -denormal, nan, 9.0f, 20.0f};
    kernel_of(isa).tanh(y.data(), static_cast<std::int64_t>(y.size()));
    SCOPED_TRACE(isa_name(isa));
    EXPECT_EQ(y[0], 1.0f);
    EXPECT_EQ(y[1], -1.0f);
    EXPECT_EQ(y[2], 1.0f);
    EXPECT_EQ(y[3], -1.0f);
    EXPECT_EQ(y[4], 0.0f);
    EXPECT_TRUE(std::signbit(y[5]) && y[5] == 0.0f) << "tanh(-0) = -0";
    EXPECT_EQ(y[6], denormal);
    EXPECT_EQ(y[7], -denormal);
    EXPECT_TRUE(std::isnan(y[8]));
    EXPECT_LE(ulps(y[9], std::tanh(9.0)), 2.0);
    EXPECT_EQ(y[10], 1.0f);
  }
}

// ---- softcap --------------------------------------------------------------------------------------

TEST(Softcap, HugeLogitsAreCappedWithoutOverflow) {
  // Dk = 1 and q, k = ±1e19: raw scores ±1e38 (and ±inf once scaled by 2): capped to ±30.
  Rng rng(3);
  Inputs in = random_inputs(rng, 1, 2, 1, 6, 9, 1, 4);
  for (std::size_t n = 0; n < in.q.storage.size(); ++n) in.q.storage[n] = n % 2 ? 1e19f : -1e19f;
  for (std::size_t n = 0; n < in.k.storage.size(); ++n) in.k.storage[n] = n % 3 ? 1e19f : -0.5e19f;
  in.base.softcap = 30.0f;
  for (float scale : {1.0f, 2.0f}) {
    in.base.scale = scale;
    EXPECT_TRUE(matches_reference_on_every_isa(in, "q, k = ±1e19, softcap 30, scale " +
                                                       std::to_string(scale)));
    OutputBuffers buffers = in.make_outputs();
    in.run(buffers, Isa::automatic, 1);
    for (float lse : buffers.lse->dense()) {
      EXPECT_TRUE(std::isfinite(lse));
      EXPECT_LE(lse, 30.0f + std::log(9.0f) + 1e-4f);  // every logit ≤ 30
    }
    // Gradients: finite, and those of q and k vanish where tanh saturated.
    BackwardCase c{std::move(in), random_floats(rng, {1, 2, 6, 4}, {}), {}, {}, 1, ""};
    c.grad_layouts.want_dscale = true;
    expect_finite_gradients_on_every_isa(c);
    in = std::move(c.inputs);
  }
}

TEST(Softcap, ZeroIsBitwiseTheSameAsNoSoftcap) {
  Rng rng(4);
  Inputs in = random_inputs(rng, 1, 2, 2, 40, 70, 16, 8);
  OutputBuffers off = in.make_outputs(), zero = in.make_outputs();
  in.run(off, Isa::automatic, 1);
  in.base.softcap = 0.0f;
  in.run(zero, Isa::automatic, 1);
  EXPECT_TRUE(bitwise_equal(off.out.dense(), zero.out.dense()));
  // And a softcap does change the result (the option reaches the kernel).
  in.base.softcap = 1.0f;
  in.run(zero, Isa::automatic, 1);
  EXPECT_FALSE(bitwise_equal(off.out.dense(), zero.out.dense()));
}

// ---- sinks as an extra key -----------------------------------------------------------------------

// The same problem twice: `with_sinks` uses Options::sinks; `as_key` appends one key per kv-head
// with k = 0 and v = 0 and gives it the sink as bias (bias [1, Hq, 1, Lk + 1], 0 on real keys).
struct SinkAsKey {
  Inputs with_sinks, as_key;
  std::int64_t len_k = 0;
};

SinkAsKey sink_as_key_case(std::uint64_t seed, std::int64_t B, std::int64_t Hq, std::int64_t Hkv,
                           std::int64_t Lq, std::int64_t Lk, std::int64_t Dk, std::int64_t Dv,
                           const std::vector<float>& sinks, float softcap) {
  Rng rng(seed);
  SinkAsKey c{random_inputs(rng, B, Hq, Hkv, Lq, Lk, Dk, Dv),
              random_inputs(rng, B, Hq, Hkv, Lq, Lk + 1, Dk, Dv), Lk};
  c.with_sinks.sinks = floats({Hq}, sinks);
  c.with_sinks.base.softcap = softcap;
  c.as_key.base.softcap = softcap;
  for_each_index(4, c.as_key.q.shape(), [&](const Index& i) { c.as_key.q.at(i) = c.with_sinks.q.at(i); });
  for_each_index(4, c.as_key.k.shape(), [&](const Index& i) {
    c.as_key.k.at(i) = i[2] < Lk ? c.with_sinks.k.at(i) : 0.0f;
  });
  for_each_index(4, c.as_key.v.shape(), [&](const Index& i) {
    c.as_key.v.at(i) = i[2] < Lk ? c.with_sinks.v.at(i) : 0.0f;
  });
  c.as_key.bias.emplace(DType::f32, std::vector<std::int64_t>{1, Hq, 1, Lk + 1});
  c.as_key.bias->fill([&](const Index& i) { return i[3] < Lk ? 0.0f : sinks[static_cast<std::size_t>(i[1])]; });
  return c;
}

// max |a − b| ≤ tolerance·(1 + max |b|), over equal-length vectors.
::testing::AssertionResult close(const std::string& name, const std::vector<float>& a,
                                 const std::vector<float>& b, double tolerance = 2e-5) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << name << ": sizes differ";
  double largest = 0, worst = 0;
  for (std::size_t n = 0; n < a.size(); ++n) {
    largest = std::max(largest, std::abs(double(b[n])));
    worst = std::max(worst, std::abs(double(a[n]) - double(b[n])));
  }
  if (worst <= tolerance * (1 + largest)) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << name << ": max difference " << worst << " (largest "
                                       << largest << ")";
}

void expect_sink_equals_extra_key(SinkAsKey& c, const std::string& what) {
  const std::int64_t B = c.with_sinks.batch(), Hq = c.with_sinks.heads_q();
  const std::int64_t Lq = c.with_sinks.len_q(), Dv = c.with_sinks.dim_v();
  Rng rng(7);
  Strided<float> dout = random_floats(rng, {B, Hq, Lq, Dv}, {});
  for (Isa isa : supported_isas()) {
    SCOPED_TRACE(what + ", isa " + isa_name(isa));
    OutputBuffers a = c.with_sinks.make_outputs(), b = c.as_key.make_outputs();
    c.with_sinks.run(a, isa, 2);
    c.as_key.run(b, isa, 2);
    EXPECT_TRUE(close("out", a.out.dense(), b.out.dense()));
    EXPECT_TRUE(close("lse", a.lse->dense(), b.lse->dense()));
    EXPECT_TRUE(close("entropy", a.entropy->dense(), b.entropy->dense()));
    // weights: the real keys' columns of the extra-key problem.
    std::vector<float> real_columns;
    for_each_index(4, b.weights->shape(), [&](const Index& i) {
      if (i[3] < c.len_k) real_columns.push_back(b.weights->at(i));
    });
    EXPECT_TRUE(close("weights", a.weights->dense(), real_columns));

    // Backward: dsinks = d(bias) of the extra column; dq, dv, dscale equal, dk of the real keys.
    std::vector<float> dq_a(static_cast<std::size_t>(c.with_sinks.q.tensor.numel())), dq_b = dq_a;
    std::vector<float> dk_a(static_cast<std::size_t>(c.with_sinks.k.tensor.numel()));
    std::vector<float> dv_a(static_cast<std::size_t>(c.with_sinks.v.tensor.numel()));
    std::vector<float> dk_b(static_cast<std::size_t>(c.as_key.k.tensor.numel()));
    std::vector<float> dv_b(static_cast<std::size_t>(c.as_key.v.tensor.numel()));
    std::vector<float> dsinks(static_cast<std::size_t>(Hq)), dbias(static_cast<std::size_t>(Hq * (c.len_k + 1)));
    float dscale_a = 0, dscale_b = 0;
    const auto run_backward = [&](const Inputs& in, OutputBuffers& o, std::vector<float>& dq,
                                  std::vector<float>& dk, std::vector<float>& dv, float* dscale,
                                  bool with_sinks) {
      Grads g;
      g.dq = Tensor::contiguous(dq.data(), DType::f32, {B, Hq, Lq, in.q.tensor.shape[3]});
      g.dk = Tensor::contiguous(dk.data(), DType::f32,
                                {B, in.k.tensor.shape[1], in.len_k(), in.k.tensor.shape[3]});
      g.dv = Tensor::contiguous(dv.data(), DType::f32, {B, in.k.tensor.shape[1], in.len_k(), Dv});
      g.dscale = dscale;
      if (with_sinks) g.dsinks = Tensor::contiguous(dsinks.data(), DType::f32, {Hq});
      else g.dbias = Tensor::contiguous(dbias.data(), DType::f32, {1, Hq, 1, c.len_k + 1});
      Options options = in.options();
      options.isa = isa;
      options.threads = 2;
      backward(in.q.tensor, in.k.tensor, in.v.tensor, o.out.tensor, dout.tensor, o.lse->tensor,
               options, g);
    };
    run_backward(c.with_sinks, a, dq_a, dk_a, dv_a, &dscale_a, true);
    run_backward(c.as_key, b, dq_b, dk_b, dv_b, &dscale_b, false);
    EXPECT_TRUE(close("dq", dq_a, dq_b));
    std::vector<float> dk_real, dv_real, dbias_sink;
    const std::int64_t Hkv = c.with_sinks.k.tensor.shape[1], Dk = c.with_sinks.k.tensor.shape[3];
    for (std::int64_t n = 0; n < B * Hkv * (c.len_k + 1); ++n) {
      if (n % (c.len_k + 1) == c.len_k) continue;
      for (std::int64_t d = 0; d < Dk; ++d) dk_real.push_back(dk_b[static_cast<std::size_t>(n * Dk + d)]);
      for (std::int64_t d = 0; d < Dv; ++d) dv_real.push_back(dv_b[static_cast<std::size_t>(n * Dv + d)]);
    }
    EXPECT_TRUE(close("dk", dk_a, dk_real));
    EXPECT_TRUE(close("dv", dv_a, dv_real));
    EXPECT_TRUE(close("dscale", {dscale_a}, {dscale_b}));
    for (std::int64_t h = 0; h < Hq; ++h) dbias_sink.push_back(dbias[static_cast<std::size_t>(h * (c.len_k + 1) + c.len_k)]);
    EXPECT_TRUE(close("dsinks", dsinks, dbias_sink));
  }
}

TEST(Sinks, ASinkIsAnExtraKeyWithZeroValueAndTheSinkAsBias) {
  SinkAsKey c = sink_as_key_case(11, 2, 4, 2, 37, 150, 24, 20, {0.5f, -1.0f, 3.0f, 12.0f}, 0.0f);
  expect_sink_equals_extra_key(c, "B2 Hq4 Hkv2 Lq37 Lk150");
}

TEST(Sinks, ASinkIsAnExtraKeyAlsoWithSoftcap) {
  // The extra key's score is 0 and tanh(0) = 0, so its logit stays the sink under a softcap.
  // Softcap 2 with scale 1: most logits reach the cap.
  SinkAsKey c = sink_as_key_case(12, 1, 3, 1, 20, 260, 16, 8, {1.0f, 2.5f, -3.0f}, 2.0f);
  c.with_sinks.base.scale = c.as_key.base.scale = 1.0f;
  expect_sink_equals_extra_key(c, "softcap 2, scale 1, B1 Hq3 Hkv1 Lq20 Lk260");
}

// ---- rows without keys, padding, −inf --------------------------------------------------------------

TEST(Sinks, RowWithoutVisibleKeyHasZeroOutputAndTheSinkAsLse) {
  // bottom_right with Lq 12 > Lk 5: rows 0..6 see no key; batch 1 pads rows >= 9.
  Rng rng(21);
  Inputs in = random_inputs(rng, 2, 2, 1, 12, 5, 8, 6);
  in.base.causal = Causal::bottom_right;
  in.query_lengths = {12, 9};
  in.sinks = floats({2}, {0.75f, -2.0f});
  EXPECT_TRUE(matches_reference_on_every_isa(in, "bottom_right Lq12 Lk5 sinks"));
  OutputBuffers o = in.make_outputs();
  for (Isa isa : supported_isas()) {
    in.run(o, isa, 2);
    for (std::int64_t b = 0; b < 2; ++b)
      for (std::int64_t h = 0; h < 2; ++h)
        for (std::int64_t i = 0; i < 12; ++i) {
          const std::int64_t len = b == 0 ? 12 : 9;
          const bool padding = i >= len, empty = i < len - 5;  // diagonal i + 5 − len < 0
          if (!padding && !empty) continue;
          const float expected_lse = padding ? -kInf : (h == 0 ? 0.75f : -2.0f);
          EXPECT_EQ(o.lse->at({b, h, i, 0}), expected_lse) << isa_name(isa) << " b" << b << " h" << h << " i" << i;
          EXPECT_EQ(o.entropy->at({b, h, i, 0}), 0.0f);
          for (std::int64_t d = 0; d < 6; ++d) EXPECT_EQ(o.out.at({b, h, i, d}), 0.0f);
          for (std::int64_t j = 0; j < 5; ++j) EXPECT_EQ(o.weights->at({b, h, i, j}), 0.0f);
        }
  }
  // Gradients: those rows' dq are exactly zero (check_grads), dsinks matches the reference.
  BackwardCase c{std::move(in), random_floats(rng, {2, 2, 12, 6}, {}), {}, {}, 2, ""};
  c.grad_layouts.want_dsinks = c.grad_layouts.want_dscale = true;
  OutputBuffers forward_outputs = c.make_forward_outputs();
  GradBuffers grads = c.make_grads();
  const BackwardReferences refs = c.references(forward_outputs, grads);
  for (Isa isa : supported_isas()) {
    c.run(forward_outputs, grads, isa, 2);
    EXPECT_TRUE(check_grads(refs, grads)) << isa_name(isa);
  }
}

TEST(Sinks, NaNInTheQueryOfARowThatSeesOnlyTheSinkReachesNoGradient) {
  Rng rng(23);
  BackwardCase c{random_inputs(rng, 1, 2, 2, 10, 4, 8, 8), random_floats(rng, {1, 2, 10, 8}, {}),
                 {}, {}, 2, ""};
  c.inputs.base.causal = Causal::bottom_right;  // rows 0..5 see no key
  c.inputs.sinks = floats({2}, {0.5f, 1.5f});
  for (std::int64_t d = 0; d < 8; ++d) c.inputs.q.at({0, 1, 2, d}) = std::numeric_limits<float>::quiet_NaN();
  c.grad_layouts.want_dsinks = true;
  expect_finite_gradients_on_every_isa(c);
}

TEST(Sinks, NegativeInfiniteSinkIsBitwiseTheSameAsNoSink) {
  Rng rng(22);
  Inputs in = random_inputs(rng, 1, 3, 1, 50, 90, 16, 16);
  in.base.causal = Causal::top_left;
  OutputBuffers none = in.make_outputs(), neg_inf = in.make_outputs();
  for (Isa isa : supported_isas()) {
    in.sinks.reset();
    in.run(none, isa, 1);
    in.sinks = floats({3}, {-kInf, -kInf, -kInf});
    in.run(neg_inf, isa, 1);
    EXPECT_TRUE(same_output_bits(none, neg_inf)) << isa_name(isa);
  }
}

TEST(Sinks, DsinksIsBitwiseIdenticalForEveryThreadCount) {
  Rng rng(24);
  BackwardCase c{random_inputs(rng, 3, 4, 2, 70, 300, 32, 16), random_floats(rng, {3, 4, 70, 16}, {}),
                 {}, {}, 1, ""};
  c.inputs.sinks = floats({4}, {0.5f, 2.0f, -kInf, 6.0f});
  c.inputs.base.softcap = 5.0f;
  c.inputs.base.causal = Causal::bottom_right;
  c.grad_layouts.want_dsinks = c.grad_layouts.want_dscale = true;
  OutputBuffers forward_outputs = c.make_forward_outputs();
  GradBuffers grads = c.make_grads();
  for (Isa isa : supported_isas()) {
    c.run(forward_outputs, grads, isa, 1);
    const std::vector<std::vector<float>> first = all_grads(grads);
    for (int threads : {2, 3, 4, 7}) {
      c.run(forward_outputs, grads, isa, threads);
      const std::vector<std::vector<float>> again = all_grads(grads);
      for (std::size_t n = 0; n < first.size(); ++n)
        EXPECT_TRUE(bitwise_equal(first[n], again[n]))
            << "gradient " << n << " (dq, dk, dv, dscale, dsinks), threads " << threads << ", "
            << isa_name(isa);
    }
  }
}

}  // namespace
}  // namespace sdpa::test
