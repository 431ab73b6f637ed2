#include "lab/additive_attention.hpp"

#include <algorithm>
#include <cmath>

#include "lab/random.hpp"
#include "layer/gemm.hpp"

namespace sdpa::lab {
namespace {

void fill_uniform(std::vector<float>& w, double bound, Random& random) {
  for (float& x : w) x = static_cast<float>((2 * random.uniform() - 1) * bound);
}

}  // namespace

AdditiveAttention::AdditiveAttention(std::int64_t d_model, std::int64_t d_attention,
                                     std::int64_t d_value)
    : d_model_(d_model), d_attention_(d_attention), d_value_(d_value) {
  auto n = [](std::int64_t a, std::int64_t b) { return static_cast<std::size_t>(a * b); };
  parameters_.w_1.assign(n(d_model, d_attention), 0.0f);
  parameters_.w_2.assign(n(d_model, d_attention), 0.0f);
  parameters_.b_a.assign(n(1, d_attention), 0.0f);
  parameters_.v_a.assign(n(1, d_attention), 0.0f);
  parameters_.w_v.assign(n(d_model, d_value), 0.0f);
  parameters_.b_v.assign(n(1, d_value), 0.0f);
  parameters_.w_o.assign(n(d_value, d_model), 0.0f);
  parameters_.b_o.assign(n(1, d_model), 0.0f);
}

void AdditiveAttention::init_parameters(std::uint64_t seed) {
  Random random(seed);
  const double input = std::sqrt(3.0 / static_cast<double>(d_model_));
  fill_uniform(parameters_.w_1, input, random);
  fill_uniform(parameters_.w_2, input, random);
  fill_uniform(parameters_.v_a, std::sqrt(3.0 / static_cast<double>(d_attention_)), random);
  fill_uniform(parameters_.w_v, input, random);
  fill_uniform(parameters_.w_o, std::sqrt(3.0 / static_cast<double>(d_value_)), random);
  for (auto* b : {&parameters_.b_a, &parameters_.b_v, &parameters_.b_o})
    std::fill(b->begin(), b->end(), 0.0f);
}

std::int64_t AdditiveAttention::parameter_count() const {
  const AdditiveParameters& p = parameters_;
  return static_cast<std::int64_t>(p.w_1.size() + p.w_2.size() + p.b_a.size() + p.v_a.size() +
                                   p.w_v.size() + p.b_v.size() + p.w_o.size() + p.b_o.size());
}

void AdditiveAttention::forward(std::span<const float> x_q, std::span<const float> x_kv,
                                std::int64_t B, std::int64_t Lq, std::int64_t Lk,
                                std::span<float> y, AdditiveActivations* activations,
                                std::span<float> entropy) const {
  const std::int64_t dm = d_model_, da = d_attention_, dv = d_value_;
  const AdditiveParameters& p = parameters_;
  std::vector<float> u(static_cast<std::size_t>(B * Lq * da)),
      w(static_cast<std::size_t>(B * Lk * da));
  AdditiveActivations a;
  a.batch = B, a.len_q = Lq, a.len_k = Lk;
  a.tanh.resize(static_cast<std::size_t>(B * Lq * Lk * da));
  a.weights.resize(static_cast<std::size_t>(B * Lq * Lk));
  a.values.resize(static_cast<std::size_t>(B * Lk * dv));
  a.context.assign(static_cast<std::size_t>(B * Lq * dv), 0.0f);
  layer::gemm(false, false, B * Lq, da, dm, x_q.data(), dm, p.w_1.data(), da, 0.0f, u.data(), da);
  layer::add_to_rows(u.data(), p.b_a.data(), B * Lq, da);
  layer::gemm(false, false, B * Lk, da, dm, x_kv.data(), dm, p.w_2.data(), da, 0.0f, w.data(), da);
  layer::gemm(false, false, B * Lk, dv, dm, x_kv.data(), dm, p.w_v.data(), dv, 0.0f,
              a.values.data(), dv);
  layer::add_to_rows(a.values.data(), p.b_v.data(), B * Lk, dv);

  std::vector<double> scores(static_cast<std::size_t>(Lk));
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t i = 0; i < Lq; ++i) {
      const float* u_i = u.data() + (b * Lq + i) * da;
      float* t_row = a.tanh.data() + ((b * Lq + i) * Lk) * da;
      double max_score = -INFINITY;
      for (std::int64_t j = 0; j < Lk; ++j) {
        const float* w_j = w.data() + (b * Lk + j) * da;
        float* t = t_row + j * da;
        float s = 0;
        for (std::int64_t e = 0; e < da; ++e) {
          t[e] = std::tanh(u_i[e] + w_j[e]);
          s += p.v_a[e] * t[e];
        }
        scores[j] = s;
        max_score = std::max(max_score, scores[j]);
      }
      double sum = 0;
      for (double& s : scores) sum += s = std::exp(s - max_score);
      float* alpha = a.weights.data() + (b * Lq + i) * Lk;
      float* ctx = a.context.data() + (b * Lq + i) * dv;
      double h = 0;
      for (std::int64_t j = 0; j < Lk; ++j) {
        const double pj = scores[j] / sum;
        alpha[j] = static_cast<float>(pj);
        if (pj > 0) h -= pj * std::log(pj);
        const float* v_j = a.values.data() + (b * Lk + j) * dv;
        for (std::int64_t e = 0; e < dv; ++e) ctx[e] += alpha[j] * v_j[e];
      }
      if (!entropy.empty()) entropy[b * Lq + i] = static_cast<float>(h);
    }
  layer::gemm(false, false, B * Lq, dm, dv, a.context.data(), dv, p.w_o.data(), dm, 0.0f, y.data(),
              dm);
  layer::add_to_rows(y.data(), p.b_o.data(), B * Lq, dm);
  if (activations != nullptr) *activations = std::move(a);
}

