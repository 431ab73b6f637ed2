// sdpa::MultiHeadAttention — a multi-head attention layer (fp32) over the fused kernel:
//
//   Q = x_q·W_q + b_q      K = x_kv·W_k + b_k      V = x_kv·W_v + b_v
//   O_h = softmax(scale·Q_h·K_gᵀ + bias) · V_g       (head h reads key/value head g = h / (h /
//   h_kv)) y = [O_1 … O_h]·W_o + b_o
//
// Sequences are rows of d_model floats, row-major:
//   x_q [B, Lq, d_model]    x_kv [B, Lk, d_model]    y [B, Lq, d_model]
// (self-attention passes the same buffer as x_q and x_kv). Weights act on row vectors:
//   w_q [d_model, h·d_k]    w_k [d_model, h_kv·d_k]    w_v [d_model, h_kv·d_v]    w_o [h·d_v,
//   d_model] b_q [h·d_k]             b_k [h_kv·d_k]             b_v [h_kv·d_v]             b_o
//   [d_model]
// The projected Q, K, V are [B, L, heads, d] in memory and reach the kernel as strided
// [B, heads, L, d] views, without a copy. Projections are OpenBLAS sgemm calls.
//
// sdpa::Options pass through to sdpa::forward / sdpa::backward unchanged: scale (the temperature,
// default 1/sqrt(d_k)), causal, mask and bias (shaped [B|1, h|1, Lq|1, Lk|1]), window, key/query
// lengths, threads, isa. Every function checks its arguments first and throws sdpa::Error naming
// the one that is wrong; nothing is written then.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "sdpa/kv_cache.hpp"
#include "sdpa/sdpa.hpp"

namespace sdpa {

/// Sizes of a multi-head attention layer.
struct MhaConfig {
  std::int64_t d_model = 0;
  std::int64_t heads = 1;     ///< query heads h
  std::int64_t kv_heads = 0;  ///< key/value heads h_kv (0 = heads); h must be a multiple of it
  std::int64_t d_k = 0;       ///< query/key width per head (0 = d_model / heads)
  std::int64_t d_v = 0;       ///< value width per head (0 = d_k)
  bool bias = true;           ///< whether the four projections have biases
};

/// The layer's weights (or their gradients, same shapes), row-major as in the header comment.
/// Without biases the four bias vectors are empty.
struct MhaParameters {
  std::vector<float> w_q, w_k, w_v, w_o;
  std::vector<float> b_q, b_k, b_v, b_o;
};

/// What a training forward keeps for backward: the projections and the attention's output and lse.
struct MhaActivations {
  std::int64_t batch = 0, len_q = 0, len_k = 0;
  std::vector<float> q;     ///< [B, Lq, h·d_k]
  std::vector<float> k;     ///< [B, Lk, h_kv·d_k]
  std::vector<float> v;     ///< [B, Lk, h_kv·d_v]
  std::vector<float> attn;  ///< [B, Lq, h·d_v]: the heads' outputs, the input of W_o
  std::vector<float> lse;   ///< [B, h, Lq]
};

/// Gradients written by backward (every buffer is overwritten, not accumulated into).
struct MhaGrads {
  std::span<float> dx_q{};   ///< [B, Lq, d_model]
  std::span<float> dx_kv{};  ///< [B, Lk, d_model]; may be the same buffer as dx_q (self-attention):
                             ///< it then receives dx_q + dx_kv
  MhaParameters* parameters = nullptr;  ///< optional: dL/d(weights and biases), resized to fit
  float* dscale = nullptr;              ///< optional: dL/d(scale), the temperature gradient
  std::optional<Tensor> dbias{};        ///< optional: dL/d(options.bias), shaped like it
};

class MultiHeadAttention;

/// Keys and values of the positions decoded so far, for incremental decoding. Stored as
/// [B, capacity, h_kv·d] (the projections' own layout), so appending a step is a row copy and the
/// kernel reads the first length() rows through strides.
class MhaKvCache {
 public:
  /// An empty cache for `layer`'s sizes, `batch` sequences of up to `capacity` positions.
  MhaKvCache(const MultiHeadAttention& layer, std::int64_t batch, std::int64_t capacity);

