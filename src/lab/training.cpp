#include "lab/training.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "core/errors.hpp"
#include "layer/gemm.hpp"

namespace sdpa::lab {

// ---- optimizers ---------------------------------------------------------------------------------

Optimizer::Optimizer(const std::string& kind, double learning_rate)
    : adam_(kind == "adam"), learning_rate_(learning_rate) {
  if (kind != "adam" && kind != "sgd") fail("--optimizer = '", kind, "': expected adam or sgd");
  if (!(learning_rate > 0) || !std::isfinite(learning_rate))
    fail("--lr = ", learning_rate, ": expected a positive number");
}

void Optimizer::step(const std::vector<ParameterRef>& parameters) {
  ++steps_;
  if (!adam_) {
    for (const ParameterRef& p : parameters)
      for (std::size_t i = 0; i < p.value.size(); ++i)
        p.value[i] -= static_cast<float>(learning_rate_) * p.grad[i];
    return;
  }
  constexpr double beta1 = 0.9, beta2 = 0.999, epsilon = 1e-8;
  if (first_.empty())
    for (const ParameterRef& p : parameters) {
      first_.emplace_back(p.value.size(), 0.0f);
      second_.emplace_back(p.value.size(), 0.0f);
    }
  const double correction1 = 1 - std::pow(beta1, static_cast<double>(steps_));
  const double correction2 = 1 - std::pow(beta2, static_cast<double>(steps_));
  for (std::size_t t = 0; t < parameters.size(); ++t) {
    const ParameterRef& p = parameters[t];
    std::vector<float>& m = first_[t];
    std::vector<float>& v = second_[t];
    for (std::size_t i = 0; i < p.value.size(); ++i) {
      const double g = p.grad[i];
      m[i] = static_cast<float>(beta1 * m[i] + (1 - beta1) * g);
      v[i] = static_cast<float>(beta2 * v[i] + (1 - beta2) * g * g);
      const double update = (m[i] / correction1) / (std::sqrt(v[i] / correction2) + epsilon);
      p.value[i] -= static_cast<float>(learning_rate_ * update);
    }
  }
}

double learning_rate_of(const TrainConfig& config) {
  if (config.learning_rate > 0) return config.learning_rate;
  return config.optimizer == "sgd" ? 0.3 : 3e-3;
}

// ---- the readout and its loss -------------------------------------------------------------------

namespace {

/// logits [B, vocabulary] = y [B, d_model]·W + b; softmax cross-entropy against the answers.
struct Readout {
  std::int64_t d_model, vocabulary;
  std::vector<float> w, b, dw, db;  // [d_model, vocabulary], [vocabulary]

  Readout(std::int64_t d, std::int64_t v, Random& random) : d_model(d), vocabulary(v) {
    const double bound = std::sqrt(3.0 / static_cast<double>(d));
    w.resize(static_cast<std::size_t>(d * v));
    for (float& x : w) x = static_cast<float>((2 * random.uniform() - 1) * bound);
    b.assign(static_cast<std::size_t>(v), 0.0f);
    dw.resize(w.size());
    db.resize(b.size());
  }

