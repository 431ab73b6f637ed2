// Shared helpers of the forward tests:
//   - Rng: seeded, reproducible random numbers;
//   - Layout / Strided<T>: tensors that own their memory in any layout the API accepts (permuted
//     dimensions, padded strides, negative strides, zero-stride broadcast);
//   - accuracy_rule(): DESIGN.md's tolerance, max|fast − ref64| ≤ 2·max|naive32 − ref64| + 1e-6
//     (the absolute term scaled by the logits' size, see accuracy_slack()),
//     with −inf and NaN required to sit exactly where the fp64 reference has them;
//   - supported_isas(): every instruction set this CPU can run, so each test covers all of them.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <limits>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "core/half.hpp"
#include "core/problem.hpp"
#include "core/reference.hpp"
#include "sdpa/sdpa.hpp"

namespace sdpa::test {

inline constexpr float kInf = std::numeric_limits<float>::infinity();
inline constexpr double kNegInf64 = -std::numeric_limits<double>::infinity();

// ---- instruction sets ------------------------------------------------------------------------

/// scalar always; avx2 when the best ISA is avx2 or avx512; avx512 when it is avx512.
inline std::vector<Isa> supported_isas() {
  std::vector<Isa> isas{Isa::scalar};
  const Isa best = best_isa();
  if (best == Isa::avx2 || best == Isa::avx512) isas.push_back(Isa::avx2);
  if (best == Isa::avx512) isas.push_back(Isa::avx512);
  return isas;
}

// ---- random numbers --------------------------------------------------------------------------

class Rng {
 public:
  explicit Rng(std::uint64_t seed) : engine_(seed) {}
  /// Uniform in [lo, hi], both included.
  std::int64_t integer(std::int64_t lo, std::int64_t hi) {
    return std::uniform_int_distribution<std::int64_t>(lo, hi)(engine_);
  }
  double uniform(double lo, double hi) {
    return std::uniform_real_distribution<double>(lo, hi)(engine_);
  }
  float normal(float sigma = 1.0f) { return std::normal_distribution<float>(0.0f, sigma)(engine_); }
  bool chance(double p) { return uniform(0.0, 1.0) < p; }
  template <typename T>
  T pick(std::initializer_list<T> choices) {
    const auto n = static_cast<std::int64_t>(choices.size());
    return *(choices.begin() + integer(0, n - 1));
  }

 private:
  std::mt19937_64 engine_;
};

// ---- layouts and strided tensors ---------------------------------------------------------------

using Index = std::array<std::int64_t, 4>;

/// How a tensor's elements sit in memory, independent of its shape.
struct Layout {
  std::array<int, 4> order{0, 1, 2, 3};   // dimensions from outermost to innermost in memory
  std::array<std::int64_t, 4> padding{};  // extra elements added to the stride of the next-outer dim
  std::array<bool, 4> reversed{};         // negative stride: the view walks memory backwards
  std::array<bool, 4> broadcast{};        // stride 0: every index reads the same memory (inputs only)
  std::string name = "contiguous";
};

inline Layout contiguous_layout() { return Layout{}; }

/// [B, L, H, D] memory seen as a [B, H, L, D] view (the layout of most model code).
inline Layout blhd_layout() {
  Layout layout;
  layout.order = {0, 2, 1, 3};
  layout.name = "BLHD";
  return layout;
}

/// Column-major (Fortran order): the first dimension moves fastest.
inline Layout fortran_layout(int rank) {
  Layout layout;
  for (int d = 0; d < rank; ++d) layout.order[static_cast<std::size_t>(d)] = rank - 1 - d;
  layout.name = "fortran";
  return layout;
}

/// A random layout for a tensor of `rank` dimensions: one of contiguous / BLHD / Fortran / any
/// permutation, then at random padded strides, reversed (negative-stride) dimensions and, when
/// `allow_broadcast`, zero-stride dimensions.
inline Layout random_layout(Rng& rng, int rank, bool allow_broadcast) {
  Layout layout;
  const std::int64_t kind = rng.integer(0, 3);
  if (kind == 1 && rank == 4) layout = blhd_layout();
  if (kind == 2) layout = fortran_layout(rank);
  if (kind == 3) {
    std::shuffle(layout.order.begin(), layout.order.begin() + rank,
                 std::mt19937_64(static_cast<std::uint64_t>(rng.integer(0, 1 << 30))));
    layout.name = "perm";
  }
  std::ostringstream name;
  name << layout.name;
  if (kind == 3) {
    name << "(";
    for (int d = 0; d < rank; ++d) name << layout.order[static_cast<std::size_t>(d)];
    name << ")";
  }
  if (rng.chance(0.3)) {
    name << "+pad";
    for (int d = 0; d < rank; ++d)
      layout.padding[static_cast<std::size_t>(d)] = rng.chance(0.5) ? rng.integer(1, 5) : 0;
  }
  if (rng.chance(0.25)) {
    name << "+neg";
    for (int d = 0; d < rank; ++d) layout.reversed[static_cast<std::size_t>(d)] = rng.chance(0.5);
  }
  if (allow_broadcast && rng.chance(0.15)) {
    name << "+bcast";
    for (int d = 0; d < rank; ++d) layout.broadcast[static_cast<std::size_t>(d)] = rng.chance(0.3);
  }
  layout.name = name.str();
  return layout;
}

/// Calls fn(index) for every index of `shape` (first `rank` entries) in row-major order.
inline void for_each_index(int rank, const Index& shape,
                           const std::function<void(const Index&)>& fn) {
  for (int d = 0; d < rank; ++d)
    if (shape[static_cast<std::size_t>(d)] == 0) return;
  Index index{};
  while (true) {
    fn(index);
    int d = rank - 1;
    for (; d >= 0; --d) {
      auto& i = index[static_cast<std::size_t>(d)];
      if (++i < shape[static_cast<std::size_t>(d)]) break;
      i = 0;
    }
    if (d < 0) return;
  }
}

/// A tensor view together with the memory it points into. `storage` holds every element the view
/// can reach plus padding; the view's origin may sit inside it (negative strides). Movable (the
/// vector keeps its buffer), not copyable (a copy would point into the original's memory).
template <typename T>
struct Strided {
  Tensor tensor;
  std::vector<T> storage;
  std::int64_t origin = 0;  // storage index of element (0, 0, 0, 0)
  std::string layout_name;

