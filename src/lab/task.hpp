// The synthetic task of ablation and additive: key–value retrieval. A sequence holds `pairs`
// items, each a (key, value) pair of symbols from a vocabulary, keys distinct and values distinct;
// the query names one of the keys and the answer is its value. The answer depends on which item
// matches the query: a model without content-based attention can at best guess among the values
// present (1 / pairs).
//
// Tokens are fixed random embeddings (not trained): item = E_key[k] + E_value[v], query =
// E_key[k*] + E_query, each component N(0, 1/2), so tokens have unit-variance components — the
// premise of the 1/sqrt(d_k) argument once the projections are initialized with Var(w) = 1/fan_in.
#pragma once

#include <cstdint>
#include <vector>

#include "lab/lab.hpp"
#include "lab/random.hpp"

namespace sdpa::lab {

struct RetrievalBatch {
  std::int64_t size = 0;
  std::vector<float> queries;         // [B, 1, d_model]
  std::vector<float> items;           // [B, pairs, d_model]
  std::vector<std::int32_t> answers;  // [B]: the value symbol of the queried key
};

class RetrievalTask {
 public:
  /// Embeddings drawn from `seed`.
  RetrievalTask(const TrainConfig& config, std::uint64_t seed);
  RetrievalBatch sample(std::int64_t batch, Random& random) const;
  std::int64_t pairs() const { return pairs_; }
  std::int64_t vocabulary() const { return vocabulary_; }
  std::int64_t d_model() const { return d_model_; }

 private:
  std::int64_t pairs_, vocabulary_, d_model_;
  std::vector<float> key_embedding_, value_embedding_;  // [vocabulary, d_model]
  std::vector<float> query_marker_;                     // [d_model]
};

}  // namespace sdpa::lab
