// The fused attention forward for one query block, written once over a SIMD abstraction and
// compiled per instruction set. Include this file from an ISA translation unit AFTER defining,
// in namespace sdpa::kernels::SDPA_KERNEL_NS::(anonymous):
//   struct Simd      vector type V with kLanes floats and the ops used below (load, store, fma, ...)
//   kMicroRows       query rows per register-blocked microkernel call
//   kBlockRows       query rows per block (a multiple of kMicroRows)
//   kBlockKeys       keys per score tile (a multiple of the panel width 2·kLanes)
// and SDPA_KERNEL_NAME. Everything here has internal linkage except kernel(), whose namespace
// names the ISA — so no code compiled with one ISA's flags can leak into another's.
//
// Per block of query rows (FlashAttention-2, forward):
//   for each key tile:  S = Q·Kᵀ                      (microkernel, K packed in panels)
//                       t = S·scale + bias, −inf where masked
//                       (with a softcap c: t = c·tanh(S·scale / c) + bias)
//                       m' = max(m, rowmax t);  P = exp(t − m');  l = l·exp(m − m') + rowsum P
//                       acc = acc·exp(m − m') + P·V      (rescale only when the max grew)
//   out = acc / l;  lse = m + log l;  a row with no visible key has l = 0: out = 0, lse = −inf.
// An attention sink s starts a row at m = s, l = 1 (the sink's own exp(s − s)) with acc = 0: it
// takes part in the max and the sum but adds no value; a row that sees no key then has out = 0,
// lse = s.

#include "core/half.hpp"

