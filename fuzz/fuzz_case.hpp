// Decodes libFuzzer bytes into one attention call, for fuzz_forward and fuzz_backward: shapes,
// memory layouts (permuted, padded, negative and zero strides), a bool mask and a float bias with
// any broadcast, causal alignment, window, key/query lengths, scale, instruction set, threads and
// the input values. Sizes stay small, so the fp64 reference takes well under a millisecond.
//
// Values are finite and bounded: |q|, |k| ≤ 8·2^4, so no logit overflows fp32 (the bias may hold
// −inf and ±1e30 / ±1e38, huge logits the kernels must survive); |v| ≤ 1, because the accuracy
// rule's absolute term (1e-6) is meant for outputs of order 1 (with |v| up to 128 a correct kernel
// one ulp off, where naive32 happens to be exact, already fails it). With `specials` (forward
// only), NaN and ±inf are also placed into q, k and v.
//
// Drawn last (so the bytes before keep their meaning): the input dtype (f32, or bf16 / f16 with q,
// k and v rounded to it, the references reading the same values; out in that dtype or f32), a
// logit softcap (0 most of the time; tiny to huge) and attention sinks [Hq] (any layout; small,
// large, huge or −inf values).
#pragma once

#include <fuzzer/FuzzedDataProvider.h>

#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace sdpa::fuzz {

using test::Index;
using test::Layout;
using test::Strided;

struct Case {
  test::Inputs inputs;
  test::OutputLayouts outputs;
  Layout q_layout, k_layout, v_layout;  // those of inputs.q, .k, .v (for Inputs::set_dtype)
  Isa isa = Isa::scalar;
  int threads = 1;
  bool specials = false;  // q/k/v may hold NaN and ±inf
  std::string what;       // one line describing the call, printed on failure
};

// A sequence length: mostly 0..32; sometimes up to 300 (several key tiles and query blocks).
inline std::int64_t decode_length(FuzzedDataProvider& d) {
  if (d.ConsumeIntegral<std::uint8_t>() < 224) return d.ConsumeIntegralInRange<std::int64_t>(0, 32);
  return d.ConsumeIntegralInRange<std::int64_t>(33, 300);
}

struct Sizes {
  std::int64_t batch, heads_kv, group, len_q, len_k, dim_k, dim_v;
  std::int64_t cost() const { return batch * heads_kv * group * len_q * len_k * (dim_k + dim_v); }
};

// Multiply-adds of one reference call (B·Hq·Lq·Lk·(Dk + Dv)) that a fuzz input may ask for: the
// references, not the kernels, set the executions per second.
constexpr std::int64_t kMaxCost = 200'000;

// Shrinks the sizes until the reference is cheap: first one head and batch entry, then small head
// dimensions, then the shorter sequence (long sequences are what cross tiles and blocks).
inline Sizes within_budget(Sizes s) {
  if (s.cost() > kMaxCost) s.batch = s.heads_kv = s.group = 1;
  if (s.cost() > kMaxCost)
    s.dim_k = std::min<std::int64_t>(s.dim_k, 8), s.dim_v = std::min<std::int64_t>(s.dim_v, 8);
  if (s.cost() > kMaxCost) {
    std::int64_t& shorter = s.len_q < s.len_k ? s.len_q : s.len_k;
    const std::int64_t longer = std::max(s.len_q, s.len_k);
    shorter = std::max<std::int64_t>(1, kMaxCost / (longer * (s.dim_k + s.dim_v)));
  }
  return s;
}

inline Sizes decode_sizes(FuzzedDataProvider& d) {
  Sizes s{};
  s.batch = d.ConsumeIntegral<std::uint8_t>() < 8 ? 0 : d.ConsumeIntegralInRange(1, 2);
  s.heads_kv = d.ConsumeIntegralInRange(1, 2);
  s.group = d.ConsumeIntegralInRange(1, 3);
  s.len_q = decode_length(d);
  s.len_k = decode_length(d);
  s.dim_k = d.ConsumeIntegralInRange(1, 72);
  s.dim_v = d.ConsumeIntegralInRange(1, 72);
  return within_budget(s);
}

