// Tests of the lab's own machinery (src/lab/): the additive attention layer's backward against
// central differences, the dot-product model's learnable temperature (sdpa::backward's dscale) and
// weights against central differences of its loss, Adam's update, the retrieval task, and that the
// experiments are deterministic for a seed and compute their verdicts from their data.
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "lab/additive_attention.hpp"
#include "lab/lab.hpp"
#include "lab/random.hpp"
#include "lab/task.hpp"
#include "lab/training.hpp"
#include "sdpa/kv_cache.hpp"

namespace sdpa::lab {
namespace {

/// max |analytic − numeric| ≤ 2e-2·max|numeric| + 2e-3: float forward passes, step 1e-2.
void expect_close(float analytic, double numeric, double scale, const std::string& what) {
  EXPECT_LE(std::abs(analytic - numeric), 2e-2 * scale + 2e-3)
      << what << ": analytic " << analytic << " vs central difference " << numeric;
}

TEST(LabAdditiveAttention, BackwardMatchesCentralDifferences) {
  const std::int64_t B = 2, Lq = 2, Lk = 3, dm = 4, da = 5, dv = 3;
  AdditiveAttention layer(dm, da, dv);
  layer.init_parameters(3);
  Random random(4);
  for (auto* b : {&layer.parameters().b_a, &layer.parameters().b_v, &layer.parameters().b_o})
    *b = random.normals(b->size(), 0.3);
  const auto x_q = random.normals(static_cast<std::size_t>(B * Lq * dm));
  const auto x_kv = random.normals(static_cast<std::size_t>(B * Lk * dm));
  const auto dy = random.normals(x_q.size());
  auto loss = [&] {
    std::vector<float> y(x_q.size());
    layer.forward(x_q, x_kv, B, Lq, Lk, y);
    double sum = 0;
    for (std::size_t i = 0; i < y.size(); ++i) sum += static_cast<double>(y[i]) * dy[i];
    return sum;
  };
  AdditiveActivations activations;
  std::vector<float> y(x_q.size());
  layer.forward(x_q, x_kv, B, Lq, Lk, y, &activations);
  AdditiveParameters grads;
  layer.backward(x_q, x_kv, activations, dy, grads);

  AdditiveParameters& p = layer.parameters();
  const std::vector<std::pair<std::vector<float>*, std::vector<float>*>> pairs = {
      {&p.w_1, &grads.w_1}, {&p.w_2, &grads.w_2}, {&p.b_a, &grads.b_a}, {&p.v_a, &grads.v_a},
      {&p.w_v, &grads.w_v}, {&p.b_v, &grads.b_v}, {&p.w_o, &grads.w_o}, {&p.b_o, &grads.b_o}};
  const char* names[] = {"w_1", "w_2", "b_a", "v_a", "w_v", "b_v", "w_o", "b_o"};
  for (std::size_t t = 0; t < pairs.size(); ++t) {
    std::vector<float>& value = *pairs[t].first;
    std::vector<double> numeric(value.size());
    double scale = 0;
    for (std::size_t i = 0; i < value.size(); ++i) {
      const float saved = value[i];
      value[i] = saved + 1e-2f;
      const double up = loss();
      value[i] = saved - 1e-2f;
      const double down = loss();
      value[i] = saved;
      numeric[i] = (up - down) / 2e-2;
      scale = std::max(scale, std::abs(numeric[i]));
    }
    for (std::size_t i = 0; i < value.size(); ++i)
      expect_close((*pairs[t].second)[i], numeric[i], scale,
                   std::string(names[t]) + "[" + std::to_string(i) + "]");
  }
}

TEST(LabModels, LearnableTemperatureAndWeightGradientsMatchCentralDifferences) {
  TrainConfig config;
  config.pairs = 4, config.vocabulary = 6, config.d_model = 8, config.heads = 2, config.d_k = 4;
  const RetrievalTask task(config, 5);
  Random random(6);
  const RetrievalBatch batch = task.sample(5, random);
  for (ScaleMode mode : {ScaleMode::learnable, ScaleMode::unscaled}) {
    auto model = make_dot_product_model(config, mode, 7);
    // Move θ off 0 so the check is not at a special point.
    auto refs = model->parameters();
    if (mode == ScaleMode::learnable) refs.back().value[0] = 0.4f;
    model->run(batch, true);
    refs = model->parameters();
    std::vector<std::vector<float>> analytic;
    for (const ParameterRef& r : refs) analytic.emplace_back(r.grad.begin(), r.grad.end());
    // θ (learnable) and the first entries of every other tensor.
    for (std::size_t t = 0; t < refs.size(); ++t)
      for (std::size_t i = 0; i < std::min<std::size_t>(refs[t].value.size(), 3); ++i) {
        float& value = refs[t].value[i];
        const float saved = value;
        value = saved + 1e-2f;
        const double up = model->run(batch, false).loss;
        value = saved - 1e-2f;
        const double down = model->run(batch, false).loss;
        value = saved;
        const double numeric = (up - down) / 2e-2;
        // The loss is a mean cross-entropy in float: its central differences are good to ~1e-5.
        EXPECT_LE(std::abs(analytic[t][i] - numeric), 2e-2 * std::abs(numeric) + 1e-4)
            << scale_mode_name(mode) << " tensor " << t << "[" << i << "]: analytic "
            << analytic[t][i] << " vs central difference " << numeric;
      }
  }
}

TEST(LabOptimizer, AdamFirstStepMovesEachWeightByTheLearningRate) {
  std::vector<float> value{1.0f, -2.0f}, grad{0.5f, -0.001f};
  Optimizer adam("adam", 0.1);
  adam.step({{value, grad}});
  // Bias-corrected first step: m̂ = g, v̂ = g², update = g / (|g| + ε) = sign(g).
  EXPECT_NEAR(value[0], 0.9f, 1e-6f);
  EXPECT_NEAR(value[1], -1.9f, 1e-5f);
  Optimizer sgd("sgd", 0.1);
  sgd.step({{value, grad}});
  EXPECT_NEAR(value[0], 0.85f, 1e-6f);
  EXPECT_THROW(Optimizer("rmsprop", 0.1), Error);
}

TEST(LabTask, SameSeedSameBatchAndAnswersInRange) {
  TrainConfig config;
  const RetrievalTask a(config, 9), b(config, 9);
  Random ra(10), rb(10);
  const RetrievalBatch x = a.sample(16, ra), y = b.sample(16, rb);
  EXPECT_EQ(x.items, y.items);
  EXPECT_EQ(x.queries, y.queries);
  EXPECT_EQ(x.answers, y.answers);
  for (std::int32_t answer : x.answers) EXPECT_TRUE(answer >= 0 && answer < config.vocabulary);
  // Tokens have unit-variance components (the premise of the scaling argument).
  double sum = 0, squares = 0;
  for (float v : x.items) sum += v, squares += double(v) * v;
  const double n = static_cast<double>(x.items.size());
  EXPECT_NEAR(squares / n - (sum / n) * (sum / n), 1.0, 0.15);
}

TEST(LabExperiments, SameSeedSameNumbersAndVerdictsFollowTheData) {
  VarianceConfig config;
  config.samples = 400;
  config.dims = {1, 16, 256};
  const Experiment a = run_variance(config), b = run_variance(config);
  EXPECT_EQ(to_json(a)["data"], to_json(b)["data"]);
  config.seed = 2;
  EXPECT_NE(to_json(run_variance(config))["data"], to_json(a)["data"]);
  ASSERT_EQ(a.claims.size(), 2u);
  const double worst_z = [&] {
    double z = 0;
    for (const auto& row : a.data["rows"]) z = std::max(z, row["z"].get<double>());
    return z;
  }();
  EXPECT_EQ(a.claims[0].supported, worst_z <= 4);
}

TEST(LabReport, PageIsSelfContainedWithOneCanvasPerChart) {
  Experiment e;
  e.name = "demo";
  e.title = "A <title> & more";
  e.charts.push_back({"line </script>", "x", "y", false, true, true, {}, {{"s", {1, 2}, {3, 4}}}});
  e.charts.push_back({"bar", "", "ms", true, false, false, {"a", "b"}, {{"t", {}, {1, 2}}}});
  e.claims.push_back({"claim", true, "evidence"});
  const std::string html = render_report({e}, "/* Chart */", {{"version", "0"}});
  EXPECT_NE(html.find("<canvas id=\"chart-demo-0\""), std::string::npos);
  EXPECT_NE(html.find("<canvas id=\"chart-demo-1\""), std::string::npos);
  EXPECT_EQ(html.find("<canvas id=\"chart-demo-2\""), std::string::npos);
  EXPECT_NE(html.find("A &lt;title&gt; &amp; more"), std::string::npos);
  // The chart title "</script>" is escaped inside the JSON block: one "</script" per <script>.
  std::size_t closes = 0, opens = 0;
  for (std::size_t at = html.find("</script"); at != std::string::npos;
       at = html.find("</script", at + 1))
    ++closes;
  for (std::size_t at = html.find("<script"); at != std::string::npos;
       at = html.find("<script", at + 1))
    ++opens;
  EXPECT_EQ(opens, closes);
  EXPECT_EQ(html.find(" src="), std::string::npos);
  EXPECT_NE(html.find("1 of 1"), std::string::npos);
}

TEST(LabReport, MissingChartJsIsAnIoErrorNamingThePackage) {
  try {
    read_chart_js("/nonexistent/chart.min.js");
    FAIL() << "expected an error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("libjs-chart.js"), std::string::npos) << e.what();
  }
}

// The KvCache evaluation reads the stored rows: fp32 storage gives the fp32 forward's answers and
// loss (the same kernel over the same values), bf16 and int8 storage change the loss (the
// quantized rows are what the attention reads) by a bounded amount and leave almost every answer
// of a trained model unchanged.
TEST(LabModels, KvCacheStorageIsWhatTheAttentionReadsAndKeepsATrainedModelsAnswers) {
  TrainConfig config;
  config.steps = 150, config.eval_size = 128;
  const RetrievalTask task(config, task_seed(config));
  const RetrievalBatch eval_set = held_out_set(config);
  auto model = make_dot_product_model(config, ScaleMode::scaled, init_seed(config));
  train(*model, task, config, eval_set, config.seed + 2, "scaled", {});
  const BatchResult exact = model->run(eval_set, false);
  ASSERT_GE(exact.accuracy, 0.5) << "the model should have learned the task in 150 steps";
  const BatchResult f32 = model->run_with_kv_cache(eval_set, KvStorage::f32);
  EXPECT_NEAR(f32.loss, exact.loss, 1e-6 * exact.loss);
  EXPECT_EQ(f32.predictions, exact.predictions);
  for (const auto& [storage, bound] : {std::pair{KvStorage::bf16, 0.001}, {KvStorage::i8, 0.01}}) {
    const BatchResult r = model->run_with_kv_cache(eval_set, storage);
    EXPECT_NE(r.loss, exact.loss) << kv_storage_name(storage) << ": the quantized rows are not read";
    EXPECT_LE(std::abs(r.loss - exact.loss), bound * exact.loss) << kv_storage_name(storage);
    std::size_t changed = 0;
    for (std::size_t s = 0; s < r.predictions.size(); ++s)
      changed += r.predictions[s] != exact.predictions[s] ? 1 : 0;
    EXPECT_LE(changed, 2u) << kv_storage_name(storage);
  }
  // The additive model has no dot-product attention to cache.
  auto additive = make_additive_model(config, init_seed(config));
  EXPECT_THROW(additive->run_with_kv_cache(eval_set, KvStorage::f32), Error);
}

}  // namespace
}  // namespace sdpa::lab
