// The reference: attention written the way the math reads, three steps per row
//   s_j = q·k_j · scale + bias_j   (−inf where the key is not visible)
//   p_j = exp(s_j − max s) / Σ exp(s − max s)
//   out = Σ p_j v_j,   lse = max s + log Σ exp(s − max s)
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
};

/// Forward attention of a validated problem (its q, k, v, mask, bias, lengths, window, causal, scale)
/// computed in T. Output views in `problem` are ignored.
template <typename T>
Result<T> forward(const Problem& problem);

extern template Result<double> forward<double>(const Problem&);
extern template Result<float> forward<float>(const Problem&);

}  // namespace sdpa::reference