  /// Loss and accuracy; with dy non-empty also dy = dL/dy and the readout's own gradients.
  BatchResult loss(const std::vector<float>& y, const RetrievalBatch& batch,
                   std::vector<float>* dy) {
    const std::int64_t B = batch.size;
    std::vector<float> logits(static_cast<std::size_t>(B * vocabulary));
    layer::gemm(false, false, B, vocabulary, d_model, y.data(), d_model, w.data(), vocabulary, 0.0f,
                logits.data(), vocabulary);
    layer::add_to_rows(logits.data(), b.data(), B, vocabulary);
    BatchResult result;
    result.predictions.resize(static_cast<std::size_t>(B));
    std::vector<float> dlogits(logits.size());
    for (std::int64_t s = 0; s < B; ++s) {
      const float* row = logits.data() + s * vocabulary;
      const std::int64_t best = std::max_element(row, row + vocabulary) - row;
      const double max_logit = row[best];
      double sum = 0;
      for (std::int64_t c = 0; c < vocabulary; ++c) sum += std::exp(row[c] - max_logit);
      const std::int32_t answer = batch.answers[s];
      result.predictions[static_cast<std::size_t>(s)] = static_cast<std::int32_t>(best);
      result.loss += (std::log(sum) + max_logit - row[answer]) / static_cast<double>(B);
      result.accuracy += (best == answer ? 1.0 : 0.0) / static_cast<double>(B);
      for (std::int64_t c = 0; c < vocabulary; ++c)
        dlogits[s * vocabulary + c] =
            static_cast<float>((std::exp(row[c] - max_logit) / sum - (c == answer ? 1.0 : 0.0)) /
                               static_cast<double>(B));
    }
    if (dy != nullptr) {
      dy->resize(y.size());
      layer::gemm(false, true, B, d_model, vocabulary, dlogits.data(), vocabulary, w.data(),
                  vocabulary, 0.0f, dy->data(), d_model);
      layer::gemm(true, false, d_model, vocabulary, B, y.data(), d_model, dlogits.data(),
                  vocabulary, 0.0f, dw.data(), vocabulary);
      layer::column_sums(dlogits.data(), B, vocabulary, db.data());
    }
    return result;
  }
};

/// The readout's weights come from another stream than the layer's (which starts from `seed`).
constexpr std::uint64_t kReadoutSeed = 0x9e3779b97f4a7c15ull;

double mean(const std::vector<float>& x) {
  double sum = 0;
  for (float v : x) sum += v;
  return x.empty() ? 0.0 : sum / static_cast<double>(x.size());
}

// ---- dot-product model
// ----------------------------------------------------------------------------

class DotProductModel final : public RetrievalModel {
 public:
  DotProductModel(const TrainConfig& c, ScaleMode mode, std::uint64_t seed)
      : config_(c),
        mode_(mode),
        layer_({c.d_model, c.heads, 0, c.d_k, c.d_k, true}),
        random_(seed ^ kReadoutSeed),
        readout_(c.d_model, c.vocabulary, random_) {
    layer_.init_parameters(seed);
  }

  double attention_scale() const override {
    const double standard = 1 / std::sqrt(static_cast<double>(config_.d_k));
    switch (mode_) {
      case ScaleMode::scaled:
        return standard;
      case ScaleMode::unscaled:
        return 1;
      case ScaleMode::learnable:
        return std::exp(static_cast<double>(log_temperature_[0])) * standard;
      case ScaleMode::uniform:
        return 0;
    }
    return standard;
  }

  BatchResult run(const RetrievalBatch& batch, bool train) override {
    const std::int64_t B = batch.size, N = config_.pairs, d = config_.d_model;
    Options options;
    options.scale = static_cast<float>(attention_scale());
    options.threads = config_.threads;
    std::vector<float> y(static_cast<std::size_t>(B * d));
    std::vector<float> entropy(static_cast<std::size_t>(B * layer_.config().heads));
    layer_.forward(batch.queries, batch.items, B, 1, N, options, y, train ? &activations_ : nullptr,
                   entropy);
    std::vector<float> dy;
    BatchResult result = readout_.loss(y, batch, train ? &dy : nullptr);
    result.entropy = mean(entropy);
    if (train) {
      dx_q_.resize(batch.queries.size());
      dx_kv_.resize(batch.items.size());
      float dscale = 0;
      MhaGrads grads;
      grads.dx_q = dx_q_;
      grads.dx_kv = dx_kv_;
      grads.parameters = &grads_;
      grads.dscale = &dscale;
      layer_.backward(batch.queries, batch.items, activations_, options, dy, grads);
      // scale = exp(θ)/sqrt(d_k) ⇒ dL/dθ = dL/dscale · scale.
      log_temperature_grad_[0] =
          mode_ == ScaleMode::learnable ? static_cast<float>(dscale * attention_scale()) : 0.0f;
    }
    return result;
  }

