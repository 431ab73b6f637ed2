// The reference backward pass, written the way the math reads (see reference.hpp). Per query row
// (b, h, i), with hk = h / group the key/value head it reads:
//   s_j   = scale·q_i·k_j + bias_ij        (−inf where key j is not visible)
//   P_ij  = exp(s_j − max s) / Σ exp(s − max s)
//   O_i   = Σ_j P_ij v_j,        D_i = dO_i·O_i
//   dP_ij = dO_i·v_j,            dS_ij = P_ij (dP_ij − D_i)      (= dL/ds_ij)
//   dq_i += scale·dS_ij k_j,     dk_j += scale·dS_ij q_i,       dv_j += P_ij dO_i
//   dbias[broadcast(b, h, i, j)] += dS_ij,                      dscale += dS_ij (q_i·k_j)
//   dsinks_h -= p_sink,i·D_i,   p_sink,i = exp(σ_h − max s) / Σ
// The forward is recomputed here rather than read from the problem's out / lse, so the reference
// does not depend on the kernel it checks.
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/mask.hpp"
#include "core/reference.hpp"

namespace sdpa::reference {
namespace {

std::size_t at(std::int64_t index) { return static_cast<std::size_t>(index); }

// q_i·k_j of query row (b, h, i) and key j of head hk, in T.
template <typename T>
T dot_qk(const Problem& p, std::int64_t b, std::int64_t h, std::int64_t hk, std::int64_t i,
         std::int64_t j) {
  T dot = 0;
  for (std::int64_t d = 0; d < p.dim_k; ++d) dot += T(p.q_at(b, h, i, d)) * T(p.k_at(b, hk, j, d));
  return dot;
}

// Steps 1 and 2 of reference::forward for one row: logits[j] (−inf where hidden), probs[j] and
// the sink's probability. Returns false when the row has neither a visible key nor a sink (then
// probs is all zero).
template <typename T>
bool row_softmax(const Problem& p, std::int64_t b, std::int64_t h, std::int64_t i,
                 std::vector<T>& logits, std::vector<T>& probs, T& sink_prob) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const std::int64_t hk = h / p.group;
  const T sink = i < p.query_length(b) ? T(p.sink(h)) : neg_inf;
  T max_logit = sink;
  for (std::int64_t j = 0; j < p.len_k; ++j) {
    T s = neg_inf;
    if (key_visible(p, b, h, i, j)) {
      s = dot_qk<T>(p, b, h, hk, i, j) * T(p.scale);
      if (p.softcap > 0) s = T(p.softcap) * std::tanh(s / T(p.softcap));
      if (p.bias) s += T(p.bias->at(b, h, i, j));
    }
    logits[at(j)] = s;
    if (s > max_logit || std::isnan(s)) max_logit = std::isnan(max_logit) ? max_logit : s;
  }
  std::fill(probs.begin(), probs.end(), T(0));
  sink_prob = 0;
  if (max_logit == neg_inf) return false;
  T sum = std::exp(sink - max_logit);
  for (std::int64_t j = 0; j < p.len_k; ++j) sum += std::exp(logits[at(j)] - max_logit);
  for (std::int64_t j = 0; j < p.len_k; ++j)
    probs[at(j)] = std::exp(logits[at(j)] - max_logit) / sum;
  sink_prob = std::exp(sink - max_logit) / sum;
  return true;
}

// D_i = dO_i·O_i with O_i = Σ_j P_ij v_j recomputed in T, over the keys whose logit is not −inf
// (a hidden key's v, maybe uninitialized padding, never enters: 0·NaN would be NaN).
template <typename T>
T row_delta(const BackwardProblem& bp, std::int64_t b, std::int64_t h, std::int64_t i,
            const std::vector<T>& logits, const std::vector<T>& probs) {
  const Problem& p = bp.forward;
  const std::int64_t hk = h / p.group;
  T delta = 0;
  for (std::int64_t d = 0; d < p.dim_v; ++d) {
    T out = 0;
    for (std::int64_t j = 0; j < p.len_k; ++j)
      if (logits[at(j)] != -std::numeric_limits<T>::infinity())
        out += probs[at(j)] * T(p.v_at(b, hk, j, d));
    delta += T(bp.dout_at(b, h, i, d)) * out;
  }
  return delta;
}

// Flat C-order index of (b, h, i, j) in dbias of shape [B|1, Hq|1, Lq|1, Lk|1].
std::int64_t dbias_index(const BackwardProblem& bp, std::int64_t b, std::int64_t h, std::int64_t i,
                         std::int64_t j) {
  const auto& shape = bp.dbias_shape;
  const std::int64_t index[4] = {b, h, i, j};
  std::int64_t flat = 0;
  for (int d = 0; d < 4; ++d) flat = flat * shape[d] + (shape[d] == 1 ? 0 : index[d]);
  return flat;
}

}  // namespace

