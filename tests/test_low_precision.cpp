// bf16 and f16 inputs: the conversions of core/half.hpp, dtype validation, determinism across
// thread counts, the widening (fp32-kernel) path against fp32 calls on the same values, and the
// backward. Accuracy against the fp64 reference over every option is the property test's
// (tests/test_forward_property.cpp draws the dtype).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "core/half.hpp"
#include "core/isa.hpp"
#include "test_support.hpp"

// GCC has _Float16 on x86-64; clang 14 (the sanitizer and fuzz builds) does not, and there the
// comparisons with the compiler's own conversion are left out (the normal GCC build runs them).
#if defined(__GNUC__) && !defined(__clang__)
#define SDPA_TEST_HAVE_FLOAT16 1
#else
#define SDPA_TEST_HAVE_FLOAT16 0
#endif

namespace sdpa::test {
namespace {

// ---- conversions
// ---------------------------------------------------------------------------------

TEST(HalfConversion, EveryF16PatternRoundTripsAndNaNStaysNaN) {
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const auto bits = static_cast<std::uint16_t>(h);
    const float f = half::f16_to_float(bits);
    const bool nan = (bits & 0x7c00) == 0x7c00 && (bits & 0x3ff) != 0;
    ASSERT_EQ(std::isnan(f), nan) << std::hex << h;
    if (nan) {
      ASSERT_TRUE(std::isnan(half::f16_to_float(half::float_to_f16(f)))) << std::hex << h;
      continue;
    }
    ASSERT_EQ(half::float_to_f16(f), bits) << std::hex << h;
#if SDPA_TEST_HAVE_FLOAT16
    // Widening agrees with the compiler's own _Float16 (IEEE binary16).
    _Float16 native;
    std::memcpy(&native, &bits, sizeof native);
    ASSERT_EQ(static_cast<float>(native), f) << std::hex << h;
#endif
  }
}

TEST(HalfConversion, F16NarrowingRoundsToNearestEvenLikeFloat16) {
  // Known values: ties to even, the overflow threshold, subnormals.
  EXPECT_EQ(half::float_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(half::float_to_f16(1.0f + 0x1p-11f), 0x3c00);      // tie: down to even
  EXPECT_EQ(half::float_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);  // tie: up to even
  EXPECT_EQ(half::float_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(half::float_to_f16(65519.99f), 0x7bff);
  EXPECT_EQ(half::float_to_f16(65520.0f), 0x7c00);  // rounds to inf
  EXPECT_EQ(half::float_to_f16(-1e30f), 0xfc00);
  EXPECT_EQ(half::float_to_f16(0x1p-24f), 0x0001);
  EXPECT_EQ(half::float_to_f16(0x1p-25f), 0x0000);  // tie: to even (0)
  EXPECT_EQ(half::float_to_f16(3 * 0x1p-25f), 0x0002);
  EXPECT_EQ(half::float_to_f16(-0.0f), 0x8000);
#if SDPA_TEST_HAVE_FLOAT16
  // Random floats of every magnitude against the compiler's conversion.
  Rng rng(5);
  for (int n = 0; n < 200000; ++n) {
    const auto bits = static_cast<std::uint32_t>(rng.integer(0, 0xffffffffLL));
    float f;
    std::memcpy(&f, &bits, sizeof f);
    if (std::isnan(f)) continue;
    const auto native = static_cast<_Float16>(f);
    std::uint16_t expected;
    std::memcpy(&expected, &native, sizeof expected);
    ASSERT_EQ(half::float_to_f16(f), expected) << f;
  }
#endif
}

TEST(HalfConversion, EveryBf16PatternRoundTripsAndNarrowingRoundsToNearestEven) {
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    const auto bits = static_cast<std::uint16_t>(h);
    const float f = half::bf16_to_float(bits);
    std::uint32_t f_bits;
    std::memcpy(&f_bits, &f, sizeof f_bits);
    ASSERT_EQ(f_bits, h << 16);
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(half::bf16_to_float(half::float_to_bf16(f))));
      continue;
    }
    ASSERT_EQ(half::float_to_bf16(f), bits) << std::hex << h;
  }
  EXPECT_EQ(half::float_to_bf16(1.0f + 0x1p-8f), 0x3f80);      // tie: down to even
  EXPECT_EQ(half::float_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);  // tie: up to even
  EXPECT_EQ(half::float_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);
  EXPECT_EQ(half::float_to_bf16(std::numeric_limits<float>::max()), 0x7f80);  // overflow: inf
  // A NaN whose payload sits only in the low 16 bits must not become inf.
  std::uint32_t nan_bits = 0x7f800001;
  float nan;
  std::memcpy(&nan, &nan_bits, sizeof nan);
  EXPECT_TRUE(std::isnan(half::bf16_to_float(half::float_to_bf16(nan))));
}