  BatchResult run_with_kv_cache(const RetrievalBatch& batch, KvStorage storage) override {
    const std::int64_t B = batch.size, N = config_.pairs, d = config_.d_model;
    const std::int64_t h = layer_.config().heads, dk = layer_.config().d_k;
    const std::int64_t h_kv = layer_.config().kv_heads, dv = layer_.config().d_v;
    const MhaParameters& w = layer_.parameters();
    // The layer's projections (MultiHeadAttention's header): q [B, h·dk], k [B·N, h_kv·dk], v
    // [B·N, h_kv·dv].
    std::vector<float> q(static_cast<std::size_t>(B * h * dk));
    std::vector<float> k(static_cast<std::size_t>(B * N * h_kv * dk));
    std::vector<float> v(static_cast<std::size_t>(B * N * h_kv * dv));
    layer::gemm(false, false, B, h * dk, d, batch.queries.data(), d, w.w_q.data(), h * dk, 0.0f,
                q.data(), h * dk);
    layer::gemm(false, false, B * N, h_kv * dk, d, batch.items.data(), d, w.w_k.data(), h_kv * dk,
                0.0f, k.data(), h_kv * dk);
    layer::gemm(false, false, B * N, h_kv * dv, d, batch.items.data(), d, w.w_v.data(), h_kv * dv,
                0.0f, v.data(), h_kv * dv);
    if (!w.b_q.empty()) {
      layer::add_to_rows(q.data(), w.b_q.data(), B, h * dk);
      layer::add_to_rows(k.data(), w.b_k.data(), B * N, h_kv * dk);
      layer::add_to_rows(v.data(), w.b_v.data(), B * N, h_kv * dv);
    }
    // One sequence per batch entry, its N items appended as the cached keys and values; the query
    // (one position, which sees every cached item) attends through the cache.
    const std::int64_t block_tokens = 64;
    KvCache cache({h_kv, dk, dv, block_tokens, B * ((N + block_tokens - 1) / block_tokens),
                   storage});
    AttendOptions options;
    options.scale = static_cast<float>(attention_scale());
    options.threads = config_.threads;
    std::vector<float> attention(static_cast<std::size_t>(B * h * dv));
    for (std::int64_t s = 0; s < B; ++s) {
      const int id = cache.add_sequence();
      cache.append(id,
                   Tensor::strided(k.data() + s * N * h_kv * dk, DType::f32, {h_kv, N, dk},
                                   {dk, h_kv * dk, 1}),
                   Tensor::strided(v.data() + s * N * h_kv * dv, DType::f32, {h_kv, N, dv},
                                   {dv, h_kv * dv, 1}));
      cache.attend(id, Tensor::contiguous(q.data() + s * h * dk, DType::f32, {h, 1, dk}),
                   Tensor::contiguous(attention.data() + s * h * dv, DType::f32, {h, 1, dv}),
                   options);
    }
    std::vector<float> y(static_cast<std::size_t>(B * d));
    layer::gemm(false, false, B, d, h * dv, attention.data(), h * dv, w.w_o.data(), d, 0.0f,
                y.data(), d);
    if (!w.b_o.empty()) layer::add_to_rows(y.data(), w.b_o.data(), B, d);
    return readout_.loss(y, batch, nullptr);
  }

  std::vector<ParameterRef> parameters() override {
    MhaParameters& p = layer_.parameters();
    std::vector<ParameterRef> refs = {{p.w_q, grads_.w_q},       {p.w_k, grads_.w_k},
                                      {p.w_v, grads_.w_v},       {p.w_o, grads_.w_o},
                                      {p.b_q, grads_.b_q},       {p.b_k, grads_.b_k},
                                      {p.b_v, grads_.b_v},       {p.b_o, grads_.b_o},
                                      {readout_.w, readout_.dw}, {readout_.b, readout_.db}};
    if (mode_ == ScaleMode::learnable) refs.push_back({log_temperature_, log_temperature_grad_});
    return refs;
  }

  std::int64_t parameter_count() const override {
    return layer_.parameter_count() +
           static_cast<std::int64_t>(readout_.w.size() + readout_.b.size()) +
           (mode_ == ScaleMode::learnable ? 1 : 0);
  }

