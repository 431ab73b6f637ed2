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
    probe.max_weight += *std::max_element(weights.begin() + r * L, weights.begin() + (r + 1) * L) / rows;
  }
  probe.rms_dq = rms(dq);
  probe.rms_dk = rms(dk);
  probe.rms_dv = rms(dv);
  return probe;
}

}  // namespace sdpa::lab
