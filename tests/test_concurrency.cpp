// Many std::threads calling sdpa::forward, sdpa::backward, sdpa::merge_attention and
// KvCache::attend at once on shared, read-only inputs:
// every call must give the bits a lone call gives. The library keeps one process-wide workspace
// pool; everything else a call uses is its own. scripts/test-sanitizers runs these under
// ThreadSanitizer.
#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "backward_support.hpp"
#include "core/decode.hpp"
#include "sdpa/kv_cache.hpp"
#include "test_support.hpp"

namespace sdpa::test {
namespace {

constexpr int kCallers = 8;
constexpr int kRoundsPerCaller = 2;

// Runs body(caller) on kCallers threads released together; returns when all are done.
void run_concurrently(int callers, const std::function<void(int)>& body) {
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int c = 0; c < callers; ++c)
    threads.emplace_back([&, c] {
      while (!go.load()) std::this_thread::yield();
      body(c);
    });
  go.store(true);
  for (std::thread& t : threads) t.join();
}

// Shared inputs with a mask and a bias, and the option sets the callers cycle through.
Inputs shared_inputs(std::uint64_t seed, std::int64_t len_q, std::int64_t len_k) {
  Rng rng(seed);
  Inputs in = random_inputs(rng, 2, 4, 2, len_q, len_k, 32, 24);
  in.mask.emplace(DType::boolean, std::vector<std::int64_t>{1, 4, len_q, len_k});
  in.mask->fill([&](const Index&) { return static_cast<std::uint8_t>(rng.chance(0.8)); });
  in.bias = random_floats(rng, {len_k}, {});
  return in;
}

std::vector<Options> option_variants(const Inputs& in) {
  std::vector<Options> variants;
  for (Causal causal : {Causal::none, Causal::top_left, Causal::bottom_right}) {
    Options o = in.options();
    o.causal = causal;
    o.threads = 1;
    variants.push_back(o);
  }
  variants[1].window = Window{17, 0};
  variants[2].isa = Isa::scalar;
  return variants;
}

struct ForwardResult {
  std::vector<float> out, lse, weights, entropy;
};

// `plan` automatic picks prefill for these shapes unless weights are left out and Lq ≤ 16.
ForwardResult forward_result(const Inputs& in, const Options& options, OutputBuffers& buffers,
                             ForwardPlan plan = ForwardPlan::automatic) {
  buffers.reset();
  forward_with_plan(in.q.tensor, in.k.tensor, in.v.tensor, options, buffers.outputs(), plan);
  const auto dense = [](const std::optional<Strided<float>>& t) {
    return t ? t->dense() : std::vector<float>{};
  };
  return {buffers.out.dense(), dense(buffers.lse), dense(buffers.weights), dense(buffers.entropy)};
}

::testing::AssertionResult same_result(const ForwardResult& a, const ForwardResult& b) {
  for (auto [x, y] : {std::pair{&a.out, &b.out}, std::pair{&a.lse, &b.lse},
                      std::pair{&a.weights, &b.weights}, std::pair{&a.entropy, &b.entropy}})
    if (auto r = bitwise_equal(*x, *y); !r) return r;
  return ::testing::AssertionSuccess();
}

// Every caller runs every option variant kRoundsPerCaller times, starting at a different one.
void expect_concurrent_forward_matches(const Inputs& in, std::vector<Options> variants) {
  std::vector<ForwardResult> expected;
  OutputBuffers lone = in.make_outputs();
  for (const Options& o : variants) expected.push_back(forward_result(in, o, lone));
  std::atomic<int> mismatches{0};
  run_concurrently(kCallers, [&](int caller) {
    OutputBuffers mine = in.make_outputs();
    for (int n = 0; n < kRoundsPerCaller * static_cast<int>(variants.size()); ++n) {
      const std::size_t v = static_cast<std::size_t>(caller + n) % variants.size();
      if (!same_result(forward_result(in, variants[v], mine), expected[v])) ++mismatches;
    }
  });
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(Concurrency, ConcurrentForwardCallsOnSharedInputsGiveTheBitsOfALoneCall) {
  const Inputs in = shared_inputs(301, 70, 150);
  expect_concurrent_forward_matches(in, option_variants(in));
}

TEST(Concurrency, ConcurrentForwardCallsWithTheirOwnOpenMPThreadsGiveTheBitsOfALoneCall) {
  const Inputs in = shared_inputs(302, 100, 260);  // two query blocks, two key tiles
  std::vector<Options> variants = option_variants(in);
  for (Options& o : variants) o.threads = 2;  // each caller forks its own team
  expect_concurrent_forward_matches(in, variants);
}

TEST(Concurrency, ConcurrentCallsOfDifferentSizesShareTheWorkspacePoolSafely) {
  // Callers alternate between a small and a large problem, so pooled workspaces change hands.
  const Inputs small = shared_inputs(303, 10, 40), large = shared_inputs(304, 200, 400);
  OutputBuffers lone_small = small.make_outputs(), lone_large = large.make_outputs();
  const Options small_options = option_variants(small)[0],
                large_options = option_variants(large)[0];
  const ForwardResult expected_small = forward_result(small, small_options, lone_small);
  const ForwardResult expected_large = forward_result(large, large_options, lone_large);
  std::atomic<int> mismatches{0};
  run_concurrently(kCallers, [&](int caller) {
    OutputBuffers mine_small = small.make_outputs(), mine_large = large.make_outputs();
    for (int n = 0; n < 2 * kRoundsPerCaller; ++n) {
      const bool use_large = (caller + n) % 2 == 1;
      const ForwardResult got = use_large ? forward_result(large, large_options, mine_large)
                                          : forward_result(small, small_options, mine_small);
      if (!same_result(got, use_large ? expected_large : expected_small)) ++mismatches;
    }
  });
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(Concurrency, ConcurrentSplitKvDecodeCallsGiveTheBitsOfALoneCall) {
  // Two query rows against 1,300 keys (six 256-key chunks): the split-KV plan, whose OpenMP team
  // of 2 per caller shares each (batch, kv-head) group's chunks and merges them in key order.
  const Inputs in = shared_inputs(307, 2, 1300);
  OutputLayouts layouts;
  layouts.want_weights = false;  // the split-KV plan writes no weights
  OutputBuffers lone = in.make_outputs(layouts);
  Options options = in.options();
  options.threads = 2;
  const ForwardResult expected = forward_result(in, options, lone, ForwardPlan::split_kv);
  std::atomic<int> mismatches{0};
  run_concurrently(kCallers, [&](int) {
    OutputBuffers mine = in.make_outputs(layouts);
    for (int n = 0; n < kRoundsPerCaller; ++n)
      if (!same_result(forward_result(in, options, mine, ForwardPlan::split_kv), expected))
        ++mismatches;
  });
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(Concurrency, ConcurrentBackwardCallsOnSharedInputsGiveTheBitsOfALoneCall) {
  Rng rng(305);
  BackwardCase c{
      shared_inputs(306, 60, 130), random_floats(rng, {2, 4, 60, 24}, {}), {}, {}, 1, ""};
  c.grad_layouts.want_dbias = c.grad_layouts.want_dscale = true;
  OutputBuffers forward_outputs = c.make_forward_outputs();
  GradBuffers lone = c.make_grads();
  c.run(forward_outputs, lone, Isa::automatic, 1);  // out and lse, then shared read-only
  const std::vector<std::vector<float>> expected = all_grads(lone);
  std::atomic<int> mismatches{0};
  run_concurrently(kCallers, [&](int caller) {
    GradBuffers mine = c.make_grads();
    Options o = c.inputs.options();
    o.threads = caller % 2 + 1;
    for (int n = 0; n < kRoundsPerCaller; ++n) {
      mine.reset();
      backward(c.inputs.q.tensor, c.inputs.k.tensor, c.inputs.v.tensor, forward_outputs.out.tensor,
               c.dout.tensor, forward_outputs.lse->tensor, o, mine.grads());
      const std::vector<std::vector<float>> got = all_grads(mine);
      for (std::size_t g = 0; g < got.size(); ++g)
        if (!bitwise_equal(got[g], expected[g])) ++mismatches;
    }
  });
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(Concurrency, ConcurrentMergeAttentionCallsGiveTheBitsOfALoneCall) {
  // Shared read-only parts; each caller merges into its own output with a team of 1 or 2.
  Rng rng(308);
  std::vector<Strided<float>> out_parts, lse_parts;
  std::vector<Tensor> outs, lses;
  for (int n = 0; n < 4; ++n) {
    out_parts.push_back(random_floats(rng, {2, 3, 40, 16}, {}));
    lse_parts.push_back(random_floats(rng, {2, 3, 40}, {}, 5.0f));
    outs.push_back(out_parts.back().tensor);
    lses.push_back(lse_parts.back().tensor);
  }
  Strided<float> lone_out(DType::f32, {2, 3, 40, 16}), lone_lse(DType::f32, {2, 3, 40});
  merge_attention(outs, lses, lone_out.tensor, lone_lse.tensor, 1);
  std::atomic<int> mismatches{0};
  run_concurrently(kCallers, [&](int caller) {
    Strided<float> out(DType::f32, {2, 3, 40, 16}), lse(DType::f32, {2, 3, 40});
    for (int n = 0; n < kRoundsPerCaller; ++n) {
      merge_attention(outs, lses, out.tensor, lse.tensor, caller % 2 + 1);
      if (!bitwise_equal(out.dense(), lone_out.dense()) ||
          !bitwise_equal(lse.dense(), lone_lse.dense()))
        ++mismatches;
    }
  });
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(Concurrency, ConcurrentAttendCallsOnOneKvCacheGiveTheBitsOfALoneCall) {
  // attend() is const: many callers may read one cache (two sequences sharing its pool) at once.
  Rng rng(309);
  for (KvStorage storage : {KvStorage::f32, KvStorage::bf16, KvStorage::i8}) {
    KvCache cache({2, 16, 16, 64, 24, storage});
    const int a = cache.add_sequence(), b = cache.add_sequence();
    const Strided<float> k = random_floats(rng, {2, 600, 16}, {}), v = random_floats(rng, {2, 600, 16}, {});
    const Strided<float> k2 = random_floats(rng, {2, 300, 16}, {}), v2 = random_floats(rng, {2, 300, 16}, {});
    cache.append(a, k.tensor, v.tensor);
    cache.append(b, k2.tensor, v2.tensor);
    const Strided<float> q = random_floats(rng, {4, 2, 16}, {});
    std::vector<std::vector<float>> lone;
    for (int s : {a, b}) {
      Strided<float> out(DType::f32, {4, 2, 16});
      cache.attend(s, q.tensor, out.tensor, AttendOptions{std::nullopt, Causal::bottom_right, 1});
      lone.push_back(out.dense());
    }
    std::atomic<int> mismatches{0};
    run_concurrently(kCallers, [&](int caller) {
      Strided<float> out(DType::f32, {4, 2, 16});
      for (int n = 0; n < kRoundsPerCaller; ++n) {
        const int which = (caller + n) % 2;
        cache.attend(which == 0 ? a : b, q.tensor, out.tensor,
                     AttendOptions{std::nullopt, Causal::bottom_right, caller % 2 + 1});
        if (!bitwise_equal(out.dense(), lone[static_cast<std::size_t>(which)])) ++mismatches;
      }
    });
    EXPECT_EQ(mismatches.load(), 0) << kv_storage_name(storage);
  }
}

}  // namespace
}  // namespace sdpa::test
