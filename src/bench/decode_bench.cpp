// The memory-bound side of the benchmarks: the machine's streaming read bandwidth and the decode
// calls (one query row against a long KV sequence) judged against it, GB/s of K and V read.
#include <omp.h>
#include <time.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <new>
#include <ostream>
#include <string>
#include <vector>

#include "bench/bench.hpp"
#include "core/decode.hpp"
#include "core/workspace.hpp"
#include "sdpa/kv_cache.hpp"

namespace sdpa::bench {
namespace {

template <typename... Args>
std::string format(const char* pattern, Args... args) {
  char buffer[256];
  std::snprintf(buffer, sizeof buffer, pattern, args...);
  return buffer;
}

double load_average() {
  std::ifstream loadavg("/proc/loadavg");
  double load = 0;
  loadavg >> load;
  return load;
}

// Uninitialized memory on the pages KvCache's pool gets (allocate_large: huge pages where Linux
// allows), so that the bandwidth reference, the f32 tensors and the caches are all read through
// the same kind of pages. The callers write every element in parallel, so each thread
// first-touches the pages it later reads: they sit on its memory node.
struct AlignedFree {
  void operator()(void* p) const { std::free(p); }
};
template <typename T>
std::unique_ptr<T[], AlignedFree> aligned_array(std::size_t count) {
  void* data = sdpa::allocate_large(count * sizeof(T));
  if (data == nullptr) throw std::bad_alloc();
  return std::unique_ptr<T[], AlignedFree>(static_cast<T*>(data));
}

// One streaming pass: each thread XORs its slice of 64-bit words (four independent chains, so the
// loads, not the adds, bound the loop). Returns the checksum so the reads cannot be dropped.
std::uint64_t read_pass(const std::uint64_t* words, std::size_t count, int threads) {
  std::uint64_t checksum = 0;
#pragma omp parallel num_threads(threads) reduction(^ : checksum)
  {
    const auto t = static_cast<std::size_t>(omp_get_thread_num());
    const auto n = static_cast<std::size_t>(omp_get_num_threads());
    const std::size_t begin = count * t / n / 8 * 8, end = count * (t + 1) / n / 8 * 8;
    std::uint64_t a = 0, b = 0, c = 0, d = 0;
    for (std::size_t i = begin; i < end; i += 8) {
      a ^= words[i] ^ words[i + 4];
      b ^= words[i + 1] ^ words[i + 5];
      c ^= words[i + 2] ^ words[i + 6];
      d ^= words[i + 3] ^ words[i + 7];
    }
    checksum ^= a ^ b ^ c ^ d;
  }
  return checksum;
}

// Values of a pure function of (seed, index) in [-1, 1), written in parallel (first touch).
void fill_random(float* values, std::size_t count, std::uint64_t seed, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (std::size_t i = 0; i < count; ++i) {
    std::uint64_t z = seed + 0x9e3779b97f4a7c15ULL * (i + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    values[i] = static_cast<float>(z >> 40) * 0x1.0p-23f - 1.0f;
  }
}

double cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

// Wall and process-CPU medians of `repeats` calls after one warm-up.
struct Timings {
  Timing wall, cpu;
};
Timings time_both(const std::function<void()>& fn, int repeats) {
  fn();
  std::vector<double> wall, cpu;
  for (int i = 0; i < std::max(1, repeats); ++i) {
    const double w0 = now_seconds(), c0 = cpu_seconds();
    fn();
    cpu.push_back(cpu_seconds() - c0);
    wall.push_back(now_seconds() - w0);
  }
  return {timing_of(wall), timing_of(cpu)};
}

}  // namespace

BandwidthMeasurement measure_read_bandwidth(int threads, std::size_t bytes, int repeats) {
  BandwidthMeasurement m;
  m.threads = resolve_threads(threads);
  const std::size_t count = bytes / sizeof(std::uint64_t) / 64 * 64;
  m.bytes = count * sizeof(std::uint64_t);
  auto words = aligned_array<std::uint64_t>(count);
#pragma omp parallel for num_threads(m.threads) schedule(static)
  for (std::size_t i = 0; i < count; ++i) words[i] = i * 0x9e3779b97f4a7c15ULL;
  volatile std::uint64_t sink = 0;
  const Timings both =
      time_both([&] { sink = sink ^ read_pass(words.get(), count, m.threads); }, repeats);
  const Timing& t = both.wall;
  m.repeats = t.repeats;
  m.cpu_gbps = static_cast<double>(m.bytes) / (both.cpu.median_s / m.threads) * 1e-9;
  m.gbps = static_cast<double>(m.bytes) / t.median_s * 1e-9;
  m.best_gbps = static_cast<double>(m.bytes) / t.min_s * 1e-9;
  return m;
}

DecodeReport run_decode_bench(const DecodeOptions& requested,
                              const std::function<void(const DecodeReport&)>& on_row) {
  DecodeReport report;
  report.options = requested;
  DecodeOptions& o = report.options;
  o.threads = resolve_threads(o.threads);
  report.isa = sdpa::best_isa();
  report.load_average = load_average();
  report.bandwidth = measure_read_bandwidth(o.threads, o.bandwidth_bytes);

  std::vector<float> q(static_cast<std::size_t>(o.batch * o.heads_q * o.dim));
  std::vector<float> out(q.size());
  fill_random(q.data(), q.size(), 1, o.threads);
  for (const std::int64_t length : o.lengths) {
    const auto kv_count = static_cast<std::size_t>(o.batch * o.heads_kv * length * o.dim);
    auto k = aligned_array<float>(kv_count), v = aligned_array<float>(kv_count);
    fill_random(k.get(), kv_count, 2, o.threads);
    fill_random(v.get(), kv_count, 3, o.threads);
    const Tensor tq = Tensor::contiguous(q.data(), DType::f32, {o.batch, o.heads_q, 1, o.dim});
    const Tensor tk = Tensor::contiguous(k.get(), DType::f32, {o.batch, o.heads_kv, length, o.dim});
    const Tensor tv = Tensor::contiguous(v.get(), DType::f32, {o.batch, o.heads_kv, length, o.dim});
    Options options;
    options.threads = o.threads;
    Outputs outputs;
    outputs.out = Tensor::contiguous(out.data(), DType::f32, {o.batch, o.heads_q, 1, o.dim});
    DecodeRow row;
    row.length = length;
    row.storage = "f32 tensors";
    row.kv_bytes = 2 * kv_count * sizeof(float);
    const Timings both = time_both([&] { sdpa::forward(tq, tk, tv, options, outputs); }, o.repeats);
    row.time = both.wall;
    row.gbps = static_cast<double>(row.kv_bytes) / row.time.median_s * 1e-9;
    row.percent_of_bandwidth = 100.0 * row.gbps / report.bandwidth.gbps;
    row.cpu_gbps = static_cast<double>(row.kv_bytes) / (both.cpu.median_s / o.threads) * 1e-9;
    row.cpu_percent_of_bandwidth = 100.0 * row.cpu_gbps / report.bandwidth.cpu_gbps;
    row.fastest_percent_of_bandwidth = 100.0 * static_cast<double>(row.kv_bytes) /
                                       row.time.min_s * 1e-9 / report.bandwidth.best_gbps;
    if (o.prefill) {
      row.prefill = time_repeats(
          [&] { forward_with_plan(tq, tk, tv, options, outputs, ForwardPlan::prefill); },
          std::max(1, o.repeats / 3), 1);
      row.speedup_vs_prefill = row.prefill->median_s / row.time.median_s;
    }
    report.rows.push_back(row);
    if (on_row) on_row(report);
    if (!o.caches) continue;
    // The same sequence in a paged KvCache of each storage type (one sequence per batch entry).
    for (const KvStorage storage : {KvStorage::f32, KvStorage::bf16, KvStorage::i8}) {
      const std::int64_t block_tokens = 256;
      KvCache cache({o.heads_kv, o.dim, o.dim, block_tokens,
                     o.batch * ((length + block_tokens - 1) / block_tokens), storage});
      std::vector<int> ids;
      for (std::int64_t b = 0; b < o.batch; ++b) {
        ids.push_back(cache.add_sequence());
        const std::int64_t offset = b * o.heads_kv * length * o.dim;
        cache.append(ids.back(),
                     Tensor::contiguous(k.get() + offset, DType::f32, {o.heads_kv, length, o.dim}),
                     Tensor::contiguous(v.get() + offset, DType::f32, {o.heads_kv, length, o.dim}));
      }
      AttendOptions attend;
      attend.threads = o.threads;
      DecodeRow c;
      c.length = length;
      c.storage = std::string(kv_storage_name(storage)) + " cache";
      c.kv_bytes = cache.bytes_per_token() * static_cast<std::size_t>(length * o.batch);
      c.cache_bytes = cache.bytes();
      const Timings cache_times = time_both(
          [&] {
            for (std::int64_t b = 0; b < o.batch; ++b) {
              const std::int64_t offset = b * o.heads_q * o.dim;
              cache.attend(
                  ids[static_cast<std::size_t>(b)],
                  Tensor::contiguous(q.data() + offset, DType::f32, {o.heads_q, 1, o.dim}),
                  Tensor::contiguous(out.data() + offset, DType::f32, {o.heads_q, 1, o.dim}),
                  attend);
            }
          },
          o.repeats);
      c.time = cache_times.wall;
      c.gbps = static_cast<double>(c.kv_bytes) / c.time.median_s * 1e-9;
      c.percent_of_bandwidth = 100.0 * c.gbps / report.bandwidth.gbps;
      c.cpu_gbps = static_cast<double>(c.kv_bytes) / (cache_times.cpu.median_s / o.threads) * 1e-9;
      c.cpu_percent_of_bandwidth = 100.0 * c.cpu_gbps / report.bandwidth.cpu_gbps;
      c.fastest_percent_of_bandwidth = 100.0 * static_cast<double>(c.kv_bytes) / c.time.min_s *
                                       1e-9 / report.bandwidth.best_gbps;
      report.rows.push_back(c);
      if (on_row) on_row(report);
    }
  }
  return report;
}

void print_bandwidth(std::ostream& os, const BandwidthMeasurement& b) {
  os << format(
      "read bandwidth: %d threads streaming a %.0f MiB buffer: %.1f GB/s (median of %d), "
      "fastest %.1f GB/s; on CPU time %.1f GB/s\n",
      b.threads, static_cast<double>(b.bytes) / (1024.0 * 1024.0), b.gbps, b.repeats, b.best_gbps,
      b.cpu_gbps);
}

void print_decode_header(std::ostream& os, const DecodeReport& report) {
  const DecodeOptions& o = report.options;
  os << format(
      "sdpa bench --decode: B=%lld Hq=%lld Hkv=%lld D=%lld Lq=1, %d threads, isa %s, median of "
      "%d\n",
      static_cast<long long>(o.batch), static_cast<long long>(o.heads_q),
      static_cast<long long>(o.heads_kv), static_cast<long long>(o.dim), o.threads,
      sdpa::isa_name(report.isa), o.repeats);
  if (report.load_average > 0.5)
    os << format("warning: load average %.2f at the start: other processes share the cores\n",
                 report.load_average);
  print_bandwidth(os, report.bandwidth);
  os << "      Lk  storage          K+V MiB    time ms     GB/s   % of bandwidth   CPU-time GB/s  "
        "  %   prefill ms   x prefill\n";
}

void print_decode_row(std::ostream& os, const DecodeRow& r) {
  os << format("%8lld  %-15s %8.1f %10.3f %8.1f %16.1f %14.1f %5.1f",
               static_cast<long long>(r.length), r.storage.c_str(),
               static_cast<double>(r.kv_bytes) / (1024.0 * 1024.0), r.time.median_s * 1e3, r.gbps,
               r.percent_of_bandwidth, r.cpu_gbps, r.cpu_percent_of_bandwidth);
  if (r.prefill) os << format(" %12.3f %10.2fx", r.prefill->median_s * 1e3, r.speedup_vs_prefill);
  if (r.cache_bytes > 0)
    os << format("   cache pool %.1f MiB", static_cast<double>(r.cache_bytes) / (1024.0 * 1024.0));
  os << "\n";
}

void print_decode_targets(std::ostream& os, const DecodeReport& report) {
  for (const DecodeRow& r : report.rows) {
    if (r.storage.rfind("i8", 0) == 0) {
      for (const DecodeRow& bf16 : report.rows)
        if (bf16.length == r.length && bf16.storage == "bf16 cache") {
          const double ratio = r.time.median_s / bf16.time.median_s;
          const double cpu_ratio = (static_cast<double>(r.kv_bytes) / r.cpu_gbps) /
                                   (static_cast<double>(bf16.kv_bytes) / bf16.cpu_gbps);
          const double fastest_ratio = r.time.min_s / bf16.time.min_s;
          os << format(
              "target int8 cache time <= 0.6x bf16 cache time, Lk=%lld: %.2fx %s (on CPU time: "
              "%.2fx %s; fastest repetitions: %.2fx)\n",
              static_cast<long long>(r.length), ratio, ratio <= 0.6 ? "met" : "MISSED", cpu_ratio,
              cpu_ratio <= 0.6 ? "met" : "MISSED", fastest_ratio);
        }
      continue;
    }
    const double fastest = r.fastest_percent_of_bandwidth;
    os << format(
        "target >= 70%% of read bandwidth, Lk=%lld %s: %.1f%% %s (on CPU time: %.1f%% %s; "
        "fastest repetitions: %.1f%%)\n",
        static_cast<long long>(r.length), r.storage.c_str(), r.percent_of_bandwidth,
        r.percent_of_bandwidth >= 70 ? "met" : "MISSED", r.cpu_percent_of_bandwidth,
        r.cpu_percent_of_bandwidth >= 70 ? "met" : "MISSED", fastest);
  }
}

}  // namespace sdpa::bench