void AdditiveAttention::backward(std::span<const float> x_q, std::span<const float> x_kv,
                                 const AdditiveActivations& a, std::span<const float> dy,
                                 AdditiveParameters& g) const {
  const std::int64_t dm = d_model_, da = d_attention_, dv = d_value_;
  const std::int64_t B = a.batch, Lq = a.len_q, Lk = a.len_k;
  const AdditiveParameters& p = parameters_;
  g = AdditiveParameters{};
  g.w_1.resize(p.w_1.size()), g.w_2.resize(p.w_2.size()), g.b_a.resize(p.b_a.size());
  g.v_a.assign(p.v_a.size(), 0.0f), g.w_v.resize(p.w_v.size()), g.b_v.resize(p.b_v.size());
  g.w_o.resize(p.w_o.size()), g.b_o.resize(p.b_o.size());

  // y = ctx·W_o + b_o
  std::vector<float> dctx(a.context.size());
  layer::gemm(false, true, B * Lq, dv, dm, dy.data(), dm, p.w_o.data(), dm, 0.0f, dctx.data(), dv);
  layer::gemm(true, false, dv, dm, B * Lq, a.context.data(), dv, dy.data(), dm, 0.0f, g.w_o.data(),
              dm);
  layer::column_sums(dy.data(), B * Lq, dm, g.b_o.data());

  // ctx_i = Σ_j α_ij V_j, α = softmax(s), s_ij = v_aᵀ t_ij, t_ij = tanh(u_i + w_j)
  std::vector<float> du(static_cast<std::size_t>(B * Lq * da), 0.0f),
      dw(static_cast<std::size_t>(B * Lk * da), 0.0f);
  std::vector<float> dvalues(a.values.size(), 0.0f);
  std::vector<double> dalpha(static_cast<std::size_t>(Lk));
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t i = 0; i < Lq; ++i) {
      const float* alpha = a.weights.data() + (b * Lq + i) * Lk;
      const float* dctx_i = dctx.data() + (b * Lq + i) * dv;
      double d_row = 0;  // Σ_j α_ij dα_ij
      for (std::int64_t j = 0; j < Lk; ++j) {
        const float* v_j = a.values.data() + (b * Lk + j) * dv;
        float* dv_j = dvalues.data() + (b * Lk + j) * dv;
        double dot = 0;
        for (std::int64_t e = 0; e < dv; ++e) {
          dot += static_cast<double>(dctx_i[e]) * v_j[e];
          dv_j[e] += alpha[j] * dctx_i[e];
        }
        dalpha[j] = dot;
        d_row += alpha[j] * dot;
      }
      float* du_i = du.data() + (b * Lq + i) * da;
      for (std::int64_t j = 0; j < Lk; ++j) {
        const float ds = static_cast<float>(alpha[j] * (dalpha[j] - d_row));
        const float* t = a.tanh.data() + ((b * Lq + i) * Lk + j) * da;
        float* dw_j = dw.data() + (b * Lk + j) * da;
        for (std::int64_t e = 0; e < da; ++e) {
          g.v_a[e] += ds * t[e];
          const float de = ds * p.v_a[e] * (1 - t[e] * t[e]);
          du_i[e] += de;
          dw_j[e] += de;
        }
      }
    }
  layer::gemm(true, false, dm, da, B * Lq, x_q.data(), dm, du.data(), da, 0.0f, g.w_1.data(), da);
  layer::column_sums(du.data(), B * Lq, da, g.b_a.data());
  layer::gemm(true, false, dm, da, B * Lk, x_kv.data(), dm, dw.data(), da, 0.0f, g.w_2.data(), da);
  layer::gemm(true, false, dm, dv, B * Lk, x_kv.data(), dm, dvalues.data(), dv, 0.0f, g.w_v.data(),
              dv);
  layer::column_sums(dvalues.data(), B * Lk, dv, g.b_v.data());
}

}  // namespace sdpa::lab
