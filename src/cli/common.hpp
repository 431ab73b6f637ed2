// Small pieces shared by the CLI subcommands: the spelling of enum options on the command line and
// wall-clock timing.
#pragma once

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "core/errors.hpp"
#include "sdpa/sdpa.hpp"

namespace sdpa::cli {

/// Accepted values of --causal and --isa (for CLI::IsMember, and in help texts).
inline const std::vector<std::string> causal_choices = {"none", "top-left", "bottom-right"};
inline const std::vector<std::string> isa_choices = {"auto", "scalar", "avx2", "avx512"};

inline Causal parse_causal(const std::string& text) {
  if (text == "none") return Causal::none;
  if (text == "top-left") return Causal::top_left;
  if (text == "bottom-right") return Causal::bottom_right;
  fail("--causal = '", text, "': expected none, top-left or bottom-right");
}

inline const char* causal_name(Causal causal) {
  switch (causal) {
    case Causal::none:
      return "none";
    case Causal::top_left:
      return "top-left";
    case Causal::bottom_right:
      return "bottom-right";
  }
  return "?";
}

inline Isa parse_isa(const std::string& text) {
  if (text == "auto") return Isa::automatic;
  if (text == "scalar") return Isa::scalar;
  if (text == "avx2") return Isa::avx2;
  if (text == "avx512") return Isa::avx512;
  fail("--isa = '", text, "': expected auto, scalar, avx2 or avx512");
}

/// Milliseconds `work()` takes on the steady clock.
template <typename Work>
double time_ms(Work&& work) {
  const auto start = std::chrono::steady_clock::now();
  work();
  const auto stop = std::chrono::steady_clock::now();
  return std::chrono::duration<double, std::milli>(stop - start).count();
}

/// The median of `values` (the mean of the middle two for an even count); 0 when empty.
/// Benchmarks report medians because a single preempted run must not move the figure.
inline double median(std::vector<double> values) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const std::size_t mid = values.size() / 2;
  return values.size() % 2 == 1 ? values[mid] : 0.5 * (values[mid - 1] + values[mid]);
}

/// GFLOP/s of `flops` done in `ms` milliseconds (0 when the time is too small to measure).
inline double gflops_per_second(double flops, double ms) {
  return ms > 0 ? flops / (ms * 1e6) : 0.0;
}

}  // namespace sdpa::cli