// A memory layout of a tensor of `rank` dimensions: a permutation (Lehmer code), and per dimension
// padding, a negative stride and (inputs only) a zero stride.
inline Layout decode_layout(FuzzedDataProvider& d, int rank, bool allow_broadcast) {
  Layout layout;
  unsigned code = d.ConsumeIntegral<std::uint8_t>();
  for (int i = 0; i < rank; ++i) {
    const int pick = static_cast<int>(code % static_cast<unsigned>(rank - i));
    code /= static_cast<unsigned>(rank - i);
    std::swap(layout.order[static_cast<std::size_t>(i)],
              layout.order[static_cast<std::size_t>(i + pick)]);
  }
  const auto bits = d.ConsumeIntegral<std::uint16_t>();
  std::ostringstream name;
  name << "order";
  for (int i = 0; i < rank; ++i) name << layout.order[static_cast<std::size_t>(i)];
  for (int i = 0; i < rank; ++i) {
    const auto u = static_cast<std::size_t>(i);
    layout.padding[u] = (bits >> i) & 1 ? 1 + ((bits >> 12) & 3) : 0;
    layout.reversed[u] = (bits >> (4 + i)) & 1;
    layout.broadcast[u] = allow_broadcast && ((bits >> (8 + i)) & 1);
    name << (layout.padding[u] ? "p" : "") << (layout.reversed[u] ? "r" : "")
         << (layout.broadcast[u] ? "b" : "") << (i + 1 < rank ? "," : "");
  }
  layout.name = name.str();
  return layout;
}

// An input value: k/16·2^e with k ∈ [−128, 111], or one of a few edge values (signed zeros,
// subnormals, FLT_MIN); NaN and ±inf only with `specials`.
constexpr int kMaxLogitExponent = 4;   // |q|, |k| ≤ 8·2^4
constexpr int kMaxValueExponent = -3;  // |v|, |dout| ≤ 1

inline float decode_value(FuzzedDataProvider& d, int exponent, bool specials) {
  const auto byte = d.ConsumeIntegral<std::uint8_t>();
  constexpr float kEdges[] = {0.0f, -0.0f, 1e-41f, -1e-41f, 1.17549435e-38f, 1e-30f};
  constexpr float kSpecials[] = {std::numeric_limits<float>::quiet_NaN(),
                                 std::numeric_limits<float>::infinity(),
                                 -std::numeric_limits<float>::infinity()};
  if (byte < 240)
    return std::ldexp(static_cast<float>(static_cast<int>(byte) - 128) / 16.0f, exponent);
  if (byte < 250 || !specials) return kEdges[byte % 6];
  return kSpecials[byte % 3];
}

// A float tensor whose values have magnitude at most 8·2^max_exponent.
// `layout_out` (optional) receives the layout drawn.
inline Strided<float> decode_floats(FuzzedDataProvider& d, std::vector<std::int64_t> shape,
                                    int max_exponent, bool specials, bool allow_broadcast = true,
                                    Layout* layout_out = nullptr) {
  const int rank = static_cast<int>(shape.size());
  const Layout layout = decode_layout(d, rank, allow_broadcast);
  if (layout_out != nullptr) *layout_out = layout;
  Strided<float> t(DType::f32, std::move(shape), layout);
  const int exponent = d.ConsumeIntegralInRange(-8, max_exponent);
  for (float& x : t.storage) x = decode_value(d, exponent, specials);
  return t;
}

// A shape of rank 1..4 broadcastable to `full` = [B, Hq, Lq, Lk] (each dimension full or 1).
inline std::vector<std::int64_t> decode_broadcast_shape(FuzzedDataProvider& d, const Index& full) {
  const int rank = d.ConsumeIntegralInRange(1, 4);
  const auto ones = d.ConsumeIntegral<std::uint8_t>();
  std::vector<std::int64_t> shape;
  for (int i = 4 - rank; i < 4; ++i)
    shape.push_back((ones >> i) & 1 ? 1 : full[static_cast<std::size_t>(i)]);
  return shape;
}

inline std::string shape_string(const Tensor& t) {
  std::ostringstream s;
  s << "[";
  for (int i = 0; i < t.rank; ++i) s << (i ? "," : "") << t.shape[static_cast<std::size_t>(i)];
  return s.str() + "]";
}

inline Strided<std::uint8_t> decode_mask(FuzzedDataProvider& d, const Index& full) {
  std::vector<std::int64_t> shape = decode_broadcast_shape(d, full);
  const int rank = static_cast<int>(shape.size());
  Strided<std::uint8_t> mask(DType::boolean, std::move(shape), decode_layout(d, rank, true));
  const auto density = d.ConsumeIntegral<std::uint8_t>();
  for (auto& x : mask.storage) x = d.ConsumeIntegral<std::uint8_t>() < density;
  return mask;
}