  Strided(DType dtype, std::vector<std::int64_t> shape, const Layout& layout = {}) {
    const int rank = static_cast<int>(shape.size());
    tensor.dtype = dtype;
    tensor.rank = rank;
    for (int d = 0; d < rank; ++d) tensor.shape[static_cast<std::size_t>(d)] = shape[static_cast<std::size_t>(d)];
    layout_name = layout.name;
    // Strides from the innermost memory dimension outwards.
    std::int64_t running = 1;
    for (int m = rank - 1; m >= 0; --m) {
      const auto d = static_cast<std::size_t>(layout.order[static_cast<std::size_t>(m)]);
      if (layout.broadcast[d]) {
        tensor.stride[d] = 0;
        continue;
      }
      tensor.stride[d] = running;
      running = running * std::max<std::int64_t>(tensor.shape[d], 1) + layout.padding[d];
    }
    std::int64_t span = 1;
    for (int d = 0; d < rank; ++d) {
      const auto du = static_cast<std::size_t>(d);
      const std::int64_t extent = std::max<std::int64_t>(tensor.shape[du] - 1, 0);
      span += extent * tensor.stride[du];
      if (layout.reversed[du] && tensor.stride[du] != 0) {
        origin += extent * tensor.stride[du];
        tensor.stride[du] = -tensor.stride[du];
      }
    }
    storage.assign(static_cast<std::size_t>(span), T{});
    tensor.data = storage.data() + origin;
  }
  Strided(Strided&&) noexcept = default;
  Strided& operator=(Strided&&) noexcept = default;
  Strided(const Strided&) = delete;
  Strided& operator=(const Strided&) = delete;

  int rank() const { return tensor.rank; }
  Index shape() const { return tensor.shape; }
  std::int64_t offset(const Index& index) const {
    std::int64_t at = origin;
    for (int d = 0; d < tensor.rank; ++d)
      at += index[static_cast<std::size_t>(d)] * tensor.stride[static_cast<std::size_t>(d)];
    return at;
  }
  T& at(const Index& index) { return storage[static_cast<std::size_t>(offset(index))]; }
  const T& at(const Index& index) const { return storage[static_cast<std::size_t>(offset(index))]; }

