// FMA peak kernel, 16-lane (AVX-512F). Compiled with -mavx512f only; called after a CPUID check.
#include <immintrin.h>

#include <cstdint>

#include "bench/bench.hpp"

namespace sdpa::bench::detail {

// FMA latency is 4 cycles with 2 pipes on Zen 4 and Skylake-X: 8 chains keep both busy; 16 leave
// margin for the loop overhead and still fit in the 32 zmm registers with the two constants.
constexpr int kChains512 = 16;

double fma_chains_512(std::int64_t iterations, float* sink) {
  __m512 acc[kChains512];
  for (int c = 0; c < kChains512; ++c) acc[c] = _mm512_set1_ps(1.0f + 0.001f * c);
  // acc ← acc·0.999999 + 1e-6 converges to 1: no overflow, no denormals, for any iteration count.
  const __m512 mul = _mm512_set1_ps(0.999999f);
  const __m512 add = _mm512_set1_ps(1e-6f);
  for (std::int64_t i = 0; i < iterations; ++i) {
#pragma GCC unroll 16
    for (int c = 0; c < kChains512; ++c) acc[c] = _mm512_fmadd_ps(acc[c], mul, add);
  }
  __m512 sum = acc[0];
  for (int c = 1; c < kChains512; ++c) sum = _mm512_add_ps(sum, acc[c]);
  // A store and a scalar sum: GCC 12's _mm512_reduce_add_ps trips -Werror=uninitialized.
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, sum);
  float total = 0;
  for (float lane : lanes) total += lane;
  *sink = total;
  return 2.0 * 16 * kChains512 * static_cast<double>(iterations);
}

}  // namespace sdpa::bench::detail
