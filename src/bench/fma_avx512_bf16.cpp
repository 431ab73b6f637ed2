// bf16 dot-product peak kernel (AVX512_BF16 vdpbf16ps). Compiled with -mavx512f -mavx512bf16 only;
// called after a CPUID check. The same method as the fp32 FMA peak (fma_avx512.cpp): independent
// accumulator chains, each vdpbf16ps doing 32 multiply-adds (2 per fp32 lane) = 64 FLOPs.
#include <immintrin.h>

#include <cstdint>

#include "bench/bench.hpp"

namespace sdpa::bench::detail {

constexpr int kChainsBf16 = 16;

double dpbf16_chains_512(std::int64_t iterations, float* sink) {
  __m512 acc[kChainsBf16];
  for (int c = 0; c < kChainsBf16; ++c) acc[c] = _mm512_set1_ps(1.0f + 0.001f * c);
  // Each step adds 2·(2⁻⁷)² = 2⁻¹³ per lane: after 10⁹ steps about 1.2e5, far from overflow, and
  // no denormals (vdpbf16ps would flush them).
  const __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0x1p-7f), _mm512_set1_ps(0x1p-7f));
  const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0x1p-7f), _mm512_set1_ps(0x1p-7f));
  for (std::int64_t i = 0; i < iterations; ++i) {
#pragma GCC unroll 16
    for (int c = 0; c < kChainsBf16; ++c) acc[c] = _mm512_dpbf16_ps(acc[c], a, b);
  }
  __m512 sum = acc[0];
  for (int c = 1; c < kChainsBf16; ++c) sum = _mm512_add_ps(sum, acc[c]);
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, sum);
  float total = 0;
  for (float lane : lanes) total += lane;
  *sink = total;
  return 64.0 * kChainsBf16 * static_cast<double>(iterations);
}

}  // namespace sdpa::bench::detail
