// One attention forward + backward on given Q, K, V and dO, summarized: what temperature and
// gradients report for each setting.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace sdpa::lab {

struct AttentionInputs {
  std::int64_t heads = 1, length = 1, dim = 1;  // one batch entry, Lq = Lk = length, Dk = Dv = dim
  std::vector<float> q, k, v, dout;             // [1, heads, length, dim]
};

struct AttentionProbe {
  double entropy = 0;                         // mean row entropy, nats (kernel telemetry)
  double max_weight = 0;                      // mean over rows of the largest weight
  double rms_dq = 0, rms_dk = 0, rms_dv = 0;  // root mean square of the gradients' elements
  // The softmax's gain per row i: ‖dS_i‖ / ‖dP_i‖, the part of the upstream gradient dP_i = dO_i·Vᵀ
  // (with respect to the weights) that reaches the logits, dS_i = p_i ∘ (dP_i − p_i·dP_i).
  // 1/L for uniform weights, 0 for one-hot ones.
  double median_gain = 0, mean_gain = 0;
  double saturated_fraction = 0;  // rows whose gain is below kSaturatedGain
};

/// A row passing less than this fraction of its upstream gradient to the logits counts as
/// saturated.
inline constexpr double kSaturatedGain = 1e-3;

/// forward (entropy and weights) and backward of L = Σ out ∘ dout at the given scale.
AttentionProbe probe_attention(const AttentionInputs& inputs, std::optional<float> scale,
                               int threads);

}  // namespace sdpa::lab
