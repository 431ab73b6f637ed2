// sdpa::KvCache: paged storage shared by sequences of different lengths, fp32 / bf16 / int8 rows
// read by the decode kernel. fp32 and bf16 (against the bf16-rounded keys and values) follow the
// accuracy rule; int8 stays within its documented relative error bound.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "sdpa/kv_cache.hpp"
#include "test_support.hpp"

namespace sdpa::test {
namespace {

// bf16 round to nearest even, written independently of the library's conversion.
float bf16_rounded(float x) {
  std::uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const std::uint32_t lower = bits & 0xffffu, upper = bits & 0xffff0000u;
  std::uint32_t rounded = upper;
  if (lower > 0x8000u || (lower == 0x8000u && (upper & 0x10000u))) rounded += 0x10000u;
  float y;
  std::memcpy(&y, &rounded, sizeof y);
  return y;
}

// The sub-tensor [.., t0 .. t0 + count, ..] of a [1, H, L, D] view as [H, count, D].
Tensor tokens(const Tensor& t, std::int64_t t0, std::int64_t count) {
  return Tensor::strided(static_cast<float*>(t.data) + t0 * t.stride[2], DType::f32,
                         {t.shape[1], count, t.shape[3]}, {t.stride[1], t.stride[2], t.stride[3]});
}
Tensor drop_batch(const Tensor& t) {
  if (t.rank == 4)
    return Tensor::strided(t.data, t.dtype, {t.shape[1], t.shape[2], t.shape[3]},
                           {t.stride[1], t.stride[2], t.stride[3]});
  return Tensor::strided(t.data, t.dtype, {t.shape[1], t.shape[2]}, {t.stride[1], t.stride[2]});
}

struct Sequence {
  Inputs inputs;  // batch 1: q [1, Hq, Lq, D], k / v [1, Hkv, L, D]
  int id = -1;
};

// Several sequences of different lengths appended in random pieces (interleaved, so their pages
// interleave in the pool), then attended and checked against the fp64 reference of each.
void expect_cache_matches_reference(KvStorage storage) {
  Rng rng(21 + static_cast<int>(storage));
  KvCacheConfig config{2, 40, 24, 64, 64, storage};
  KvCache cache(config);
  std::vector<Sequence> sequences;
  for (std::int64_t length : {1, 63, 64, 65, 700}) {
    const std::int64_t len_q = rng.pick<std::int64_t>({1, 1, 3});
    Sequence s{random_inputs(rng, 1, 6, 2, len_q, length, 40, 24), cache.add_sequence()};
    if (storage == KvStorage::bf16) {  // the reference sees what the cache stores
      for (float& x : s.inputs.k.storage) x = bf16_rounded(x);
      for (float& x : s.inputs.v.storage) x = bf16_rounded(x);
    }
    s.inputs.base.causal = Causal::bottom_right;
    sequences.push_back(std::move(s));
  }
  std::vector<std::int64_t> appended(sequences.size(), 0);
  for (bool more = true; more;) {
    more = false;
    for (std::size_t n = 0; n < sequences.size(); ++n) {
      const std::int64_t total = sequences[n].inputs.len_k(), left = total - appended[n];
      if (left == 0) continue;
      const std::int64_t count = std::min(left, rng.integer(1, 100));
      cache.append(sequences[n].id, tokens(sequences[n].inputs.k.tensor, appended[n], count),
                   tokens(sequences[n].inputs.v.tensor, appended[n], count));
      appended[n] += count;
      more = true;
    }
  }
  for (const Sequence& s : sequences) {
    ASSERT_EQ(cache.length(s.id), s.inputs.len_k());
    OutputLayouts layouts;
    layouts.want_weights = layouts.want_entropy = false;
    OutputBuffers buffers = s.inputs.make_outputs(layouts);
    const References refs = s.inputs.references(buffers);
    for (Isa isa : supported_isas()) {
      buffers.reset();
      AttendOptions options;
      options.isa = isa;
      options.threads = 2;
      cache.attend(s.id, drop_batch(s.inputs.q.tensor), drop_batch(buffers.out.tensor), options,
                   drop_batch(buffers.lse->tensor));
      if (storage == KvStorage::i8) {
        // Relative error of out against the fp64 reference (of the unquantized keys and values).
        double error = 0, largest = 0;
        const std::vector<float> out = buffers.out.dense();
        for (std::size_t n = 0; n < out.size(); ++n) {
          error = std::max(error, std::abs(out[n] - refs.ref64.out[n]));
          largest = std::max(largest, std::abs(refs.ref64.out[n]));
        }
        EXPECT_LE(error, 0.02 * largest)
            << "int8, Lk " << s.inputs.len_k() << ", " << isa_name(isa);
      } else {
        EXPECT_TRUE(check_outputs(refs, buffers, s.inputs.len_k(), s.inputs.dim_v()))
            << kv_storage_name(storage) << ", Lk " << s.inputs.len_k() << ", " << isa_name(isa);
      }
    }
  }
}

TEST(KvCache, F32CacheMatchesFp64ReferenceForSequencesSharingThePool) {
  expect_cache_matches_reference(KvStorage::f32);
}
TEST(KvCache, Bf16CacheMatchesFp64ReferenceOfBf16RoundedKeysAndValues) {
  expect_cache_matches_reference(KvStorage::bf16);
}
TEST(KvCache, Int8CacheStaysWithinTwoPercentRelativeOutputError) {
  expect_cache_matches_reference(KvStorage::i8);
}

// With one cached key the output is that key's stored value row: bf16 rounds to nearest, ties to
// even; int8 stores s·round(x / s) with s = max|x| / 127.
TEST(KvCache, StoredValuesAreRoundedToNearestEvenBf16AndSymmetricInt8) {
  const float ulp = std::ldexp(1.0f, -7);             // bf16 spacing in [1, 2)
  std::vector<float> v{1.0f + ulp / 2,                // tie, 1 is even: down
                       1.0f + 3 * ulp / 2,            // tie, 1 + 2 ulp is even: up
                       1.0f + ulp / 2 + ulp / 64,     // above the tie: up
                       -(1.0f + ulp / 2 - ulp / 64),  // below the tie: down
                       0.5f,
                       -0.25f,
                       0.0f,
                       3.0f};
  const std::vector<float> bf16{1.0f, 1.0f + 2 * ulp, 1.0f + ulp, -1.0f, 0.5f, -0.25f, 0.0f, 3.0f};
  std::vector<float> k(8, 0.0f), q(8, 0.0f), out(8);
  const Tensor one = Tensor::contiguous(k.data(), DType::f32, {1, 1, 8});
  for (KvStorage storage : {KvStorage::bf16, KvStorage::i8}) {
    KvCache cache({1, 8, 8, 4, 1, storage});
    const int s = cache.add_sequence();
    cache.append(s, one, Tensor::contiguous(v.data(), DType::f32, {1, 1, 8}));
    cache.attend(s, Tensor::contiguous(q.data(), DType::f32, {1, 1, 8}),
                 Tensor::contiguous(out.data(), DType::f32, {1, 1, 8}));
    for (std::size_t d = 0; d < 8; ++d) {
      const float scale = 3.0f / 127.0f;
      const float expected =
          storage == KvStorage::bf16 ? bf16[d] : scale * std::nearbyint(v[d] / scale);
      EXPECT_NEAR(out[d], expected, storage == KvStorage::bf16 ? 0.0f : 1e-6f)
          << kv_storage_name(storage) << " element " << d;
    }
  }
}

TEST(KvCache, PagesAreSharedReturnedAndCounted) {
  KvCache cache({8, 128, 128, 256, 4, KvStorage::bf16});
  EXPECT_EQ(cache.bytes_per_token(), 8u * (128 + 128) * 2);
  EXPECT_EQ(cache.bytes(), 4u * 256 * cache.bytes_per_token());
  EXPECT_EQ(KvCache({8, 128, 0, 16, 1, KvStorage::i8}).bytes_per_token(), 8u * (128 + 128 + 8));
  std::vector<float> kv(8 * 600 * 128, 0.5f);
  const Tensor k = Tensor::contiguous(kv.data(), DType::f32, {8, 600, 128});
  const int a = cache.add_sequence(), b = cache.add_sequence();
  cache.append(a, k, k);  // 600 tokens: 3 pages
  EXPECT_EQ(cache.free_blocks(), 1);
  const Tensor two = Tensor::strided(kv.data(), DType::f32, {8, 257, 128}, {600 * 128, 128, 1});
  try {
    cache.append(b, two, two);  // 2 pages needed, 1 free: refused, nothing cached
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("need 2 more pages of 256 tokens but the pool has 1 free"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(cache.length(b), 0);
  cache.remove_sequence(a);
  EXPECT_EQ(cache.free_blocks(), 4);
  cache.append(b, two, two);
  EXPECT_EQ(cache.length(b), 257);
  EXPECT_THROW(cache.length(a), Error);
}

TEST(KvCache, BadArgumentsNameTheArgument) {
  KvCache cache({2, 8, 8, 16, 2, KvStorage::i8});
  const int s = cache.add_sequence();
  std::vector<float> data(2 * 3 * 8, 1.0f), out(4 * 1 * 8);
  const Tensor k = Tensor::contiguous(data.data(), DType::f32, {2, 3, 8});
  const auto message = [](const auto& fn) {
    try {
      fn();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message([&] {
              cache.append(s, Tensor::contiguous(data.data(), DType::f32, {3, 2, 8}), k);
            }).find("k.shape = [3, 2, 8]: expected [Hkv, T, Dk] with shape[0] = 2"),
            std::string::npos);
  EXPECT_NE(message([&] { cache.append(7, k, k); }).find("append: sequence 7 does not exist"),
            std::string::npos);
  data[5] = std::nanf("");
  EXPECT_NE(message([&] { cache.append(s, k, k); }).find("k[0, 0, 5] is not finite"),
            std::string::npos);
  EXPECT_EQ(cache.length(s), 0);
  const Tensor q = Tensor::contiguous(out.data(), DType::f32, {3, 1, 8});
  EXPECT_NE(
      message([&] { cache.attend(s, q, q); }).find("q.shape[0] (Hq) = 3: expected a multiple"),
      std::string::npos);
  EXPECT_THROW(KvCache({0, 8, 8, 16, 2, KvStorage::f32}), Error);
}

TEST(KvCache, AttendIsBitwiseIdenticalForAnyThreadCount) {
  Rng rng(5);
  KvCache cache({4, 64, 64, 128, 40, KvStorage::i8});
  const int s = cache.add_sequence();
  const Strided<float> k = random_floats(rng, {4, 3000, 64}, {}),
                       v = random_floats(rng, {4, 3000, 64}, {});
  cache.append(s, k.tensor, v.tensor);
  const Strided<float> q = random_floats(rng, {16, 2, 64}, {});
  Strided<float> first(DType::f32, {16, 2, 64}), again(DType::f32, {16, 2, 64});
  AttendOptions options;
  options.threads = 1;
  cache.attend(s, q.tensor, first.tensor, options);
  for (int threads : {2, 3, 4, 7}) {
    options.threads = threads;
    cache.attend(s, q.tensor, again.tensor, options);
    EXPECT_TRUE(bitwise_equal(first.dense(), again.dense())) << "threads " << threads;
  }
}

// NaN in one query row reaches that row's outputs only, on every instruction set, as with the
// other storages and paths.
TEST(KvCache, Int8CacheGivesANanRowForANanQueryRow) {
  Rng rng(7);
  KvCache cache({1, 32, 32, 64, 8, KvStorage::i8});
  const int s = cache.add_sequence();
  const Strided<float> k = random_floats(rng, {1, 300, 32}, {}),
                       v = random_floats(rng, {1, 300, 32}, {});
  cache.append(s, k.tensor, v.tensor);
  Strided<float> q = random_floats(rng, {4, 1, 32}, {});
  q.at({2, 0, 5}) = std::nanf("");
  Strided<float> out(DType::f32, {4, 1, 32});
  for (Isa isa : supported_isas()) {
    AttendOptions options;
    options.isa = isa;
    cache.attend(s, q.tensor, out.tensor, options);
    for (std::int64_t h = 0; h < 4; ++h)
      for (std::int64_t d = 0; d < 32; ++d)
        EXPECT_EQ(std::isnan(out.at({h, 0, d})), h == 2)
            << "head " << h << ", column " << d << ", " << isa_name(isa);
  }
}

}  // namespace
}  // namespace sdpa::test
