// The models of the ablation and additive experiments (an attention layer + a linear readout to the
// value vocabulary, cross-entropy loss), the optimizers written over their gradients, and the
// training loop that records learning curves.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "lab/additive_attention.hpp"
#include "lab/lab.hpp"
#include "lab/task.hpp"
#include "sdpa/mha.hpp"

namespace sdpa::lab {

/// A trainable tensor and its gradient (same size).
struct ParameterRef {
  std::span<float> value, grad;
};

/// Adam (Kingma & Ba: β1 0.9, β2 0.999, ε 1e-8, bias-corrected) or plain SGD.
class Optimizer {
 public:
  Optimizer(const std::string& kind, double learning_rate);
  void step(const std::vector<ParameterRef>& parameters);
  double learning_rate() const { return learning_rate_; }

 private:
  bool adam_;
  double learning_rate_;
  std::int64_t steps_ = 0;
  std::vector<std::vector<float>> first_, second_;  // Adam's moments, one per parameter
};

/// Loss, accuracy and mean attention entropy (nats) of one batch, and each sequence's predicted
/// value symbol (the readout's argmax).
struct BatchResult {
  double loss = 0, accuracy = 0, entropy = 0;
  std::vector<std::int32_t> predictions;
};

class RetrievalModel {
 public:
  virtual ~RetrievalModel() = default;
  /// Forward on the batch; with `train` also every parameter's gradient (see parameters()).
  virtual BatchResult run(const RetrievalBatch& batch, bool train) = 0;
  virtual std::vector<ParameterRef> parameters() = 0;
  virtual std::int64_t parameter_count() const = 0;
  /// The attention's scale (logit multiplier) now; 0 where it has none.
  virtual double attention_scale() const { return 0; }
  /// Forward (no training) with the attention reading its keys and values from an sdpa::KvCache
  /// of the given storage (fp32, bf16 or int8 rows, one sequence per batch entry) instead of the
  /// fp32 projections. Throws sdpa::Error for a model without dot-product attention.
  virtual BatchResult run_with_kv_cache(const RetrievalBatch& batch, KvStorage storage);
};

/// How a dot-product model scales its logits.
enum class ScaleMode {
  scaled,     // 1/sqrt(d_k)
  unscaled,   // 1
  learnable,  // exp(θ)/sqrt(d_k), θ trained (starts at 0), dθ = dscale · scale
  uniform,    // 0: every key weighted equally — the control that shows the task needs attention
};
const char* scale_mode_name(ScaleMode mode);

std::unique_ptr<RetrievalModel> make_dot_product_model(const TrainConfig& config, ScaleMode mode,
                                                       std::uint64_t seed);
std::unique_ptr<RetrievalModel> make_additive_model(const TrainConfig& config, std::uint64_t seed);

/// A learning curve: evaluation on a fixed held-out set every eval_every steps (and at 0 and end).
struct Curve {
  std::string label;
  std::vector<double> steps, loss, accuracy, entropy, scale;
  double seconds_per_step = 0;  // training steps only (forward + backward + update)
  std::int64_t parameters = 0;
  double final_accuracy() const { return accuracy.back(); }
  /// Mean accuracy over the evaluations: the area under the learning curve, in [0, 1].
  double mean_accuracy() const;
};

/// Trains `model` for config.steps on batches drawn from Random(seed) (the same sequence for every
/// model given the same seed); `tick(step)` after each step.
Curve train(RetrievalModel& model, const RetrievalTask& task, const TrainConfig& config,
            const RetrievalBatch& eval_set, std::uint64_t seed, const std::string& label,
            const std::function<void(std::int64_t, const Curve&)>& tick);

/// The learning rate a config asks for (its own, or the optimizer's default).
double learning_rate_of(const TrainConfig& config);

Json curve_json(const Curve& curve);

}  // namespace sdpa::lab

namespace sdpa::lab {

/// One model to train: a label and how to build it.
struct Variant {
  std::string label;
  std::function<std::unique_ptr<RetrievalModel>()> make;
};

/// Trains every variant on the same task, the same batches and the same held-out set (all drawn
/// from config.seed), reporting overall progress as "<experiment> · <label> · step s/S · acc a".
/// `trained`, when given, receives the trained models (in the order of `variants`).
std::vector<Curve> train_variants(const std::vector<Variant>& variants, const TrainConfig& config,
                                  const std::string& experiment, const Progress& progress,
                                  std::vector<std::unique_ptr<RetrievalModel>>* trained = nullptr);

/// The held-out set every variant is evaluated on (drawn from config.seed).
RetrievalBatch held_out_set(const TrainConfig& config);

/// The training config as JSON (an experiment's parameters), and a sentence describing the task.
Json train_config_json(const TrainConfig& config);
std::string task_description(const TrainConfig& config);

/// A curve back from curve_json() (for reusing an ablation run's curves).
Curve curve_from_json(const Json& json);

/// The seeds the experiments derive from config.seed.
inline std::uint64_t task_seed(const TrainConfig& c) { return c.seed; }
inline std::uint64_t init_seed(const TrainConfig& c) { return c.seed + 1; }

}  // namespace sdpa::lab