// A bias value: small, −inf, or a huge finite logit (±1e30, ±1e38; `huge` only).
inline float decode_bias_value(FuzzedDataProvider& d, bool huge) {
  const auto byte = d.ConsumeIntegral<std::uint8_t>();
  constexpr float kHuge[] = {1e30f, -1e30f, 1e38f, -1e38f};
  if (byte >= 248) return -std::numeric_limits<float>::infinity();
  if (byte >= 240 && huge) return kHuge[byte % 4];
  return static_cast<float>(static_cast<int>(byte) - 120) / 8.0f;
}

inline Strided<float> decode_bias(FuzzedDataProvider& d, const Index& full, bool huge) {
  std::vector<std::int64_t> shape = decode_broadcast_shape(d, full);
  const int rank = static_cast<int>(shape.size());
  Strided<float> bias(DType::f32, std::move(shape), decode_layout(d, rank, true));
  for (float& x : bias.storage) x = decode_bias_value(d, huge);
  return bias;
}

inline std::vector<std::int32_t> decode_lengths(FuzzedDataProvider& d, std::int64_t batch,
                                                std::int64_t max_len) {
  std::vector<std::int32_t> lengths;
  for (std::int64_t b = 0; b < batch; ++b)
    lengths.push_back(
        static_cast<std::int32_t>(d.ConsumeIntegralInRange<std::int64_t>(0, max_len)));
  return lengths;
}

inline void decode_options(FuzzedDataProvider& d, Case& c, std::ostringstream& what) {
  test::Inputs& in = c.inputs;
  const std::int64_t B = in.batch(), Lq = in.len_q(), Lk = in.len_k();
  in.base.causal = d.PickValueInArray({Causal::none, Causal::top_left, Causal::bottom_right});
  what << " causal=" << static_cast<int>(in.base.causal);
  if (d.ConsumeBool()) {
    const std::int64_t reach = std::max(Lq, Lk) + 1;
    in.base.window = Window{d.ConsumeIntegralInRange<std::int64_t>(-1, reach),
                            d.ConsumeIntegralInRange<std::int64_t>(-1, reach)};
    what << " window=" << in.base.window->left << "," << in.base.window->right;
  }
  if (d.ConsumeBool()) {
    in.key_lengths = decode_lengths(d, B, Lk);
    what << " key_lengths";
    for (auto x : in.key_lengths) what << "," << x;
  }
  if (d.ConsumeBool()) {
    in.query_lengths = decode_lengths(d, B, Lq);
    what << " query_lengths";
    for (auto x : in.query_lengths) what << "," << x;
  }
  const auto scale_kind = d.ConsumeIntegral<std::uint8_t>();
  if (scale_kind >= 128) {
    const float root = std::sqrt(static_cast<float>(in.q.tensor.shape[3]));
    in.base.scale = scale_kind >= 252 ? d.PickValueInArray({0.0f, 1e-30f, 1e30f, -1e30f})
                                      : static_cast<float>(scale_kind - 190) / 16.0f / root;
    what << " scale=" << *in.base.scale;
  }
}

// The logit softcap (mostly 0 = off) and the attention sinks (mostly none).
inline void decode_softcap_and_sinks(FuzzedDataProvider& d, Case& c, std::ostringstream& what) {
  test::Inputs& in = c.inputs;
  const auto cap_kind = d.ConsumeIntegral<std::uint8_t>();
  if (cap_kind >= 192) {
    in.base.softcap = d.PickValueInArray({1e-30f, 1e-3f, 0.5f, 5.0f, 30.0f, 50.0f, 1e30f});
    what << " softcap=" << in.base.softcap;
  }
  if (d.ConsumeIntegral<std::uint8_t>() < 192) return;
  in.sinks.emplace(DType::f32, std::vector<std::int64_t>{in.heads_q()}, decode_layout(d, 1, true));
  what << " sinks/" << in.sinks->layout_name << "=";
  for (std::size_t n = 0; n < in.sinks->storage.size(); ++n) {
    const auto byte = d.ConsumeIntegral<std::uint8_t>();
    float sink = static_cast<float>(static_cast<int>(byte) - 128) / 8.0f;  // [−16, 15.9]
    if (byte >= 248)
      sink = -std::numeric_limits<float>::infinity();
    else if (byte >= 240)
      sink = d.PickValueInArray({60.0f, -60.0f, 1e30f, -1e30f});
    in.sinks->storage[n] = sink;
    what << (n ? "," : "") << sink;
  }
}

