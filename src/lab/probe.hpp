// One attention forward + backward on given Q, K, V and dO, summarized: what temperature and
// gradients report for each setting.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace sdpa::lab {

struct AttentionInputs {
  std::int64_t heads = 1, length = 1, dim = 1;  // one batch entry, Lq = Lk = length, Dk = Dv = dim
  std::vector<float> q, k, v, dout;            // [1, heads, length, dim]
};

struct AttentionProbe {
  double entropy = 0;     // mean row entropy, nats (kernel telemetry)
  double max_weight = 0;  // mean over rows of the largest weight
  double rms_dq = 0, rms_dk = 0, rms_dv = 0;  // root mean square of the gradients' elements
};

/// forward (entropy and weights) and backward of L = Σ out ∘ dout at the given scale.
AttentionProbe probe_attention(const AttentionInputs& inputs, std::optional<float> scale, int threads);

}  // namespace sdpa::lab
