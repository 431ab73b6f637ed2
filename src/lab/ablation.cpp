// ablation: the same small model (MultiHeadAttention + linear readout) trained on key–value
// retrieval with scaled, unscaled and learnable-temperature attention, plus uniform attention as
// the control that shows the task needs attention. Learning curves, and the kernel's entropy
// telemetry of the model's attention over training.
#include <chrono>
#include <cmath>

#include "lab/format.hpp"
#include "lab/lab.hpp"
#include "lab/training.hpp"
#include "sdpa/kv_cache.hpp"

namespace sdpa::lab {

Json train_config_json(const TrainConfig& c) {
  return {{"seed", c.seed},
          {"pairs", c.pairs},
          {"vocabulary", c.vocabulary},
          {"d_model", c.d_model},
          {"heads", c.heads},
          {"d_k", c.d_k},
          {"batch", c.batch},
          {"steps", c.steps},
          {"eval_every", c.eval_every},
          {"eval_size", c.eval_size},
          {"optimizer", c.optimizer},
          {"learning_rate", learning_rate_of(c)}};
}

std::string task_description(const TrainConfig& c) {
  return "Key–value retrieval: " + std::to_string(c.pairs) +
         " (key, value) items per sequence over " + std::to_string(c.vocabulary) +
         " symbols, the query names one key, the answer is its value. "
         "Model: MultiHeadAttention (d_model " +
         std::to_string(c.d_model) + ", " + std::to_string(c.heads) + " heads, d_k " +
         std::to_string(c.d_k) + ") from the query to the items + a linear readout; " +
         c.optimizer + " (lr " + general(learning_rate_of(c), 3) + "), batch " +
         std::to_string(c.batch) + ", " + std::to_string(c.steps) + " steps; accuracy on " +
         std::to_string(c.eval_size) + " held-out sequences every " + std::to_string(c.eval_every) +
         " steps.";
}

namespace {

Series series_of(const Curve& c, const std::vector<double>& y) { return {c.label, c.steps, y}; }

}  // namespace

Experiment run_ablation(const AblationConfig& config, const Progress& progress) {
  const auto start = std::chrono::steady_clock::now();
  const TrainConfig& c = config.train;
  Experiment e;
  e.name = "ablation";
  e.title = "Ablation: scaled vs unscaled vs learnable temperature in a trained model";
  e.setup =
      task_description(c) +
      " Every variant starts from the same weights and sees the same batches. Learnable: scale "
      "= exp(θ)/sqrt(d_k), θ trained through sdpa::backward's dscale. Uniform (scale 0) is the "
      "control: attention that cannot match the query to a key.";
  e.parameters = train_config_json(c);

  const std::vector<ScaleMode> modes{ScaleMode::scaled, ScaleMode::unscaled, ScaleMode::learnable,
                                     ScaleMode::uniform};
  std::vector<Variant> variants;
  for (ScaleMode mode : modes)
    variants.push_back({scale_mode_name(mode),
                        [&c, mode] { return make_dot_product_model(c, mode, init_seed(c)); }});
  std::vector<std::unique_ptr<RetrievalModel>> models;
  const std::vector<Curve> curves = train_variants(variants, c, "ablation", progress, &models);
  const Curve &scaled = curves[0], &unscaled = curves[1], &learnable = curves[2],
              &uniform = curves[3];

  const double log_n = std::log(static_cast<double>(c.pairs));
  Table table{"Final results",
              {"variant", "final acc", "mean acc (AUC)", "final loss", "entropy/log N start",
               "entropy/log N end", "τ/√d_k end", "ms/step"},
              {}};
  Json curves_json = Json::array();
  Chart accuracy{"Held-out accuracy", "step", "accuracy", false, false, false, {}, {}};
  Chart loss{"Held-out loss", "step", "cross-entropy (nats)", false, false, true, {}, {}};
  Chart entropy{"Attention entropy / log N (kernel telemetry)",
                "step",
                "fraction of log N",
                false,
                false,
                false,
                {},
                {}};
  for (const Curve& curve : curves) {
    std::vector<double> normalized;
    for (double h : curve.entropy) normalized.push_back(h / log_n);
    const double scale = curve.scale.back();
    table.rows.push_back(
        {curve.label, percent(curve.final_accuracy()), percent(curve.mean_accuracy()),
         fixed(curve.loss.back(), 3), fixed(normalized.front(), 3), fixed(normalized.back(), 3),
         scale > 0 ? fixed(1 / (scale * std::sqrt(static_cast<double>(c.d_k))), 3) : "∞",
         fixed(1e3 * curve.seconds_per_step, 2)});
    curves_json.push_back(curve_json(curve));
    accuracy.series.push_back(series_of(curve, curve.accuracy));
    loss.series.push_back(series_of(curve, curve.loss));
    entropy.series.push_back(series_of(curve, normalized));
  }
  std::vector<double> tau;
  for (double s : learnable.scale) tau.push_back(1 / (s * std::sqrt(static_cast<double>(c.d_k))));
  // The trained models once more on the held-out set, their attention reading keys and values
  // through an sdpa::KvCache of each storage type: what a compact cache costs in accuracy.
  const RetrievalBatch eval_set = held_out_set(c);
  Table kv_table{"Trained models with their keys and values in a KvCache (held-out set)",
                 {"variant", "storage", "bytes/token", "accuracy", "loss", "Δ loss vs fp32",
                  "answers changed"},
                 {}};
  Json kv_json = Json::array();
  double scaled_worst_drop = 0;
  for (std::size_t m = 0; m < models.size(); ++m) {
    const BatchResult exact = models[m]->run(eval_set, false);
    for (const KvStorage storage : {KvStorage::f32, KvStorage::bf16, KvStorage::i8}) {
      const BatchResult r = models[m]->run_with_kv_cache(eval_set, storage);
      std::int64_t changed = 0;
      for (std::size_t s = 0; s < r.predictions.size(); ++s)
        changed += r.predictions[s] != exact.predictions[s] ? 1 : 0;
      const std::size_t bytes =
          KvCache({c.heads, c.d_k, c.d_k, 64, 1, storage}).bytes_per_token();
      kv_table.rows.push_back({curves[m].label, std::string(kv_storage_name(storage)) + " cache",
                               std::to_string(bytes), percent(r.accuracy), fixed(r.loss, 5),
                               general(r.loss - exact.loss, 3),
                               std::to_string(changed) + " / " + std::to_string(eval_set.size)});
      kv_json.push_back({{"variant", curves[m].label},
                         {"storage", kv_storage_name(storage)},
                         {"bytes_per_token", bytes},
                         {"accuracy", r.accuracy},
                         {"loss", r.loss},
                         {"fp32_accuracy", exact.accuracy},
                         {"fp32_loss", exact.loss},
                         {"answers_changed", changed}});
      if (m == 0) scaled_worst_drop = std::max(scaled_worst_drop, exact.accuracy - r.accuracy);
    }
  }
  e.data = {{"curves", curves_json}, {"log_n", log_n}, {"kv_cache", kv_json}};
  e.tables.push_back(std::move(table));
  e.tables.push_back(std::move(kv_table));
  e.charts = {accuracy,
              loss,
              entropy,
              {"Learned temperature τ/sqrt(d_k)",
               "step",
               "τ / sqrt(d_k)",
               false,
               false,
               false,
               {},
               {{"learnable temperature", learnable.steps, tau}}}};

  // Verdicts.
  const double guess = 1.0 / static_cast<double>(c.pairs);
  e.claims.push_back(
      {"The task needs attention: without query–key matching (uniform weights) accuracy stays near "
       "1/N, guessing among the values present.",
       uniform.final_accuracy() <= guess + 0.05,
       "uniform attention: final accuracy " + percent(uniform.final_accuracy()) +
           " vs 1/N = " + percent(guess) + " (verdict: ≤ 1/N + 5 points)"});
  e.claims.push_back({"Scaled dot-product attention learns the task.",
                      scaled.final_accuracy() >= 0.9,
                      "final accuracy " + percent(scaled.final_accuracy()) + " (verdict: ≥ 90%)"});
  e.claims.push_back(
      {"Without the 1/sqrt(d_k) scale the same model learns more slowly (a smaller area under the "
       "learning curve).",
       unscaled.mean_accuracy() < scaled.mean_accuracy() - 0.02,
       "mean accuracy over training: unscaled " + percent(unscaled.mean_accuracy()) +
           " vs scaled " + percent(scaled.mean_accuracy()) + "; final " +
           percent(unscaled.final_accuracy()) + " vs " + percent(scaled.final_accuracy()) +
           " (verdict: at least 2 points lower)"});
  e.claims.push_back({"A learnable temperature does as well as the fixed 1/sqrt(d_k).",
                      learnable.mean_accuracy() >= scaled.mean_accuracy() - 0.02,
                      "mean accuracy " + percent(learnable.mean_accuracy()) + " vs scaled " +
                          percent(scaled.mean_accuracy()) +
                          "; learned τ = " + fixed(tau.back(), 3) + "·sqrt(d_k) after " +
                          std::to_string(c.steps) + " steps (verdict: within 2 points or better)"});
  const double h_scaled = scaled.entropy.front() / log_n,
               h_unscaled = unscaled.entropy.front() / log_n;
  e.claims.push_back(
      {"At initialization unscaled attention is already nearly one-hot, scaled attention is spread "
       "over the items (kernel entropy telemetry of the real model).",
       h_unscaled < 0.25 && h_scaled > 0.5,
       "entropy / log N at step 0: unscaled " + fixed(h_unscaled, 3) + ", scaled " +
           fixed(h_scaled, 3) + " (verdict: < 0.25 and > 0.5)"});
  e.claims.push_back(
      {"Keys and values stored in bf16 or int8 (a 2x / ~4x smaller KV cache) leave the trained "
       "model's retrieval accuracy within 1 point of fp32.",
       scaled_worst_drop <= 0.01,
       "scaled model, held-out accuracy: fp32 " + percent(scaled.final_accuracy()) +
           ", largest drop with a bf16 or int8 cache " + percent(scaled_worst_drop) +
           " (verdict: ≤ 1 point)"});
  e.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return e;
}

}  // namespace sdpa::lab
