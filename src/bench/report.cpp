// Text tables of the benchmark results. Each table ends in the ratios the figures are judged by.
#include <cstdint>
#include <cstdio>
#include <ostream>
#include <string>
#include <vector>

#include "bench/bench.hpp"

namespace sdpa::bench {
namespace {

constexpr double kMiB = 1024.0 * 1024.0;

// printf-style formatting into a std::string (the tables are fixed-width columns).
template <typename... Args>
std::string format(const char* pattern, Args... args) {
  char buffer[256];
  std::snprintf(buffer, sizeof buffer, pattern, args...);
  return buffer;
}

double mib(std::size_t bytes) { return static_cast<double>(bytes) / kMiB; }

std::string ratio_text(double numerator, double denominator) {
  return denominator > 0 ? format("%.2fx", numerator / denominator) : std::string("n/a");
}

}  // namespace

void print_peak_table(std::ostream& os, const std::vector<PeakMeasurement>& peaks) {
  os << "fp32 FMA peak (independent FMA chains, median of repetitions)\n";
  os << "threads   256-bit GFLOP/s   512-bit GFLOP/s   peak GFLOP/s   per thread   x 1 thread"
        "   fastest rep\n";
  const double single = peaks.empty() ? 0 : peaks.front().gflops();
  for (const PeakMeasurement& p : peaks)
    os << format("%7d   %15.1f   %15.1f   %12.1f   %10.1f   %10s   %11.1f\n", p.threads,
                 p.gflops_256, p.gflops_512, p.gflops(), p.gflops() / p.threads,
                 ratio_text(p.gflops(), single).c_str(), p.best());
  if (peaks.empty() || peaks.front().gflops_bf16 <= 0) return;
  os << "\nbf16 dot-product peak (independent vdpbf16ps chains, 64 FLOPs each, median of "
        "repetitions)\n";
  os << "threads   bf16 GFLOP/s   x fp32 peak   fastest rep\n";
  for (const PeakMeasurement& p : peaks)
    os << format("%7d   %12.1f   %11s   %11.1f\n", p.threads, p.gflops_bf16,
                 ratio_text(p.gflops_bf16, p.gflops()).c_str(), p.best_bf16);
}

void print_grid_header(std::ostream& os, const GridReport& report) {
  const GridOptions& o = report.options;
  const PeakMeasurement& p = report.peak;
  os << format(
      "sdpa bench: B=%lld H=%lld D=%lld, %d threads, isa %s, median of %d (%d warm-up), sdpa and "
      "naive calls interleaved\n",
      static_cast<long long>(o.batch), static_cast<long long>(o.heads),
      static_cast<long long>(o.dim), o.threads, sdpa::isa_name(report.isa), o.repeats, o.warmups);
  os << format(
      "FMA peak at %d threads: 256-bit %.1f, 512-bit %.1f -> peak %.1f GFLOP/s (median); "
      "fastest repetition %.1f\n",
      p.threads, p.gflops_256, p.gflops_512, p.gflops(), p.best());
  if (o.bf16)
    os << format(
        "bf16 dot-product peak (vdpbf16ps) at %d threads: %.1f GFLOP/s (median), fastest "
        "%.1f; bf16 rows: bf16 q, k, v and out, calls alternating with fp32\n",
        p.threads, p.gflops_bf16, p.best_bf16);
  os << "measured again before every row; % peak is against column 'peak', the fastest repetition "
        "so far\n";
  if (report.load_average > 0.5)
    os << format(
        "warning: load average %.2f at the start: other processes share the cores, "
        "figures are noisy\n",
        report.load_average);
  os << "GFLOP/s = 4*B*H*L*L*D (halved when causal) / median time; x naive = naive median / sdpa "
        "median;\nx sgemms = the naive version's two sgemm calls alone / sdpa (its softmax taken "
        "as "
        "free)\n\n";
  os << "      L  causal    time ms    GFLOP/s    peak   % peak    naive ms   x naive  x sgemms"
        "   naive QK/softmax/PV\n";
}

void print_grid_row(std::ostream& os, const GridRow& row) {
  os << format("%7lld  %6s  %9.2f  %9.1f  %6.1f  %6.1f%%", static_cast<long long>(row.shape.length),
               row.shape.causal ? "on" : "off", row.sdpa.median_s * 1e3, row.gflops,
               row.peak_gflops, row.percent_of_peak);
  if (row.naive && row.naive_steps) {
    const NaiveSteps& s = *row.naive_steps;
    const double total = s.scores_s + s.softmax_s + s.output_s;
    os << format("  %10.2f  %7.2fx  %7.2fx   %3.0f%% / %3.0f%% / %3.0f%%",
                 row.naive->median_s * 1e3, row.speedup_vs_naive, row.speedup_vs_naive_gemms,
                 100 * s.scores_s / total, 100 * s.softmax_s / total, 100 * s.output_s / total);
  } else {
    os << "           -         -         -   " << row.naive_note;
  }
  os << "\n";
  if (row.bf16)
    os << format(
        "           bf16  %9.2f  %9.1f  %6.1f  %6.1f%%   %.2fx fp32 (%s; %% of the bf16 "
        "dot-product peak)\n",
        row.bf16->median_s * 1e3, row.bf16_gflops, row.bf16_peak_gflops, row.bf16_percent_of_peak,
        row.bf16_speedup, row.bf16_kernel);
  os << std::flush;
}

void print_memory(std::ostream& os, const std::vector<MemoryMeasurement>& memory) {
  if (memory.empty()) return;
  os << "\npeak RSS of sdpa-only forward calls (fresh child process per length, causal off)\n";
  os << "      L   q+k+v+out MiB   RSS growth MiB   growth - io MiB   forward workspace MiB\n";
  for (const MemoryMeasurement& m : memory)
    os << format("%7lld   %13.1f   %14.1f   %15.2f   %21.2f\n", static_cast<long long>(m.length),
                 mib(m.io_bytes), mib(m.growth_bytes), mib(m.extra_bytes), mib(m.workspace_bytes));
  if (memory.size() < 2) return;
  const MemoryMeasurement& a = memory.front();
  const MemoryMeasurement& b = memory.back();
  os << format(
      "RSS growth L=%lld -> %lld (L x%.1f; O(L) means about the same ratio): %s",
      static_cast<long long>(a.length), static_cast<long long>(b.length),
      static_cast<double>(b.length) / static_cast<double>(a.length),
      ratio_text(static_cast<double>(b.growth_bytes), static_cast<double>(a.growth_bytes)).c_str());
  os << format("; beyond inputs/outputs: %.2f MiB -> %.2f MiB\n", mib(a.extra_bytes),
               mib(b.extra_bytes));
}

void print_targets(std::ostream& os, const GridReport& report) {
  for (const GridRow& row : report.rows) {
    if (row.shape.length != 4096) continue;
    const double peak_target = row.shape.causal ? 50.0 : 60.0;
    os << format("target L=4096 causal %-3s: %5.1f%% of peak (>= %.0f%%: %s)",
                 row.shape.causal ? "on" : "off", row.percent_of_peak, peak_target,
                 row.percent_of_peak >= peak_target ? "met" : "MISSED");
    if (row.naive)
      os << format(", %.2fx naive (>= 3x: %s; %.2fx its sgemms alone)", row.speedup_vs_naive,
                   row.speedup_vs_naive >= 3.0 ? "met" : "MISSED", row.speedup_vs_naive_gemms);
    os << "  [" << report.options.threads << " threads]\n";
    if (row.bf16)
      os << format(
          "target L=4096 causal %-3s bf16: %.2fx the fp32 forward (>= 1.6x: %s), "
          "%.1f%% of the bf16 dot-product peak  [%s]\n",
          row.shape.causal ? "on" : "off", row.bf16_speedup,
          row.bf16_speedup >= 1.6 ? "met" : "MISSED", row.bf16_percent_of_peak, row.bf16_kernel);
  }
}

void print_report(std::ostream& os, const GridReport& report) {
  print_grid_header(os, report);
  for (const GridRow& row : report.rows) print_grid_row(os, row);
  print_memory(os, report.memory);
  os << "\n";
  print_targets(os, report);
}

}  // namespace sdpa::bench
