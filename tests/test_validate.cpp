// Every error path of validate_forward: each throws sdpa::Error whose message names the argument
// and gives the expected and the given value. sdpa::forward must report the same error.
#include <gtest/gtest.h>

#include <cstdlib>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace sdpa::test {
namespace {

// A valid call: q [2, 4, 5, 8], k [2, 2, 7, 8], v [2, 2, 7, 6], out [2, 4, 5, 6], lse [2, 4, 5],
// weights [2, 4, 5, 7]. Each test breaks one thing.
class Validate : public ::testing::Test {
 protected:
  static constexpr std::int64_t B = 2, Hq = 4, Hkv = 2, Lq = 5, Lk = 7, Dk = 8, Dv = 6;
  std::vector<float> q_data = std::vector<float>(B * Hq * Lq * Dk, 0.5f);
  std::vector<float> k_data = std::vector<float>(B * Hkv * Lk * Dk, 0.25f);
  std::vector<float> v_data = std::vector<float>(B * Hkv * Lk * Dv, 1.0f);
  std::vector<float> out_data = std::vector<float>(B * Hq * Lq * Dv);
  std::vector<float> lse_data = std::vector<float>(B * Hq * Lq);
  std::vector<float> weights_data = std::vector<float>(B * Hq * Lq * Lk);
  std::vector<std::uint8_t> mask_data = std::vector<std::uint8_t>(B * Hq * Lq * Lk, 1);
  std::vector<float> bias_data = std::vector<float>(B * Hq * Lq * Lk, 0.0f);

  Tensor q = Tensor::contiguous(q_data.data(), DType::f32, {B, Hq, Lq, Dk});
  Tensor k = Tensor::contiguous(k_data.data(), DType::f32, {B, Hkv, Lk, Dk});
  Tensor v = Tensor::contiguous(v_data.data(), DType::f32, {B, Hkv, Lk, Dv});
  Options options;
  Outputs outputs{Tensor::contiguous(out_data.data(), DType::f32, {B, Hq, Lq, Dv}),
                  Tensor::contiguous(lse_data.data(), DType::f32, {B, Hq, Lq}),
                  Tensor::contiguous(weights_data.data(), DType::f32, {B, Hq, Lq, Lk}),
                  std::nullopt};

  Tensor mask(std::initializer_list<std::int64_t> shape, DType dtype = DType::boolean) {
    return Tensor::contiguous(mask_data.data(), dtype, shape);
  }
  Tensor bias(std::initializer_list<std::int64_t> shape, DType dtype = DType::f32) {
    return Tensor::contiguous(bias_data.data(), dtype, shape);
  }

