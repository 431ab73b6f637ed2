#include "lab/task.hpp"

#include <cmath>
#include <numeric>

#include "core/errors.hpp"

namespace sdpa::lab {

RetrievalTask::RetrievalTask(const TrainConfig& c, std::uint64_t seed)
    : pairs_(c.pairs), vocabulary_(c.vocabulary), d_model_(c.d_model) {
  if (c.pairs < 2) fail("--pairs = ", c.pairs, ": expected >= 2");
  if (c.vocabulary < c.pairs)
    fail("--vocabulary = ", c.vocabulary, " must be >= --pairs = ", c.pairs,
         " (keys are distinct)");
  if (c.d_model < 1) fail("--d-model = ", c.d_model, ": expected >= 1");
  Random random(seed);
  const double sigma = std::sqrt(0.5);
  key_embedding_ = random.normals(static_cast<std::size_t>(c.vocabulary * c.d_model), sigma);
  value_embedding_ = random.normals(key_embedding_.size(), sigma);
  query_marker_ = random.normals(static_cast<std::size_t>(c.d_model), sigma);
}

RetrievalBatch RetrievalTask::sample(std::int64_t batch, Random& random) const {
  RetrievalBatch b;
  b.size = batch;
  const auto d = static_cast<std::size_t>(d_model_);
  b.queries.resize(static_cast<std::size_t>(batch) * d);
  b.items.resize(static_cast<std::size_t>(batch * pairs_) * d);
  b.answers.resize(static_cast<std::size_t>(batch));
  std::vector<std::int64_t> keys(static_cast<std::size_t>(vocabulary_)), values(keys.size());
  // The first `pairs` symbols of a Fisher–Yates shuffle: distinct.
  auto draw_distinct = [&](std::vector<std::int64_t>& symbols) {
    std::iota(symbols.begin(), symbols.end(), 0);
    for (std::int64_t i = 0; i < pairs_; ++i)
      std::swap(symbols[i], symbols[i + random.below(vocabulary_ - i)]);
  };
  for (std::int64_t s = 0; s < batch; ++s) {
    draw_distinct(keys);
    draw_distinct(values);
    const std::int64_t asked = random.below(pairs_);
    for (std::int64_t i = 0; i < pairs_; ++i) {
      const std::int64_t value = values[i];
      float* item = b.items.data() + (s * pairs_ + i) * d_model_;
      const float* key_row = key_embedding_.data() + keys[i] * d_model_;
      const float* value_row = value_embedding_.data() + value * d_model_;
      for (std::int64_t e = 0; e < d_model_; ++e) item[e] = key_row[e] + value_row[e];
      if (i == asked) {
        float* query = b.queries.data() + s * d_model_;
        for (std::int64_t e = 0; e < d_model_; ++e) query[e] = key_row[e] + query_marker_[e];
        b.answers[s] = static_cast<std::int32_t>(value);
      }
    }
  }
  return b;
}

}  // namespace sdpa::lab
