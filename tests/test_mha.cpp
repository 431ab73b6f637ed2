// sdpa::MultiHeadAttention against a straightforward fp64 implementation written here from the
// math (projections, per-head softmax with the library's mask rule, output projection), and its
// backward against central finite differences of that fp64 implementation. Small sizes: every
// parameter, input element, bias element and the scale is differentiated.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "core/mask.hpp"
#include "core/problem.hpp"
#include "sdpa/kv_cache.hpp"
#include "sdpa/mha.hpp"
#include "sdpa/sdpa.hpp"

namespace sdpa {
namespace {

std::vector<float> uniform_values(std::size_t n, std::mt19937_64& generator, double bound = 1.0) {
  std::vector<float> values(n);
  for (float& x : values)
    x = static_cast<float>((static_cast<double>(generator() >> 11) * 0x1.0p-53 * 2 - 1) * bound);
  return values;
}

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// ---- the fp64 implementation -------------------------------------------------------------------

struct Params64 {
  std::vector<double> w_q, w_k, w_v, w_o, b_q, b_k, b_v, b_o;
  explicit Params64(const MhaParameters& p)
      : w_q(to_double(p.w_q)),
        w_k(to_double(p.w_k)),
        w_v(to_double(p.w_v)),
        w_o(to_double(p.w_o)),
        b_q(to_double(p.b_q)),
        b_k(to_double(p.b_k)),
        b_v(to_double(p.b_v)),
        b_o(to_double(p.b_o)) {}
  /// Every parameter vector, in the order of MhaParameters' fields.
  std::vector<std::vector<double>*> all() {
    return {&w_q, &w_k, &w_v, &w_o, &b_q, &b_k, &b_v, &b_o};
  }
};

// out [rows, width] = x [rows, d] · w [d, width] + b
std::vector<double> project64(const std::vector<double>& x, std::int64_t rows, std::int64_t d,
                              const std::vector<double>& w, const std::vector<double>& b,
                              std::int64_t width) {
  std::vector<double> out(static_cast<std::size_t>(rows * width));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < width; ++c) {
      double sum = b.empty() ? 0.0 : b[c];
      for (std::int64_t i = 0; i < d; ++i) sum += x[r * d + i] * w[i * width + c];
      out[r * width + c] = sum;
    }
  return out;
}

/// Everything one forward call needs besides the parameters and inputs.
struct Case {
  std::string name;
  MhaConfig config;
  std::int64_t batch = 2, len_q = 4, len_k = 5;
  bool self_attention = false;
  Causal causal = Causal::none;
  std::optional<Window> window;
  std::vector<std::int32_t> key_lengths;
  bool with_mask = false, with_bias = false;
  std::optional<float> scale;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

/// The options of a case, with its mask and bias held in `mask` / `bias` ([1, h, Lq, Lk]).
struct CaseOptions {
  Options options;
  std::vector<std::uint8_t> mask;
  std::vector<float> bias;
};

CaseOptions make_options(const Case& c, const MhaConfig& config, std::mt19937_64& generator) {
  CaseOptions o;
  o.options.scale = c.scale;
  o.options.causal = c.causal;
  o.options.window = c.window;
  o.options.key_lengths = c.key_lengths;
  o.options.threads = 1;
  const std::int64_t h = config.heads, n = h * c.len_q * c.len_k;
  if (c.with_mask) {
    o.mask.resize(static_cast<std::size_t>(n));
    for (auto& m : o.mask) m = (generator() % 4) != 0;  // about a quarter of the keys hidden
    o.options.mask = Tensor::contiguous(o.mask.data(), DType::boolean, {1, h, c.len_q, c.len_k});
  }
  if (c.with_bias) {
    o.bias = uniform_values(static_cast<std::size_t>(n), generator, 0.5);
    o.options.bias = Tensor::contiguous(o.bias.data(), DType::f32, {1, h, c.len_q, c.len_k});
  }
  return o;
}

/// The library's own resolution of the options (mask rule, bias view) for the attention shapes, so
/// the fp64 implementation applies exactly the documented visibility.
Problem attention_problem(const MhaConfig& config, const Case& c, const Options& options,
                          std::vector<float>& dummy) {
  const std::int64_t B = c.batch, d = std::max(config.d_k, config.d_v);
  dummy.assign(static_cast<std::size_t>(B * config.heads * std::max(c.len_q, c.len_k) * d), 0.0f);
  const Tensor q =
      Tensor::contiguous(dummy.data(), DType::f32, {B, config.heads, c.len_q, config.d_k});
  const Tensor k =
      Tensor::contiguous(dummy.data(), DType::f32, {B, config.kv_heads, c.len_k, config.d_k});
  const Tensor v =
      Tensor::contiguous(dummy.data(), DType::f32, {B, config.kv_heads, c.len_k, config.d_v});
  return validate_inputs(q, k, v, options);
}

/// y [B, Lq, d_model] in fp64; `bias64` overrides the problem's bias values ([1, h, Lq, Lk]).
std::vector<double> forward64(const MhaConfig& cfg, const Params64& p, const Problem& problem,
                              const std::vector<double>& x_q, const std::vector<double>& x_kv,
                              const std::vector<double>& bias64, double scale) {
  const std::int64_t B = problem.batch, Lq = problem.len_q, Lk = problem.len_k;
  const std::int64_t h = cfg.heads, hkv = cfg.kv_heads, dk = cfg.d_k, dv = cfg.d_v;
  const auto q = project64(x_q, B * Lq, cfg.d_model, p.w_q, p.b_q, h * dk);
  const auto k = project64(x_kv, B * Lk, cfg.d_model, p.w_k, p.b_k, hkv * dk);
  const auto v = project64(x_kv, B * Lk, cfg.d_model, p.w_v, p.b_v, hkv * dv);
  std::vector<double> attn(static_cast<std::size_t>(B * Lq * h * dv), 0.0);
  std::vector<double> logits(static_cast<std::size_t>(Lk));
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t head = 0; head < h; ++head) {
      const std::int64_t g = head / (h / hkv);
      for (std::int64_t i = 0; i < Lq; ++i) {
        double max_logit = -std::numeric_limits<double>::infinity();
        for (std::int64_t j = 0; j < Lk; ++j) {
          logits[j] = -std::numeric_limits<double>::infinity();
          if (!key_visible(problem, b, head, i, j)) continue;
          double dot = 0;
          for (std::int64_t e = 0; e < dk; ++e)
            dot +=
                q[(b * Lq + i) * h * dk + head * dk + e] * k[(b * Lk + j) * hkv * dk + g * dk + e];
          logits[j] = scale * dot + (bias64.empty() ? 0.0 : bias64[(head * Lq + i) * Lk + j]);
          max_logit = std::max(max_logit, logits[j]);
        }
        if (max_logit == -std::numeric_limits<double>::infinity()) continue;  // no key: out = 0
        double sum = 0;
        for (double& s : logits) sum += s = std::exp(s - max_logit);
        for (std::int64_t j = 0; j < Lk; ++j)
          for (std::int64_t e = 0; e < dv; ++e)
            attn[(b * Lq + i) * h * dv + head * dv + e] +=
                logits[j] / sum * v[(b * Lk + j) * hkv * dv + g * dv + e];
      }
    }
  return project64(attn, B * Lq, h * dv, p.w_o, p.b_o, cfg.d_model);
}

double dot64(const std::vector<double>& a, const std::vector<double>& b) {
  double sum = 0;
  for (std::size_t i = 0; i < a.size(); ++i) sum += a[i] * b[i];
  return sum;
}

/// Central differences of loss() with respect to each element of `x`, step 1e-4 (fp64 throughout).
std::vector<double> central_differences(std::vector<double>& x,
                                        const std::function<double()>& loss) {
  constexpr double kStep = 1e-4;
  std::vector<double> grad(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + kStep;
    const double up = loss();
    x[i] = saved - kStep;
    const double down = loss();
    x[i] = saved;
    grad[i] = (up - down) / (2 * kStep);
  }
  return grad;
}

/// max |analytic − numeric| ≤ 1e-3 · max |numeric| + 1e-5 (fp32 layer vs fp64 differences).
void expect_gradient_close(const std::vector<float>& analytic, const std::vector<double>& numeric,
                           const std::string& what) {
  ASSERT_EQ(analytic.size(), numeric.size()) << what;
  double largest = 0, worst = 0;
  std::size_t worst_at = 0;
  for (std::size_t i = 0; i < numeric.size(); ++i) {
    largest = std::max(largest, std::abs(numeric[i]));
    const double error = std::abs(analytic[i] - numeric[i]);
    if (error > worst) worst = error, worst_at = i;
  }
  EXPECT_LE(worst, 1e-3 * largest + 1e-5)
      << what << "[" << worst_at << "]: analytic " << analytic[worst_at]
      << " vs central difference " << numeric[worst_at] << " (largest |gradient| " << largest
      << ")";
}

// ---- cases
// ---------------------------------------------------------------------------------------

Case make_case(const char* name, const MhaConfig& config) {
  Case c;
  c.name = name;
  c.config = config;
  return c;
}

std::vector<Case> cases() {
  std::vector<Case> list;
  Case cross = make_case("CrossAttentionGqa", {6, 4, 2, 3, 2, true});
  list.push_back(cross);
  Case causal = make_case("SelfAttentionCausalTopLeft", {6, 2, 1, 4, 3, true});
  causal.len_q = causal.len_k = 5;
  causal.self_attention = true;
  causal.causal = Causal::top_left;
  list.push_back(causal);
  Case window = make_case("BottomRightWindowKeyLengths", {5, 2, 2, 3, 3, true});
  window.len_q = 3, window.len_k = 6;
  window.causal = Causal::bottom_right;
  window.window = Window{2, 0};
  window.key_lengths = {6, 5};
  list.push_back(window);
  Case masked = make_case("MaskBiasAndScale", {6, 4, 1, 2, 3, true});
  masked.with_mask = masked.with_bias = true;
  masked.scale = 0.7f;
  list.push_back(masked);
  Case plain = make_case("NoProjectionBiases", {4, 2, 2, 0, 0, false});
  plain.batch = 1;
  list.push_back(plain);
  return list;
}

class MhaCaseTest : public ::testing::TestWithParam<Case> {};

/// A layer of the case's sizes with random weights and biases (biases nonzero, to test them).
MultiHeadAttention make_layer(const MhaConfig& config, std::mt19937_64& generator) {
  MultiHeadAttention layer(config);
  layer.init_parameters(generator());
  for (std::vector<float>* b : {&layer.parameters().b_q, &layer.parameters().b_k,
                                &layer.parameters().b_v, &layer.parameters().b_o})
    *b = uniform_values(b->size(), generator, 0.3);
  return layer;
}

TEST_P(MhaCaseTest, ForwardMatchesFp64Implementation) {
  const Case& c = GetParam();
  std::mt19937_64 generator(1);
  MultiHeadAttention layer = make_layer(c.config, generator);
  const MhaConfig& cfg = layer.config();
  const auto x_q =
      uniform_values(static_cast<std::size_t>(c.batch * c.len_q * cfg.d_model), generator);
  const auto x_kv =
      c.self_attention
          ? x_q
          : uniform_values(static_cast<std::size_t>(c.batch * c.len_k * cfg.d_model), generator);
  CaseOptions o = make_options(c, cfg, generator);
  std::vector<float> y(x_q.size()),
      entropy(static_cast<std::size_t>(c.batch * cfg.heads * c.len_q));
  layer.forward(x_q, x_kv, c.batch, c.len_q, c.len_k, o.options, y, nullptr, entropy);

  std::vector<float> dummy;
  const Problem problem = attention_problem(cfg, c, o.options, dummy);
  const auto y64 = forward64(cfg, Params64(layer.parameters()), problem, to_double(x_q),
                             to_double(x_kv), to_double(o.bias), problem.scale);
  double largest = 0, worst = 0;
  for (std::size_t i = 0; i < y.size(); ++i) {
    largest = std::max(largest, std::abs(y64[i]));
    worst = std::max(worst, std::abs(y[i] - y64[i]));
  }
  EXPECT_LE(worst, 1e-5 * std::max(1.0, largest)) << "largest |y| " << largest;
  for (float h : entropy) EXPECT_TRUE(std::isfinite(h) && h >= -1e-6f) << h;
}

TEST_P(MhaCaseTest, BackwardMatchesCentralDifferences) {
  const Case& c = GetParam();
  std::mt19937_64 generator(2);
  MultiHeadAttention layer = make_layer(c.config, generator);
  const MhaConfig& cfg = layer.config();
  const std::int64_t B = c.batch;
  auto x_q = uniform_values(static_cast<std::size_t>(B * c.len_q * cfg.d_model), generator);
  auto x_kv = c.self_attention
                  ? x_q
                  : uniform_values(static_cast<std::size_t>(B * c.len_k * cfg.d_model), generator);
  CaseOptions o = make_options(c, cfg, generator);
  const auto dy = uniform_values(x_q.size(), generator);  // loss = Σ y ∘ dy

  // The layer: forward with activations, then backward.
  MhaActivations activations;
  std::vector<float> y(x_q.size());
  layer.forward(x_q, x_kv, B, c.len_q, c.len_k, o.options, y, &activations);
  std::vector<float> dx_q(x_q.size()), dx_kv(x_kv.size()), dbias(o.bias.size());
  MhaParameters dparams;
  float dscale = 0;
  MhaGrads grads;
  grads.dx_q = dx_q;
  grads.dx_kv = dx_kv;
  grads.parameters = &dparams;
  grads.dscale = &dscale;
  if (c.with_bias)
    grads.dbias = Tensor::contiguous(dbias.data(), DType::f32, {1, cfg.heads, c.len_q, c.len_k});
  layer.backward(x_q, x_kv, activations, o.options, dy, grads);

  // The fp64 loss as a function of everything differentiated below.
  std::vector<float> dummy;
  const Problem problem = attention_problem(cfg, c, o.options, dummy);
  Params64 p(layer.parameters());
  auto xq64 = to_double(x_q), xkv64 = to_double(x_kv), bias64 = to_double(o.bias);
  std::vector<double> scale64{problem.scale};
  const auto dy64 = to_double(dy);
  auto loss = [&] {
    return dot64(forward64(cfg, p, problem, xq64, xkv64, bias64, scale64[0]), dy64);
  };

  const std::vector<std::vector<float>*> analytic = {&dparams.w_q, &dparams.w_k, &dparams.w_v,
                                                     &dparams.w_o, &dparams.b_q, &dparams.b_k,
                                                     &dparams.b_v, &dparams.b_o};
  const char* names[] = {"w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v", "b_o"};
  const auto params = p.all();
  for (std::size_t t = 0; t < params.size(); ++t)
    expect_gradient_close(*analytic[t], central_differences(*params[t], loss), names[t]);
  expect_gradient_close({dscale}, central_differences(scale64, loss), "dscale");
  if (c.with_bias) expect_gradient_close(dbias, central_differences(bias64, loss), "dbias");
  if (!c.self_attention) {
    expect_gradient_close(dx_q, central_differences(xq64, loss), "dx_q");
    expect_gradient_close(dx_kv, central_differences(xkv64, loss), "dx_kv");
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, MhaCaseTest, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name; });

TEST(MhaBackward, SelfAttentionWithOneGradientBufferGetsTheSum) {
  std::mt19937_64 generator(3);
  MultiHeadAttention layer = make_layer({6, 2, 1, 3, 3, true}, generator);
  const std::int64_t B = 2, L = 4, d = 6;
  const auto x = uniform_values(static_cast<std::size_t>(B * L * d), generator);
  const auto dy = uniform_values(x.size(), generator);
  Options options;
  options.causal = Causal::top_left;
  MhaActivations activations;
  std::vector<float> y(x.size());
  layer.forward(x, x, B, L, L, options, y, &activations);

  std::vector<float> dx(x.size(), 123.0f), dx_q(x.size()), dx_kv(x.size());
  MhaGrads shared;
  shared.dx_q = shared.dx_kv = dx;
  layer.backward(x, x, activations, options, dy, shared);
  MhaGrads separate;
  separate.dx_q = dx_q;
  separate.dx_kv = dx_kv;
  layer.backward(x, x, activations, options, dy, separate);

  // And against central differences of the fp64 implementation in the shared input.
  Case c = make_case("self", layer.config());
  c.batch = B, c.len_q = c.len_k = L, c.self_attention = true, c.causal = Causal::top_left;
  std::vector<float> dummy;
  const Problem problem = attention_problem(layer.config(), c, options, dummy);
  const Params64 p(layer.parameters());
  auto x64 = to_double(x);
  const auto dy64 = to_double(dy);
  const auto numeric = central_differences(x64, [&] {
    return dot64(forward64(layer.config(), p, problem, x64, x64, {}, problem.scale), dy64);
  });
  for (std::size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(dx[i], dx_q[i] + dx_kv[i], 1e-5f) << i;
  expect_gradient_close(dx, numeric, "dx");
}

// ---- KV cache
// --------------------------------------------------------------------------------------

struct DecodeCase {
  std::string name;
  MhaConfig config;
  std::vector<std::int64_t> steps;  // positions appended per decode_step
  std::optional<Window> window;
};

void PrintTo(const DecodeCase& c, std::ostream* os) { *os << c.name; }

class MhaDecodeTest : public ::testing::TestWithParam<DecodeCase> {};

TEST_P(MhaDecodeTest, StepOutputsEqualFullSequenceOutput) {
  const DecodeCase& dc = GetParam();
  std::mt19937_64 generator(4);
  MultiHeadAttention layer = make_layer(dc.config, generator);
  const MhaConfig& cfg = layer.config();
  const std::int64_t B = 2, d = cfg.d_model;
  std::int64_t L = 0;
  for (std::int64_t s : dc.steps) L += s;
  const auto x = uniform_values(static_cast<std::size_t>(B * L * d), generator);

  Options full_options;
  full_options.causal = Causal::top_left;
  full_options.window = dc.window;
  std::vector<float> y_full(x.size()), entropy_full(static_cast<std::size_t>(B * cfg.heads * L));
  layer.forward(x, x, B, L, L, full_options, y_full, nullptr, entropy_full);

  Options step_options;
  step_options.window = dc.window;  // causal: none, decode_step aligns bottom-right itself
  MhaKvCache cache(layer, B, L + 3);
  std::int64_t done = 0;
  double worst = 0, largest = 0;
  for (std::int64_t n : dc.steps) {
    std::vector<float> x_step(static_cast<std::size_t>(B * n * d)), y_step(x_step.size());
    std::vector<float> entropy_step(static_cast<std::size_t>(B * cfg.heads * n));
    for (std::int64_t b = 0; b < B; ++b)
      std::copy_n(x.begin() + (b * L + done) * d, n * d, x_step.begin() + b * n * d);
    layer.decode_step(x_step, n, cache, step_options, y_step, entropy_step);
    ASSERT_EQ(cache.length(), done + n);
    for (std::int64_t b = 0; b < B; ++b)
      for (std::int64_t t = 0; t < n; ++t) {
        for (std::int64_t e = 0; e < d; ++e) {
          const double full = y_full[(b * L + done + t) * d + e];
          largest = std::max(largest, std::abs(full));
          worst = std::max(worst, std::abs(y_step[(b * n + t) * d + e] - full));
        }
        for (std::int64_t h = 0; h < cfg.heads; ++h)
          EXPECT_NEAR(entropy_step[(b * cfg.heads + h) * n + t],
                      entropy_full[(b * cfg.heads + h) * L + done + t], 1e-5f);
      }
    done += n;
  }
  EXPECT_LE(worst, 1e-5 * std::max(1.0, largest)) << "largest |y| " << largest;
}

INSTANTIATE_TEST_SUITE_P(
    Cases, MhaDecodeTest,
    ::testing::Values(DecodeCase{"OneTokenSteps", {8, 2, 2, 4, 4, true}, {1, 1, 1, 1, 1, 1}, {}},
                      DecodeCase{"PrefillThenStepsGqa", {8, 4, 1, 3, 5, true}, {4, 1, 2, 1}, {}},
                      DecodeCase{
                          "SlidingWindow", {6, 2, 1, 4, 4, false}, {3, 1, 1, 1, 2}, Window{2, 0}}),
    [](const auto& info) { return info.param.name; });

// The paged sdpa::KvCache (fp32 storage, pages of 3 tokens so steps cross pages) gives the same
// step outputs as the full-sequence forward, for two sequences decoded together.
TEST(MhaPagedKvCache, StepOutputsEqualFullSequenceOutput) {
  std::mt19937_64 generator(6);
  MultiHeadAttention layer = make_layer({8, 4, 2, 3, 5, true}, generator);
  const MhaConfig& cfg = layer.config();
  const std::int64_t B = 2, d = cfg.d_model, L = 9;
  const auto x = uniform_values(static_cast<std::size_t>(B * L * d), generator);
  Options full_options;
  full_options.causal = Causal::top_left;
  std::vector<float> y_full(x.size());
  layer.forward(x, x, B, L, L, full_options, y_full);

  KvCache cache({cfg.kv_heads, cfg.d_k, cfg.d_v, 3, 8, KvStorage::f32});
  const std::vector<int> ids{cache.add_sequence(), cache.add_sequence()};
  std::int64_t done = 0;
  double worst = 0, largest = 0;
  for (std::int64_t n : {4, 1, 1, 2, 1}) {
    std::vector<float> x_step(static_cast<std::size_t>(B * n * d)), y_step(x_step.size());
    for (std::int64_t b = 0; b < B; ++b)
      std::copy_n(x.begin() + (b * L + done) * d, n * d, x_step.begin() + b * n * d);
    layer.decode_step(x_step, n, cache, ids, y_step);
    for (std::int64_t b = 0; b < B; ++b) {
      ASSERT_EQ(cache.length(ids[static_cast<std::size_t>(b)]), done + n);
      for (std::int64_t t = 0; t < n; ++t)
        for (std::int64_t e = 0; e < d; ++e) {
          const double full = y_full[(b * L + done + t) * d + e];
          largest = std::max(largest, std::abs(full));
          worst = std::max(worst, std::abs(y_step[(b * n + t) * d + e] - full));
        }
    }
    done += n;
  }
  EXPECT_LE(worst, 1e-5 * std::max(1.0, largest)) << "largest |y| " << largest;

  // A step the pool cannot hold (6 pages used of 8; two sequences need 2 more each) appends nothing.
  std::vector<float> x_big(static_cast<std::size_t>(B * 6 * d), 0.5f), y_big(x_big.size());
  EXPECT_THROW(layer.decode_step(x_big, 6, cache, ids, y_big), Error);
  EXPECT_EQ(cache.length(ids[0]), L);
  EXPECT_EQ(cache.length(ids[1]), L);
}

TEST(MhaKvCache, FullCacheThrowsAndAppendsNothing) {
  std::mt19937_64 generator(5);
  MultiHeadAttention layer = make_layer({4, 2, 1, 2, 2, true}, generator);
  MhaKvCache cache(layer, 1, 3);
  std::vector<float> x(2 * 4, 0.5f), y(2 * 4, 7.0f);
  layer.decode_step(x, 2, cache, {}, y);
  std::fill(y.begin(), y.end(), 7.0f);
  try {
    layer.decode_step(x, 2, cache, {}, y);
    FAIL() << "expected sdpa::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("exceeds its capacity 3"), std::string::npos) << e.what();
  }
  EXPECT_EQ(cache.length(), 2);
  for (float v : y) EXPECT_EQ(v, 7.0f);
}

TEST(MhaKvCache, TopLeftCausalIsRejected) {
  MultiHeadAttention layer({4, 2, 1, 2, 2, true});
  MhaKvCache cache(layer, 1, 4);
  std::vector<float> x(4), y(4);
  Options options;
  options.causal = Causal::top_left;
  EXPECT_THROW(layer.decode_step(x, 1, cache, options, y), Error);
  EXPECT_EQ(cache.length(), 0);
}

TEST(MhaKvCache, RejectedMaskLeavesLengthUnchanged) {
  MultiHeadAttention layer({4, 2, 1, 2, 2, true});
  MhaKvCache cache(layer, 1, 4);
  std::vector<float> x(4), y(4);
  std::vector<std::uint8_t> mask(3, 1);
  Options options;
  options.mask = Tensor::contiguous(mask.data(), DType::boolean, {1, 1, 1, 3});  // Lk is 1, not 3
  EXPECT_THROW(layer.decode_step(x, 1, cache, options, y), Error);
  EXPECT_EQ(cache.length(), 0);
}

// ---- construction and argument errors
// ---------------------------------------------------------------

TEST(MhaConfig, HeadsNotMultipleOfKvHeadsThrowsNamingBoth) {
  try {
    MultiHeadAttention layer({12, 6, 4, 2, 2, true});
    FAIL() << "expected sdpa::Error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "MhaConfig.heads = 6 is not a multiple of MhaConfig.kv_heads = 4");
  }
}

TEST(MhaConfig, DefaultsResolveKvHeadsAndWidths) {
  MultiHeadAttention layer({16, 4, 0, 0, 0, true});
  EXPECT_EQ(layer.config().kv_heads, 4);
  EXPECT_EQ(layer.config().d_k, 4);
  EXPECT_EQ(layer.config().d_v, 4);
  EXPECT_EQ(layer.parameter_count(), 4 * (16 * 16) + 4 * 16);
}

TEST(MhaForward, WrongInputSizeThrowsAndWritesNothing) {
  MultiHeadAttention layer({4, 2, 1, 2, 2, true});
  std::vector<float> x_q(2 * 4), x_kv(3 * 4 - 1), y(2 * 4, 7.0f);
  try {
    layer.forward(x_q, x_kv, 1, 2, 3, {}, y);
    FAIL() << "expected sdpa::Error";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "x_kv.size() = 11 does not match batch·len_k·d_model = 12");
  }
  for (float v : y) EXPECT_EQ(v, 7.0f);
}

TEST(MhaForward, BadMaskShapeThrowsAndWritesNothing) {
  std::mt19937_64 generator(6);
  MultiHeadAttention layer = make_layer({4, 2, 1, 2, 2, true}, generator);
  std::vector<float> x(2 * 4, 0.25f), y(2 * 4, 7.0f);
  std::vector<std::uint8_t> mask(3, 1);
  Options options;
  options.mask = Tensor::contiguous(mask.data(), DType::boolean, {1, 1, 1, 3});
  MhaActivations activations;
  activations.batch = 42;
  EXPECT_THROW(layer.forward(x, x, 1, 2, 2, options, y, &activations), Error);
  for (float v : y) EXPECT_EQ(v, 7.0f);
  EXPECT_EQ(activations.batch, 42);
}

TEST(MhaInit, SameSeedSameWeightsAndUnitVarianceProjections) {
  MultiHeadAttention a({256, 4, 0, 64, 64, true}), b({256, 4, 0, 64, 64, true});
  a.init_parameters(9);
  b.init_parameters(9);
  EXPECT_EQ(a.parameters().w_q, b.parameters().w_q);
  EXPECT_EQ(a.parameters().w_o, b.parameters().w_o);
  // Var(w) = 1 / fan_in, so a unit-variance input row gives unit-variance q (premise of
  // 1/sqrt(d_k)).
  double sum_squares = 0;
  for (float w : a.parameters().w_q) sum_squares += double(w) * w;
  EXPECT_NEAR(sum_squares / static_cast<double>(a.parameters().w_q.size()) * 256, 1.0, 0.02);
}

}  // namespace
}  // namespace sdpa
