#include "lab/probe.hpp"

#include <algorithm>
#include <cmath>

#include "sdpa/sdpa.hpp"

namespace sdpa::lab {
namespace {

double rms(const std::vector<float>& x) {
  double sum = 0;
  for (float v : x) sum += static_cast<double>(v) * v;
  return std::sqrt(sum / static_cast<double>(x.size()));
}

}  // namespace

AttentionProbe probe_attention(const AttentionInputs& in, std::optional<float> scale, int threads) {
  const std::int64_t H = in.heads, L = in.length, D = in.dim;
  auto view = [&](const std::vector<float>& x) {
    return Tensor::contiguous(const_cast<float*>(x.data()), DType::f32, {1, H, L, D});
  };
  std::vector<float> out(in.q.size()), lse(static_cast<std::size_t>(H * L)), entropy(lse.size());
  std::vector<float> weights(static_cast<std::size_t>(H * L * L));
  Options options;
  options.scale = scale;
  options.threads = threads;
  Outputs outputs;
  outputs.out = view(out);
  outputs.lse = Tensor::contiguous(lse.data(), DType::f32, {1, H, L});
  outputs.entropy = Tensor::contiguous(entropy.data(), DType::f32, {1, H, L});
  outputs.weights = Tensor::contiguous(weights.data(), DType::f32, {1, H, L, L});
  sdpa::forward(view(in.q), view(in.k), view(in.v), options, outputs);

  std::vector<float> dq(in.q.size()), dk(in.k.size()), dv(in.v.size());
  Grads grads;
  grads.dq = view(dq);
  grads.dk = view(dk);
  grads.dv = view(dv);
  sdpa::backward(view(in.q), view(in.k), view(in.v), view(out), view(in.dout),
                 Tensor::contiguous(lse.data(), DType::f32, {1, H, L}), options, grads);

  AttentionProbe probe;
  const double rows = static_cast<double>(H * L);
  for (std::int64_t r = 0; r < H * L; ++r) {
    probe.entropy += entropy[r] / rows;
    probe.max_weight +=
        *std::max_element(weights.begin() + r * L, weights.begin() + (r + 1) * L) / rows;
  }
  // The softmax gain of every row, from the weights and dP = dO·Vᵀ (fp64).
  std::vector<double> gains;
  std::vector<double> dp(static_cast<std::size_t>(L));
  for (std::int64_t h = 0; h < H; ++h)
    for (std::int64_t i = 0; i < L; ++i) {
      const float* p = weights.data() + (h * L + i) * L;
      const float* dout_i = in.dout.data() + (h * L + i) * D;
      double d_row = 0, dp_norm = 0, ds_norm = 0;
      for (std::int64_t j = 0; j < L; ++j) {
        const float* v_j = in.v.data() + (h * L + j) * D;
        double dot = 0;
        for (std::int64_t e = 0; e < D; ++e) dot += static_cast<double>(dout_i[e]) * v_j[e];
        dp[j] = dot;
        d_row += p[j] * dot;
        dp_norm += dot * dot;
      }
      for (std::int64_t j = 0; j < L; ++j) ds_norm += std::pow(p[j] * (dp[j] - d_row), 2);
      gains.push_back(dp_norm > 0 ? std::sqrt(ds_norm / dp_norm) : 0.0);
    }
  for (double g : gains) {
    probe.mean_gain += g / rows;
    probe.saturated_fraction += (g < kSaturatedGain ? 1.0 : 0.0) / rows;
  }
  std::sort(gains.begin(), gains.end());
  probe.median_gain = gains[gains.size() / 2];
  probe.rms_dq = rms(dq);
  probe.rms_dk = rms(dk);
  probe.rms_dv = rms(dv);
  return probe;
}

}  // namespace sdpa::lab