// ---- validation
// ----------------------------------------------------------------------------------

struct Call {
  std::vector<std::uint16_t> q16 = std::vector<std::uint16_t>(2 * 3 * 4, 0x3f80);
  std::vector<std::uint16_t> kv16 = std::vector<std::uint16_t>(2 * 5 * 4, 0x3f80);
  std::vector<std::uint16_t> out16 = std::vector<std::uint16_t>(2 * 3 * 4, kSentinel16);
  std::vector<float> out32 = std::vector<float>(2 * 3 * 4, 0.0f);
  std::vector<float> lse = std::vector<float>(2 * 3, 0.0f);
  Tensor q = Tensor::contiguous(q16.data(), DType::bf16, {1, 2, 3, 4});
  Tensor k = Tensor::contiguous(kv16.data(), DType::bf16, {1, 2, 5, 4});
  Tensor v = Tensor::contiguous(kv16.data(), DType::bf16, {1, 2, 5, 4});
  Tensor out = Tensor::contiguous(out16.data(), DType::bf16, {1, 2, 3, 4});
};

void expect_error(const std::function<void()>& call, std::initializer_list<const char*> parts) {
  try {
    call();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    for (const char* part : parts)
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

TEST(LowPrecisionValidate, MixedInputDtypesNameBothArgumentsAndDtypes) {
  Call c;
  Outputs o;
  o.out = c.out;
  c.k.dtype = DType::f16;
  expect_error([&] { forward(c.q, c.k, c.v, {}, o); },
               {"k.dtype = f16", "does not match q.dtype = bf16", "same dtype"});
  c.k.dtype = DType::bf16;
  c.v.dtype = DType::f32;
  expect_error([&] { forward(c.q, c.k, c.v, {}, o); }, {"v.dtype = f32", "q.dtype = bf16"});
  c.v.dtype = DType::bf16;
  c.q.dtype = DType::f64;
  expect_error([&] { forward(c.q, c.k, c.v, {}, o); },
               {"q.dtype", "expected f32, bf16 or f16", "got f64"});
  for (std::uint16_t x : c.out16) EXPECT_EQ(x, kSentinel16);
}

TEST(LowPrecisionValidate, OutMustBeTheInputDtypeOrF32) {
  Call c;
  Outputs o;
  o.out = c.out;
  o.out.dtype = DType::f16;
  expect_error([&] { forward(c.q, c.k, c.v, {}, o); },
               {"out.dtype", "expected bf16 (the dtype of q, k, v) or f32", "got f16"});
  for (std::uint16_t x : c.out16) EXPECT_EQ(x, kSentinel16);
  std::vector<std::uint16_t> lse16(6);
  o.out.dtype = DType::bf16;
  o.lse = Tensor::contiguous(lse16.data(), DType::bf16, {1, 2, 3});
  expect_error([&] { forward(c.q, c.k, c.v, {}, o); }, {"lse.dtype", "expected f32", "got bf16"});
  o.lse.reset();
  EXPECT_NO_THROW(forward(c.q, c.k, c.v, {}, o));
  o.out = Tensor::contiguous(c.out32.data(), DType::f32, {1, 2, 3, 4});
  EXPECT_NO_THROW(forward(c.q, c.k, c.v, {}, o));
  EXPECT_FLOAT_EQ(c.out32[0], 1.0f);
}

TEST(LowPrecisionValidate, BackwardDoutAndGradientDtypes) {
  Call c;
  std::vector<std::uint16_t> dout16(24, 0x3f80), dq16(24), dkv16(40), dv16(40);
  std::vector<float> lse(6, 0.0f);
  Outputs o;
  o.out = c.out;
  o.lse = Tensor::contiguous(lse.data(), DType::f32, {1, 2, 3});
  forward(c.q, c.k, c.v, {}, o);
  Tensor dout = Tensor::contiguous(dout16.data(), DType::f16, {1, 2, 3, 4});
  Grads g;
  g.dq = Tensor::contiguous(dq16.data(), DType::bf16, {1, 2, 3, 4});
  g.dk = Tensor::contiguous(dkv16.data(), DType::bf16, {1, 2, 5, 4});
  g.dv = Tensor::contiguous(dv16.data(), DType::bf16, {1, 2, 5, 4});
  expect_error([&] { backward(c.q, c.k, c.v, c.out, dout, *o.lse, {}, g); },
               {"dout.dtype = f16", "does not match q.dtype = bf16"});
  dout.dtype = DType::bf16;
  g.dk.dtype = DType::f16;
  expect_error([&] { backward(c.q, c.k, c.v, c.out, dout, *o.lse, {}, g); },
               {"grads.dk.dtype", "expected bf16", "or f32", "got f16"});
  for (std::uint16_t x : dq16) EXPECT_EQ(x, 0);
  g.dk.dtype = DType::bf16;
  EXPECT_NO_THROW(backward(c.q, c.k, c.v, c.out, dout, *o.lse, {}, g));
}

// ---- the widening path
// ---------------------------------------------------------------------------

// Whether forward() with these inputs runs the fp32 kernels on widened values (every ISA for f16;
// bf16 only where no bf16 dot-product kernel is chosen).
bool widens(DType dtype, Isa isa) { return dtype == DType::f16 || !uses_bf16_products(isa); }

TEST(LowPrecision, WidenedInputsGiveExactlyTheFp32ResultOnTheSameValues) {
  Rng rng(81);
  for (DType dtype : {DType::bf16, DType::f16})
    for (Isa isa : supported_isas()) {
      if (!widens(dtype, isa)) continue;
      Inputs in = random_inputs(rng, 2, 4, 2, 70, 90, 40, 33);
      in.base.causal = Causal::bottom_right;
      in.key_lengths = {90, 61};
      in.set_dtype(dtype);
      Inputs f32 = random_inputs(rng, 2, 4, 2, 70, 90, 40, 33);  // same shapes, values copied below
      f32.q.storage = in.q.storage, f32.k.storage = in.k.storage, f32.v.storage = in.v.storage;
      f32.base = in.base;
      f32.key_lengths = in.key_lengths;
      OutputBuffers expected = f32.make_outputs();
      f32.run(expected, isa, 2);
      OutputBuffers got = in.make_outputs();  // f32 out: fp32 on request
      in.run(got, isa, 2);
      EXPECT_TRUE(bitwise_equal(expected.out.dense(), got.out.dense()))
          << dtype_name(dtype) << " " << isa_name(isa);
      EXPECT_TRUE(bitwise_equal(expected.lse->dense(), got.lse->dense()));
      EXPECT_TRUE(bitwise_equal(expected.weights->dense(), got.weights->dense()));
      OutputLayouts narrow_out;
      narrow_out.out_dtype = dtype;
      OutputBuffers narrowed = in.make_outputs(narrow_out);
      in.run(narrowed, isa, 2);
      const std::vector<float> want = expected.out.dense();
      const std::vector<std::uint16_t> bits = narrowed.out16->dense();
      ASSERT_EQ(want.size(), bits.size());
      for (std::size_t n = 0; n < want.size(); ++n)
        ASSERT_EQ(bits[n], narrow(dtype, want[n]))
            << dtype_name(dtype) << " " << isa_name(isa) << " element " << n;
    }
}

TEST(LowPrecision, ResultsAreBitwiseIdenticalForAnyThreadCount) {
  Rng rng(83);
  for (DType dtype : {DType::bf16, DType::f16}) {
    Inputs in = random_inputs(rng, 2, 4, 2, 257, 300, 64, 64);
    in.base.causal = Causal::top_left;
    in.set_dtype(dtype);
    OutputLayouts layouts;
    layouts.want_weights = false;
    layouts.out_dtype = dtype;
    OutputBuffers first = in.make_outputs(layouts), again = in.make_outputs(layouts);
    for (Isa isa : supported_isas()) {
      in.run(first, isa, 1);
      for (int threads : {2, 3, 4, 7}) {
        in.run(again, isa, threads);
        EXPECT_EQ(first.out16->storage, again.out16->storage)
            << dtype_name(dtype) << " " << isa_name(isa) << " threads " << threads;
        EXPECT_TRUE(bitwise_equal(first.lse->dense(), again.lse->dense()));
      }
    }
  }
}

TEST(LowPrecision, MatchesFp64ReferenceWithMasksGqaAndStrides) {
  Rng rng(85);
  for (DType dtype : {DType::bf16, DType::f16})
    for (DType out_dtype : {dtype, DType::f32}) {
      const Layout q_layout = blhd_layout(), k_layout = fortran_layout(4), v_layout = blhd_layout();
      Inputs in{random_floats(rng, {2, 6, 97, 72}, q_layout, 2.0f),
                random_floats(rng, {2, 2, 130, 72}, k_layout, 2.0f),
                random_floats(rng, {2, 2, 130, 40}, v_layout),
                std::nullopt,
                std::nullopt,
                {},
                {},
                {},
                DType::f32,
                {},
                {},
                {}};
      in.base.causal = Causal::bottom_right;
      in.base.window = Window{50, -1};
      in.query_lengths = {97, 80};
      in.set_dtype(dtype, q_layout, k_layout, v_layout);
      OutputLayouts layouts;
      layouts.out_dtype = out_dtype;
      layouts.out = blhd_layout();
      OutputBuffers buffers = in.make_outputs(layouts);
      const References refs = in.references(buffers);
      for (Isa isa : supported_isas()) {
        in.run(buffers, isa, 2);
        EXPECT_TRUE(check_outputs(refs, buffers, in.len_k(), in.dim_v()))
            << dtype_name(dtype) << " out " << dtype_name(out_dtype) << " " << isa_name(isa);
      }
    }
}

// A NaN in the value of key j reaches the same rows as with f32 inputs of the same values (the
// rows that see j, and the kernel's row-group neighbours whose P for j is 0): the bf16 kernel's
// pair-wise products must zero the neighbour of a row group's first / last key (odd window edges),
// not multiply it by P = 0. Every other row is bitwise the clean result.
TEST(LowPrecision, NaNValueSpreadsNoFurtherThanWithF32Inputs) {
  Rng rng(89);
  for (DType dtype : {DType::bf16, DType::f16})
    for (std::int64_t nan_key : {100, 125, 190}) {
      Inputs in = random_inputs(rng, 1, 2, 1, 250, 250, 32, 32);
      in.base.window = Window{7, 5};  // row i sees keys [i − 7, i + 5]: odd group edges
      in.set_dtype(dtype);
      Inputs f32 = random_inputs(rng, 1, 2, 1, 250, 250, 32, 32);
      f32.q.storage = in.q.storage, f32.k.storage = in.k.storage, f32.v.storage = in.v.storage;
      f32.base = in.base;
      for (std::int64_t d = 0; d < 32; ++d) f32.v.at({0, 0, nan_key, d}) = std::nanf("");
      OutputLayouts layouts;
      layouts.want_weights = false;
      OutputBuffers clean = in.make_outputs(layouts), dirty = in.make_outputs(layouts),
                    wide = in.make_outputs(layouts);
      for (Isa isa : supported_isas()) {
        in.run(clean, isa, 1);
        f32.run(wide, isa, 1);
        for (std::int64_t d = 0; d < 32; ++d) in.v16->at({0, 0, nan_key, d}) = 0x7fc0;  // NaN
        in.run(dirty, isa, 1);
        for (std::int64_t d = 0; d < 32; ++d)
          in.v16->at({0, 0, nan_key, d}) = narrow(dtype, in.v.at({0, 0, nan_key, d}));
        int nan_rows = 0;
        for (std::int64_t h = 0; h < 2; ++h)
          for (std::int64_t i = 0; i < 250; ++i) {
            const bool expect_nan = std::isnan(wide.out.at({0, h, i, 0}));
            nan_rows += expect_nan;
            const bool sees = i >= nan_key - 5 && i <= nan_key + 7;
            if (sees) {
              ASSERT_TRUE(expect_nan) << "row " << i;
            }
            for (std::int64_t d = 0; d < 32; ++d) {
              const float a = clean.out.at({0, h, i, d}), b = dirty.out.at({0, h, i, d});
              if (expect_nan)
                ASSERT_TRUE(std::isnan(b))
                    << dtype_name(dtype) << " " << isa_name(isa) << " row " << i;
              else
                ASSERT_TRUE(same_bits(a, b)) << dtype_name(dtype) << " " << isa_name(isa) << " key "
                                             << nan_key << " row " << i << ": " << a << " vs " << b;
            }
          }
        EXPECT_LT(nan_rows, 2 * 40) << isa_name(isa);  // the rows that see it and a few neighbours
      }
    }
}

// Keys past a batch entry's key length are padding: NaN in their keys and values reaches no output
// with 16-bit inputs either. Odd lengths put the last real key and the first padding key in one
// bf16 pair of the packed values (packed two keys at a time); the outputs must be bitwise those of
// clean padding.
TEST(LowPrecision, NaNInPaddedKeysReachesNoOutput) {
  Rng rng(93);
  for (DType dtype : {DType::bf16, DType::f16}) {
    Inputs in = random_inputs(rng, 3, 2, 1, 40, 300, 64, 48);
    in.key_lengths = {37, 300, 201};
    in.set_dtype(dtype);
    OutputLayouts layouts;
    layouts.want_weights = false;
    OutputBuffers clean = in.make_outputs(layouts), dirty = in.make_outputs(layouts);
    for (Isa isa : supported_isas()) {
      in.run(clean, isa, 2);
      for (std::int64_t b = 0; b < 3; ++b)
        for (std::int64_t j = in.key_lengths[static_cast<std::size_t>(b)]; j < 300; ++j) {
          for (std::int64_t d = 0; d < 64; ++d) in.k16->at({b, 0, j, d}) = 0x7fc0;
          for (std::int64_t d = 0; d < 48; ++d) in.v16->at({b, 0, j, d}) = 0x7fc0;
        }
      in.run(dirty, isa, 2);
      EXPECT_TRUE(same_output_bits(clean, dirty)) << dtype_name(dtype) << " " << isa_name(isa);
      for (std::int64_t b = 0; b < 3; ++b)
        for (std::int64_t j = in.key_lengths[static_cast<std::size_t>(b)]; j < 300; ++j) {
          for (std::int64_t d = 0; d < 64; ++d)
            in.k16->at({b, 0, j, d}) = narrow(dtype, in.k.at({b, 0, j, d}));
          for (std::int64_t d = 0; d < 48; ++d)
            in.v16->at({b, 0, j, d}) = narrow(dtype, in.v.at({b, 0, j, d}));
        }
    }
  }
}

// ---- backward
// ------------------------------------------------------------------------------------

// With a softcap and attention sinks too (the widened call hands options and dsinks on unchanged).
TEST(LowPrecisionBackward, EqualsTheFp32BackwardOnTheWidenedValues) {
  Rng rng(87);
  for (DType dtype : {DType::bf16, DType::f16})
    for (bool capped_with_sinks : {false, true}) {
      Inputs in = random_inputs(rng, 1, 4, 2, 45, 60, 24, 20);
      in.base.causal = Causal::top_left;
      std::vector<float> sinks = {0.5f, 3.0f, -kInf, -1.25f}, dsinks(4), dsinks_b(4);
      if (capped_with_sinks) {
        in.base.softcap = 2.0f;
        in.sinks = floats({4}, sinks);
      }
      in.set_dtype(dtype);
      Strided<float> dout = random_floats(rng, {1, 4, 45, 20}, {});
      const Strided<std::uint16_t> dout16 = to_16bit(dout, dtype, {});
      OutputLayouts layouts;
      layouts.out_dtype = dtype;
      OutputBuffers fwd = in.make_outputs(layouts);
      in.run(fwd, Isa::automatic, 2);
      // fp32 call on the same values (out widened from the 16-bit forward's out).
      std::vector<float> out32;
      for (std::uint16_t bits : fwd.out16->storage) out32.push_back(widen(dtype, bits));
      const Tensor out_f32 = Tensor::contiguous(out32.data(), DType::f32, {1, 4, 45, 20});
      const auto with_dsinks = [&](Grads g, std::vector<float>& ds) {
        if (capped_with_sinks) g.dsinks = Tensor::contiguous(ds.data(), DType::f32, {4});
        return g;
      };
      std::vector<float> dq(4 * 45 * 24), dk(2 * 60 * 24), dv(2 * 60 * 20);
      const Grads g32 = with_dsinks(
          Grads{Tensor::contiguous(dq.data(), DType::f32, {1, 4, 45, 24}),
                Tensor::contiguous(dk.data(), DType::f32, {1, 2, 60, 24}),
                Tensor::contiguous(dv.data(), DType::f32, {1, 2, 60, 20}), std::nullopt, nullptr, {}},
          dsinks);
      Options o = in.options();
      backward(in.q.tensor, in.k.tensor, in.v.tensor, out_f32, dout.tensor, fwd.lse->tensor, o, g32);
      // 16-bit call, gradients in f32 (exactly the fp32 call's) and in the dtype (its rounding).
      std::vector<float> dq_b(dq.size()), dk_b(dk.size()), dv_b(dv.size());
      const Grads wide = with_dsinks(
          Grads{Tensor::contiguous(dq_b.data(), DType::f32, {1, 4, 45, 24}),
                Tensor::contiguous(dk_b.data(), DType::f32, {1, 2, 60, 24}),
                Tensor::contiguous(dv_b.data(), DType::f32, {1, 2, 60, 20}), std::nullopt, nullptr,
                {}},
          dsinks_b);
      backward(in.q_tensor(), in.k_tensor(), in.v_tensor(), fwd.out16->tensor, dout16.tensor,
               fwd.lse->tensor, o, wide);
      const std::string what = std::string(dtype_name(dtype)) + (capped_with_sinks ? " softcap+sinks" : "");
      EXPECT_TRUE(bitwise_equal(dq, dq_b)) << what;
      EXPECT_TRUE(bitwise_equal(dk, dk_b)) << what;
      EXPECT_TRUE(bitwise_equal(dv, dv_b)) << what;
      EXPECT_TRUE(bitwise_equal(dsinks, dsinks_b)) << what;
      if (capped_with_sinks) {
        EXPECT_NE(dsinks[0], 0.0f) << what;  // heads with a sink get a gradient
        EXPECT_EQ(dsinks[2], 0.0f) << what;  // −inf: no sink, no gradient
      }
      std::vector<std::uint16_t> dq16(dq.size()), dk16(dk.size()), dv16(dv.size());
      const Grads narrow_grads = with_dsinks(
          Grads{Tensor::contiguous(dq16.data(), dtype, {1, 4, 45, 24}),
                Tensor::contiguous(dk16.data(), dtype, {1, 2, 60, 24}),
                Tensor::contiguous(dv16.data(), dtype, {1, 2, 60, 20}), std::nullopt, nullptr, {}},
          dsinks_b);
      backward(in.q_tensor(), in.k_tensor(), in.v_tensor(), fwd.out16->tensor, dout16.tensor,
               fwd.lse->tensor, o, narrow_grads);
      for (std::size_t n = 0; n < dq.size(); ++n) ASSERT_EQ(dq16[n], narrow(dtype, dq[n])) << n;
      for (std::size_t n = 0; n < dk.size(); ++n) ASSERT_EQ(dk16[n], narrow(dtype, dk[n])) << n;
      for (std::size_t n = 0; n < dv.size(); ++n) ASSERT_EQ(dv16[n], narrow(dtype, dv[n])) << n;
      EXPECT_TRUE(bitwise_equal(dsinks, dsinks_b)) << what;
    }
}

}  // namespace
}  // namespace sdpa::test