  // Expects validate_forward and forward to throw sdpa::Error containing every one of `parts`.
  void expect_error(std::initializer_list<std::string> parts) {
    SCOPED_TRACE(::testing::Message() << "expected an error mentioning: " << *parts.begin());
    const std::function<void()> calls[] = {
        [&] { validate_forward(q, k, v, options, outputs); },
        [&] { forward(q, k, v, options, outputs); },
    };
    for (const auto& call : calls) {
      try {
        call();
        ADD_FAILURE() << "no error thrown";
      } catch (const Error& e) {
        const std::string message = e.what();
        for (const std::string& part : parts)
          EXPECT_NE(message.find(part), std::string::npos)
              << "message \"" << message << "\" lacks \"" << part << "\"";
      } catch (const std::exception& e) {
        ADD_FAILURE() << "threw a non-sdpa::Error: " << e.what();
      }
    }
  }
};

TEST_F(Validate, ValidCallPasses) {
  EXPECT_NO_THROW(validate_forward(q, k, v, options, outputs));
  options.mask = mask({Lq, Lk});
  options.bias = bias({B, 1, 1, Lk});
  EXPECT_NO_THROW(validate_forward(q, k, v, options, outputs));
}

TEST_F(Validate, ErrorIsAnInvalidArgument) {
  q.rank = 3;
  EXPECT_THROW(validate_forward(q, k, v, options, outputs), std::invalid_argument);
}

// ---- q, k, v -------------------------------------------------------------------------------------

TEST_F(Validate, InputRankMismatchNamesTensorAndBothRanks) {
  q.rank = 3;
  expect_error({"q.rank", "expected 4", "got 3"});
  q.rank = 4;
  k.rank = 2;
  expect_error({"k.rank", "expected 4", "got 2"});
  k.rank = 4;
  v.rank = 5;
  expect_error({"v.rank", "expected 4", "got 5"});
}

TEST_F(Validate, InputDtypeMismatchNamesTensorAndBothDtypes) {
  q.dtype = DType::f64;
  expect_error({"q.dtype", "expected f32", "got f64"});
  q.dtype = DType::f32;
  k.dtype = DType::bf16;
  expect_error({"k.dtype = bf16", "does not match q.dtype = f32", "same dtype"});
  k.dtype = DType::f32;
  v.dtype = DType::boolean;
  expect_error({"v.dtype = bool", "does not match q.dtype = f32"});
}

TEST_F(Validate, NegativeExtentIsRejected) {
  q.shape[2] = -1;
  expect_error({"q.shape[2] = -1", ">= 0"});
}

TEST_F(Validate, BatchMismatchNamesBothBatchSizes) {
  k.shape[0] = 3;
  expect_error({"k.shape[0] (B) = 3", "q.shape[0] = 2"});
  k.shape[0] = 2;
  v.shape[0] = 1;
  expect_error({"v.shape[0] (B) = 1", "q.shape[0] = 2"});
}

TEST_F(Validate, KeyDimMismatchNamesBothDims) {
  k.shape[3] = 16;
  expect_error({"k.shape[3] (Dk) = 16", "q.shape[3] = 8"});
}

TEST_F(Validate, ValueHeadsMismatchNamesBothHeadCounts) {
  v.shape[1] = 1;
  expect_error({"v.shape[1] (Hkv) = 1", "k.shape[1] = 2"});
}

TEST_F(Validate, ValueLengthMismatchNamesBothLengths) {
  v.shape[2] = 6;
  expect_error({"v.shape[2] (Lk) = 6", "k.shape[2] = 7"});
}

TEST_F(Validate, ZeroHeadDimIsRejected) {
  q.shape[3] = 0;
  k.shape[3] = 0;
  expect_error({"q.shape[3] (Dk) = 0", ">= 1"});
  q.shape[3] = k.shape[3] = Dk;
  v.shape[3] = 0;
  outputs.out.shape[3] = 0;
  expect_error({"v.shape[3] (Dv) = 0", ">= 1"});
}

TEST_F(Validate, ZeroKeyValueHeadsIsRejected) {
  k.shape[1] = 0;
  v.shape[1] = 0;
  expect_error({"k.shape[1] (Hkv) = 0", ">= 1"});
}

TEST_F(Validate, QueryHeadsNotAMultipleOfKeyValueHeadsNamesBoth) {
  k.shape[1] = v.shape[1] = 3;  // Hq = 4 is not a multiple of 3
  k.stride = Tensor::contiguous(nullptr, DType::f32, {B, 3, Lk, Dk}).stride;
  v.stride = Tensor::contiguous(nullptr, DType::f32, {B, 3, Lk, Dv}).stride;
  k_data.resize(B * 3 * Lk * Dk);
  v_data.resize(B * 3 * Lk * Dv);
  k.data = k_data.data();
  v.data = v_data.data();
  expect_error({"q.shape[1] (Hq) = 4", "multiple of k.shape[1] (Hkv) = 3"});
}

TEST_F(Validate, NullInputDataIsRejected) {
  q.data = nullptr;
  expect_error({"q.data", "null"});
  q.data = q_data.data();
  k.data = nullptr;
  expect_error({"k.data", "null"});
  k.data = k_data.data();
  v.data = nullptr;
  expect_error({"v.data", "null"});
}

TEST_F(Validate, NullDataOfAnEmptyTensorIsAccepted) {
  q.shape[2] = 0;
  q.data = nullptr;
  outputs.out.shape[2] = 0;
  outputs.out.data = nullptr;
  outputs.lse.reset();
  outputs.weights.reset();
  EXPECT_NO_THROW(validate_forward(q, k, v, options, outputs));
}

// ---- options -----------------------------------------------------------------------------------

TEST_F(Validate, NonFiniteScaleIsRejected) {
  options.scale = std::numeric_limits<float>::infinity();
  expect_error({"options.scale = inf", "finite"});
  options.scale = std::numeric_limits<float>::quiet_NaN();
  expect_error({"options.scale = nan", "finite"});
}

TEST_F(Validate, NegativeOrNonFiniteSoftcapIsRejected) {
  for (float bad : {-1.0f, -0.0001f, std::numeric_limits<float>::infinity(),
                    std::numeric_limits<float>::quiet_NaN()}) {
    options.softcap = bad;
    expect_error({"options.softcap", "finite number >= 0"});
  }
  options.softcap = 0.0f;
  EXPECT_NO_THROW(validate_forward(q, k, v, options, outputs));
  options.softcap = 30.0f;
  EXPECT_NO_THROW(validate_forward(q, k, v, options, outputs));
}

TEST_F(Validate, SinksWithWrongDtypeRankOrExtentAreRejected) {
  std::vector<float> sinks_data(2 * Hq, 0.0f);
  std::vector<double> sinks64(Hq, 0.0);
  options.sinks = Tensor::contiguous(sinks64.data(), DType::f64, {Hq});
  expect_error({"options.sinks.dtype", "f32", "f64"});
  options.sinks = Tensor::contiguous(sinks_data.data(), DType::f32, {1, Hq});
  expect_error({"options.sinks.rank", "expected 1", "[Hq]", "got 2"});
  options.sinks = Tensor::contiguous(sinks_data.data(), DType::f32, {Hq + 1});
  expect_error({"options.sinks.shape[0] = 5", "q.shape[1] (Hq) = 4"});
  options.sinks = Tensor::contiguous(nullptr, DType::f32, {Hq});
  expect_error({"options.sinks.data", "null"});
  options.sinks = Tensor::strided(sinks_data.data(), DType::f32, {Hq}, {2});  // any stride
  EXPECT_NO_THROW(validate_forward(q, k, v, options, outputs));
}

TEST_F(Validate, SinkThatIsNaNOrPlusInfinityIsRejectedMinusInfinityIsNot) {
  std::vector<float> sinks_data(Hq, 1.5f);
  options.sinks = Tensor::contiguous(sinks_data.data(), DType::f32, {Hq});
  sinks_data[2] = std::numeric_limits<float>::quiet_NaN();
  expect_error({"options.sinks[2] = nan", "finite number or -inf"});
  sinks_data[2] = std::numeric_limits<float>::infinity();
  expect_error({"options.sinks[2] = inf", "finite number or -inf"});
  sinks_data[2] = -std::numeric_limits<float>::infinity();
  EXPECT_NO_THROW(validate_forward(q, k, v, options, outputs));
}

TEST_F(Validate, WindowBelowMinusOneIsRejected) {
  options.window = Window{-2, 0};
  expect_error({"options.window.left = -2", "-1"});
  options.window = Window{3, -5};
  expect_error({"options.window.right = -5", "-1"});
}

TEST_F(Validate, NegativeThreadsIsRejected) {
  options.threads = -1;
  expect_error({"options.threads = -1", ">= 0"});
}

TEST_F(Validate, UnsupportedIsaIsRejected) {
  if (best_isa() == Isa::avx512) GTEST_SKIP() << "this CPU supports every ISA";
  options.isa = Isa::avx512;
  expect_error({"options.isa = avx512", isa_name(best_isa())});
}

TEST_F(Validate, UnknownIsaInEnvironmentIsRejected) {
  ::setenv("SDPA_ISA", "sse9", 1);
  expect_error({"SDPA_ISA = 'sse9'", "scalar, avx2 or avx512"});
  ::unsetenv("SDPA_ISA");
}

TEST_F(Validate, MaskWithWrongDtypeNamesBothDtypes) {
  options.mask = mask({Lq, Lk}, DType::f32);
  expect_error({"options.mask.dtype", "expected bool", "got f32"});
}

TEST_F(Validate, MaskWithBadRankIsRejected) {
  Tensor m = mask({Lk});
  m.rank = 0;
  options.mask = m;
  expect_error({"options.mask.rank", "got 0"});
  m.rank = 5;
  options.mask = m;
  expect_error({"options.mask.rank", "got 5"});
}

TEST_F(Validate, MaskThatDoesNotBroadcastNamesDimensionAndBothSizes) {
  options.mask = mask({B, 3, Lq, Lk});
  expect_error({"options.mask.shape[1] = 3", "Hq = 4", "or 1"});
  options.mask = mask({Lq, Lk + 1});
  expect_error({"options.mask.shape[1] = 8", "Lk = 7"});
  options.mask = mask({3, 1, 1, 1});
  expect_error({"options.mask.shape[0] = 3", "B = 2"});
  options.mask = mask({Lq + 1, 1});
  expect_error({"options.mask.shape[0] = 6", "Lq = 5"});
}

TEST_F(Validate, MaskWithNegativeExtentOrNullDataIsRejected) {
  options.mask = mask({-2, Lk});
  expect_error({"options.mask.shape[0] = -2", ">= 0"});
  Tensor m = mask({Lq, Lk});
  m.data = nullptr;
  options.mask = m;
  expect_error({"options.mask.data", "null"});
}

TEST_F(Validate, BiasWithWrongDtypeNamesBothDtypes) {
  options.bias = bias({Lq, Lk}, DType::f64);
  expect_error({"options.bias.dtype", "expected f32", "got f64"});
  options.bias = bias({Lq, Lk}, DType::boolean);
  expect_error({"options.bias.dtype", "expected f32", "got bool"});
}

TEST_F(Validate, BiasThatDoesNotBroadcastNamesDimensionAndBothSizes) {
  options.bias = bias({B, Hq, 2, Lk});
  expect_error({"options.bias.shape[2] = 2", "Lq = 5", "or 1"});
  options.bias = bias({Lk - 1});
  expect_error({"options.bias.shape[0] = 6", "Lk = 7"});
  Tensor b = bias({1, 1, 1, Lk});
  b.rank = 5;
  options.bias = b;
  expect_error({"options.bias.rank", "got 5"});
}

TEST_F(Validate, KeyLengthsOfWrongSizeNamesBothSizes) {
  const std::vector<std::int32_t> lengths{1, 2, 3};
  options.key_lengths = lengths;
  expect_error({"options.key_lengths.size()", "B = 2", "got 3"});
}

TEST_F(Validate, KeyLengthOutOfRangeNamesEntryValueAndBound) {
  const std::vector<std::int32_t> too_long{7, 8};
  options.key_lengths = too_long;
  expect_error({"options.key_lengths[1] = 8", "Lk = 7"});
  const std::vector<std::int32_t> negative{-1, 3};
  options.key_lengths = negative;
  expect_error({"options.key_lengths[0] = -1", "0 <="});
}

TEST_F(Validate, QueryLengthsOfWrongSizeOrRangeAreRejected) {
  const std::vector<std::int32_t> one{1};
  options.query_lengths = one;
  expect_error({"options.query_lengths.size()", "B = 2", "got 1"});
  const std::vector<std::int32_t> too_long{6, 1};
  options.query_lengths = too_long;
  expect_error({"options.query_lengths[0] = 6", "Lq = 5"});
}

// ---- outputs -------------------------------------------------------------------------------------

TEST_F(Validate, OutWithWrongRankOrDtypeIsRejected) {
  outputs.out.rank = 3;
  expect_error({"out.rank", "expected 4", "got 3"});
  outputs.out.rank = 4;
  outputs.out.dtype = DType::f64;
  expect_error({"out.dtype", "expected f32", "got f64"});
}

TEST_F(Validate, OutShapeMismatchNamesDimensionAndBothSizes) {
  outputs.out.shape[0] = 1;
  expect_error({"out.shape[0] (B) = 1", "q.shape[0] = 2"});
  outputs.out.shape[0] = B;
  outputs.out.shape[1] = 2;
  expect_error({"out.shape[1] (Hq) = 2", "q.shape[1] = 4"});
  outputs.out.shape[1] = Hq;
  outputs.out.shape[2] = 7;
  expect_error({"out.shape[2] (Lq) = 7", "q.shape[2] = 5"});
  outputs.out.shape[2] = Lq;
  outputs.out.shape[3] = 8;
  expect_error({"out.shape[3] (Dv) = 8", "v.shape[3] = 6"});
}

TEST_F(Validate, ZeroStrideOnAnOutputIsRejected) {
  outputs.out.stride[2] = 0;
  expect_error({"out.stride[2] = 0", "size 5", "cannot broadcast"});
  outputs.out.stride[2] = Dv;
  outputs.lse->stride[1] = 0;
  expect_error({"lse.stride[1] = 0", "size 4"});
  outputs.lse->stride[1] = Lq;
  outputs.weights->stride[3] = 0;
  expect_error({"weights.stride[3] = 0", "size 7"});
}

TEST_F(Validate, ZeroStrideOnASizeOneOutputDimensionIsAccepted) {
  q.shape[2] = 1;
  outputs.out.shape[2] = 1;
  outputs.out.stride[2] = 0;
  outputs.lse.reset();
  outputs.weights.reset();
  EXPECT_NO_THROW(validate_forward(q, k, v, options, outputs));
}

TEST_F(Validate, ZeroStridesOnAnEmptyOutputAreAccepted) {
  // NumPy gives an array with a zero-size dimension zero strides; nothing is written to it.
  q.shape[2] = 0;
  outputs.out.shape[2] = 0;
  outputs.out.stride = {0, 0, 0, 0};
  outputs.lse.reset();
  outputs.weights.reset();
  EXPECT_NO_THROW(validate_forward(q, k, v, options, outputs));
}

TEST_F(Validate, NullOutputDataIsRejected) {
  outputs.out.data = nullptr;
  expect_error({"out.data", "null"});
  outputs.out.data = out_data.data();
  outputs.lse->data = nullptr;
  expect_error({"lse.data", "null"});
  outputs.lse->data = lse_data.data();
  outputs.weights->data = nullptr;
  expect_error({"weights.data", "null"});
}

TEST_F(Validate, LseWithWrongRankDtypeOrShapeIsRejected) {
  outputs.lse->rank = 4;
  expect_error({"lse.rank", "expected 3", "got 4"});
  outputs.lse->rank = 3;
  outputs.lse->dtype = DType::f16;
  expect_error({"lse.dtype", "expected f32", "got f16"});
  outputs.lse->dtype = DType::f32;
  outputs.lse->shape[2] = 4;
  expect_error({"lse.shape[2] (Lq) = 4", "q.shape[2] = 5"});
  outputs.lse->shape[2] = Lq;
  outputs.lse->shape[1] = 2;
  expect_error({"lse.shape[1] (Hq) = 2", "q.shape[1] = 4"});
  outputs.lse->shape[1] = Hq;
  outputs.lse->shape[0] = 3;
  expect_error({"lse.shape[0] (B) = 3", "q.shape[0] = 2"});
}

TEST_F(Validate, WeightsWithWrongRankDtypeOrShapeIsRejected) {
  outputs.weights->rank = 3;
  expect_error({"weights.rank", "expected 4", "got 3"});
  outputs.weights->rank = 4;
  outputs.weights->dtype = DType::i32;
  expect_error({"weights.dtype", "expected f32", "got i32"});
  outputs.weights->dtype = DType::f32;
  outputs.weights->shape[3] = 5;
  expect_error({"weights.shape[3] (Lk) = 5", "k.shape[2] = 7"});
  outputs.weights->shape[3] = Lk;
  outputs.weights->shape[2] = 1;
  expect_error({"weights.shape[2] (Lq) = 1", "q.shape[2] = 5"});
}

// ---- tensor constructors -------------------------------------------------------------------------

TEST(TensorViews, StridedWithMismatchedStrideCountNamesBothCounts) {
  try {
    Tensor::strided(nullptr, DType::f32, {1, 2, 3, 4}, {24, 12, 4});
    ADD_FAILURE() << "no error thrown";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("4 extents but 3 strides"), std::string::npos) << e.what();
  }
}

TEST(TensorViews, RankAboveFourIsRejected) {
  EXPECT_THROW(Tensor::contiguous(nullptr, DType::f32, {1, 2, 3, 4, 5}), Error);
  EXPECT_THROW(Tensor::strided(nullptr, DType::f32, {1, 2, 3, 4, 5}, {1, 1, 1, 1, 1}), Error);
}

TEST(TensorViews, ContiguousStridesAreRowMajor) {
  const Tensor t = Tensor::contiguous(nullptr, DType::f32, {2, 3, 4, 5});
  EXPECT_EQ(t.rank, 4);
  EXPECT_EQ(t.stride, (std::array<std::int64_t, 4>{60, 20, 5, 1}));
  EXPECT_EQ(t.numel(), 120);
}

}  // namespace
}  // namespace sdpa::test