// bf16 / f16 inputs (mostly f32): q, k, v rounded to the dtype; out in the dtype when
// `allow_16bit_out` (else f32, "fp32 on request").
inline void decode_dtype(FuzzedDataProvider& d, Case& c, bool allow_16bit_out,
                         std::ostringstream& what) {
  const auto kind = d.ConsumeIntegral<std::uint8_t>();
  if (kind < 160) return;
  const DType dtype = kind < 224 ? DType::bf16 : DType::f16;
  c.inputs.set_dtype(dtype, c.q_layout, c.k_layout, c.v_layout);
  if (allow_16bit_out && d.ConsumeBool()) c.outputs.out_dtype = dtype;
  what << " dtype=" << dtype_name(dtype) << " out_dtype=" << dtype_name(c.outputs.out_dtype);
}

inline void decode_execution(FuzzedDataProvider& d, Case& c, std::ostringstream& what) {
  const std::vector<Isa> isas = test::supported_isas();
  c.isa = isas[d.ConsumeIntegralInRange<std::size_t>(0, isas.size() - 1)];
  c.threads = d.ConsumeIntegral<std::uint8_t>() < 224 ? 1 : d.ConsumeIntegralInRange(2, 4);
  what << " isa=" << isa_name(c.isa) << " threads=" << c.threads;
}

/// One attention call from the fuzz bytes. `allow_specials`: NaN/±inf may enter q, k, v (decided by
/// a byte); `allow_huge_bias`: the bias may hold ±1e30 and ±1e38; `allow_16bit_out`: out may be
/// written in the inputs' 16-bit dtype (never with specials).
inline Case decode_case(FuzzedDataProvider& d, bool allow_specials, bool allow_huge_bias,
                        bool allow_16bit_out = true) {
  const Sizes sizes = decode_sizes(d);
  const std::int64_t B = sizes.batch, Hkv = sizes.heads_kv, Hq = sizes.heads_kv * sizes.group;
  const std::int64_t Lq = sizes.len_q, Lk = sizes.len_k, Dk = sizes.dim_k, Dv = sizes.dim_v;
  const bool specials = allow_specials && d.ConsumeIntegral<std::uint8_t>() >= 192;
  std::ostringstream what;
  what << "B=" << B << " Hq=" << Hq << " Hkv=" << Hkv << " Lq=" << Lq << " Lk=" << Lk
       << " Dk=" << Dk << " Dv=" << Dv << (specials ? " specials" : "");
  Layout q_layout, k_layout, v_layout;
  Strided<float> q =
      decode_floats(d, {B, Hq, Lq, Dk}, kMaxLogitExponent, specials, true, &q_layout);
  Strided<float> k =
      decode_floats(d, {B, Hkv, Lk, Dk}, kMaxLogitExponent, specials, true, &k_layout);
  Strided<float> v =
      decode_floats(d, {B, Hkv, Lk, Dv}, kMaxValueExponent, specials, true, &v_layout);
  Case c{test::Inputs{std::move(q),
                      std::move(k),
                      std::move(v),
                      std::nullopt,
                      std::nullopt,
                      {},
                      {},
                      {},
                      DType::f32,
                      {},
                      {},
                      {}},
         {},
         q_layout,
         k_layout,
         v_layout,
         Isa::scalar,
         1,
         specials,
         ""};
  what << " q/" << c.inputs.q.layout_name << " k/" << c.inputs.k.layout_name << " v/"
       << c.inputs.v.layout_name;
  const Index full{B, Hq, Lq, Lk};
  if (d.ConsumeBool()) {
    c.inputs.mask = decode_mask(d, full);
    what << " mask" << shape_string(c.inputs.mask->tensor) << "/" << c.inputs.mask->layout_name;
  }
  if (d.ConsumeBool()) {
    c.inputs.bias = decode_bias(d, full, allow_huge_bias);
    what << " bias" << shape_string(c.inputs.bias->tensor) << "/" << c.inputs.bias->layout_name;
  }
  decode_options(d, c, what);
  test::OutputLayouts& o = c.outputs;
  o.out = decode_layout(d, 4, false);
  o.lse = decode_layout(d, 3, false);
  o.weights = decode_layout(d, 4, false);
  o.entropy = decode_layout(d, 3, false);
  o.want_lse = d.ConsumeBool();
  o.want_weights = d.ConsumeBool();
  o.want_entropy = d.ConsumeBool();
  decode_execution(d, c, what);
  decode_dtype(d, c, allow_16bit_out && !specials, what);
  decode_softcap_and_sinks(d, c, what);
  c.what = what.str();
  return c;
}

/// Prints the failure and the call, then aborts (libFuzzer saves the input as a crash).
[[noreturn]] inline void report(const ::testing::AssertionResult& result, const Case& c) {
  std::fprintf(stderr, "fuzz: %s\n  call: %s\n", result.message(), c.what.c_str());
  std::abort();
}

}  // namespace sdpa::fuzz
