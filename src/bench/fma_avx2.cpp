// FMA peak kernel, 8-lane (AVX2 + FMA). Compiled with -mavx2 -mfma only; called after a CPUID
// check.
#include <immintrin.h>

#include <cstdint>

#include "bench/bench.hpp"

namespace sdpa::bench::detail {

// FMA latency 4 cycles × 2 pipes = 8 chains in flight; 12 leave margin and, with the two constants,
// fit in the 16 ymm registers of AVX2.
constexpr int kChains256 = 12;

double fma_chains_256(std::int64_t iterations, float* sink) {
  __m256 acc[kChains256];
  for (int c = 0; c < kChains256; ++c) acc[c] = _mm256_set1_ps(1.0f + 0.001f * c);
  // acc ← acc·0.999999 + 1e-6 converges to 1: no overflow, no denormals, for any iteration count.
  const __m256 mul = _mm256_set1_ps(0.999999f);
  const __m256 add = _mm256_set1_ps(1e-6f);
  for (std::int64_t i = 0; i < iterations; ++i) {
#pragma GCC unroll 12
    for (int c = 0; c < kChains256; ++c) acc[c] = _mm256_fmadd_ps(acc[c], mul, add);
  }
  __m256 sum = acc[0];
  for (int c = 1; c < kChains256; ++c) sum = _mm256_add_ps(sum, acc[c]);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sum);
  float total = 0;
  for (float lane : lanes) total += lane;
  *sink = total;
  return 2.0 * 8 * kChains256 * static_cast<double>(iterations);
}

}  // namespace sdpa::bench::detail
