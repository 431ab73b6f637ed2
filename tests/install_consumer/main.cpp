// Uses the installed library the way a downstream project would: a forward call checked against
// a direct computation, and one MultiHeadAttention forward. Prints "consumer ok" on success.
#include <cmath>
#include <cstdio>
#include <vector>

#include <sdpa/mha.hpp>
#include <sdpa/sdpa.hpp>

int main() {
  // One query, two keys: out = softmax(q·k·scale) · v.
  std::vector<float> q{1.0f, 0.0f}, k{1.0f, 0.0f, 0.0f, 1.0f}, v{1.0f, 2.0f, 3.0f, 4.0f}, out(2);
  const auto t = [](std::vector<float>& x, std::int64_t rows) {
    return sdpa::Tensor::contiguous(x.data(), sdpa::DType::f32, {1, 1, rows, 2});
  };
  sdpa::Outputs outputs;
  outputs.out = t(out, 1);
  sdpa::forward(t(q, 1), t(k, 2), t(v, 2), sdpa::Options{}, outputs);
  const double w0 = std::exp(1.0 / std::sqrt(2.0)), w1 = 1.0;
  const double expect0 = (w0 * 1 + w1 * 3) / (w0 + w1), expect1 = (w0 * 2 + w1 * 4) / (w0 + w1);
  if (std::abs(out[0] - expect0) > 1e-5 || std::abs(out[1] - expect1) > 1e-5) {
    std::printf("consumer: forward gave %g %g, expected %g %g\n", out[0], out[1], expect0, expect1);
    return 1;
  }
  sdpa::MhaConfig config;
  config.d_model = 8;
  config.heads = 2;
  sdpa::MultiHeadAttention layer(config);
  std::printf("consumer ok (sdpa %s, layer with %lld parameters)\n", sdpa::version(),
              static_cast<long long>(layer.parameter_count()));
  return layer.parameter_count() == 4 * (8 * 8 + 8) ? 0 : 1;
}
