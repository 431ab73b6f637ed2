// The benchmark layer: the machine's measured FMA peak, a naive OpenBLAS baseline, and the grid of
// sdpa::forward timings that `sdpa bench` and `sdpa_gbench` report against both.
//
// Every figure is judged by a ratio measured in the same run: % of the FMA peak at the same thread
// count, and × the naive three-step version (sgemm → softmax → sgemm). FLOPs follow the issue's
// convention 4·B·H·Lq·Lk·D, halved when causal.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "sdpa/sdpa.hpp"

namespace sdpa::bench {

// ---- timing ------------------------------------------------------------------------------------

/// Wall-clock seconds of `repeats` calls after `warmups` untimed ones.
struct Timing {
  double median_s = 0;
  double min_s = 0;
  int repeats = 0;
};

/// Median (the mean of the middle two for an even count) and minimum of `seconds`.
Timing timing_of(std::vector<double> seconds);

/// Median (and minimum) wall time of `fn`; repeats >= 1.
Timing time_repeats(const std::function<void()>& fn, int repeats, int warmups = 1);

/// Seconds on a monotonic clock.
double now_seconds();

/// OpenMP threads available to this process (all cores when `requested` <= 0).
int resolve_threads(int requested);

// ---- FMA peak ----------------------------------------------------------------------------------

struct PeakOptions {
  double seconds = 0.1;  ///< duration of one repetition
  int repeats = 5;       ///< repetitions; the median counts
  bool bf16 = false;     ///< also the bf16 dot-product peak (vdpbf16ps), where the CPU has it
};

/// fp32 FMA throughput of `threads` OpenMP threads, each running independent FMA chains.
/// A width the CPU lacks reads 0. Without AVX2/FMA, gflops_256 holds a portable mul+add loop.
/// The median is the figure of a quiet machine; the fastest repetition is the better estimate of
/// the hardware's peak under load (other processes can only slow a repetition down), so % of peak
/// is taken against best(): the conservative choice.
struct PeakMeasurement {
  int threads = 0;
  double gflops_256 = 0;  ///< 8-lane vectors (AVX2 + FMA), median of repetitions
  double gflops_512 = 0;  ///< 16-lane vectors (AVX-512F), median of repetitions
  double best_256 = 0;    ///< fastest repetition, 8 lanes
  double best_512 = 0;    ///< fastest repetition, 16 lanes
  /// bf16 dot products (vdpbf16ps: 2 multiply-adds per fp32 lane) when PeakOptions::bf16 and the
  /// CPU has AVX512_BF16; 0 otherwise. Median and fastest repetition.
  double gflops_bf16 = 0;
  double best_bf16 = 0;
  double gflops() const { return gflops_256 > gflops_512 ? gflops_256 : gflops_512; }
  double best() const { return best_256 > best_512 ? best_256 : best_512; }
};

PeakMeasurement measure_fma_peak(int threads, const PeakOptions& options = {});

/// The better of both vector widths (medians), in GFLOP/s.
double measure_fma_peak_gflops(int threads, const PeakOptions& options = {});

// ---- problems ----------------------------------------------------------------------------------

/// Self-attention with Lq = Lk = length and Dk = Dv = dim.
struct AttentionShape {
  std::int64_t batch = 1;
  std::int64_t heads = 8;
  std::int64_t length = 1024;
  std::int64_t dim = 128;
  bool causal = false;
};

/// 4·B·H·L²·D, halved when causal (the convention, not the exact visible-pair count).
double attention_flops(const AttentionShape& shape);

/// Random inputs in [-1, 1) and an output buffer, each contiguous [B, H, L, D] fp32; with
/// add_bf16(), also bf16 copies of q, k, v (rounded from the fp32 values) and a bf16 out.
struct AttentionData {
  AttentionShape shape;
  std::vector<float> q, k, v, out;
  std::vector<std::uint16_t> q16, k16, v16, out16;

  void add_bf16();

