// Threads of a call that takes every CPU run one per CPU, and give their pins back afterwards.
#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>

#include <cstring>
#include <vector>

#include "core/pinning.hpp"
#include "sdpa/sdpa.hpp"

namespace {

int process_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 0;
  return CPU_COUNT(&set);
}

TEST(Pinning, PinsOnlyATeamThatTakesEveryCpu) {
  const int cpus = process_cpus();
  ASSERT_GT(cpus, 0);
  EXPECT_EQ(sdpa::CpuPlan(cpus).pins(), cpus >= 2);
  EXPECT_FALSE(sdpa::CpuPlan(1).pins());
  EXPECT_FALSE(sdpa::CpuPlan(cpus + 1).pins());
  if (cpus > 2) {
    EXPECT_FALSE(sdpa::CpuPlan(cpus - 1).pins());
  }
}

TEST(Pinning, AThreadRunsOnItsCpuWhilePinnedAndGetsItsMaskBack) {
  const int cpus = process_cpus();
  if (cpus < 2) GTEST_SKIP() << "one CPU: nothing to pin";
  cpu_set_t before, during, after;
  ASSERT_EQ(pthread_getaffinity_np(pthread_self(), sizeof before, &before), 0);
  const sdpa::CpuPlan plan(cpus);
  {
    const sdpa::ThreadPin pin(plan, 1);
    ASSERT_EQ(pthread_getaffinity_np(pthread_self(), sizeof during, &during), 0);
    EXPECT_EQ(CPU_COUNT(&during), 1);
  }
  ASSERT_EQ(pthread_getaffinity_np(pthread_self(), sizeof after, &after), 0);
  EXPECT_TRUE(CPU_EQUAL(&before, &after));
}

TEST(Pinning, AForwardOnEveryCpuLeavesTheCallersMaskAsItWas) {
  const int cpus = process_cpus();
  if (cpus < 2) GTEST_SKIP() << "one CPU: nothing to pin";
  const std::int64_t n = 2 * 4 * 64 * 32;
  std::vector<float> q(n, 0.25f), k(n, 0.5f), v(n, 1.0f), out(n);
  const auto t = [](std::vector<float>& x) {
    return sdpa::Tensor::contiguous(x.data(), sdpa::DType::f32, {2, 4, 64, 32});
  };
  sdpa::Options options;
  options.threads = cpus;
  sdpa::Outputs outputs;
  outputs.out = t(out);
  cpu_set_t before, after;
  ASSERT_EQ(pthread_getaffinity_np(pthread_self(), sizeof before, &before), 0);
  sdpa::forward(t(q), t(k), t(v), options, outputs);
  ASSERT_EQ(pthread_getaffinity_np(pthread_self(), sizeof after, &after), 0);
  EXPECT_TRUE(CPU_EQUAL(&before, &after));
  EXPECT_FLOAT_EQ(out[0], 1.0f);  // every value is 1
}

}  // namespace
