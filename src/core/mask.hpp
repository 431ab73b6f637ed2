// The one place where causal alignment, sliding windows and key/query lengths become the set of
// keys a query row may see. Every algorithm (reference, naive, tiled kernels, backward) asks here.
//
// For batch entry b and query row i the structurally visible keys form one contiguous range
// [begin, end). The boolean mask and the additive bias act element-wise on top of that range.
#pragma once

#include <algorithm>
#include <cstdint>

#include "core/problem.hpp"

namespace sdpa {

struct KeyRange {
  std::int64_t begin = 0, end = 0;  // visible keys: begin <= j < end; empty when begin >= end
  bool empty() const { return begin >= end; }
};

/// Keys visible to query row i of batch entry b from causal / window / lengths alone.
/// Over the rows with a non-empty range, begin and end never decrease as i grows; empty rows come
/// only before the first or after the last non-empty row (e.g. past the query length, or where a
/// window or bottom-right alignment leaves a row no key).
inline KeyRange visible_keys(const Problem& p, std::int64_t b, std::int64_t i) {
  const std::int64_t query_len = p.query_length(b);
  const std::int64_t key_len = p.key_length(b);
  if (i >= query_len) return {0, 0};
  // Position of row i on the key axis: the diagonal the causal mask and the window are drawn around.
  const std::int64_t diagonal = p.causal == Causal::bottom_right ? i + (key_len - query_len) : i;
  std::int64_t begin = 0, end = key_len;
  if (p.causal != Causal::none) end = std::min(end, diagonal + 1);
  if (p.window_left >= 0) begin = std::max(begin, diagonal - p.window_left);
  if (p.window_right >= 0) end = std::min(end, diagonal + p.window_right + 1);
  if (begin >= end) return {0, 0};
  return {begin, end};
}

/// Whether key j is visible to query row i of head h, batch entry b: structurally visible and,
/// when a boolean mask is given, allowed by it. (A bias of -inf also hides a key; that happens
/// naturally in the softmax.)
inline bool key_visible(const Problem& p, std::int64_t b, std::int64_t h, std::int64_t i,
                        std::int64_t j) {
  const KeyRange range = visible_keys(p, b, i);
  if (j < range.begin || j >= range.end) return false;
  return !p.mask || p.mask->at(b, h, i, j) != 0;
}

}  // namespace sdpa
