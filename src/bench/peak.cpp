// FMA peak: independent FMA chains on N OpenMP threads, timed for a fixed duration, median of
// repetitions. The ISA kernels live in fma_avx2.cpp / fma_avx512.cpp; this file only dispatches.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <utility>
#include <vector>

#include "bench/bench.hpp"

namespace sdpa::bench {
namespace {

using FmaKernel = double (*)(std::int64_t iterations, float* sink);

// Fallback for CPUs without AVX2/FMA: the compiler vectorizes the chains with the baseline ISA
// (separate multiply and add, still 2 FLOPs per element).
double mul_add_chains_portable(std::int64_t iterations, float* sink) {
  constexpr int kChains = 32;
  float acc[kChains];
  for (int c = 0; c < kChains; ++c) acc[c] = 1.0f + 0.001f * static_cast<float>(c);
  for (std::int64_t i = 0; i < iterations; ++i)
    for (float& a : acc) a = a * 0.999999f + 1e-6f;
  float total = 0;
  for (float a : acc) total += a;
  *sink = total;
  return 2.0 * kChains * static_cast<double>(iterations);
}

// Iterations that keep one thread busy for about `seconds` (doubling until a run takes ≥ 10 ms).
std::int64_t calibrate(FmaKernel kernel, double seconds) {
  float sink = 0;
  std::int64_t iterations = 1 << 12;
  for (;;) {
    const double start = now_seconds();
    kernel(iterations, &sink);
    const double elapsed = now_seconds() - start;
    if (elapsed >= 0.01)
      return std::max<std::int64_t>(1, static_cast<std::int64_t>(iterations * seconds / elapsed));
    iterations *= 2;
  }
}

// GFLOP/s of `threads` threads each running the same iteration count: total FLOPs / wall time of
// the parallel region, per repetition after one warm-up (clocks ramp, threads start).
// Returns {median, fastest}.
std::pair<double, double> measure_kernel(FmaKernel kernel, int threads,
                                         const PeakOptions& options) {
  const std::int64_t iterations = calibrate(kernel, options.seconds);
  std::vector<double> seconds;
  double flops = 0;
  for (int rep = -1; rep < std::max(1, options.repeats); ++rep) {
    flops = 0;
    const double start = now_seconds();
#pragma omp parallel num_threads(threads) reduction(+ : flops)
    {
      float sink = 0;
      flops += kernel(iterations, &sink);
      if (sink == -1.0f) flops = 0;  // never true; keeps the checksum observable
    }
    if (rep >= 0) seconds.push_back(now_seconds() - start);
  }
  const Timing timing = timing_of(std::move(seconds));
  return {flops / timing.median_s * 1e-9, flops / timing.min_s * 1e-9};
}

}  // namespace

PeakMeasurement measure_fma_peak(int threads, const PeakOptions& options) {
  PeakMeasurement peak;
  peak.threads = resolve_threads(threads);
  const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool has_avx512 = __builtin_cpu_supports("avx512f");
  std::tie(peak.gflops_256, peak.best_256) = measure_kernel(
      has_avx2 ? detail::fma_chains_256 : mul_add_chains_portable, peak.threads, options);
  if (has_avx512)
    std::tie(peak.gflops_512, peak.best_512) =
        measure_kernel(detail::fma_chains_512, peak.threads, options);
  if (options.bf16 && has_avx512 && __builtin_cpu_supports("avx512bf16"))
    std::tie(peak.gflops_bf16, peak.best_bf16) =
        measure_kernel(detail::dpbf16_chains_512, peak.threads, options);
  return peak;
}

double measure_fma_peak_gflops(int threads, const PeakOptions& options) {
  return measure_fma_peak(threads, options).gflops();
}

}  // namespace sdpa::bench