  /// Writes fn(index) to every element of the view (aliased elements: the last write wins).
  void fill(const std::function<T(const Index&)>& fn) {
    for_each_index(rank(), shape(), [&](const Index& index) { at(index) = fn(index); });
  }
  /// The view's elements in row-major order.
  std::vector<T> dense() const {
    std::vector<T> values;
    values.reserve(static_cast<std::size_t>(tensor.numel()));
    for_each_index(rank(), shape(), [&](const Index& index) { values.push_back(at(index)); });
    return values;
  }
  /// Which storage elements the view reaches.
  std::vector<bool> covered() const {
    std::vector<bool> reached(storage.size(), false);
    for_each_index(rank(), shape(),
                   [&](const Index& index) { reached[static_cast<std::size_t>(offset(index))] = true; });
    return reached;
  }
};

/// A float tensor of `shape` and `layout` filled with N(0, sigma) values (padding included).
inline Strided<float> random_floats(Rng& rng, std::vector<std::int64_t> shape, const Layout& layout,
                                    float sigma = 1.0f) {
  Strided<float> t(DType::f32, std::move(shape), layout);
  for (float& x : t.storage) x = rng.normal(sigma);
  return t;
}

/// A contiguous float tensor with the given values.
inline Strided<float> floats(std::vector<std::int64_t> shape, const std::vector<float>& values) {
  Strided<float> t(DType::f32, std::move(shape));
  EXPECT_EQ(values.size(), t.storage.size());
  std::copy(values.begin(), values.end(), t.storage.begin());
  return t;
}

// ---- 16-bit floats (bf16, f16) -----------------------------------------------------------------

inline bool is_16bit(DType dtype) { return dtype == DType::bf16 || dtype == DType::f16; }

/// `x` rounded to `dtype` (bf16 / f16; f32 unchanged), as a float.
inline float round_to(DType dtype, float x) {
  if (dtype == DType::bf16) return half::bf16_to_float(half::float_to_bf16(x));
  if (dtype == DType::f16) return half::f16_to_float(half::float_to_f16(x));
  return x;
}
inline std::uint16_t narrow(DType dtype, float x) {
  return dtype == DType::bf16 ? half::float_to_bf16(x) : half::float_to_f16(x);
}
inline float widen(DType dtype, std::uint16_t bits) {
  return dtype == DType::bf16 ? half::bf16_to_float(bits) : half::f16_to_float(bits);
}

/// Rounds every storage element of `t` to `dtype` in place and returns its 16-bit twin: the same
/// shape, layout and strides, holding exactly those values.
inline Strided<std::uint16_t> to_16bit(Strided<float>& t, DType dtype, const Layout& layout) {
  std::vector<std::int64_t> shape(t.tensor.shape.begin(), t.tensor.shape.begin() + t.rank());
  Strided<std::uint16_t> twin(dtype, shape, layout);
  EXPECT_EQ(twin.storage.size(), t.storage.size());
  EXPECT_EQ(twin.origin, t.origin);
  for (std::size_t n = 0; n < t.storage.size(); ++n) {
    twin.storage[n] = narrow(dtype, t.storage[n]);
    t.storage[n] = widen(dtype, twin.storage[n]);
  }
  return twin;
}

// ---- outputs -----------------------------------------------------------------------------------

/// A quiet NaN with a recognizable payload: outputs are filled with it before a call, so an element
/// the call should have written but did not shows up as NaN, and one it should not have written
/// (padding between rows) must still hold these exact bits afterwards.
inline float sentinel() {
  const std::uint32_t bits = 0x7fc0dead;
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}
inline bool is_sentinel(float x) {
  std::uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits == 0x7fc0dead;
}
inline bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }
/// The 16-bit sentinel: a NaN both as bf16 and as f16.
inline constexpr std::uint16_t kSentinel16 = 0x7fd5;
inline bool is_sentinel(std::uint16_t x) { return x == kSentinel16; }

struct OutputLayouts {
  Layout out, lse, weights, entropy;
  bool want_lse = true, want_weights = true, want_entropy = true;
  DType out_dtype = DType::f32;  // bf16 / f16: out is written into OutputBuffers::out16
};

/// Output tensors of one call, filled with sentinel().
struct OutputBuffers {
  Strided<float> out;
  std::optional<Strided<std::uint16_t>> out16;  // replaces out when OutputLayouts::out_dtype is 16-bit
  std::optional<Strided<float>> lse, weights, entropy;

