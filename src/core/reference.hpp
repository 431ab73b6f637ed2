// The reference: attention written the way the math reads, three steps per row
//   s_j = q·k_j · scale + bias_j   (−inf where the key is not visible)
//         (with a softcap c: s_j = c·tanh(q·k_j · scale / c) + bias_j)
//   p_j = exp(s_j − max s) / Σ exp(s − max s)
//   out = Σ p_j v_j,   lse = max s + log Σ exp(s − max s)
// With an attention sink σ (head h's sinks[h], real rows only) the row's max and sum also take
// σ as one more logit with no value: m = max(σ, max s), Σ includes exp(σ − m), out sums over the
// keys only, the entropy includes −p_σ log p_σ.
// computed in T. With T = double it is the fp64 reference the tests measure error against; with
// T = float it is the "naive32" baseline of the accuracy rule (DESIGN.md). It materializes every
// row's logits (O(Lk) per row) and is meant for tests and the lab, not for speed.
#pragma once

#include <vector>

#include "core/problem.hpp"

namespace sdpa::reference {

template <typename T>
struct Result {
  std::vector<T> out;      // [B, Hq, Lq, Dv] row-major
  std::vector<T> lse;      // [B, Hq, Lq]
  std::vector<T> weights;  // [B, Hq, Lq, Lk]
  std::vector<T> entropy;  // [B, Hq, Lq]: −Σ p log p (0 for a row with no visible key)
};

/// Forward attention of a validated problem (its q, k, v, mask, bias, lengths, window, causal, scale)
/// computed in T. Output views in `problem` are ignored.
template <typename T>
Result<T> forward(const Problem& problem);

extern template Result<double> forward<double>(const Problem&);
extern template Result<float> forward<float>(const Problem&);

}  // namespace sdpa::reference

namespace sdpa::reference {

/// Gradients of a backward problem, each a contiguous row-major array.
template <typename T>
struct BackwardResult {
  std::vector<T> dq;     // [B, Hq, Lq, Dk]
  std::vector<T> dk;     // [B, Hkv, Lk, Dk]: summed over the query heads of each group
  std::vector<T> dv;     // [B, Hkv, Lk, Dv]: likewise
  std::vector<T> dbias;  // BackwardProblem::dbias_shape [B|1, Hq|1, Lq|1, Lk|1]; empty without dbias
  T dscale = 0;          // dL/d(scale) = Σ dS ∘ (q·k)
  std::vector<T> dsinks; // [Hq] dL/d(sink_h) = −Σ p_sink·D_i; empty without sinks
};

/// The backward pass of a validated problem written the way the math reads, computed in T:
///   P = softmax(scale·Q·Kᵀ + bias) (recomputed from q, k, bias and the masks exactly as forward()
///   does; the problem's out and lse are not read), O = P·V,
///   D_i = dO_i·O_i,  dP_ij = dO_i·V_j,  dS_ij = P_ij (dP_ij − D_i),
///   dQ = scale·dS·K,  dK = scale·dSᵀ·Q,  dV = Pᵀ·dO,  dbias = dS summed over broadcast dims,
///   dscale = Σ dS_ij (q_i·k_j).
/// With a softcap c, dQ, dK and dscale use dS_ij·(1 − tanh²(scale·q_i·k_j / c)) (dbias keeps dS);
/// with sinks, P includes the sink in its normalization and dsinks_h = −Σ_i p_sink,i·D_i.
/// With T = double it is the fp64 reference of the backward tests; with T = float the naive32
/// baseline. dbias is computed only when the problem has a dbias view. Rows with no visible key
/// contribute nothing.
template <typename T>
BackwardResult<T> backward(const BackwardProblem& problem);

extern template BackwardResult<double> backward<double>(const BackwardProblem&);
extern template BackwardResult<float> backward<float>(const BackwardProblem&);

}  // namespace sdpa::reference
