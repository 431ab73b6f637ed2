// Seeded random numbers whose values depend only on the seed: the conversions are spelled out
// (std::normal_distribution and friends differ between standard libraries), so a lab run with a
// given --seed prints the same numbers everywhere.
#pragma once

#include <cmath>
#include <cstdint>
#include <numbers>
#include <random>
#include <vector>

namespace sdpa::lab {

class Random {
 public:
  explicit Random(std::uint64_t seed) : engine_(seed) {}

  /// Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }
  /// Uniform integer in [0, n) (n ≥ 1; the modulo bias is below 2^-40 for the n used here).
  std::int64_t below(std::int64_t n) {
    return static_cast<std::int64_t>(engine_() % static_cast<std::uint64_t>(n));
  }
  /// Standard normal (Box–Muller; the second value of each pair is kept for the next call).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u = 1.0 - uniform();  // (0, 1]: log(u) is finite
    const double angle = 2 * std::numbers::pi * uniform();
    const double radius = std::sqrt(-2 * std::log(u));
    spare_ = radius * std::sin(angle);
    has_spare_ = true;
    return radius * std::cos(angle);
  }
  /// `n` standard normal floats, each multiplied by `sigma`.
  std::vector<float> normals(std::size_t n, double sigma = 1.0) {
    std::vector<float> values(n);
    for (float& x : values) x = static_cast<float>(sigma * normal());
    return values;
  }

 private:
  std::mt19937_64 engine_;
  double spare_ = 0;
  bool has_spare_ = false;
};

}  // namespace sdpa::lab
