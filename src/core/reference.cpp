#include "core/reference.hpp"

#include <cmath>
#include <limits>

#include "core/mask.hpp"

namespace sdpa::reference {

template <typename T>
Result<T> forward(const Problem& p) {
  const std::int64_t B = p.batch, Hq = p.heads_q, Lq = p.len_q, Lk = p.len_k;
  const std::int64_t Dk = p.dim_k, Dv = p.dim_v;
  const T neg_inf = -std::numeric_limits<T>::infinity();
  Result<T> r;
  r.out.assign(static_cast<std::size_t>(B * Hq * Lq * Dv), T(0));
  r.lse.assign(static_cast<std::size_t>(B * Hq * Lq), neg_inf);
  r.weights.assign(static_cast<std::size_t>(B * Hq * Lq * Lk), T(0));
  r.entropy.assign(static_cast<std::size_t>(B * Hq * Lq), T(0));
  std::vector<T> logits(static_cast<std::size_t>(Lk));

  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < Hq; ++h) {
      const std::int64_t hk = h / p.group;  // the key/value head this query head reads
      for (std::int64_t i = 0; i < Lq; ++i) {
        const std::int64_t row = (b * Hq + h) * Lq + i;
        // Step 1: logits. A sink (real rows only) is one more logit, with no value.
        const T sink = i < p.query_length(b) ? T(p.sink(h)) : neg_inf;
        T max_logit = sink;
        for (std::int64_t j = 0; j < Lk; ++j) {
          T s = neg_inf;
          if (key_visible(p, b, h, i, j)) {
            T dot = 0;
            for (std::int64_t d = 0; d < Dk; ++d)
              dot += T(p.q_at(b, h, i, d)) * T(p.k_at(b, hk, j, d));
            s = dot * T(p.scale);
            if (p.softcap > 0) s = T(p.softcap) * std::tanh(s / T(p.softcap));
            if (p.bias) s += T(p.bias->at(b, h, i, j));
          }
          logits[static_cast<std::size_t>(j)] = s;
          if (s > max_logit || std::isnan(s)) max_logit = std::isnan(max_logit) ? max_logit : s;
        }
        if (max_logit == neg_inf) continue;  // no visible key, no sink: out 0, lse -inf, weights 0
        // Step 2: softmax.
        T sum = std::exp(sink - max_logit);
        for (std::int64_t j = 0; j < Lk; ++j) sum += std::exp(logits[static_cast<std::size_t>(j)] - max_logit);
        r.lse[static_cast<std::size_t>(row)] = max_logit + std::log(sum);
        const T sink_weight = std::exp(sink - max_logit) / sum;
        if (sink_weight > 0 || std::isnan(sink_weight))
          r.entropy[static_cast<std::size_t>(row)] -= sink_weight * std::log(sink_weight);
        // Step 3: weighted sum of values.
        for (std::int64_t j = 0; j < Lk; ++j) {
          const T weight = std::exp(logits[static_cast<std::size_t>(j)] - max_logit) / sum;
          r.weights[static_cast<std::size_t>(row * Lk + j)] = weight;
          if (weight > 0 || std::isnan(weight)) r.entropy[static_cast<std::size_t>(row)] -= weight * std::log(weight);
          // out sums over the keys the row sees; a key whose logit is −inf (a −inf bias, a q·k
          // that overflowed to −inf) drops out exactly like a masked one: its value is not read,
          // so a NaN or ±inf there does not reach the row as 0·NaN (docs/RELIABILITY.md).
          if (!key_visible(p, b, h, i, j) || logits[static_cast<std::size_t>(j)] == neg_inf) continue;
          for (std::int64_t d = 0; d < Dv; ++d)
            r.out[static_cast<std::size_t>(row * Dv + d)] += weight * T(p.v_at(b, hk, j, d));
        }
      }
    }
  return r;
}

template Result<double> forward<double>(const Problem&);
template Result<float> forward<float>(const Problem&);

}  // namespace sdpa::reference