  OutputBuffers(std::int64_t batch, std::int64_t heads_q, std::int64_t len_q, std::int64_t len_k,
                std::int64_t dim_v, const OutputLayouts& layouts = {})
      : out(DType::f32, {batch, heads_q, len_q, dim_v}, layouts.out) {
    if (is_16bit(layouts.out_dtype))
      out16.emplace(layouts.out_dtype, std::vector<std::int64_t>{batch, heads_q, len_q, dim_v},
                    layouts.out);
    if (layouts.want_lse) lse.emplace(DType::f32, std::vector<std::int64_t>{batch, heads_q, len_q}, layouts.lse);
    if (layouts.want_weights)
      weights.emplace(DType::f32, std::vector<std::int64_t>{batch, heads_q, len_q, len_k}, layouts.weights);
    if (layouts.want_entropy)
      entropy.emplace(DType::f32, std::vector<std::int64_t>{batch, heads_q, len_q}, layouts.entropy);
    reset();
  }
  void reset() {
    std::fill(out.storage.begin(), out.storage.end(), sentinel());
    if (out16) std::fill(out16->storage.begin(), out16->storage.end(), kSentinel16);
    if (lse) std::fill(lse->storage.begin(), lse->storage.end(), sentinel());
    if (weights) std::fill(weights->storage.begin(), weights->storage.end(), sentinel());
    if (entropy) std::fill(entropy->storage.begin(), entropy->storage.end(), sentinel());
  }
  Outputs outputs() {
    Outputs o;
    o.out = out16 ? out16->tensor : out.tensor;
    if (lse) o.lse = lse->tensor;
    if (weights) o.weights = weights->tensor;
    if (entropy) o.entropy = entropy->tensor;
    return o;
  }
};

/// out as floats in row-major order, whatever its dtype.
inline std::vector<float> out_values(const OutputBuffers& buffers) {
  if (!buffers.out16) return buffers.out.dense();
  std::vector<float> values;
  for (std::uint16_t bits : buffers.out16->dense())
    values.push_back(widen(buffers.out16->tensor.dtype, bits));
  return values;
}

/// Fails unless every storage element outside the view still holds the sentinel.
template <typename T>
inline ::testing::AssertionResult padding_untouched(const char* name, const Strided<T>& t) {
  const std::vector<bool> reached = t.covered();
  for (std::size_t n = 0; n < t.storage.size(); ++n)
    if (!reached[n] && !is_sentinel(t.storage[n]))
      return ::testing::AssertionFailure()
             << name << ": storage element " << n << " outside the view was overwritten with "
             << +t.storage[n] << " (layout " << t.layout_name << ")";
  return ::testing::AssertionSuccess();
}

/// Fails unless a and b are bitwise identical.
inline ::testing::AssertionResult bitwise_equal(const std::vector<float>& a,
                                                const std::vector<float>& b) {
  if (a.size() != b.size())
    return ::testing::AssertionFailure() << "sizes differ: " << a.size() << " vs " << b.size();
  for (std::size_t n = 0; n < a.size(); ++n)
    if (!same_bits(a[n], b[n]))
      return ::testing::AssertionFailure() << "element " << n << " differs: " << a[n] << " vs "
                                           << b[n] << " (" << a[n] - b[n] << ")";
  return ::testing::AssertionSuccess();
}

/// Fails unless two calls' outputs are bitwise identical: out, and lse, weights and entropy where
/// the buffers hold them (both must hold the same ones); the message names the output that differs.
inline ::testing::AssertionResult same_output_bits(const OutputBuffers& a, const OutputBuffers& b) {
  const std::pair<const char*, const std::optional<Strided<float>>*> optional[] = {
      {"lse", &a.lse}, {"weights", &a.weights}, {"entropy", &a.entropy}};
  const std::optional<Strided<float>>* other[] = {&b.lse, &b.weights, &b.entropy};
  if (auto r = bitwise_equal(a.out.dense(), b.out.dense()); !r) return r << " (out)";
  for (std::size_t n = 0; n < 3; ++n) {
    const auto& [name, mine] = optional[n];
    if (mine->has_value() != other[n]->has_value())
      return ::testing::AssertionFailure() << name << " is held by one of the two only";
    if (!mine->has_value()) continue;
    if (auto r = bitwise_equal((*mine)->dense(), (*other[n])->dense()); !r) return r << " (" << name << ")";
  }
  return ::testing::AssertionSuccess();
}

// ---- the accuracy rule -------------------------------------------------------------------------

/// Where an element's value is special: −inf and NaN must match the reference exactly.
inline bool special(double x) { return std::isnan(x) || std::isinf(x); }
inline bool same_special(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return a == b;  // both the same infinity
}

