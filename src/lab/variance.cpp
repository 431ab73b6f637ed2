// variance: for q, k with independent N(0, 1) components, q·k is a sum of d_k products each of
// variance 1, so Var(q·k) = d_k and Var(q·k / sqrt(d_k)) = 1 — the reason for the 1/sqrt(d_k) in
// softmax(Q·Kᵀ / sqrt(d_k)) (Vaswani et al. 2017, footnote 4).
#include <chrono>
#include <cmath>

#include "lab/format.hpp"
#include "lab/lab.hpp"
#include "lab/random.hpp"

namespace sdpa::lab {
namespace {

struct Moments {
  double variance = 0;
  double standard_error = 0;  // of the sample variance: sqrt((m4 − var²) / n)
};

Moments sample_moments(const std::vector<double>& x) {
  const double n = static_cast<double>(x.size());
  double mean = 0;
  for (double v : x) mean += v;
  mean /= n;
  double m2 = 0, m4 = 0;
  for (double v : x) {
    const double d2 = (v - mean) * (v - mean);
    m2 += d2;
    m4 += d2 * d2;
  }
  m2 /= n;
  m4 /= n;
  return {m2 * n / (n - 1), std::sqrt(std::max(0.0, m4 - m2 * m2) / n)};
}

/// Least-squares slope of log y against log x.
double log_log_slope(const std::vector<double>& x, const std::vector<double>& y) {
  const double n = static_cast<double>(x.size());
  double mx = 0, my = 0;
  for (std::size_t i = 0; i < x.size(); ++i) mx += std::log(x[i]) / n, my += std::log(y[i]) / n;
  double sxy = 0, sxx = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    sxy += (std::log(x[i]) - mx) * (std::log(y[i]) - my);
    sxx += (std::log(x[i]) - mx) * (std::log(x[i]) - mx);
  }
  return sxx > 0 ? sxy / sxx : 0.0;
}

}  // namespace

Experiment run_variance(const VarianceConfig& config) {
  const auto start = std::chrono::steady_clock::now();
  Experiment e;
  e.name = "variance";
  e.title = "Variance of q·k grows with d_k; 1/sqrt(d_k) restores unit variance";
  e.setup = "For each d_k, " + std::to_string(config.samples) +
            " independent pairs q, k ~ N(0, I) of d_k components; the sample variance of q·k "
            "and of q·k/sqrt(d_k), with its standard error sqrt((m4 - var^2)/n).";
  e.parameters = {{"seed", config.seed}, {"samples", config.samples}, {"dims", config.dims}};

  Random random(config.seed);
  Table table{"Var(q·k), q, k ~ N(0, I)",
              {"d_k", "Var(q·k)", "± s.e.", "Var(q·k/√d_k)", "|Var − d_k| / s.e."},
              {}};
  Series measured{"measured Var(q·k)", {}, {}}, theory{"theory: d_k", {}, {}, true};
  Series scaled{"measured Var(q·k / sqrt(d_k))", {}, {}}, one{"theory: 1", {}, {}, true};
  Json rows = Json::array();
  double worst_z = 0, worst_scaled_deviation = 0;
  for (std::int64_t d : config.dims) {
    std::vector<double> dots(static_cast<std::size_t>(config.samples));
    for (double& dot : dots) {
      dot = 0;
      for (std::int64_t i = 0; i < d; ++i) dot += random.normal() * random.normal();
    }
    const Moments m = sample_moments(dots);
    const double dd = static_cast<double>(d);
    const double z = std::abs(m.variance - dd) / m.standard_error;
    worst_z = std::max(worst_z, z);
    worst_scaled_deviation = std::max(worst_scaled_deviation, std::abs(m.variance / dd - 1));
    table.rows.push_back({std::to_string(d), general(m.variance, 5), general(m.standard_error, 3),
                          fixed(m.variance / dd, 4), fixed(z, 2)});
    rows.push_back({{"d_k", d},
                    {"variance", m.variance},
                    {"standard_error", m.standard_error},
                    {"scaled_variance", m.variance / dd},
                    {"z", z}});
    measured.x.push_back(dd), measured.y.push_back(m.variance);
    theory.x.push_back(dd), theory.y.push_back(dd);
    scaled.x.push_back(dd), scaled.y.push_back(m.variance / dd);
    one.x.push_back(dd), one.y.push_back(1.0);
  }
  e.data = {{"rows", rows}};
  e.tables.push_back(std::move(table));
  e.charts.push_back(
      {"Var(q·k) vs d_k (log–log)", "d_k", "variance", false, true, true, {}, {measured, theory}});
  e.charts.push_back(
      {"Var(q·k / sqrt(d_k)) vs d_k", "d_k", "variance", false, true, false, {}, {scaled, one}});

  // Sampling noise of a variance estimate is ~N(0, s.e.): |z| ≤ 4 at all 11 sizes is what a true
  // Var = d_k gives with probability > 99.9%.
  e.claims.push_back({"Var(q·k) = d_k: the dot product's variance grows linearly with d_k.",
                      worst_z <= 4,
                      "largest deviation from d_k: " + fixed(worst_z, 2) +
                          " standard errors over d_k = " + std::to_string(config.dims.front()) +
                          "…" + std::to_string(config.dims.back()) + " (verdict: ≤ 4)"});
  // Least-squares slope of log Var(q·k/sqrt(d_k)) against log d_k: 0 when scaling removes the
  // dependence (the unscaled slope is this plus 1). Its sampling error here is about 0.005.
  const double slope = log_log_slope(scaled.x, scaled.y);
  e.data["scaled_log_log_slope"] = slope;
  e.claims.push_back(
      {"After scaling by 1/sqrt(d_k) the logits' variance no longer depends on d_k (log–log "
       "slope 0, against 1 without scaling).",
       std::abs(slope) <= 0.015,
       "fitted slope of log Var(q·k/sqrt(d_k)) vs log d_k: " + fixed(slope, 4) +
           " (verdict: |slope| ≤ 0.015); unscaled slope " + fixed(1 + slope, 4) +
           ", the logits' standard deviation reaching " + general(std::sqrt(measured.y.back()), 3) +
           " at d_k = " + std::to_string(config.dims.back())});
  e.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return e;
}

}  // namespace sdpa::lab
