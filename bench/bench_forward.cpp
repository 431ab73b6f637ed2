// Google Benchmark targets: sdpa::forward, the naive OpenBLAS baseline and the FMA peak, each with
// the counters it is judged by: GFLOP/s (4·B·H·L²·D, halved when causal) and % of the FMA peak
// measured once at start-up on the same thread count.
//
//   sdpa_gbench [--threads=N] [Google Benchmark flags, e.g. --benchmark_filter=Forward]
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench/bench.hpp"

namespace {

using sdpa::bench::AttentionData;
using sdpa::bench::AttentionShape;

int g_threads = 0;         // resolved in main
double g_peak_gflops = 0;  // fastest repetition of 256- and 512-bit FMA chains at g_threads

// Shape from the benchmark arguments (L, D, causal); B·H = 8 as in the issue.
AttentionShape shape_of(const benchmark::State& state) {
  return {1, 8, state.range(0), state.range(1), state.range(2) != 0};
}

// GFLOP/s and %peak from the manually timed seconds (threads run outside the benchmark's clock).
void set_counters(benchmark::State& state, double flops_per_call, double seconds) {
  const double gflops = flops_per_call * static_cast<double>(state.iterations()) / seconds * 1e-9;
  state.counters["GFLOP/s"] = gflops;
  state.counters["%peak"] = 100.0 * gflops / g_peak_gflops;
}

// Runs `call` once per iteration, timing it on the wall clock.
template <typename Call>
double timed_loop(benchmark::State& state, Call&& call) {
  double seconds = 0;
  for (auto _ : state) {
    const double start = sdpa::bench::now_seconds();
    call();
    const double elapsed = sdpa::bench::now_seconds() - start;
    state.SetIterationTime(elapsed);
    seconds += elapsed;
  }
  return seconds;
}

void BM_Forward(benchmark::State& state) {
  AttentionData data = AttentionData::random(shape_of(state));
  const double seconds = timed_loop(state, [&] { sdpa::bench::run_sdpa_forward(data, g_threads); });
  set_counters(state, sdpa::bench::attention_flops(data.shape), seconds);
}

void BM_Naive(benchmark::State& state) {
  AttentionData data = AttentionData::random(shape_of(state));
  std::vector<float> scores(sdpa::bench::naive_scores_floats(data.shape));
  const double seconds =
      timed_loop(state, [&] { sdpa::bench::naive_forward(data, scores, g_threads); });
  set_counters(state, sdpa::bench::attention_flops(data.shape), seconds);
}

// Argument: vector width in bits (256 or 512). Each iteration runs 2^20 rounds of FMA chains on
// every thread.
void BM_FmaPeak(benchmark::State& state) {
  const bool wide = state.range(0) == 512;
  if (wide ? !__builtin_cpu_supports("avx512f")
           : !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) {
    state.SkipWithError("this CPU lacks the instruction set");
    return;
  }
  const auto kernel =
      wide ? sdpa::bench::detail::fma_chains_512 : sdpa::bench::detail::fma_chains_256;
  double flops_per_call = 0;
  const double seconds = timed_loop(state, [&] {
    double flops = 0;
#pragma omp parallel num_threads(g_threads) reduction(+ : flops)
    {
      float sink = 0;
      flops += kernel(std::int64_t{1} << 20, &sink);
      benchmark::DoNotOptimize(sink);
    }
    flops_per_call = flops;
  });
  set_counters(state, flops_per_call, seconds);
}

BENCHMARK(BM_Forward)
    ->ArgNames({"L", "D", "causal"})
    ->ArgsProduct({{1024, 4096}, {64, 128}, {0, 1}})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Naive)
    ->ArgNames({"L", "D", "causal"})
    ->ArgsProduct({{1024, 4096}, {64, 128}, {0, 1}})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_FmaPeak)
    ->ArgName("bits")
    ->Arg(256)
    ->Arg(512)
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

// Removes --threads=N from argv (Google Benchmark rejects flags it does not know).
int take_threads_flag(int* argc, char** argv) {
  int threads = 0;
  int kept = 0;
  for (int i = 0; i < *argc; ++i) {
    if (std::strncmp(argv[i], "--threads=", 10) == 0)
      threads = std::atoi(argv[i] + 10);
    else
      argv[kept++] = argv[i];
  }
  *argc = kept;
  return threads;
}

}  // namespace

int main(int argc, char** argv) {
  g_threads = sdpa::bench::resolve_threads(take_threads_flag(&argc, argv));
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  const sdpa::bench::PeakMeasurement peak = sdpa::bench::measure_fma_peak(g_threads);
  g_peak_gflops = peak.best();
  benchmark::AddCustomContext("threads", std::to_string(g_threads));
  benchmark::AddCustomContext("isa", sdpa::isa_name(sdpa::best_isa()));
  benchmark::AddCustomContext("fma_peak_gflops_256", std::to_string(peak.gflops_256));
  benchmark::AddCustomContext("fma_peak_gflops_512", std::to_string(peak.gflops_512));
  benchmark::AddCustomContext("fma_peak_gflops", std::to_string(g_peak_gflops));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
