// Shared pieces of the benchmarks: clocks, repetition timing, problem data, the sdpa call.
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <utility>
#include <vector>

#include "bench/bench.hpp"
#include "core/half.hpp"

namespace sdpa::bench {

double now_seconds() {
  using Clock = std::chrono::steady_clock;
  return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
}

Timing timing_of(std::vector<double> seconds) {
  Timing timing;
  if (seconds.empty()) return timing;
  std::sort(seconds.begin(), seconds.end());
  timing.repeats = static_cast<int>(seconds.size());
  timing.min_s = seconds.front();
  const std::size_t mid = seconds.size() / 2;
  timing.median_s = seconds.size() % 2 ? seconds[mid] : 0.5 * (seconds[mid - 1] + seconds[mid]);
  return timing;
}

Timing time_repeats(const std::function<void()>& fn, int repeats, int warmups) {
  for (int i = 0; i < warmups; ++i) fn();
  std::vector<double> seconds;
  for (int i = 0; i < std::max(1, repeats); ++i) {
    const double start = now_seconds();
    fn();
    seconds.push_back(now_seconds() - start);
  }
  return timing_of(std::move(seconds));
}

int resolve_threads(int requested) { return requested > 0 ? requested : omp_get_num_procs(); }

double attention_flops(const AttentionShape& s) {
  const double full = 4.0 * static_cast<double>(s.batch * s.heads) * static_cast<double>(s.length) *
                      static_cast<double>(s.length) * static_cast<double>(s.dim);
  return s.causal ? full / 2 : full;
}

namespace {

// splitmix64: a fast, seedable generator; values are a pure function of (seed, index).
float uniform_at(std::uint64_t seed, std::uint64_t index) {
  std::uint64_t z = seed + 0x9e3779b97f4a7c15ULL * (index + 1);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * 0x1.0p-23f - 1.0f;  // 24 random bits -> [-1, 1)
}

std::vector<float> random_values(std::size_t count, std::uint64_t seed) {
  std::vector<float> values(count);
  for (std::size_t i = 0; i < count; ++i) values[i] = uniform_at(seed, i);
  return values;
}

}  // namespace

AttentionData AttentionData::random(const AttentionShape& shape, std::uint64_t seed) {
  const auto count = static_cast<std::size_t>(shape.batch * shape.heads * shape.length * shape.dim);
  AttentionData data;
  data.shape = shape;
  data.q = random_values(count, seed);
  data.k = random_values(count, seed + 1);
  data.v = random_values(count, seed + 2);
  data.out.assign(count, 0.0f);
  return data;
}

std::size_t AttentionData::bytes() const {
  return (q.size() + k.size() + v.size() + out.size()) * sizeof(float);
}

void AttentionData::add_bf16() {
  const auto rounded = [](const std::vector<float>& values) {
    std::vector<std::uint16_t> bits(values.size());
    for (std::size_t i = 0; i < values.size(); ++i) bits[i] = half::float_to_bf16(values[i]);
    return bits;
  };
  q16 = rounded(q);
  k16 = rounded(k);
  v16 = rounded(v);
  out16.assign(out.size(), 0);
}

sdpa::RunInfo run_sdpa_forward(AttentionData& data, int threads, sdpa::DType dtype) {
  const AttentionShape& s = data.shape;
  const auto view = [&s](auto& values, sdpa::DType type) {
    return sdpa::Tensor::contiguous(values.data(), type, {s.batch, s.heads, s.length, s.dim});
  };
  sdpa::Options options;
  options.causal = s.causal ? sdpa::Causal::top_left : sdpa::Causal::none;
  options.threads = threads;
  sdpa::Outputs outputs;
  if (dtype == sdpa::DType::bf16) {
    outputs.out = view(data.out16, dtype);
    return sdpa::forward(view(data.q16, dtype), view(data.k16, dtype), view(data.v16, dtype),
                         options, outputs);
  }
  outputs.out = view(data.out, sdpa::DType::f32);
  return sdpa::forward(view(data.q, dtype), view(data.k, dtype), view(data.v, dtype), options,
                       outputs);
}

}  // namespace sdpa::bench
