// Resource limits: options.workspace_limit (honoured, or refused with the bytes needed and nothing
// written), scratch memory that cannot be allocated (sdpa::OutOfMemory naming the bytes, nothing
// written), and views too large for exact 64-bit index arithmetic (rejected by validation).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <string>
#include <vector>

#include "sdpa/kv_cache.hpp"
#include "test_support.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define SDPA_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SDPA_TEST_ASAN 1
#endif
#endif

namespace sdpa::test {
namespace {

// A view of `shape` that reads one float for every index (all strides 0): as large as we like,
// in four bytes of memory.
Tensor broadcast_scalar(float* value, std::initializer_list<std::int64_t> shape) {
  Tensor t;
  t.data = value;
  t.rank = static_cast<int>(shape.size());
  std::copy(shape.begin(), shape.end(), t.shape.begin());
  return t;  // strides stay 0
}

::testing::AssertionResult all_sentinel(const Strided<float>& t) {
  for (std::size_t n = 0; n < t.storage.size(); ++n)
    if (!is_sentinel(t.storage[n]))
      return ::testing::AssertionFailure() << "element " << n << " was written: " << t.storage[n];
  return ::testing::AssertionSuccess();
}

// Runs forward and returns the sdpa::Error's message ("" when nothing was thrown).
std::string forward_error(const Tensor& q, const Tensor& k, const Tensor& v, const Options& options,
                          const Outputs& outputs) {
  try {
    forward(q, k, v, options, outputs);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// ---- workspace_limit ---------------------------------------------------------------------------

TEST(ResourceLimits, TooSmallWorkspaceLimitNamesTheBytesNeededAndWritesNothing) {
  Rng rng(201);
  Inputs in = random_inputs(rng, 2, 2, 1, 100, 300, 64, 64);
  OutputBuffers o = in.make_outputs();
  for (Isa isa : supported_isas()) {
    Options options = in.options();
    options.isa = isa;
    options.workspace_limit = 1;
    const std::string message =
        forward_error(in.q.tensor, in.k.tensor, in.v.tensor, options, o.outputs());
    EXPECT_NE(message.find("options.workspace_limit = 1 bytes is too small"), std::string::npos)
        << message;
    EXPECT_NE(message.find("needs at least"), std::string::npos) << message;
    EXPECT_TRUE(all_sentinel(o.out)) << isa_name(isa);
    EXPECT_TRUE(all_sentinel(*o.lse)) << isa_name(isa);
    EXPECT_TRUE(all_sentinel(*o.weights)) << isa_name(isa);
  }
}

TEST(ResourceLimits, ForwardWorkspaceLimitIsHonouredAndGivesTheSameBitsInRounds) {
  // 8 (batch, kv-head) groups; half of the unlimited workspace packs them a few at a time.
  Rng rng(202);
  Inputs in = random_inputs(rng, 4, 4, 2, 70, 200, 32, 48);
  in.base.causal = Causal::bottom_right;
  OutputBuffers unlimited = in.make_outputs(), limited = in.make_outputs();
  for (Isa isa : supported_isas()) {
    const RunInfo full = in.run(unlimited, isa, 2);
    Options options = in.options();
    options.isa = isa;
    options.threads = 2;
    options.workspace_limit = full.workspace_bytes / 2;
    limited.reset();
    const RunInfo info = forward(in.q.tensor, in.k.tensor, in.v.tensor, options, limited.outputs());
    EXPECT_LE(info.workspace_bytes, options.workspace_limit) << isa_name(isa);
    EXPECT_TRUE(same_output_bits(unlimited, limited)) << isa_name(isa);
  }
}

// ---- scratch memory that cannot be had ---------------------------------------------------------

// ASan aborts on a request this large unless told to return null (scripts/test-sanitizers does).
bool huge_allocations_fail_cleanly() {
#ifdef SDPA_TEST_ASAN
  const char* options = std::getenv("ASAN_OPTIONS");
  return options != nullptr && std::strstr(options, "allocator_may_return_null=1") != nullptr;
#else
  return true;
#endif
}

TEST(ResourceLimits, ScratchMemoryThatCannotBeAllocatedThrowsOutOfMemoryNamingTheBytes) {
  if (!huge_allocations_fail_cleanly()) GTEST_SKIP() << "ASan without allocator_may_return_null=1";
  // 2^40 keys broadcast from one float: packing them needs ~70 TB of scratch.
  float one = 1.0f;
  const Tensor q = broadcast_scalar(&one, {1, 1, 1, 1});
  const Tensor kv = broadcast_scalar(&one, {1, 1, std::int64_t{1} << 40, 1});
  Strided<float> out(DType::f32, {1, 1, 1, 1});
  out.storage[0] = sentinel();
  Outputs outputs;
  outputs.out = out.tensor;
  try {
    forward(q, kv, kv, Options{}, outputs);
    ADD_FAILURE() << "no error thrown";
  } catch (const OutOfMemory& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("cannot allocate"), std::string::npos) << message;
    EXPECT_NE(message.find(" bytes ("), std::string::npos) << message;
    EXPECT_NE(message.find("GiB"), std::string::npos) << message;
  }
  EXPECT_TRUE(is_sentinel(out.storage[0]));
}

TEST(ResourceLimits, KvCacheTooLargeForMemoryThrowsOutOfMemoryNamingTheBytes) {
  if (!huge_allocations_fail_cleanly()) GTEST_SKIP() << "ASan without allocator_may_return_null=1";
  // 2^40 pages of 16 tokens x 8 heads x 128 floats: 2^56 bytes of keys.
  const KvCacheConfig too_big{8, 128, 128, 16, std::int64_t{1} << 40, KvStorage::f32};
  try {
    KvCache cache(too_big);
    ADD_FAILURE() << "no error thrown";
  } catch (const OutOfMemory& e) {
    EXPECT_NE(std::string(e.what()).find("cannot allocate 72057594037927936 bytes for the KV "
                                         "cache's keys"),
              std::string::npos)
        << e.what();
  }
  // Past 2^64 bytes: named as such, not an overflowed (small) size.
  const KvCacheConfig overflowing{8, 128, 128, 16, std::int64_t{1} << 58, KvStorage::f32};
  try {
    KvCache cache(overflowing);
    ADD_FAILURE() << "no error thrown";
  } catch (const OutOfMemory& e) {
    EXPECT_NE(std::string(e.what()).find("more than 2^64 bytes"), std::string::npos) << e.what();
  }
}

TEST(ResourceLimits, OutOfMemoryIsAStdBadAlloc) {
  const OutOfMemory error("cannot allocate 12 bytes");
  const std::bad_alloc& as_bad_alloc = error;
  EXPECT_STREQ(as_bad_alloc.what(), "cannot allocate 12 bytes");
}

// ---- views too large for exact index arithmetic
// --------------------------------------------------

TEST(ResourceLimits, ViewWithMoreThan2To52ElementsIsRejected) {
  float one = 1.0f, out_value = sentinel();
  const Tensor q = broadcast_scalar(&one, {1, 1, 1, 1});
  Outputs outputs;
  outputs.out = Tensor::contiguous(&out_value, DType::f32, {1, 1, 1, 1});
  const Tensor k = broadcast_scalar(&one, {1, 1, (std::int64_t{1} << 52) + 1, 1});
  const std::string message = forward_error(q, k, k, Options{}, outputs);
  EXPECT_NE(message.find("k.shape: more than 2^52 elements"), std::string::npos) << message;
  // A product that overflows int64 altogether: [1, 1, 2^40, 2^40].
  const Tensor wide_q = broadcast_scalar(&one, {1, 1, 1, std::int64_t{1} << 40});
  const Tensor wide_k =
      broadcast_scalar(&one, {1, 1, std::int64_t{1} << 40, std::int64_t{1} << 40});
  const Tensor wide_v = broadcast_scalar(&one, {1, 1, std::int64_t{1} << 40, 1});
  const std::string overflow = forward_error(wide_q, wide_k, wide_v, Options{}, outputs);
  EXPECT_NE(overflow.find("k.shape: more than 2^52 elements"), std::string::npos) << overflow;
  EXPECT_TRUE(is_sentinel(out_value));
}

TEST(ResourceLimits, ContiguousViewWhoseStridesOverflowIsRejected) {
  float one = 1.0f;
  const std::int64_t big = std::int64_t{1} << 40;
  EXPECT_THROW(Tensor::contiguous(&one, DType::f32, {1, 1, big, big}), Error);
  EXPECT_EQ(broadcast_scalar(&one, {big, big, big}).numel(),
            std::numeric_limits<std::int64_t>::max());
}

TEST(ResourceLimits, StridesReachingBeyond2To62ElementsAreRejected) {
  float values[4] = {1, 2, 3, 4}, out_values[3] = {sentinel(), sentinel(), sentinel()};
  Tensor q = Tensor::contiguous(values, DType::f32, {1, 1, 3, 1});
  q.stride[2] = std::int64_t{1} << 62;  // row 2 lies 2^63 elements away: not addressable
  const Tensor kv = Tensor::contiguous(values, DType::f32, {1, 1, 4, 1});
  Outputs outputs;
  outputs.out = Tensor::contiguous(out_values, DType::f32, {1, 1, 3, 1});
  const std::string message = forward_error(q, kv, kv, Options{}, outputs);
  EXPECT_NE(message.find("q.stride"), std::string::npos) << message;
  EXPECT_NE(message.find("2^62"), std::string::npos) << message;
  for (float x : out_values) EXPECT_TRUE(is_sentinel(x));
}

TEST(ResourceLimits, HugeStrideOnASizeOneDimensionIsAccepted) {
  float values[4] = {1, 2, 3, 4}, out_value = 0;
  Tensor q = Tensor::contiguous(values, DType::f32, {1, 1, 1, 1});
  q.stride[0] =
      std::numeric_limits<std::int64_t>::max();  // never used: the dimension has one index
  const Tensor kv = Tensor::contiguous(values, DType::f32, {1, 1, 4, 1});
  Outputs outputs;
  outputs.out = Tensor::contiguous(&out_value, DType::f32, {1, 1, 1, 1});
  EXPECT_EQ(forward_error(q, kv, kv, Options{}, outputs), "");
  EXPECT_GT(out_value, 1.0f);
}

}  // namespace
}  // namespace sdpa::test