/// DESIGN.md's rule for one output: max|fast − ref64| ≤ 2·max|naive32 − ref64| + 1e-6 over the
/// elements where the reference is finite; where the reference is −inf / +inf / NaN the fast result
/// must be exactly the same special value (and vice versa). Elements where naive32 itself
/// overflowed (special while the reference is finite) do not count towards its error.
/// `row_length` (Dv for out, 1 for lse, Lk for weights) turns flat indices into (row, column) in
/// messages; rows count (b, h, i) in row-major order.
inline ::testing::AssertionResult accuracy_rule(const std::string& name,
                                                const std::vector<float>& fast,
                                                const std::vector<float>& naive32,
                                                const std::vector<double>& ref64,
                                                std::size_t row_length = 1,
                                                double absolute_slack = 1e-6) {
  row_length = std::max<std::size_t>(row_length, 1);
  const auto where = [row_length](std::size_t n) {
    std::ostringstream s;
    s << "[" << n << "] (row " << n / row_length << ", column " << n % row_length << ")";
    return s.str();
  };
  if (fast.size() != ref64.size() || naive32.size() != ref64.size())
    return ::testing::AssertionFailure() << name << ": sizes differ: fast " << fast.size()
                                         << ", naive32 " << naive32.size() << ", ref64 "
                                         << ref64.size();
  double fast_error = 0, naive_error = 0;
  std::size_t worst = 0;
  for (std::size_t n = 0; n < ref64.size(); ++n) {
    const double ref = ref64[n], got = fast[n];
    if (special(ref) || special(got)) {
      if (!same_special(ref, got))
        return ::testing::AssertionFailure()
               << name << where(n) << " = " << fast[n] << " but the fp64 reference is " << ref
               << " (special values must match exactly)";
      continue;
    }
    if (std::abs(got - ref) > fast_error) {
      fast_error = std::abs(got - ref);
      worst = n;
    }
    if (!special(naive32[n])) naive_error = std::max(naive_error, std::abs(naive32[n] - ref));
  }
  const double tolerance = 2 * naive_error + absolute_slack;
  if (fast_error <= tolerance) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << name << ": max|fast - ref64| = " << fast_error << " at " << where(worst)
         << " (fast " << fast[worst] << ", ref64 " << ref64[worst] << ", naive32 " << naive32[worst]
         << ") exceeds 2*max|naive32 - ref64| + " << absolute_slack << " = " << tolerance;
}

/// The absolute term of the accuracy rule for one problem. DESIGN.md's +1e-6 is right for logits
/// of order 1; but fp32 holds a logit s only to within |s|·2⁻²⁴, and that rounding — different in
/// the tiled kernel (other summation order) and in naive32 — moves every probability by about
/// |s|·2⁻²⁴ relative. With few rows and logits of 10–40, naive32's maximum error over a handful of
/// elements can be luckily small (seen: 4 of 4,000 random configurations exceeded 2× by < 10%).
/// So the term scales with the problem's largest |lse| (≈ its largest logit): 1e-6·max(1, |lse|).
inline double accuracy_slack(const std::vector<double>& ref64_lse) {
  double largest = 1.0;
  for (double x : ref64_lse)
    if (std::isfinite(x)) largest = std::max(largest, std::abs(x));
  return 1e-6 * largest;
}