template <typename T>
BackwardResult<T> backward(const BackwardProblem& bp) {
  const Problem& p = bp.forward;
  const std::int64_t B = p.batch, Hq = p.heads_q, Hkv = p.heads_kv, Lq = p.len_q, Lk = p.len_k;
  const std::int64_t Dk = p.dim_k, Dv = p.dim_v;
  const T scale = T(p.scale);
  BackwardResult<T> r;
  r.dq.assign(at(B * Hq * Lq * Dk), T(0));
  r.dk.assign(at(B * Hkv * Lk * Dk), T(0));
  r.dv.assign(at(B * Hkv * Lk * Dv), T(0));
  if (bp.dbias) {
    const auto& shape = bp.dbias_shape;
    r.dbias.assign(at(shape[0] * shape[1] * shape[2] * shape[3]), T(0));
  }
  if (p.sinks) r.dsinks.assign(at(Hq), T(0));
  std::vector<T> logits(at(Lk)), probs(at(Lk));
  T sink_prob = 0;

  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < Hq; ++h) {
      const std::int64_t hk = h / p.group;  // the key/value head this query head reads
      for (std::int64_t i = 0; i < Lq; ++i) {
        if (!row_softmax(p, b, h, i, logits, probs, sink_prob)) continue;  // no key: no gradient
        const T delta = row_delta(bp, b, h, i, logits, probs);
        if (p.sinks) r.dsinks[at(h)] -= sink_prob * delta;
        T* dq_i = &r.dq[at(((b * Hq + h) * Lq + i) * Dk)];
        for (std::int64_t j = 0; j < Lk; ++j) {
          if (logits[at(j)] == -std::numeric_limits<T>::infinity()) continue;  // hidden key
          T* dk_j = &r.dk[at(((b * Hkv + hk) * Lk + j) * Dk)];
          T* dv_j = &r.dv[at(((b * Hkv + hk) * Lk + j) * Dv)];
          const T prob = probs[at(j)];
          // dP_ij = dO_i·v_j; dV_j += P_ij dO_i.
          T dprob = 0;
          for (std::int64_t d = 0; d < Dv; ++d) {
            const T dout = T(bp.dout_at(b, h, i, d));
            dprob += dout * T(p.v_at(b, hk, j, d));
            dv_j[d] += prob * dout;
          }
          const T dlogit = prob * (dprob - delta);  // dS_ij
          T dscore = dlogit;                        // dL/d(scale·q_i·k_j)
          if (p.softcap > 0) {
            const T th = std::tanh(dot_qk<T>(p, b, h, hk, i, j) * scale / T(p.softcap));
            dscore = dlogit * (1 - th * th);
          }
          for (std::int64_t d = 0; d < Dk; ++d) {
            dq_i[d] += scale * dscore * T(p.k_at(b, hk, j, d));
            dk_j[d] += scale * dscore * T(p.q_at(b, h, i, d));
          }
          if (bp.dbias) r.dbias[at(dbias_index(bp, b, h, i, j))] += dlogit;
          r.dscale += dscore * dot_qk<T>(p, b, h, hk, i, j);
        }
      }
    }
  return r;
}

template BackwardResult<double> backward<double>(const BackwardProblem&);
template BackwardResult<float> backward<float>(const BackwardProblem&);

}  // namespace sdpa::reference