  static AttentionData random(const AttentionShape& shape, std::uint64_t seed = 42);
  /// Bytes of q, k, v and out together.
  std::size_t bytes() const;
};

/// One sdpa::forward call on `data` (causal = top-left when shape.causal); `dtype` f32, or bf16
/// for the bf16 copies (add_bf16 first).
sdpa::RunInfo run_sdpa_forward(AttentionData& data, int threads,
                               sdpa::DType dtype = sdpa::DType::f32);

// ---- naive baseline ----------------------------------------------------------------------------

/// Seconds spent in each of the three steps, summed over heads.
struct NaiveSteps {
  double scores_s = 0;   ///< S = scale·Q·Kᵀ   (sgemm)
  double softmax_s = 0;  ///< row softmax of S (OpenMP)
  double output_s = 0;   ///< O = P·V          (sgemm)
};

/// Floats of the score workspace: one full L×L matrix, reused for every (batch, head).
std::size_t naive_scores_floats(const AttentionShape& shape);

/// The straightforward fp32 three-step attention, one (batch, head) at a time:
///   S [L, L] = scale · Q [L, D] · Kᵀ       (cblas_sgemm on `threads` OpenBLAS threads)
///   P = softmax(S) row by row               (causal: S[i, j > i] = -inf before the max)
///   O [L, D] = P · V [L, D]                 (cblas_sgemm)
/// `scores` must hold naive_scores_floats(data.shape) floats. Writes data.out.
NaiveSteps naive_forward(AttentionData& data, std::span<float> scores, int threads);

// ---- peak memory -------------------------------------------------------------------------------

/// Resident-set high-water mark of sdpa-only forward calls on one shape, measured in a fresh
/// child process (fork) so that nothing the parent allocated counts.
struct MemoryMeasurement {
  std::int64_t length = 0;
  std::size_t io_bytes = 0;         ///< q, k, v and out
  std::size_t growth_bytes = 0;     ///< VmHWM − VmRSS before the inputs were allocated
  std::size_t extra_bytes = 0;      ///< growth beyond io_bytes (workspace, thread stacks, ...)
  std::size_t workspace_bytes = 0;  ///< what sdpa::forward reported allocating
};

/// Forks, runs two forward calls in the child and reads its /proc/self/status. Call it before the
/// parent has started OpenMP or OpenBLAS threads (fork copies only the calling thread).
MemoryMeasurement measure_forward_memory(const AttentionShape& shape, int threads);

// ---- the grid ----------------------------------------------------------------------------------

struct GridOptions {
  int threads = 0;  ///< 0 = all cores
  int repeats = 5;
  int warmups = 1;
  std::int64_t batch = 1;
  std::int64_t heads = 8;
  std::int64_t dim = 128;
  std::vector<std::int64_t> lengths{1024, 4096, 16384};
  std::vector<bool> causal{false, true};
  bool naive = true;
  std::size_t naive_memory_limit = std::size_t{4} << 30;  ///< skip naive beyond this many bytes
  std::vector<std::int64_t> memory_lengths{4096, 16384};  ///< empty = no RSS measurement
  PeakOptions peak;
  bool bf16 = false;  ///< also bf16 inputs, alternating with the fp32 calls (and the bf16 peak)
};

struct GridRow {
  AttentionShape shape;
  Timing sdpa;
  double gflops = 0;
  double peak_gflops = 0;                 ///< fastest FMA peak repetition so far in this run
  double percent_of_peak = 0;             ///< of peak_gflops
  std::optional<Timing> naive;            ///< absent when skipped
  std::optional<NaiveSteps> naive_steps;  ///< of the median-timed naive call
  double speedup_vs_naive = 0;            ///< naive median / sdpa median; 0 when skipped
  /// (QK + PV sgemm time of the median naive call) / sdpa median: the speedup over a three-step
  /// version whose softmax were free — the floor of the naive ratio.
  double speedup_vs_naive_gemms = 0;
  std::string naive_note;  ///< why naive was skipped
  // bf16 inputs (GridOptions::bf16): the same shape timed alternating with the fp32 calls.
  std::optional<Timing> bf16;
  double bf16_gflops = 0;
  double bf16_speedup = 0;          ///< fp32 median / bf16 median
  double bf16_peak_gflops = 0;      ///< fastest bf16 dot-product peak repetition so far
  double bf16_percent_of_peak = 0;  ///< of bf16_peak_gflops
  const char* bf16_kernel = "";     ///< "avx512-bf16" (vdpbf16ps) or "widened to fp32"
};

struct GridReport {
  GridOptions options;  ///< with threads resolved
  sdpa::Isa isa = sdpa::Isa::automatic;
  PeakMeasurement peak;     ///< measured before the first row
  double load_average = 0;  ///< 1-minute load average at the start (other processes)
  std::vector<MemoryMeasurement> memory;
  std::vector<GridRow> rows;
};

/// Memory (child processes) first, then every (length, causal) pair: the FMA peak again just
/// before each row (% of peak is against the fastest peak repetition so far: load can only lower
/// a peak measurement), then sdpa and naive calls alternating (background load slows both
/// alike). `on_row`, when
/// given, sees the report so far each time a row is appended (long grids print progress with it).
GridReport run_grid(const GridOptions& options,
                    const std::function<void(const GridReport&)>& on_row = {});

// ---- memory bandwidth and decode (decode_bench.cpp) --------------------------------------------

/// Streaming read bandwidth: `threads` OpenMP threads each read their own slice of a `bytes`
/// buffer (far larger than the last-level cache), `repeats` times; GB/s = 1e9 bytes per second.
/// Besides wall time, every figure is also taken on process CPU time (CLOCK_PROCESS_CPUTIME_ID,
/// divided by the thread count): on a machine shared with other jobs, wall time counts the time
/// the threads wait for a core, CPU time only the time they run (a busy-waiting OpenMP barrier
/// counts as running, so the CPU-time figure errs low, never high).
struct BandwidthMeasurement {
  int threads = 0;
  std::size_t bytes = 0;
  int repeats = 0;
  double gbps = 0;       ///< median repetition
  double best_gbps = 0;  ///< fastest repetition
  double cpu_gbps = 0;   ///< median repetition, on CPU time per thread
};

BandwidthMeasurement measure_read_bandwidth(int threads, std::size_t bytes = std::size_t{1} << 30,
                                            int repeats = 9);

/// Decode: Lq = 1 query against Lk cached keys per (batch, head), as in token generation.
struct DecodeOptions {
  int threads = 0;  ///< 0 = all cores
  int repeats = 9;
  std::int64_t batch = 1, heads_q = 32, heads_kv = 8, dim = 128;
  std::vector<std::int64_t> lengths{4096, 32768, 65536};
  bool prefill = true;  ///< also time the prefill (tiled) plan on the same call: before vs after
  bool caches = true;   ///< also time sdpa::KvCache attend() with f32, bf16 and int8 storage
  std::size_t bandwidth_bytes = std::size_t{1} << 30;
};

struct DecodeRow {
  std::int64_t length = 0;
  std::string storage;          ///< "f32 tensors", "bf16 cache", ...
  std::size_t kv_bytes = 0;     ///< bytes of K and V the call must read (with int8 scales)
  std::size_t cache_bytes = 0;  ///< bytes of the KvCache pool holding the sequence (0: tensors)
  Timing time;
  double gbps = 0;              ///< kv_bytes / median time
  double percent_of_bandwidth = 0;  ///< of the run's measured read bandwidth (median)
  double cpu_gbps = 0;              ///< kv_bytes / (median CPU time per thread)
  double cpu_percent_of_bandwidth = 0;  ///< of the bandwidth's cpu_gbps
  /// kv_bytes / fastest repetition, of the bandwidth's fastest repetition (best_gbps): on a loaded
  /// machine the medians include time a thread waited for a core, the fastest of each the least.
  double fastest_percent_of_bandwidth = 0;
  std::optional<Timing> prefill;    ///< the prefill plan on the same call
  double speedup_vs_prefill = 0;
};

struct DecodeReport {
  DecodeOptions options;  ///< threads resolved
  sdpa::Isa isa = sdpa::Isa::automatic;
  double load_average = 0;
  BandwidthMeasurement bandwidth;
  std::vector<DecodeRow> rows;
};

/// The read bandwidth first, then every length. `on_row` sees the report after each row.
DecodeReport run_decode_bench(const DecodeOptions& options,
                              const std::function<void(const DecodeReport&)>& on_row = {});

void print_bandwidth(std::ostream& os, const BandwidthMeasurement& bandwidth);
void print_decode_header(std::ostream& os, const DecodeReport& report);
void print_decode_row(std::ostream& os, const DecodeRow& row);
/// The targets: >= 70% of the measured read bandwidth (f32 / bf16), int8 cache time
/// <= 0.6x the bf16 cache time.
void print_decode_targets(std::ostream& os, const DecodeReport& report);

// ---- text output -------------------------------------------------------------------------------

void print_peak_table(std::ostream& os, const std::vector<PeakMeasurement>& peaks);
void print_grid_header(std::ostream& os, const GridReport& report);
void print_grid_row(std::ostream& os, const GridRow& row);
void print_memory(std::ostream& os, const std::vector<MemoryMeasurement>& memory);
/// The targets at L = 4096 (60% of peak, 50% causal, 3x naive), met or missed.
void print_targets(std::ostream& os, const GridReport& report);
/// Header, rows, memory and targets together.
void print_report(std::ostream& os, const GridReport& report);

namespace detail {
// ISA kernels of the FMA peak (fma_avx2.cpp, fma_avx512.cpp: each compiled with its own flags and
// called only when __builtin_cpu_supports says so). Each runs `iterations` rounds of independent
// FMA chains, stores a checksum in *sink so no chain is dead code, and returns the FLOPs it did.
double fma_chains_256(std::int64_t iterations, float* sink);
double fma_chains_512(std::int64_t iterations, float* sink);
double dpbf16_chains_512(std::int64_t iterations, float* sink);  // fma_avx512_bf16.cpp
}  // namespace detail

}  // namespace sdpa::bench