/// The naive baseline of 16-bit inputs (DESIGN.md: "bf16 inputs: accumulate in fp32"): naive32
/// on the 16-bit values (exact in fp32), with the two roundings a fast kernel is allowed on top:
///   - bf16 inputs: out = Σ_j bf16(p_j)·v_j / Σ_j p_j with p_j = exp(s_j − max s) in fp32 and P
///     rounded to bf16 (round to nearest even) before the product, products and sums in fp32.
///     This is the arithmetic of flash attention's bf16 P·V on GPUs and of the vdpbf16ps kernel
///     (which rounds P relative to its running max — the same relative rounding error, 2⁻⁹). The
///     row sum l stays fp32 in both. f16 inputs are widened to fp32, P is never rounded.
///   - out rounded to the output dtype when that is 16-bit.
/// lse, weights and entropy stay naive32's: every kernel computes them from fp32 logits. p_j is
/// taken from naive32's weights as w_j / max w (= exp(s_j − max s) to within fp32 rounding). With
/// an attention sink σ (real rows) the max also runs over the sink's weight w_σ = exp(σ − lse), as
/// the kernels' running max does (a sink above every key: no p_j is 1, each one is rounded), and
/// the row sum holds w_σ / max w (the sink has no value, so it is never rounded).
inline void apply_16bit_baseline(const Problem& p, DType input, DType output,
                                 reference::Result<float>& naive) {
  const std::int64_t Lk = p.len_k, Dv = p.dim_v;
  const auto rows = static_cast<std::int64_t>(naive.lse.size());
  for (std::int64_t row = 0; row < rows && input == DType::bf16; ++row) {
    const std::int64_t i = row % p.len_q, h = row / p.len_q % p.heads_q, b = row / p.len_q / p.heads_q;
    const float* w = naive.weights.data() + row * Lk;
    float w_max = 0;
    for (std::int64_t j = 0; j < Lk; ++j) w_max = std::isnan(w[j]) || w[j] > w_max ? w[j] : w_max;
    if (!(w_max > 0)) continue;  // no visible key (out stays 0) or NaN (out stays NaN)
    const float sink = i < p.query_length(b) ? p.sink(h) : -kInf;
    const float w_sink = sink == -kInf ? 0.0f : std::exp(sink - naive.lse[static_cast<std::size_t>(row)]);
    w_max = std::max(w_max, w_sink);
    float sum = w_sink / w_max;
    std::vector<float> acc(static_cast<std::size_t>(Dv), 0.0f);
    for (std::int64_t j = 0; j < Lk; ++j) {
      if (w[j] == 0) continue;
      const float p_j = w[j] / w_max;
      const float p_rounded = round_to(DType::bf16, p_j);
      sum += p_j;
      for (std::int64_t d = 0; d < Dv; ++d)
        acc[static_cast<std::size_t>(d)] += p_rounded * p.v_at(b, h / p.group, j, d);
    }
    for (std::int64_t d = 0; d < Dv; ++d)
      naive.out[static_cast<std::size_t>(row * Dv + d)] = acc[static_cast<std::size_t>(d)] / sum;
  }
  if (is_16bit(output))
    for (float& x : naive.out) x = round_to(output, x);
}

/// The fp64 reference and the naive fp32 baseline of one problem. For 16-bit inputs or output the
/// baseline is apply_16bit_baseline's.
struct References {
  reference::Result<double> ref64;
  reference::Result<float> naive32;
  explicit References(const Problem& problem, DType output = DType::f32)
      : ref64(reference::forward<double>(problem)), naive32(reference::forward<float>(problem)) {
    if (is_16bit(problem.dtype) || is_16bit(output))
      apply_16bit_baseline(problem, problem.dtype, output, naive32);
  }
};