  std::int64_t batch() const { return batch_; }
  std::int64_t capacity() const { return capacity_; }
  std::int64_t length() const { return length_; }  ///< positions cached so far
  void clear() { length_ = 0; }

 private:
  friend class MultiHeadAttention;
  std::int64_t batch_, capacity_, length_ = 0;
  std::int64_t key_width_, value_width_;  // h_kv·d_k, h_kv·d_v
  std::vector<float> keys_, values_;      // [B, capacity, key_width] and [B, capacity, value_width]
};

class MultiHeadAttention {
 public:
  /// A layer of these sizes with zero weights (see init_parameters). Throws sdpa::Error for
  /// sizes < 1 (after defaults) or heads not a multiple of kv_heads.
  explicit MultiHeadAttention(const MhaConfig& config);

  /// The sizes with defaults resolved (kv_heads, d_k, d_v never 0).
  const MhaConfig& config() const { return config_; }
  MhaParameters& parameters() { return parameters_; }
  const MhaParameters& parameters() const { return parameters_; }
  /// Number of trainable floats (weights and biases).
  std::int64_t parameter_count() const;

  /// Deterministic initialization from `seed`: each weight uniform in ±sqrt(3 / fan_in), so
  /// unit-variance inputs give unit-variance projections (the premise of the 1/sqrt(d_k) scaling);
  /// biases zero.
  void init_parameters(std::uint64_t seed);

  /// y = MHA(x_q, x_kv). When `activations` is given it is filled for backward. When `entropy` is
  /// given ([B, h, Lq]) it receives each attention row's entropy in nats (sdpa::Outputs::entropy).
  void forward(std::span<const float> x_q, std::span<const float> x_kv, std::int64_t batch,
               std::int64_t len_q, std::int64_t len_k, const Options& options, std::span<float> y,
               MhaActivations* activations = nullptr, std::span<float> entropy = {}) const;

  /// Gradients of a loss given dy = dL/dy [B, Lq, d_model], for the forward call that produced
  /// `activations` with the same x_q, x_kv and options. Attention gradients come from
  /// sdpa::backward (its dscale and dbias too).
  void backward(std::span<const float> x_q, std::span<const float> x_kv,
                const MhaActivations& activations, const Options& options,
                std::span<const float> dy, MhaGrads& grads) const;

  /// Incremental decoding: projects the next `len_new` positions x_new [B, len_new, d_model],
  /// appends their keys and values to `cache`, and attends from their queries to every cached
  /// position with bottom-right causal alignment (new position t sees positions ≤ t), writing
  /// y [B, len_new, d_model]. Step by step this equals forward() on the whole sequence with
  /// Causal::top_left, up to rounding. options.causal must be none or bottom_right (bottom_right is
  /// used either way); a mask or bias is shaped for [B|1, h|1, len_new|1, cache length after the
  /// append|1]; the window is aligned on the same diagonal. A full cache is an error (nothing
  /// appended).
  void decode_step(std::span<const float> x_new, std::int64_t len_new, MhaKvCache& cache,
                   const Options& options, std::span<float> y, std::span<float> entropy = {}) const;

  /// The same step with a paged sdpa::KvCache (fp32, bf16 or int8 storage; see kv_cache.hpp):
  /// x_new [S, len_new, d_model] holds the next positions of the S sequences `sequences` (ids in
  /// `cache`, whose heads_kv / dim_k / dim_v must be this layer's kv_heads / d_k / d_v); their keys
  /// and values are appended and their queries attend bottom-right aligned, y [S, len_new,
  /// d_model]. Throws sdpa::Error (and appends nothing) when the pool lacks the pages.
  void decode_step(std::span<const float> x_new, std::int64_t len_new, KvCache& cache,
                   std::span<const int> sequences, std::span<float> y,
                   const AttendOptions& options = {}) const;

 private:
  MhaConfig config_;
  MhaParameters parameters_;
};

}  // namespace sdpa
