// Problem: the one validated description of an attention call that every algorithm reads.
// Front ends (C++ API, CLI, Python) build it only through validate(); no kernel re-checks shapes.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "sdpa/sdpa.hpp"

namespace sdpa {

/// A float tensor of rank ≤ 4 resolved to element strides of a [B, H, Lq, Lk]-style index.
/// Broadcast dimensions have stride 0, so element (b, h, i, j) is data[b*s0 + h*s1 + i*s2 + j*s3].
template <typename T>
struct View4 {
  T* data = nullptr;
  std::int64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  T& at(std::int64_t b, std::int64_t h, std::int64_t i, std::int64_t j) const {
    return data[b * s0 + h * s1 + i * s2 + j * s3];
  }
};

struct Problem {
  // Sizes. group = Hq / Hkv query heads share one key/value head.
  std::int64_t batch = 0, heads_q = 0, heads_kv = 0, group = 1;
  std::int64_t len_q = 0, len_k = 0, dim_k = 0, dim_v = 0;
  float scale = 1.0f;

  // Inputs q, k, v share one dtype: f32 (views q, k, v) or bf16 / f16 (views q16, k16, v16, the
  // raw 16-bit patterns; see core/half.hpp). out is f32 (view out) or the inputs' 16-bit dtype
  // (out16). The views of the other kind have a null pointer.
  DType dtype = DType::f32;
  DType out_dtype = DType::f32;
  View4<const float> q, k, v;        // [B, Hq|Hkv, L, D]
  View4<const std::uint16_t> q16, k16, v16;
  View4<float> out;                  // [B, Hq, Lq, Dv]
  View4<std::uint16_t> out16;
  std::optional<View4<float>> lse;   // [B, Hq, Lq] as (b, h, i, 0)
  std::optional<View4<float>> entropy;  // [B, Hq, Lq] as (b, h, i, 0)
  std::optional<View4<float>> weights;
  std::optional<View4<const std::uint8_t>> mask;  // bool as bytes, broadcast strides
  std::optional<View4<const float>> bias;

  Causal causal = Causal::none;
  std::int64_t window_left = -1, window_right = -1;  // -1 = unbounded
  std::span<const std::int32_t> key_lengths, query_lengths;

  float softcap = 0.0f;                    // 0 = off; else t = c·tanh(scale·q·k / c) before the bias
  const float* sinks = nullptr;            // optional [Hq]: per-head sink logit (−inf = none)
  std::int64_t sinks_stride = 0;

  int threads = 1;
  std::size_t workspace_limit = 0;
  Isa isa = Isa::scalar;

  /// The sink logit of query head h for real (non-padding) rows; −inf when there are no sinks.
  float sink(std::int64_t h) const { return sinks ? sinks[h * sinks_stride] : -__builtin_inff(); }

  std::int64_t query_length(std::int64_t b) const {
    return query_lengths.empty() ? len_q : query_lengths[static_cast<std::size_t>(b)];
  }
  std::int64_t key_length(std::int64_t b) const {
    return key_lengths.empty() ? len_k : key_lengths[static_cast<std::size_t>(b)];
  }

  // Input elements widened to fp32, whatever the dtype (for references and slow paths).
  float q_at(std::int64_t b, std::int64_t h, std::int64_t i, std::int64_t d) const {
    return widen(q, q16, b, h, i, d);
  }
  float k_at(std::int64_t b, std::int64_t h, std::int64_t j, std::int64_t d) const {
    return widen(k, k16, b, h, j, d);
  }
  float v_at(std::int64_t b, std::int64_t h, std::int64_t j, std::int64_t d) const {
    return widen(v, v16, b, h, j, d);
  }

 private:
  float widen(const View4<const float>& f32, const View4<const std::uint16_t>& bits, std::int64_t b,
              std::int64_t h, std::int64_t i, std::int64_t d) const;
};

/// A validated backward call: the forward problem (inputs, masks, options; its out view is the
/// forward's output) plus the gradient inputs and outputs.
struct BackwardProblem {
  Problem forward;                    // q, k, v, masks, options; forward.out = the forward's out
  View4<const float> dout;            // [B, Hq, Lq, Dv] (f32 dout; dout16 when 16-bit)
  View4<const std::uint16_t> dout16;
  View4<const float> lse;             // [B, Hq, Lq] as (b, h, i, 0)
  View4<float> dq, dk, dv;            // shapes of q, k, v (f32 gradients)
  // Each gradient is f32 or the inputs' 16-bit dtype; 16-bit ones are converted from an f32
  // computation by sdpa::backward (the kernels themselves only see f32).
  DType dq_dtype = DType::f32, dk_dtype = DType::f32, dv_dtype = DType::f32;
  std::optional<View4<float>> dbias;  // broadcast strides like bias: several (b, h, i, j) share one
  std::array<std::int64_t, 4> dbias_shape{};  // dbias as [B|1, Hq|1, Lq|1, Lk|1]
  float* dscale = nullptr;
  float* dsinks = nullptr;            // optional [Hq], element h at dsinks[h * dsinks_stride]
  std::int64_t dsinks_stride = 0;

  /// dout element widened to fp32, whatever its dtype.
  float dout_at(std::int64_t b, std::int64_t h, std::int64_t i, std::int64_t d) const;
};

/// A validated merge_attention call: parts i = 0..n−1 of [B, H, L, D] outputs and [B, H, L] lses
/// (as (b, h, i, 0)), merged into out (and lse).
struct MergeProblem {
  std::int64_t batch = 0, heads = 0, len = 0, dim = 0;
  std::vector<View4<const float>> outs, lses;
  View4<float> out;
  std::optional<View4<float>> lse;
  int threads = 1;
};

/// Checks every argument of a forward call and resolves it into a Problem. Throws sdpa::Error
/// naming the argument, the expected and the given value. Writes nothing.
Problem validate_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Options& options,
                         const Outputs& outputs);

/// Checks every argument of a backward call (see sdpa::backward). Writes nothing.
BackwardProblem validate_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out, const Tensor& dout, const Tensor& lse,
                                  const Options& options, const Grads& grads);

/// Checks every argument of sdpa::merge_attention. Writes nothing.
MergeProblem validate_merge(std::span<const Tensor> outs, std::span<const Tensor> lses,
                            const Tensor& out, const std::optional<Tensor>& lse, int threads);

/// Outputs must not write one element twice: a zero stride on a dimension longer than 1 would.
/// Throws sdpa::Error naming `name` otherwise.
void check_writable(const Tensor& t, const char* name);

/// Like validate_forward but without outputs (for FLOP counting and planning).
Problem validate_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Options& options);

}  // namespace sdpa