 private:
  TrainConfig config_;
  ScaleMode mode_;
  MultiHeadAttention layer_;
  Random random_;
  Readout readout_;
  MhaActivations activations_;
  MhaParameters grads_;
  std::vector<float> dx_q_, dx_kv_;
  std::vector<float> log_temperature_{0.0f}, log_temperature_grad_{0.0f};
};

// ---- additive model
// ---------------------------------------------------------------------------------

class AdditiveModel final : public RetrievalModel {
 public:
  AdditiveModel(const TrainConfig& c, std::uint64_t seed)
      : config_(c),
        layer_(c.d_model, c.heads * c.d_k, c.heads * c.d_k),
        random_(seed ^ kReadoutSeed),
        readout_(c.d_model, c.vocabulary, random_) {
    layer_.init_parameters(seed);
  }

  BatchResult run(const RetrievalBatch& batch, bool train) override {
    const std::int64_t B = batch.size, N = config_.pairs, d = config_.d_model;
    std::vector<float> y(static_cast<std::size_t>(B * d)), entropy(static_cast<std::size_t>(B));
    layer_.forward(batch.queries, batch.items, B, 1, N, y, train ? &activations_ : nullptr,
                   entropy);
    std::vector<float> dy;
    BatchResult result = readout_.loss(y, batch, train ? &dy : nullptr);
    result.entropy = mean(entropy);
    if (train) layer_.backward(batch.queries, batch.items, activations_, dy, grads_);
    return result;
  }

  std::vector<ParameterRef> parameters() override {
    AdditiveParameters& p = layer_.parameters();
    return {{p.w_1, grads_.w_1},      {p.w_2, grads_.w_2}, {p.b_a, grads_.b_a},
            {p.v_a, grads_.v_a},      {p.w_v, grads_.w_v}, {p.b_v, grads_.b_v},
            {p.w_o, grads_.w_o},      {p.b_o, grads_.b_o}, {readout_.w, readout_.dw},
            {readout_.b, readout_.db}};
  }

  std::int64_t parameter_count() const override {
    return layer_.parameter_count() +
           static_cast<std::int64_t>(readout_.w.size() + readout_.b.size());
  }

