// The benchmark grid: sdpa::forward against the FMA peak and the naive baseline, per
// (length, causal), plus the RSS high-water mark per length.
#include <algorithm>
#include <cstdint>
#include <fstream>
#include <memory>
#include <sstream>
#include <vector>

#include "bench/bench.hpp"
#include "core/isa.hpp"

namespace sdpa::bench {
namespace {

constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

double total_seconds(const NaiveSteps& steps) {
  return steps.scores_s + steps.softmax_s + steps.output_s;
}

// Per-call seconds of sdpa and (when `scores` is given) naive, alternating call by call so that
// background load on the machine hits both alike and their ratio stays meaningful.
struct Samples {
  std::vector<double> sdpa_s, naive_s, bf16_s;
  std::vector<NaiveSteps> naive_steps;
};

Samples sample_interleaved(AttentionData& data, std::span<float> scores,
                           const GridOptions& options) {
  Samples samples;
  for (int call = -options.warmups; call < std::max(1, options.repeats); ++call) {
    double start = now_seconds();
    run_sdpa_forward(data, options.threads);
    if (call >= 0) samples.sdpa_s.push_back(now_seconds() - start);
    if (options.bf16) {
      start = now_seconds();
      run_sdpa_forward(data, options.threads, sdpa::DType::bf16);
      if (call >= 0) samples.bf16_s.push_back(now_seconds() - start);
    }
    if (scores.empty()) continue;
    start = now_seconds();
    const NaiveSteps steps = naive_forward(data, scores, options.threads);
    if (call < 0) continue;
    samples.naive_s.push_back(now_seconds() - start);
    samples.naive_steps.push_back(steps);
  }
  return samples;
}

// The step split of the naive call whose total time is the median one.
NaiveSteps median_steps(std::vector<NaiveSteps> calls) {
  std::sort(calls.begin(), calls.end(), [](const NaiveSteps& a, const NaiveSteps& b) {
    return total_seconds(a) < total_seconds(b);
  });
  return calls[calls.size() / 2];
}

// Why the naive run for `shape` would not fit in options.naive_memory_limit ("" when it fits).
std::string naive_skip_reason(const AttentionShape& shape, std::size_t io_bytes,
                              const GridOptions& options) {
  const double needed = static_cast<double>(naive_scores_floats(shape) * sizeof(float) + io_bytes);
  if (needed <= static_cast<double>(options.naive_memory_limit)) return "";
  std::ostringstream reason;
  reason.precision(3);
  reason << "naive skipped at L = " << shape.length << ": needs " << needed / kGiB
         << " GiB (one L×L score matrix + inputs) > limit "
         << static_cast<double>(options.naive_memory_limit) / kGiB << " GiB";
  return reason.str();
}

// The instruction set the grid's calls run with (Options::isa automatic).
sdpa::Isa report_isa(const GridOptions&) { return sdpa::resolve_isa(sdpa::Isa::automatic); }

GridRow measure_row(AttentionData& data, std::span<float> scores, const GridOptions& options,
                    double peak_gflops, double bf16_peak_gflops) {
  GridRow row;
  row.shape = data.shape;
  row.peak_gflops = peak_gflops;
  const Samples samples = sample_interleaved(data, scores, options);
  row.sdpa = timing_of(samples.sdpa_s);
  row.gflops = attention_flops(row.shape) / row.sdpa.median_s * 1e-9;
  row.percent_of_peak = peak_gflops > 0 ? 100.0 * row.gflops / peak_gflops : 0;
  if (options.bf16) {
    row.bf16 = timing_of(samples.bf16_s);
    row.bf16_gflops = attention_flops(row.shape) / row.bf16->median_s * 1e-9;
    row.bf16_speedup = row.sdpa.median_s / row.bf16->median_s;
    row.bf16_peak_gflops = bf16_peak_gflops;
    row.bf16_percent_of_peak =
        bf16_peak_gflops > 0 ? 100.0 * row.bf16_gflops / bf16_peak_gflops : 0;
    row.bf16_kernel =
        sdpa::uses_bf16_products(report_isa(options)) ? "avx512-bf16" : "widened to fp32";
  }
  if (!options.naive) {
    row.naive_note = "naive disabled (--no-naive)";
  } else if (scores.empty()) {
    row.naive_note = naive_skip_reason(row.shape, data.bytes(), options);
  } else {
    row.naive = timing_of(samples.naive_s);
    row.naive_steps = median_steps(samples.naive_steps);
    row.speedup_vs_naive = row.naive->median_s / row.sdpa.median_s;
    const NaiveSteps& steps = *row.naive_steps;
    row.speedup_vs_naive_gemms = (steps.scores_s + steps.output_s) / row.sdpa.median_s;
  }
  return row;
}

// The 1-minute load average (0 where /proc/loadavg is missing).
double load_average() {
  std::ifstream loadavg("/proc/loadavg");
  double load = 0;
  loadavg >> load;
  return load;
}

}  // namespace

GridReport run_grid(const GridOptions& requested,
                    const std::function<void(const GridReport&)>& on_row) {
  GridReport report;
  report.options = requested;
  GridOptions& options = report.options;
  options.threads = resolve_threads(options.threads);
  report.isa = sdpa::best_isa();
  // Children first: fork copies only the calling thread, so no OpenMP pool may exist yet.
  for (std::int64_t length : options.memory_lengths)
    report.memory.push_back(measure_forward_memory(
        {options.batch, options.heads, length, options.dim, false}, options.threads));
  report.load_average = load_average();
  double best_peak = 0, best_bf16_peak = 0;  // GFLOP/s, the fastest peak repetitions so far
  options.peak.bf16 = options.bf16;
  for (std::int64_t length : options.lengths) {
    AttentionData data = AttentionData::random({options.batch, options.heads, length, options.dim});
    if (options.bf16) data.add_bf16();
    // One L×L score matrix per length, shared by the causal and non-causal runs.
    std::unique_ptr<float[]> scores;
    std::size_t scores_floats = 0;
    if (options.naive && naive_skip_reason(data.shape, data.bytes(), options).empty()) {
      scores_floats = naive_scores_floats(data.shape);
      scores = std::make_unique<float[]>(scores_floats);
    }
    for (bool causal : options.causal) {
      data.shape.causal = causal;
      const PeakMeasurement peak = measure_fma_peak(options.threads, options.peak);
      if (report.rows.empty()) report.peak = peak;
      best_peak = std::max(best_peak, peak.best());
      best_bf16_peak = std::max(best_bf16_peak, peak.best_bf16);
      report.rows.push_back(
          measure_row(data, {scores.get(), scores_floats}, options, best_peak, best_bf16_peak));
      if (on_row) on_row(report);
    }
  }
  return report;
}

}  // namespace sdpa::bench