/// Checks every output of a forward call against the references: the accuracy rule on out, lse and
/// weights; rows the reference finds fully masked are exactly out = 0, lse = −inf, weights = 0;
/// weights rows sum to the reference's row sum (1, or 1 − p_sink with an attention sink; 0 when
/// fully masked); nothing outside the output views was written.
inline ::testing::AssertionResult check_outputs(const References& refs, OutputBuffers& buffers,
                                                std::int64_t len_k, std::int64_t dim_v) {
  const std::size_t rows = refs.ref64.lse.size();
  const auto Dv = static_cast<std::size_t>(dim_v), Lk = static_cast<std::size_t>(len_k);
  const std::vector<float> out = out_values(buffers);
  const double slack = accuracy_slack(refs.ref64.lse);
  if (auto r = accuracy_rule("out", out, refs.naive32.out, refs.ref64.out, Dv, slack); !r) return r;
  const auto out_padding = buffers.out16 ? padding_untouched("out", *buffers.out16)
                                         : padding_untouched("out", buffers.out);
  if (!out_padding) return out_padding;
  for (std::size_t row = 0; row < rows; ++row) {
    if (refs.ref64.lse[row] != kNegInf64) continue;
    for (std::size_t d = 0; d < Dv; ++d)
      if (out[row * Dv + d] != 0.0f)
        return ::testing::AssertionFailure() << "out row " << row << " is fully masked but out["
                                             << d << "] = " << out[row * Dv + d] << ", not 0";
  }
  if (buffers.lse) {
    const std::vector<float> lse = buffers.lse->dense();
    if (auto r = accuracy_rule("lse", lse, refs.naive32.lse, refs.ref64.lse, 1, slack); !r) return r;
    if (auto r = padding_untouched("lse", *buffers.lse); !r) return r;
  }
  if (buffers.entropy) {
    const std::vector<float> entropy = buffers.entropy->dense();
    if (auto r = accuracy_rule("entropy", entropy, refs.naive32.entropy, refs.ref64.entropy, 1, slack);
        !r)
      return r;
    if (auto r = padding_untouched("entropy", *buffers.entropy); !r) return r;
    for (std::size_t row = 0; row < rows; ++row)
      if (refs.ref64.lse[row] == kNegInf64 && entropy[row] != 0.0f)
        return ::testing::AssertionFailure() << "entropy row " << row << " is fully masked but "
                                             << entropy[row] << ", not 0";
  }
  if (buffers.weights) {
    const std::vector<float> weights = buffers.weights->dense();
    if (auto r = accuracy_rule("weights", weights, refs.naive32.weights, refs.ref64.weights, Lk,
                               slack);
        !r)
      return r;
    if (auto r = padding_untouched("weights", *buffers.weights); !r) return r;
    for (std::size_t row = 0; row < rows; ++row) {
      // |Σ fast − 1| ≤ Σ |fast − ref64|: allow twice naive32's L1 error on the row, plus rounding.
      if (std::isnan(refs.ref64.lse[row])) continue;  // a NaN input's row: checked above
      const bool masked = refs.ref64.lse[row] == kNegInf64;
      double sum = 0, naive_l1_error = 0, expected = 0;
      for (std::size_t j = 0; j < Lk; ++j) {
        expected += refs.ref64.weights[row * Lk + j];
        const float w = weights[row * Lk + j];
        if (masked && w != 0.0f)
          return ::testing::AssertionFailure() << "weights row " << row << " is fully masked but "
                                               << "weights[" << j << "] = " << w << ", not 0";
        sum += w;
        naive_l1_error += std::abs(refs.naive32.weights[row * Lk + j] - refs.ref64.weights[row * Lk + j]);
      }
      const double tolerance = 2 * naive_l1_error + 1e-5 + 2e-7 * static_cast<double>(Lk);
      if (!masked && !(std::abs(sum - expected) <= tolerance))
        return ::testing::AssertionFailure() << "weights row " << row << " sums to " << sum
                                             << ", expected " << expected << " within " << tolerance;
    }
  }
  return ::testing::AssertionSuccess();
}

// ---- one attention call with inputs that own their memory ----------------------------------------

/// Everything a forward call reads. `options()` returns the options with the mask, bias and lengths
/// views of this object filled in, so the object may be moved.
struct Inputs {
  Strided<float> q, k, v;
  std::optional<Strided<std::uint8_t>> mask;
  std::optional<Strided<float>> bias;
  std::vector<std::int32_t> key_lengths, query_lengths;
  Options base;  // scale, causal, window, softcap, threads, isa (mask/bias/lengths/sinks: above/below)
  // bf16 / f16 runs: q, k, v rounded to the dtype and their 16-bit twins (see set_dtype).
  DType dtype = DType::f32;
  std::optional<Strided<std::uint16_t>> q16{}, k16{}, v16{};
  std::optional<Strided<float>> sinks{};  // [Hq]

  /// Makes the calls use `dtype` inputs: q, k, v are rounded to it (so the f32 tensors hold the
  /// exact values the 16-bit ones do) and `layouts` must be those q, k, v were created with.
  void set_dtype(DType to, const Layout& q_layout = {}, const Layout& k_layout = {},
                 const Layout& v_layout = {}) {
    dtype = to;
    if (!is_16bit(to)) return;
    q16 = to_16bit(q, to, q_layout);
    k16 = to_16bit(k, to, k_layout);
    v16 = to_16bit(v, to, v_layout);
  }
  const Tensor& q_tensor() const { return q16 ? q16->tensor : q.tensor; }
  const Tensor& k_tensor() const { return k16 ? k16->tensor : k.tensor; }
  const Tensor& v_tensor() const { return v16 ? v16->tensor : v.tensor; }

  Options options() const {
    Options o = base;
    if (mask) o.mask = mask->tensor;
    if (bias) o.bias = bias->tensor;
    if (sinks) o.sinks = sinks->tensor;
    o.key_lengths = key_lengths;
    o.query_lengths = query_lengths;
    return o;
  }
  std::int64_t batch() const { return q.tensor.shape[0]; }
  std::int64_t heads_q() const { return q.tensor.shape[1]; }
  std::int64_t len_q() const { return q.tensor.shape[2]; }
  std::int64_t len_k() const { return k.tensor.shape[2]; }
  std::int64_t dim_v() const { return v.tensor.shape[3]; }