 private:
  TrainConfig config_;
  AdditiveAttention layer_;
  Random random_;
  Readout readout_;
  AdditiveActivations activations_;
  AdditiveParameters grads_;
};

}  // namespace

BatchResult RetrievalModel::run_with_kv_cache(const RetrievalBatch&, KvStorage) {
  fail("run_with_kv_cache: this model has no dot-product attention to read a KV cache");
}

const char* scale_mode_name(ScaleMode mode) {
  switch (mode) {
    case ScaleMode::scaled:
      return "scaled 1/sqrt(d_k)";
    case ScaleMode::unscaled:
      return "unscaled";
    case ScaleMode::learnable:
      return "learnable temperature";
    case ScaleMode::uniform:
      return "uniform (scale 0)";
  }
  return "?";
}

std::unique_ptr<RetrievalModel> make_dot_product_model(const TrainConfig& config, ScaleMode mode,
                                                       std::uint64_t seed) {
  return std::make_unique<DotProductModel>(config, mode, seed);
}

std::unique_ptr<RetrievalModel> make_additive_model(const TrainConfig& config, std::uint64_t seed) {
  return std::make_unique<AdditiveModel>(config, seed);
}

// ---- training ----------------------------------------------------------------------------------

double Curve::mean_accuracy() const {
  double sum = 0;
  for (double a : accuracy) sum += a;
  return accuracy.empty() ? 0.0 : sum / static_cast<double>(accuracy.size());
}

Curve train(RetrievalModel& model, const RetrievalTask& task, const TrainConfig& config,
            const RetrievalBatch& eval_set, std::uint64_t seed, const std::string& label,
            const std::function<void(std::int64_t, const Curve&)>& tick) {
  Optimizer optimizer(config.optimizer, learning_rate_of(config));
  Random random(seed);
  Curve curve;
  curve.label = label;
  curve.parameters = model.parameter_count();
  auto evaluate = [&](std::int64_t step) {
    const BatchResult r = model.run(eval_set, false);
    curve.steps.push_back(static_cast<double>(step));
    curve.loss.push_back(r.loss);
    curve.accuracy.push_back(r.accuracy);
    curve.entropy.push_back(r.entropy);
    curve.scale.push_back(model.attention_scale());
  };
  evaluate(0);
  double train_seconds = 0;
  for (std::int64_t step = 1; step <= config.steps; ++step) {
    const RetrievalBatch batch = task.sample(config.batch, random);
    const auto start = std::chrono::steady_clock::now();
    model.run(batch, true);
    optimizer.step(model.parameters());
    train_seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (step % config.eval_every == 0 || step == config.steps) evaluate(step);
    if (tick) tick(step, curve);
  }
  curve.seconds_per_step = config.steps > 0 ? train_seconds / static_cast<double>(config.steps) : 0;
  return curve;
}

Json curve_json(const Curve& c) {
  return {{"label", c.label},
          {"parameters", c.parameters},
          {"seconds_per_step", c.seconds_per_step},
          {"final_accuracy", c.final_accuracy()},
          {"mean_accuracy", c.mean_accuracy()},
          {"steps", c.steps},
          {"loss", c.loss},
          {"accuracy", c.accuracy},
          {"entropy", c.entropy},
          {"scale", c.scale}};
}

Curve curve_from_json(const Json& j) {
  Curve c;
  c.label = j.at("label").get<std::string>();
  c.parameters = j.at("parameters").get<std::int64_t>();
  c.seconds_per_step = j.at("seconds_per_step").get<double>();
  for (const char* key : {"steps", "loss", "accuracy", "entropy", "scale"}) {
    std::vector<double>& target = key == std::string("steps")      ? c.steps
                                  : key == std::string("loss")     ? c.loss
                                  : key == std::string("accuracy") ? c.accuracy
                                  : key == std::string("entropy")  ? c.entropy
                                                                   : c.scale;
    target = j.at(key).get<std::vector<double>>();
  }
  return c;
}

std::vector<Curve> train_variants(const std::vector<Variant>& variants, const TrainConfig& config,
                                  const std::string& experiment, const Progress& progress,
                                  std::vector<std::unique_ptr<RetrievalModel>>* trained) {
  if (config.steps < 1) fail("--steps = ", config.steps, ": expected >= 1");
  if (config.batch < 1) fail("--batch = ", config.batch, ": expected >= 1");
  if (config.eval_every < 1) fail("--eval-every = ", config.eval_every, ": expected >= 1");
  if (config.eval_size < 1) fail("--eval-size = ", config.eval_size, ": expected >= 1");
  const RetrievalTask task(config, task_seed(config));
  const RetrievalBatch eval_set = held_out_set(config);
  std::vector<Curve> curves;
  const double total =
      static_cast<double>(variants.size() * static_cast<std::size_t>(config.steps));
  for (std::size_t v = 0; v < variants.size(); ++v) {
    auto model = variants[v].make();
    auto tick = [&](std::int64_t step, const Curve& curve) {
      if (!progress || (step % 10 != 0 && step != config.steps)) return;
      const double done = static_cast<double>(v * static_cast<std::size_t>(config.steps) +
                                              static_cast<std::size_t>(step));
      progress(done / total, experiment + " · " + variants[v].label + " · step " +
                                 std::to_string(step) + "/" + std::to_string(config.steps) +
                                 " · acc " + std::to_string(curve.accuracy.back()).substr(0, 5));
    };
    curves.push_back(
        train(*model, task, config, eval_set, config.seed + 2, variants[v].label, tick));
    if (trained != nullptr) trained->push_back(std::move(model));
  }
  return curves;
}

RetrievalBatch held_out_set(const TrainConfig& config) {
  const RetrievalTask task(config, task_seed(config));
  Random eval_random(config.seed + 3);
  return task.sample(config.eval_size, eval_random);
}

}  // namespace sdpa::lab
