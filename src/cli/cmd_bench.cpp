// sdpa bench: the benchmark grid of the issue (sdpa::forward against the measured FMA peak and the
// naive OpenBLAS version, plus the RSS growth with L), or with --peak the FMA peak per thread
// count. Every table ends in the ratios the figures are judged by.
#include <cstdint>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/bench.hpp"
#include "cli/commands.hpp"
#include "core/errors.hpp"

namespace sdpa::cli {
namespace {

struct BenchArgs {
  int threads = 0;  // 0 = all cores
  int repeats = 5;
  std::vector<std::int64_t> lengths{1024, 4096, 16384};
  std::vector<std::int64_t> memory_lengths{4096, 16384};
  std::int64_t batch = 1, heads = 8, dim = 128;
  std::string causal = "both";
  double naive_limit_gib = 4;
  bool no_naive = false, no_memory = false, peak_only = false, json = false;
  bool bandwidth_only = false, decode = false, no_prefill = false, no_caches = false;
  std::vector<std::int64_t> decode_lengths{4096, 32768, 65536};
  std::int64_t heads_kv = 8;
  bool heads_given = false;  // --decode defaults to Hq = 32 (the shape)
  double bandwidth_mib = 1024;
  std::string dtype = "f32";
};

using nlohmann::json;

json peak_json(const bench::PeakMeasurement& p) {
  return {{"threads", p.threads},           {"gflops_256", p.gflops_256},
          {"gflops_512", p.gflops_512},     {"gflops", p.gflops()},
          {"best_gflops_256", p.best_256},  {"best_gflops_512", p.best_512},
          {"best_gflops", p.best()},        {"gflops_bf16", p.gflops_bf16},
          {"best_gflops_bf16", p.best_bf16}};
}

json row_json(const bench::GridRow& r) {
  json row = {{"length", r.shape.length},
              {"causal", r.shape.causal},
              {"time_ms", r.sdpa.median_s * 1e3},
              {"min_ms", r.sdpa.min_s * 1e3},
              {"gflops", r.gflops},
              {"peak_gflops", r.peak_gflops},
              {"percent_of_peak", r.percent_of_peak},
              {"naive", nullptr}};
  if (r.naive && r.naive_steps) {
    row["naive"] = {{"time_ms", r.naive->median_s * 1e3},
                    {"qk_sgemm_ms", r.naive_steps->scores_s * 1e3},
                    {"softmax_ms", r.naive_steps->softmax_s * 1e3},
                    {"pv_sgemm_ms", r.naive_steps->output_s * 1e3}};
    row["speedup_vs_naive"] = r.speedup_vs_naive;
    row["speedup_vs_naive_sgemms"] = r.speedup_vs_naive_gemms;
  } else {
    row["naive_note"] = r.naive_note;
  }
  if (r.bf16)
    row["bf16"] = {{"time_ms", r.bf16->median_s * 1e3},
                   {"gflops", r.bf16_gflops},
                   {"speedup_vs_fp32", r.bf16_speedup},
                   {"bf16_peak_gflops", r.bf16_peak_gflops},
                   {"percent_of_bf16_peak", r.bf16_percent_of_peak},
                   {"kernel", r.bf16_kernel}};
  return row;
}

json memory_json(const std::vector<bench::MemoryMeasurement>& memory) {
  json rows = json::array();
  for (const bench::MemoryMeasurement& m : memory)
    rows.push_back({{"length", m.length},
                    {"io_bytes", m.io_bytes},
                    {"rss_growth_bytes", m.growth_bytes},
                    {"rss_growth_minus_io_bytes", m.extra_bytes},
                    {"forward_workspace_bytes", m.workspace_bytes}});
  json result = {{"rows", rows}};
  if (memory.size() >= 2 && memory.front().growth_bytes > 0) {
    const bench::MemoryMeasurement& a = memory.front();
    const bench::MemoryMeasurement& b = memory.back();
    result["length_ratio"] = static_cast<double>(b.length) / static_cast<double>(a.length);
    result["rss_growth_ratio"] =
        static_cast<double>(b.growth_bytes) / static_cast<double>(a.growth_bytes);
  }
  return result;
}

json report_json(const bench::GridReport& report) {
  const bench::GridOptions& o = report.options;
  json rows = json::array();
  for (const bench::GridRow& r : report.rows) rows.push_back(row_json(r));
  return {{"command", "bench"},
          {"threads", o.threads},
          {"isa", isa_name(report.isa)},
          {"load_average", report.load_average},
          {"repeats", o.repeats},
          {"warmups", o.warmups},
          {"batch", o.batch},
          {"heads", o.heads},
          {"dim", o.dim},
          {"flops", "4*B*H*L*L*D, halved when causal"},
          {"peak", peak_json(report.peak)},
          {"rows", rows},
          {"memory", memory_json(report.memory)}};
}

bench::GridOptions grid_options(const BenchArgs& a) {
  bench::GridOptions o;
  o.threads = a.threads;
  o.repeats = a.repeats;
  o.batch = a.batch;
  o.heads = a.heads;
  o.dim = a.dim;
  o.lengths = a.lengths;
  o.memory_lengths = a.no_memory ? std::vector<std::int64_t>{} : a.memory_lengths;
  if (a.causal == "both")
    o.causal = {false, true};
  else if (a.causal == "on")
    o.causal = {true};
  else if (a.causal == "off")
    o.causal = {false};
  else
    fail("--causal = '", a.causal, "': expected both, on or off");
  o.naive = !a.no_naive;
  o.bf16 = a.dtype == "bf16";
  if (!(a.naive_limit_gib >= 0)) fail("--naive-limit-gib = ", a.naive_limit_gib, ": expected >= 0");
  o.naive_memory_limit = static_cast<std::size_t>(a.naive_limit_gib * 1024 * 1024 * 1024);
  return o;
}

void run_peak(const BenchArgs& a) {
  std::vector<bench::PeakMeasurement> peaks;
  bench::PeakOptions options;
  options.bf16 = true;
  for (int threads = 1; threads <= bench::resolve_threads(a.threads); ++threads)
    peaks.push_back(bench::measure_fma_peak(threads, options));
  if (a.json) {
    json rows = json::array();
    for (const bench::PeakMeasurement& p : peaks) rows.push_back(peak_json(p));
    std::cout << json{{"command", "bench --peak"}, {"peak", rows}}.dump(2) << std::endl;
  } else {
    bench::print_peak_table(std::cout, peaks);
  }
}

void run_grid(const BenchArgs& a) {
  const bench::GridOptions options = grid_options(a);
  if (a.json) {
    std::cout << report_json(bench::run_grid(options)).dump(2) << std::endl;
    return;
  }
  // Rows are printed as they are measured: the full grid takes minutes.
  const bench::GridReport report = bench::run_grid(options, [](const bench::GridReport& partial) {
    if (partial.rows.size() == 1) bench::print_grid_header(std::cout, partial);
    bench::print_grid_row(std::cout, partial.rows.back());
  });
  if (report.rows.empty()) bench::print_grid_header(std::cout, report);
  bench::print_memory(std::cout, report.memory);
  std::cout << "\n";
  bench::print_targets(std::cout, report);
}

json bandwidth_json(const bench::BandwidthMeasurement& b) {
  return {{"threads", b.threads}, {"bytes", b.bytes},         {"repeats", b.repeats},
          {"gbps", b.gbps},       {"best_gbps", b.best_gbps}, {"cpu_gbps", b.cpu_gbps}};
}

std::size_t bandwidth_bytes(const BenchArgs& a) {
  if (!(a.bandwidth_mib >= 1)) fail("--bandwidth-mib = ", a.bandwidth_mib, ": expected >= 1");
  return static_cast<std::size_t>(a.bandwidth_mib * 1024 * 1024);
}

void run_bandwidth(const BenchArgs& a) {
  const bench::BandwidthMeasurement b =
      bench::measure_read_bandwidth(bench::resolve_threads(a.threads), bandwidth_bytes(a));
  if (a.json)
    std::cout << json{{"command", "bench --bandwidth"}, {"bandwidth", bandwidth_json(b)}}.dump(2)
              << std::endl;
  else
    bench::print_bandwidth(std::cout, b);
}

void run_decode(const BenchArgs& a) {
  bench::DecodeOptions o;
  o.threads = a.threads;
  o.repeats = a.repeats;
  o.batch = a.batch;
  o.heads_q = a.heads_given ? a.heads : 32;
  o.heads_kv = a.heads_kv;
  o.dim = a.dim;
  o.lengths = a.decode_lengths;
  o.prefill = !a.no_prefill;
  o.caches = !a.no_caches;
  o.bandwidth_bytes = bandwidth_bytes(a);
  if (o.heads_q % o.heads_kv != 0)
    fail("--heads = ", o.heads_q, ": expected a multiple of --heads-kv = ", o.heads_kv);
  if (a.json) {
    const bench::DecodeReport r = bench::run_decode_bench(o);
    json rows = json::array();
    for (const bench::DecodeRow& row : r.rows) {
      json j = {{"length", row.length},       {"storage", row.storage},
                {"kv_bytes", row.kv_bytes},   {"time_ms", row.time.median_s * 1e3},
                {"min_ms", row.time.min_s * 1e3}, {"gbps", row.gbps},
                {"percent_of_bandwidth", row.percent_of_bandwidth},
                {"cpu_gbps", row.cpu_gbps},
                {"cpu_percent_of_bandwidth", row.cpu_percent_of_bandwidth},
                {"fastest_percent_of_bandwidth", row.fastest_percent_of_bandwidth}};
      if (row.cache_bytes > 0) j["cache_bytes"] = row.cache_bytes;
      if (row.prefill) {
        j["prefill_time_ms"] = row.prefill->median_s * 1e3;
        j["speedup_vs_prefill"] = row.speedup_vs_prefill;
      }
      rows.push_back(j);
    }
    std::cout << json{{"command", "bench --decode"}, {"threads", r.options.threads},
                      {"isa", isa_name(r.isa)},       {"load_average", r.load_average},
                      {"batch", o.batch},             {"heads_q", o.heads_q},
                      {"heads_kv", o.heads_kv},       {"dim", o.dim},
                      {"bandwidth", bandwidth_json(r.bandwidth)}, {"rows", rows}}
                     .dump(2)
              << std::endl;
    return;
  }
  const bench::DecodeReport r = bench::run_decode_bench(o, [](const bench::DecodeReport& partial) {
    if (partial.rows.size() == 1) bench::print_decode_header(std::cout, partial);
    bench::print_decode_row(std::cout, partial.rows.back());
  });
  if (r.rows.empty()) bench::print_decode_header(std::cout, r);
  std::cout << "\n";
  bench::print_decode_targets(std::cout, r);
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto args = std::make_shared<BenchArgs>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Benchmark grid: GFLOP/s, % of measured FMA peak, x naive OpenBLAS, RSS growth");
  cmd->add_option("--threads", args->threads, "threads (default: all cores)")
      ->check(CLI::Range(0, 4096));
  cmd->add_option("--repeats", args->repeats, "timed repeats per figure; the median counts")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  cmd->add_option("--lengths", args->lengths, "sequence lengths L (comma separated)")
      ->delimiter(',')
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 20))
      ->capture_default_str();
  cmd->add_option("--memory-lengths", args->memory_lengths,
                  "lengths for the RSS high-water measurement (fresh child process each)")
      ->delimiter(',')
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 20))
      ->capture_default_str();
  cmd->add_option("--dim", args->dim, "head dimension D")
      ->check(CLI::Range(1, 512))
      ->capture_default_str();
  cmd->add_option("--heads", args->heads, "heads H")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  cmd->add_option("--batch", args->batch, "batch B")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  cmd->add_option("--causal", args->causal, "causal mask: both, on or off")
      ->check(CLI::IsMember({"both", "on", "off"}))
      ->capture_default_str();
  cmd->add_option("--naive-limit-gib", args->naive_limit_gib,
                  "skip the naive version where its L x L scores + inputs exceed this")
      ->capture_default_str();
  cmd->add_option("--dtype", args->dtype,
                  "f32, or bf16: every row also times bf16 inputs (alternating with fp32) against "
                  "the bf16 dot-product peak")
      ->check(CLI::IsMember({"f32", "bf16"}))
      ->capture_default_str();
  cmd->add_flag("--no-naive", args->no_naive, "skip the naive OpenBLAS baseline");
  cmd->add_flag("--no-memory", args->no_memory, "skip the RSS measurement");
  cmd->add_flag(
      "--peak", args->peak_only,
      "only measure the fp32 FMA peak (and the bf16 dot-product peak) per thread count 1..N");
  cmd->add_flag("--json", args->json, "print one JSON object instead of tables");
  cmd->add_flag("--bandwidth", args->bandwidth_only,
                "only measure the streaming read bandwidth (GB/s) at --threads");
  cmd->add_flag("--decode", args->decode,
                "decode benchmark: Lq = 1 against --decode-lengths keys, GB/s of K and V read vs "
                "the read bandwidth measured in the same run (default shape: Hq = 32 unless --heads "
                "is given, --heads-kv 8, --dim 128)");
  cmd->add_option("--decode-lengths", args->decode_lengths, "key lengths Lk of --decode")
      ->delimiter(',')
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{1} << 22))
      ->capture_default_str();
  cmd->add_option("--heads-kv", args->heads_kv, "key/value heads Hkv of --decode")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  cmd->add_option("--bandwidth-mib", args->bandwidth_mib,
                  "buffer size of the bandwidth measurement (far larger than the last-level cache)")
      ->capture_default_str();
  cmd->add_flag("--no-prefill", args->no_prefill, "--decode: skip timing the prefill plan");
  cmd->add_flag("--no-caches", args->no_caches,
                "--decode: skip the KvCache rows (f32, bf16, int8 storage)");
  cmd->callback([args, cmd] {
    args->heads_given = cmd->count("--heads") > 0;
    if (args->peak_only) return run_peak(*args);
    if (args->bandwidth_only) return run_bandwidth(*args);
    if (args->decode) return run_decode(*args);
    run_grid(*args);
  });
}

}  // namespace sdpa::cli