  OutputBuffers make_outputs(const OutputLayouts& layouts = {}) const {
    return OutputBuffers(batch(), heads_q(), len_q(), len_k(), dim_v(), layouts);
  }
  /// Runs sdpa::forward with `isa` and `threads` into `buffers` (reset to the sentinel first).
  RunInfo run(OutputBuffers& buffers, Isa isa, int threads) const {
    buffers.reset();
    Options o = options();
    o.isa = isa;
    o.threads = threads;
    return forward(q_tensor(), k_tensor(), v_tensor(), o, buffers.outputs());
  }
  /// The validated problem (outputs from `buffers`) and its references (16-bit inputs: the
  /// references read the same values, and the baseline is apply_16bit_baseline's).
  References references(OutputBuffers& buffers) const {
    const DType out_dtype = buffers.out16 ? buffers.out16->tensor.dtype : DType::f32;
    if (dtype == DType::f32 && out_dtype == DType::f32)
      return References(validate_forward(q.tensor, k.tensor, v.tensor, options(), buffers.outputs()));
    return References(validate_inputs(q_tensor(), k_tensor(), v_tensor(), options()), out_dtype);
  }
};

/// Draws the logit softcap and attention sinks of a property-test case (each off most of the time)
/// and describes them in `what`: softcap 0.5, 5, 30 or 50, half of the time with a scale raised so
/// that most logits reach the cap; sinks [Hq] in a random layout, per head an ordinary value, one
/// that dominates the row (60), or −inf (no sink).
inline void random_softcap_and_sinks(Rng& rng, Inputs& in, std::ostream& what) {
  if (rng.chance(0.25)) {
    in.base.softcap = rng.pick({0.5f, 5.0f, 30.0f, 50.0f});
    what << " softcap=" << in.base.softcap;
    if (rng.chance(0.5)) {
      const double dim_k = static_cast<double>(in.q.tensor.shape[3]);
      in.base.scale = static_cast<float>(rng.pick({-1.0, 1.0}) * rng.uniform(4, 40) / std::sqrt(dim_k));
      what << " scale=" << *in.base.scale;
    }
  }
  if (rng.chance(0.25)) {
    in.sinks.emplace(DType::f32, std::vector<std::int64_t>{in.heads_q()}, random_layout(rng, 1, true));
    std::ostringstream values;
    in.sinks->fill([&](const Index&) {
      const float value = rng.pick<float>({rng.normal(2.0f), 8.0f, 60.0f, -kInf});
      values << (values.tellp() > 0 ? "," : "") << value;
      return value;
    });
    what << " sinks/" << in.sinks->layout_name << "=" << values.str();
  }
}

/// Contiguous random q [B, Hq, Lq, Dk], k [B, Hkv, Lk, Dk], v [B, Hkv, Lk, Dv].
inline Inputs random_inputs(Rng& rng, std::int64_t batch, std::int64_t heads_q,
                            std::int64_t heads_kv, std::int64_t len_q, std::int64_t len_k,
                            std::int64_t dim_k, std::int64_t dim_v) {
  return Inputs{random_floats(rng, {batch, heads_q, len_q, dim_k}, {}),
                random_floats(rng, {batch, heads_kv, len_k, dim_k}, {}),
                random_floats(rng, {batch, heads_kv, len_k, dim_v}, {}),
                std::nullopt, std::nullopt, {}, {}, {}, DType::f32, {}, {}, {}};
}

/// Runs `inputs` on every supported ISA (threads as given) and checks all outputs against the
/// references; `what` describes the case in failure messages.
inline ::testing::AssertionResult matches_reference_on_every_isa(const Inputs& inputs,
                                                                 const std::string& what,
                                                                 int threads = 2) {
  OutputBuffers buffers = inputs.make_outputs();
  const References refs = inputs.references(buffers);
  for (Isa isa : supported_isas()) {
    inputs.run(buffers, isa, threads);
    if (auto r = check_outputs(refs, buffers, inputs.len_k(), inputs.dim_v()); !r)
      return r << "\n  case: " << what << ", isa " << isa_name(isa) << ", threads " << threads;
  }
  return ::testing::AssertionSuccess();
}

}  // namespace sdpa::test
