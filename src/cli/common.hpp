// Small pieces shared by the CLI subcommands: the spelling of enum options on the command line,
// the memory check of outputs before they are allocated, and wall-clock timing.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <limits>
#include <sstream>
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

/// An output the tool is about to allocate: f32 of `shape`; `what` names it ("--weights w.npy").
struct PlannedOutput {
  std::string what;
  std::vector<std::int64_t> shape;
};

/// Bytes of this machine's physical memory.
inline std::uint64_t physical_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page_size = ::sysconf(_SC_PAGESIZE);
  return pages > 0 && page_size > 0
             ? static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page_size)
             : std::numeric_limits<std::uint64_t>::max();
}

/// Fails fast, before anything is allocated, when the outputs together need more bytes than this
/// machine's physical memory (e.g. --weights with a long sequence: Lq·Lk floats): throws
/// sdpa::OutOfMemory naming the bytes of each output and the memory there is.
inline void check_outputs_fit(const std::vector<PlannedOutput>& outputs) {
  const std::uint64_t memory = physical_memory_bytes();
  std::uint64_t total = 0;
  bool overflow = false;
  std::ostringstream parts;
  for (const PlannedOutput& o : outputs) {
    std::uint64_t bytes = sizeof(float);
    parts << (&o == outputs.data() ? "" : ", ") << o.what << " [";
    for (std::size_t d = 0; d < o.shape.size(); ++d) {
      overflow |= __builtin_mul_overflow(bytes, static_cast<std::uint64_t>(o.shape[d]), &bytes);
      parts << (d ? ", " : "") << o.shape[d];
    }
    overflow |= __builtin_add_overflow(total, bytes, &total);
    parts << "] " << (overflow ? std::string("> 2^64") : std::to_string(bytes)) << " bytes";
  }
  if (!overflow && total <= memory) return;
  std::ostringstream message;
  const auto gib = [](std::uint64_t bytes) { return std::to_string(bytes >> 30) + " GiB"; };
  message << "the outputs need "
          << (overflow ? std::string("more than 2^64 bytes")
                       : std::to_string(total) + " bytes (" + gib(total) + ")")
          << ": " << parts.str() << "; this machine has " << memory << " bytes (" << gib(memory)
          << ") of memory; nothing was computed or written";
  throw OutOfMemory(message.str());
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
