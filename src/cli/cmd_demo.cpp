// sdpa demo (and `sdpa` with no arguments): random Q, K, V with a fixed seed, the fused forward,
// and a spot check of a few output rows against the fp64 reference, so a new user sees in one
// command what the library computes, how fast, and how exactly.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <memory>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cli/commands.hpp"
#include "cli/common.hpp"
#include "core/errors.hpp"
#include "core/problem.hpp"
#include "core/reference.hpp"

namespace sdpa::cli {
namespace {

struct DemoArgs {
  std::int64_t batch = 1, heads = 8, kv_heads = 0, length = 1024, dim = 128;  // kv_heads 0 = heads
  std::string causal = "none";
  std::string isa = "auto";
  int threads = 0;
  std::uint64_t seed = 42;
};

// Uniform values in [-1, 1) from a fixed-seed generator. The conversion is spelled out (rather than
// std::uniform_real_distribution) so the same seed gives the same data with every standard library.
std::vector<float> random_values(std::int64_t count, std::mt19937_64& generator) {
  std::vector<float> values(static_cast<std::size_t>(count));
  for (float& x : values)
    x = static_cast<float>(static_cast<double>(generator() >> 11) * 0x1.0p-52 - 1.0);
  return values;
}

struct DemoData {
  std::vector<float> q, k, v, out;  // [B, H, L, D] row-major; k, v have Hkv heads
  Tensor q_view, k_view, v_view, out_view;
};

DemoData make_data(const DemoArgs& a) {
  const std::int64_t kv_heads = a.kv_heads > 0 ? a.kv_heads : a.heads;
  std::mt19937_64 generator(a.seed);
  DemoData d;
  d.q = random_values(a.batch * a.heads * a.length * a.dim, generator);
  d.k = random_values(a.batch * kv_heads * a.length * a.dim, generator);
  d.v = random_values(a.batch * kv_heads * a.length * a.dim, generator);
  d.out.assign(d.q.size(), 0.0f);
  d.q_view = Tensor::contiguous(d.q.data(), DType::f32, {a.batch, a.heads, a.length, a.dim});
  d.k_view = Tensor::contiguous(d.k.data(), DType::f32, {a.batch, kv_heads, a.length, a.dim});
  d.v_view = Tensor::contiguous(d.v.data(), DType::f32, {a.batch, kv_heads, a.length, a.dim});
  d.out_view = Tensor::contiguous(d.out.data(), DType::f32, {a.batch, a.heads, a.length, a.dim});
  return d;
}

struct Timing {
  RunInfo info;
  std::vector<double> times_ms;
};

// Up to three runs for a median, fewer when one run is slow: the demo should answer in seconds.
Timing time_forward(const DemoData& d, const Options& options) {
  Outputs outputs;
  outputs.out = d.out_view;
  Timing timing;
  double total_ms = 0;
  while (timing.times_ms.size() < 3 && total_ms < 1500) {
    timing.times_ms.push_back(
        time_ms([&] { timing.info = forward(d.q_view, d.k_view, d.v_view, options, outputs); }));
    total_ms += timing.times_ms.back();
  }
  return timing;
}

// ---- spot check against the fp64 reference ------------------------------------------------------

// The last `rows` query rows of head h of batch entry b, as a problem of their own, so the
// reference costs O(rows · Lk) instead of O(Lq · Lk) per head. Row i' of the slice is row
// i = i' + (Lq - rows) of the full problem; aligning the slice bottom-right puts its diagonal at
// i' + (Lk - rows) = i + (Lk - Lq): the full problem's diagonal when it is bottom-right, and also
// when it is top-left because the demo has Lq == Lk. (The demo has no mask, bias or lengths.)
Problem tail_rows(const Problem& p, std::int64_t b, std::int64_t h, std::int64_t rows) {
  const std::int64_t first = p.len_q - rows;
  const std::int64_t kv_head = h / p.group;
  Problem slice = p;
  slice.batch = slice.heads_q = slice.heads_kv = slice.group = 1;
  slice.len_q = rows;
  slice.q.data = &p.q.at(b, h, first, 0);
  slice.k.data = &p.k.at(b, kv_head, 0, 0);
  slice.v.data = &p.v.at(b, kv_head, 0, 0);
  slice.out.data = &p.out.at(b, h, first, 0);
  slice.lse.reset();
  slice.weights.reset();
  if (slice.causal == Causal::top_left) slice.causal = Causal::bottom_right;
  return slice;
}

struct Check {
  std::int64_t rows = 0;     // rows compared
  double fast_error = 0;     // max |fused − fp64|
  double naive32_error = 0;  // max |naive fp32 − fp64|, the yardstick of the accuracy rule
  bool passed() const { return fast_error <= 2 * naive32_error + 1e-6; }
};

// Compares the fused output of a slice (its `out` view) with the reference in double and float.
void check_slice(const Problem& slice, Check& check) {
  const auto ref64 = reference::forward<double>(slice);
  const auto naive32 = reference::forward<float>(slice);
  for (std::int64_t i = 0; i < slice.len_q; ++i)
    for (std::int64_t d = 0; d < slice.dim_v; ++d) {
      const auto at = static_cast<std::size_t>(i * slice.dim_v + d);
      const double fast = slice.out.at(0, 0, i, d);
      check.fast_error = std::max(check.fast_error, std::abs(fast - ref64.out[at]));
      check.naive32_error =
          std::max(check.naive32_error, std::abs(double(naive32.out[at]) - ref64.out[at]));
    }
  check.rows += slice.len_q;
}

// First and last head of the first and last batch entry, last four rows of each.
Check check_against_reference(const Problem& p) {
  const std::int64_t rows = std::min<std::int64_t>(4, p.len_q);
  std::set<std::pair<std::int64_t, std::int64_t>> heads;
  for (std::int64_t b : {std::int64_t{0}, p.batch - 1})
    for (std::int64_t h : {std::int64_t{0}, p.heads_q - 1}) heads.insert({b, h});
  Check check;
  for (const auto& [b, h] : heads) check_slice(tail_rows(p, b, h, rows), check);
  return check;
}

// ---- the command --------------------------------------------------------------------------------

void print_report(const Problem& p, const DemoArgs& a, const Timing& t, const Check& c) {
  const double ms = median(t.times_ms);
  std::cout << "sdpa demo: random Q, K, V in [-1, 1) (seed " << a.seed << "), fused forward\n"
            << "  shapes   B=" << p.batch << " Hq=" << p.heads_q << " Hkv=" << p.heads_kv
            << " Lq=" << p.len_q << " Lk=" << p.len_k << " Dk=" << p.dim_k << " Dv=" << p.dim_v
            << ", causal=" << causal_name(p.causal) << ", scale=" << p.scale << "\n"
            << "  isa      " << isa_name(t.info.isa) << ", threads " << t.info.threads << "\n"
            << "  time     " << ms << " ms (median of " << t.times_ms.size() << ")\n"
            << "  speed    " << gflops_per_second(t.info.flops, ms) << " GFLOP/s ("
            << t.info.flops / 1e9 << " GFLOP)\n"
            << "  check    " << c.rows << " rows vs fp64 reference: max abs error " << c.fast_error
            << " (naive fp32: " << c.naive32_error << ") -> "
            << (c.passed() ? "ok" : "FAILED: exceeds 2 x naive fp32 + 1e-6") << std::endl;
}

void run_demo(const DemoArgs& a) {
  // Checked here so the message names the demo's flags rather than the library's tensors.
  if (a.kv_heads > 0 && a.heads % a.kv_heads != 0)
    fail("--kv-heads = ", a.kv_heads, ": expected a divisor of --heads = ", a.heads);
  const DemoData data = make_data(a);
  Options options;
  options.causal = parse_causal(a.causal);
  options.isa = parse_isa(a.isa);
  options.threads = a.threads;
  Outputs outputs;
  outputs.out = data.out_view;
  const Problem problem = validate_forward(data.q_view, data.k_view, data.v_view, options, outputs);
  const Timing timing = time_forward(data, options);
  const Check check = check_against_reference(problem);
  print_report(problem, a, timing, check);
  if (!check.passed())
    throw std::runtime_error(
        "demo: the fused output differs from the fp64 reference by more than "
        "the accuracy rule allows");
}

void add_options(CLI::App& cmd, DemoArgs& a) {
  cmd.add_option("--batch", a.batch, "B")->check(CLI::Range(1, 1 << 10))->capture_default_str();
  cmd.add_option("--heads", a.heads, "query heads Hq")
      ->check(CLI::Range(1, 1 << 10))
      ->capture_default_str();
  cmd.add_option("--kv-heads", a.kv_heads, "key/value heads Hkv, dividing Hq (0 = Hq)")
      ->check(CLI::Range(0, 1 << 10))
      ->capture_default_str();
  cmd.add_option("--length", a.length, "sequence length Lq = Lk")
      ->check(CLI::Range(1, 1 << 22))
      ->capture_default_str();
  cmd.add_option("--dim", a.dim, "head dimension Dk = Dv")
      ->check(CLI::Range(1, 512))
      ->capture_default_str();
  cmd.add_option("--causal", a.causal, "causal alignment")
      ->check(CLI::IsMember(causal_choices))
      ->capture_default_str();
  cmd.add_option("--threads", a.threads, "threads (0 = all)")->capture_default_str();
  cmd.add_option("--seed", a.seed, "random seed")->capture_default_str();
  cmd.add_option("--isa", a.isa, "kernel instruction set")
      ->check(CLI::IsMember(isa_choices))
      ->capture_default_str();
}

}  // namespace

void add_demo_command(CLI::App& app) {
  CLI::App* cmd =
      app.add_subcommand("demo", "random attention problem: time it, check it (default)");
  auto args = std::make_shared<DemoArgs>();  // shared with the callback, which outlives this scope
  add_options(*cmd, *args);
  cmd->callback([args] { run_demo(*args); });
}

int run_default_demo() {
  run_demo(DemoArgs{});
  return 0;
}

}  // namespace sdpa::cli