namespace sdpa::kernels::SDPA_KERNEL_NS {
namespace {

#include "kernels/panel_gemm_impl.hpp"
#include "kernels/softmax_rows_impl.hpp"
#if defined(SDPA_KERNEL_BF16_PRODUCTS)
#include "kernels/bf16_gemm_impl.hpp"
constexpr bool kBf16Products = true;
#else
constexpr bool kBf16Products = false;
#endif

static_assert(kBlockRows % kMicroRows == 0, "block rows must be whole microkernel row groups");
static_assert(kBlockKeys % kPanel == 0, "a score tile must be whole key panels");

// Everything one call of forward_block works on.
struct BlockState {
  const BlockShape& shape;
  const PackedKeysValues& kv;
  const QueryBlock& block;
  int groups;              // microkernel row groups covering block.rows
  std::int64_t dim_v_pad;  // acc row stride
  float* q_packed;         // [groups·kMicroRows][dim_k]
  float* scores;           // [groups·kMicroRows][kBlockKeys]
  float* acc;              // [groups·kMicroRows][dim_v_pad]
  float* row_max;          // m per row (natural-log units of the logits)
  float* row_sum;          // l per row
  float* row_moment;       // u = Σ p·(t − m) per row (entropy telemetry), or null
  float* score_max;        // [groups·kMicroRows][kLanes]: lane maxima of the tile's raw scores
};

#if defined(SDPA_KERNEL_BF16_PRODUCTS)
// Q rows as bf16 (the input's own bits; bf16 inputs only), [padded rows][Dk2], zero padded.
void pack_queries(const BlockState& st) {
  const QueryBlock& b = st.block;
  const std::int64_t dim_k = st.shape.dim_k, dim_k2 = round_up(dim_k, 2);
  auto* q = reinterpret_cast<std::uint16_t*>(st.q_packed);
  for (int r = 0; r < st.groups * kMicroRows; ++r) {
    std::uint16_t* dst = q + r * dim_k2;
    std::int64_t d = 0;
    if (r < b.rows) {
      const std::uint16_t* src = static_cast<const std::uint16_t*>(b.q) + r * b.q_row_stride;
      for (; d < dim_k; ++d) dst[d] = src[d * b.q_col_stride];
    }
    for (; d < dim_k2; ++d) dst[d] = 0;
  }
}
#else
// Query row r widened to fp32 into dst[0..dim_k).
void load_query_row(const QueryBlock& b, int r, std::int64_t dim_k, float* dst) {
  const std::int64_t step = b.q_col_stride;
  if (b.q_element == Element::f32) {
    const float* src = static_cast<const float*>(b.q) + r * b.q_row_stride;
    if (step == 1) {
      for (std::int64_t d = 0; d < dim_k; ++d) dst[d] = src[d];
    } else {
      for (std::int64_t d = 0; d < dim_k; ++d) dst[d] = src[d * step];
    }
    return;
  }
  const std::uint16_t* src = static_cast<const std::uint16_t*>(b.q) + r * b.q_row_stride;
  if (b.q_element == Element::bf16) {
    for (std::int64_t d = 0; d < dim_k; ++d) dst[d] = half::bf16_to_float(src[d * step]);
  } else {
    for (std::int64_t d = 0; d < dim_k; ++d) dst[d] = half::f16_to_float(src[d * step]);
  }
}

void pack_queries(const BlockState& st) {
  const QueryBlock& b = st.block;
  const std::int64_t dim_k = st.shape.dim_k;
  const int padded_rows = st.groups * kMicroRows;
  for (int r = 0; r < padded_rows; ++r) {
    float* dst = st.q_packed + r * dim_k;
    if (r >= b.rows) {
      for (std::int64_t d = 0; d < dim_k; ++d) dst[d] = 0.0f;
      continue;
    }
    load_query_row(b, r, dim_k, dst);
  }
}
#endif

constexpr int kBlockGroups = kBlockRows / kMicroRows;

// Per row group, the keys of tile [t0, t0 + n_keys) its rows see: whole panels for Q·Kᵀ, exact for
// P·V (group_key_ranges). Diagonal tiles of causal and windowed attention skip the rest.
struct TileRanges {
  std::int64_t panel_lo[kBlockGroups], panel_hi[kBlockGroups];
  std::int64_t key_lo[kBlockGroups], key_hi[kBlockGroups];
};

TileRanges tile_ranges(const BlockState& st, std::int64_t t0, std::int64_t n_keys) {
  TileRanges tr;
  group_key_ranges(st.block.key_begin, st.block.key_end, st.block.rows, st.groups, t0, n_keys,
                   tr.key_lo, tr.key_hi, tr.panel_lo, tr.panel_hi);
  return tr;
}

// scores[r][c] = Q[r]·K[t0 + c] for the key panels row r's group sees; the other panels hold stale
// values, which logits_row replaces by −inf (they are outside every visible range of the group).
// st.score_max gets each row's lane maxima over the panels computed (softmax_tile's max for rows
// that see the whole tile, without a pass over it).
void compute_scores(const BlockState& st, const TileRanges& tr, std::int64_t t0) {
  const std::int64_t dim_k = st.shape.dim_k;
  for (int r = 0; r < st.groups * kMicroRows; ++r)
    Simd::store(st.score_max + r * kLanes, Simd::set1(kNegInf));
  if constexpr (kBf16Products) {
#if defined(SDPA_KERNEL_BF16_PRODUCTS)
    const std::int64_t dim_k2 = round_up(dim_k, 2);
    bf16_panel_gemm_cols(reinterpret_cast<const std::uint32_t*>(st.q_packed), dim_k2 / 2,
                         st.groups * kMicroRows,
                         reinterpret_cast<const std::uint16_t*>(st.kv.k_panels) + t0 * dim_k2,
                         dim_k2 * kPanel, dim_k2, st.scores, kBlockKeys, tr.panel_lo, tr.panel_hi,
                         st.score_max);
#endif
  } else {
    panel_gemm_cols(st.q_packed, dim_k, st.groups * kMicroRows, st.kv.k_panels + t0 * dim_k,
                    dim_k * kPanel, dim_k, st.scores, kBlockKeys, tr.panel_lo, tr.panel_hi,
                    st.score_max);
  }
}

// Row r's logits need no pass of their own when the row sees every key of the tile and they are
// just S·scale with scale > 0: their max is the raw scores' max times scale (rounding is monotonic,
// so max(S·scale) = max(S)·scale exactly), and exp forms S·scale as it reads (exp_row<true>,
// logit_gap), rounded as logits_row would have stored it: the same bits, one pass fewer.
bool raw_scores_row(const BlockState& st, int r, std::int64_t t0, std::int64_t n_keys) {
  const QueryBlock& b = st.block;
  return st.shape.scale > 0.0f && !(st.shape.softcap > 0.0f) && b.bias == nullptr &&
         b.mask == nullptr && b.key_begin[r] <= t0 && b.key_end[r] >= t0 + n_keys;
}

// Row r's logits over keys [t0, t0 + n_keys) from its raw scores (softmax_rows_impl.hpp).
float logits_row(const BlockState& st, int r, std::int64_t t0, std::int64_t n_keys) {
  const QueryBlock& b = st.block;
  const float* bias = b.bias ? b.bias + r * b.bias_row_stride : nullptr;
  const std::uint8_t* mask = b.mask ? b.mask + r * b.mask_row_stride : nullptr;
  return logits_row(st.scores + r * kBlockKeys, t0, n_keys, b.key_begin[r], b.key_end[r],
                    st.shape.scale, st.shape.softcap, bias, b.bias_col_stride, mask,
                    b.mask_col_stride);
}

// The online-softmax step for one score tile: scores become probabilities P (relative to the new
// running max), running max/sum advance, and acc rows are rescaled where the max grew. With bf16
// products P is stored rounded to bf16 in the first half of each row (the sum l stays fp32's).
void softmax_tile(const BlockState& st, std::int64_t t0, std::int64_t n_keys) {
  for (int r = 0; r < st.block.rows; ++r) {
    const bool raw = raw_scores_row(st, r, t0, n_keys);
    const float tile_max =
        raw ? Simd::reduce_max(Simd::load(st.score_max + r * kLanes)) * st.shape.scale
            : logits_row(st, r, t0, n_keys);
    float* row = st.scores + r * kBlockKeys;
    const float scale = st.shape.scale;
    const float old_max = st.row_max[r];
    const float new_max = tile_max > old_max ? tile_max : old_max;
    // While every key so far is masked the max is −inf; exponentiate against 0 instead so that
    // masked logits give exp(−inf) = 0 rather than exp(−inf + inf) = NaN.
    const float base = new_max == kNegInf ? 0.0f : new_max;
    const float alpha = __builtin_exp2f((old_max - base) * kLog2e);  // 0 when old_max = −inf
    float row_sum;
    if (st.row_moment != nullptr) {
      // u relative to the new base: α·(u + (m_old − m_new)·l); nothing to carry while l = 0, nor
      // when α = 0 (the max grew past exp's range; (m_old − m_new)·l may even overflow to −inf).
      float& u = st.row_moment[r];
      const bool carry = st.row_sum[r] != 0.0f && alpha != 0.0f;
      u = carry ? alpha * (u + (old_max - base) * st.row_sum[r]) : 0.0f;
      row_sum = raw ? exp_row_with_moment<true>(row, n_keys, base, &u, scale)
                    : exp_row_with_moment(row, n_keys, base, &u);
#if defined(SDPA_KERNEL_BF16_PRODUCTS)
      round_row_to_bf16(row, n_keys);
    } else {
      row_sum = raw ? exp_row_to_bf16<true>(row, n_keys, base, scale)
                    : exp_row_to_bf16<false>(row, n_keys, base, 1.0f);
    }
#else
    } else {
      row_sum = raw ? exp_row<true>(row, n_keys, base, scale) : exp_row(row, n_keys, base);
    }
#endif
    st.row_sum[r] = st.row_sum[r] * alpha + row_sum;
    st.row_max[r] = new_max;
    if (alpha != 1.0f) {  // lazy rescale: only when the running max grew
      float* acc = st.acc + r * st.dim_v_pad;
      const V va = Simd::set1(alpha);
      for (std::int64_t d = 0; d < st.dim_v_pad; d += kLanes)
        Simd::store(acc + d, Simd::mul(Simd::load(acc + d), va));
    }
  }
  // Rows past the block's end (microkernel padding) contribute nothing.
  for (int r = st.block.rows; r < st.groups * kMicroRows; ++r) {
    float* row = st.scores + r * kBlockKeys;
    for (std::int64_t c = 0; c < n_keys; ++c) row[c] = 0.0f;
  }
}

// acc += P·V over the keys each row group sees (P is 0 elsewhere). Not over the panel padding
// past them either: a padding key's value (say NaN in an unused KV-cache slot) must not reach the
// output as 0·NaN.
// bf16 products: softmax_tile left P rounded to bf16 in place (row r's bf16 values in the first
// half of its fp32 row, so A's row stride is kBlockKeys 32-bit words).
void accumulate_values(const BlockState& st, const TileRanges& tr, std::int64_t t0) {
  if constexpr (kBf16Products) {
#if defined(SDPA_KERNEL_BF16_PRODUCTS)
    const int rows = st.groups * kMicroRows;
    bf16_panel_gemm_depth(reinterpret_cast<const std::uint32_t*>(st.scores), kBlockKeys, rows,
                          reinterpret_cast<const std::uint16_t*>(st.kv.v_panels) + t0 * kPanel,
                          st.kv.len_k_padded * kPanel, st.dim_v_pad, st.acc, st.dim_v_pad,
                          tr.key_lo, tr.key_hi);
#endif
  } else {
    panel_gemm_depth<false>(st.scores, kBlockKeys, st.groups * kMicroRows,
                            st.kv.v_panels + t0 * kPanel, st.kv.len_k_padded * kPanel,
                            st.dim_v_pad, st.acc, st.dim_v_pad, tr.key_lo, tr.key_hi);
  }
}

void write_outputs(const BlockState& st) {
  const QueryBlock& b = st.block;
  for (int r = 0; r < b.rows; ++r) {
    const float l = st.row_sum[r];
    // l = 0 exactly when the row saw no key; NaN (from a NaN input) stays NaN.
    const float inv = l == 0.0f ? 0.0f : 1.0f / l;
    const float* acc = st.acc + r * st.dim_v_pad;
    const std::int64_t step = b.out_col_stride;
    if (b.out_element == Element::f32) {
      float* out = static_cast<float*>(b.out) + r * b.out_row_stride;
      for (std::int64_t d = 0; d < st.shape.dim_v; ++d) out[d * step] = acc[d] * inv;
    } else {
      std::uint16_t* out = static_cast<std::uint16_t*>(b.out) + r * b.out_row_stride;
      const bool bf16 = b.out_element == Element::bf16;
      for (std::int64_t d = 0; d < st.shape.dim_v; ++d)
        out[d * step] = bf16 ? half::float_to_bf16(acc[d] * inv) : half::float_to_f16(acc[d] * inv);
    }
    if (b.lse != nullptr)
      b.lse[r * b.lse_stride] = l == 0.0f ? kNegInf : st.row_max[r] + __builtin_logf(l);
    // H = −Σ (p/l)·log(p/l) = log l − u/l with u = Σ p·(t − m).
    if (b.entropy != nullptr)
      b.entropy[r * b.entropy_stride] = l == 0.0f ? 0.0f : __builtin_logf(l) - st.row_moment[r] / l;
  }
}

// Attention weights P = exp(t − m) / l, recomputed tile by tile once m and l are final (not
// exp(t − lse): with logits ≫ log l, m + log l rounds back to m). Keys outside every tile (and rows
// with no visible key) get 0.
void write_weights(const BlockState& st, std::int64_t first, std::int64_t last) {
  const QueryBlock& b = st.block;
  for (int r = 0; r < b.rows; ++r)
    for (std::int64_t j = 0; j < st.shape.len_k; ++j)
      b.weights[r * b.weights_row_stride + j * b.weights_col_stride] = 0.0f;
  for (std::int64_t t0 = first; t0 < last; t0 += kBlockKeys) {
    const std::int64_t n_keys = min_i64(kBlockKeys, round_up(last - t0, kPanel));
    compute_scores(st, tile_ranges(st, t0, n_keys), t0);
    for (int r = 0; r < b.rows; ++r) {
      const float l = st.row_sum[r];
      if (l == 0.0f) continue;
      // As softmax_tile formed the exponent (l sums those p): from raw scores or from logits.
      float* row = st.scores + r * kBlockKeys;
      if (raw_scores_row(st, r, t0, n_keys)) {
        exp_row<true>(row, n_keys, st.row_max[r], st.shape.scale);
      } else {
        logits_row(st, r, t0, n_keys);
        exp_row(row, n_keys, st.row_max[r]);
      }
      const float inv = 1.0f / l;
      const std::int64_t end = min_i64(n_keys, st.shape.len_k - t0);
      float* w = b.weights + r * b.weights_row_stride + t0 * b.weights_col_stride;
      for (std::int64_t c = 0; c < end; ++c) w[c * b.weights_col_stride] = row[c] * inv;
    }
  }
}

void forward_block(const BlockShape& shape, const PackedKeysValues& kv, const QueryBlock& block,
                   const Scratch& scratch) {
  const int groups = (block.rows + kMicroRows - 1) / kMicroRows;
  alignas(64) float score_max[kBlockRows * kLanes];
  const BlockState st{shape,           kv,
                      block,           groups,
                      round_up(shape.dim_v, kPanel),
                      scratch.q_packed, scratch.scores,
                      scratch.acc,     scratch.row_state,
                      scratch.row_state + kBlockRows,
                      block.entropy != nullptr ? scratch.row_state + 2 * kBlockRows : nullptr,
                      score_max};

  // The key tiles cover the union of the rows' visible ranges, starting on a panel boundary.
  std::int64_t first = shape.len_k, last = 0;
  for (int r = 0; r < block.rows; ++r) {
    if (block.key_begin[r] >= block.key_end[r]) continue;
    first = min_i64(first, block.key_begin[r]);
    last = max_i64(last, block.key_end[r]);
  }
  first = first / kPanel * kPanel;

  pack_queries(st);
  for (std::int64_t i = 0; i < groups * kMicroRows * st.dim_v_pad; ++i) st.acc[i] = 0.0f;
  for (int r = 0; r < kBlockRows; ++r) {
    const bool sink = r < block.sink_rows && block.sink != kNegInf;
    st.row_max[r] = sink ? block.sink : kNegInf;
    st.row_sum[r] = sink ? 1.0f : 0.0f;
    if (st.row_moment != nullptr) st.row_moment[r] = 0.0f;  // the sink's p·(s − m) = 0
  }
  for (std::int64_t t0 = first; t0 < last; t0 += kBlockKeys) {
    const std::int64_t n_keys = min_i64(kBlockKeys, round_up(last - t0, kPanel));
    const TileRanges tr = tile_ranges(st, t0, n_keys);
    compute_scores(st, tr, t0);
    softmax_tile(st, t0, n_keys);
    accumulate_values(st, tr, t0);
  }
  write_outputs(st);
  if (block.weights != nullptr) write_weights(st, first, last);
}

}  // namespace

void tanh_values(float* values, std::int64_t n) {
  float lanes[kLanes];
  for (std::int64_t i = 0; i < n; i += kLanes) {
    const std::int64_t m = min_i64(kLanes, n - i);
    for (std::int64_t c = 0; c < kLanes; ++c) lanes[c] = c < m ? values[i + c] : 0.0f;
    Simd::store(lanes, vector_tanh(Simd::load(lanes)));
    for (std::int64_t c = 0; c < m; ++c) values[i + c] = lanes[c];
  }
}

const FlashKernel& kernel() {
  static const FlashKernel k{SDPA_KERNEL_NAME, kPanel, kBlockRows, kBlockKeys, kBf16Products,
                             &forward_block, &tanh_values, &transpose_panel};
  return k;
}

}  // namespace sdpa::kernels::SDPA_KERNEL_NS
