// Additive attention (Bahdanau, Cho and Bengio 2015), the single-head layer the `additive`
// experiment compares with dot-product attention:
//
//   u = x_q·W_1 + b_a  [B, Lq, d_a]      w = x_kv·W_2  [B, Lk, d_a]
//   s_ij = v_aᵀ tanh(u_i + w_j)          α_i = softmax_j(s_ij)
//   V = x_kv·W_v + b_v  [B, Lk, d_v]     ctx_i = Σ_j α_ij V_j      y = ctx·W_o + b_o  [B, Lq,
//   d_model]
//
// Written with plain loops for the score (there is no GEMM in it: every (i, j) pair needs its own
// d_a tanh evaluations, which is the point of the comparison) and sgemm for the projections.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace sdpa::lab {

struct AdditiveParameters {
  std::vector<float> w_1, w_2, b_a, v_a;  // [d_model, d_a] ×2, [d_a] ×2
  std::vector<float> w_v, b_v;            // [d_model, d_v], [d_v]
  std::vector<float> w_o, b_o;            // [d_v, d_model], [d_model]
};

struct AdditiveActivations {
  std::int64_t batch = 0, len_q = 0, len_k = 0;
  std::vector<float> tanh;     // [B, Lq, Lk, d_a]: tanh(u_i + w_j)
  std::vector<float> weights;  // [B, Lq, Lk]: α
  std::vector<float> values;   // [B, Lk, d_v]: V
  std::vector<float> context;  // [B, Lq, d_v]
};

class AdditiveAttention {
 public:
  AdditiveAttention(std::int64_t d_model, std::int64_t d_attention, std::int64_t d_value);
  /// Weights uniform in ±sqrt(3 / fan_in) (as MultiHeadAttention), biases 0.
  void init_parameters(std::uint64_t seed);
  AdditiveParameters& parameters() { return parameters_; }
  std::int64_t parameter_count() const;

  /// y [B, Lq, d_model]; `activations` (optional) is filled for backward; `entropy` (optional,
  /// [B, Lq]) gets each row's attention entropy in nats.
  void forward(std::span<const float> x_q, std::span<const float> x_kv, std::int64_t batch,
               std::int64_t len_q, std::int64_t len_k, std::span<float> y,
               AdditiveActivations* activations = nullptr, std::span<float> entropy = {}) const;

  /// Weight gradients (resized and overwritten) of the forward call that produced `activations`.
  void backward(std::span<const float> x_q, std::span<const float> x_kv,
                const AdditiveActivations& activations, std::span<const float> dy,
                AdditiveParameters& grads) const;

 private:
  std::int64_t d_model_, d_attention_, d_value_;
  AdditiveParameters parameters_;
};

}  // namespace sdpa::lab
