// The backward tile (FlashAttention-2), written once over the SIMD abstraction. Included from the
// ISA translation units after flash_forward_impl.hpp (which brings the panel GEMM and the softmax
// row operations). For query rows R × keys C of one head:
//   S  = Q·Kᵀ                    P  = exp(S·scale + bias − lse)        (recomputed, never stored)
//   dP = dO·Vᵀ                   dS = P ∘ (dP − delta),  delta_i = dO_i·O_i
//   dV += Pᵀ·dO                  dK += dSᵀ·Q      dQ += dS·K           (scale applied by the driver)
//   d(scale) += Σ dS ∘ (q·k)
// With a softcap c the logit is c·tanh(S·scale / c) + bias: d(bias) is dS as above, and dK, dQ and
// d(scale) use dS ∘ (1 − tanh²), the gradient of S·scale.

namespace sdpa::kernels::SDPA_KERNEL_NS {
namespace {

// Tile shape: 192 query rows × 384 keys. Measured (thread CPU time, 1 thread, L = 2048 and 4096,
// D = 128, full attention) against 96 × 192, 192 × 96, 48 × 192, 192 × 192, 192 × 288, 240 × 288,
// 144 × 288, 192 × 480, 288 × 192, 384 × 192: the backward was fastest here, 10–14% faster than
// 96 × 192 — larger tiles mean fewer passes of Q and dO per key tile, fewer zeroings and write-backs
// of the dK/dV accumulators, and deeper (96 → 192) transposed products Pᵀ·dO and dSᵀ·Q.
constexpr int kBackwardKeys = 384;  // a multiple of every ISA's panel width and microkernel rows
constexpr int kBackwardRows = 192;  // a multiple of every ISA's microkernel rows
static_assert(kBackwardKeys % kPanel == 0 && kBackwardKeys % kMicroRows == 0,
              "backward key tiles must be whole panels and whole microkernel row groups");
static_assert(kBackwardRows % kMicroRows == 0, "backward row blocks must be whole microkernel row groups");

constexpr int kRowGroups = kBackwardRows / kMicroRows;
constexpr int kKeyGroups = kBackwardKeys / kMicroRows;

// Which parts of the tile the masks leave visible (causal and windowed diagonal tiles skip the
// rest): per row group, its key panels (Q·Kᵀ, dO·Vᵀ) and exact keys (dS·K); per group of
// kMicroRows keys, the query rows that see it (Pᵀ·dO, dSᵀ·Q).
struct BackwardRanges {
  std::int64_t panel_lo[kRowGroups], panel_hi[kRowGroups];
  std::int64_t key_lo[kRowGroups], key_hi[kRowGroups];
  std::int64_t row_lo[kKeyGroups], row_hi[kKeyGroups];
};

BackwardRanges backward_ranges(const BackwardTile& t) {
  BackwardRanges tr;
  const int groups = static_cast<int>(round_up(t.rows, kMicroRows) / kMicroRows);
  group_key_ranges(t.key_begin, t.key_end, t.rows, groups, t.t0, t.n_keys, tr.key_lo, tr.key_hi,
                   tr.panel_lo, tr.panel_hi);
  key_group_row_ranges(t.key_begin, t.key_end, t.rows, t.t0,
                       static_cast<int>(round_up(t.n_keys, kMicroRows) / kMicroRows), tr.row_lo,
                       tr.row_hi);
  return tr;
}

// The logits of tile row r (the same operations as the forward's logits_row, with softcap_row's
// kept apart so that tanh(S·scale / c) is at hand in tanh_row), from the raw scores into p (which
// may be raw). The stale scores outside the row group's panels are not read: logits_row hides
// those keys.
void row_logits(const BackwardTile& t, int r, const float* raw, float* p, float* tanh_row,
                std::int64_t lo, std::int64_t hi) {
  const float* bias = t.bias ? t.bias + r * t.bias_row_stride : nullptr;
  const std::uint8_t* mask = t.mask ? t.mask + r * t.mask_row_stride : nullptr;
  if (t.softcap > 0.0f) {
    const V vscale = Simd::set1(t.scale), vcap = Simd::set1(t.softcap);
    for (std::int64_t c = lo; c < hi; c += kLanes) {
      const V th = vector_tanh(Simd::div(Simd::mul(Simd::load(raw + c), vscale), vcap));
      Simd::store(tanh_row + c, th);
      Simd::store(p + c, Simd::mul(vcap, th));
    }
    logits_row(p, t.t0, t.n_keys, t.key_begin[r], t.key_end[r], 1.0f, 0.0f, bias,
               t.bias_col_stride, mask, t.mask_col_stride);
  } else {
    if (p != raw)
      for (std::int64_t c = 0; c < t.n_keys; ++c) p[c] = raw[c];
    logits_row(p, t.t0, t.n_keys, t.key_begin[r], t.key_end[r], t.scale, 0.0f, bias,
               t.bias_col_stride, mask, t.mask_col_stride);
  }
}

// P and dS of the tile's rows, and Σ dS ∘ S_raw into *dscale when it is asked for (only then are
// the raw scores kept: otherwise P overwrites them in place). With a softcap and `raw_score_grad`,
// dS becomes dS ∘ (1 − tanh²) (the gradient of S·scale). Returns where P is. S and dP were
// computed only on each row group's panels [panel_lo, panel_hi); dS is 0 outside them (P is: the
// row sees no key there), and the stale S and dP there are never read.
float* probabilities_and_dlogits(const BackwardTile& t, const BackwardScratch& s,
                                 const BackwardRanges& tr, double* dscale, bool raw_score_grad) {
  const int rows_pad = static_cast<int>(round_up(t.rows, kMicroRows));
  float* probs = dscale != nullptr ? s.probs : s.scores;
  alignas(64) float tanh_row[kBackwardKeys];  // tanh(S·scale / c) of one row, with a softcap
  const bool capped = t.softcap > 0.0f;
  for (int r = 0; r < t.rows; ++r) {
    const float* raw = s.scores + r * s.ld;
    float* p = probs + r * s.ld;
    float* ds = s.dlogits + r * s.ld;  // holds dP on entry
    const float lse = t.lse[t.i0 + r];
    if (lse == kNegInf) {  // the row saw no key: no gradient
      for (std::int64_t c = 0; c < t.n_keys; ++c) p[c] = ds[c] = 0.0f;
      continue;
    }
    const std::int64_t lo = tr.panel_lo[r / kMicroRows], hi = tr.panel_hi[r / kMicroRows];
    const V delta = Simd::set1(t.delta[t.i0 + r]);
    row_logits(t, r, raw, p, tanh_row, lo, hi);
    exp_row(p, t.n_keys, lse);
    if (t.norm != nullptr && t.norm[t.i0 + r] != 1.0f) {
      const V norm = Simd::set1(t.norm[t.i0 + r]);
      for (std::int64_t c = lo; c < hi; c += kLanes) Simd::store(p + c, Simd::mul(Simd::load(p + c), norm));
    }
    for (std::int64_t c = 0; c < lo; ++c) ds[c] = 0.0f;
    for (std::int64_t c = hi; c < t.n_keys; ++c) ds[c] = 0.0f;
    if (capped && raw_score_grad) {
      const V one = Simd::set1(1.0f);
      V row_dscale = Simd::zero();
      for (std::int64_t c = lo; c < hi; c += kLanes) {
        const V th = Simd::load(tanh_row + c);
        const V dsv = Simd::mul(Simd::mul(Simd::load(p + c), Simd::sub(Simd::load(ds + c), delta)),
                                Simd::sub(one, Simd::mul(th, th)));
        Simd::store(ds + c, dsv);
        if (dscale != nullptr) row_dscale = Simd::fma(dsv, Simd::load(raw + c), row_dscale);
      }
      if (dscale != nullptr) *dscale += static_cast<double>(Simd::reduce_add(row_dscale));
      continue;
    }
    if (dscale == nullptr) {
      for (std::int64_t c = lo; c < hi; c += kLanes)
        Simd::store(ds + c, Simd::mul(Simd::load(p + c), Simd::sub(Simd::load(ds + c), delta)));
      continue;
    }
    V row_dscale = Simd::zero();
    for (std::int64_t c = lo; c < hi; c += kLanes) {
      const V dsv = Simd::mul(Simd::load(p + c), Simd::sub(Simd::load(ds + c), delta));
      Simd::store(ds + c, dsv);
      row_dscale = Simd::fma(dsv, Simd::load(raw + c), row_dscale);
    }
    *dscale += static_cast<double>(Simd::reduce_add(row_dscale));
  }
  // Zero padding: rows past the tile (read by dS·K) and columns up to whole microkernel row
  // groups (read by the transposed products Pᵀ·dO and dSᵀ·Q).
  const std::int64_t keys_pad = round_up(t.n_keys, kMicroRows);
  for (int r = 0; r < rows_pad; ++r)
    for (std::int64_t c = r < t.rows ? t.n_keys : 0; c < keys_pad; ++c)
      probs[r * s.ld + c] = s.dlogits[r * s.ld + c] = 0.0f;
  return probs;
}

// The row_sums mode (see BackwardTile): S = Q·Kᵀ on the visible panels and each row's
// Σ exp(logit − lse), with the very operations probabilities_and_dlogits performs.
void row_sums_tile(const BackwardTile& t, const BackwardScratch& s, const BackwardRanges& tr) {
  const std::int64_t rows_pad = round_up(t.rows, kMicroRows);
  panel_gemm_cols(t.q_rows + t.i0 * t.dim_k, t.dim_k, rows_pad, t.k_panels + t.t0 * t.dim_k,
                  t.dim_k * kPanel, t.dim_k, s.scores, s.ld, tr.panel_lo, tr.panel_hi);
  alignas(64) float tanh_row[kBackwardKeys];
  for (int r = 0; r < t.rows; ++r) {
    const float lse = t.lse[t.i0 + r];
    if (lse == kNegInf) continue;
    float* p = s.scores + r * s.ld;
    row_logits(t, r, p, p, tanh_row, tr.panel_lo[r / kMicroRows], tr.panel_hi[r / kMicroRows]);
    t.row_sums[r] += static_cast<double>(exp_row(p, t.n_keys, lse));
  }
}

void backward_tile(const BackwardTile& t, const BackwardScratch& s) {
  const std::int64_t rows_pad = round_up(t.rows, kMicroRows);
  const std::int64_t keys_pad = round_up(t.n_keys, kMicroRows);
  const BackwardRanges tr = backward_ranges(t);
  if (t.row_sums != nullptr) {
    row_sums_tile(t, s, tr);
    return;
  }
  // S = Q·Kᵀ and dP = dO·Vᵀ on the visible panels (rows past the tile read zero-padded Q/dO rows).
  panel_gemm_cols(t.q_rows + t.i0 * t.dim_k, t.dim_k, rows_pad, t.k_panels + t.t0 * t.dim_k,
                  t.dim_k * kPanel, t.dim_k, s.scores, s.ld, tr.panel_lo, tr.panel_hi);
  panel_gemm_cols(t.do_rows + t.i0 * t.dim_v, t.dim_v, rows_pad, t.vt_panels + t.t0 * t.dim_v,
                  t.dim_v * kPanel, t.dim_v, s.dlogits, s.ld, tr.panel_lo, tr.panel_hi);
  const float* probs =
      probabilities_and_dlogits(t, s, tr, t.dlogits ? nullptr : t.dscale, t.dlogits == nullptr);
  if (t.dlogits != nullptr) {
    for (int r = 0; r < t.rows; ++r)
      for (std::int64_t c = 0; c < t.n_keys; ++c)
        t.dlogits[r * s.ld + c] = s.dlogits[r * s.ld + c];
    return;
  }
  // dV += Pᵀ·dO and dK += dSᵀ·Q: rows are keys, the depth is the query rows that see them; Pᵀ and
  // dSᵀ are read transposed in place (P and dS are zero past n_keys up to keys_pad).
  panel_gemm_depth<true>(probs, s.ld, keys_pad, t.do_panels + t.i0 * kPanel,
                         t.len_q_pad * kPanel, t.dim_v_pad, t.dv_acc, t.dim_v_pad, tr.row_lo,
                         tr.row_hi);
  panel_gemm_depth<true>(s.dlogits, s.ld, keys_pad, t.q_panels + t.i0 * kPanel,
                         t.len_q_pad * kPanel, t.dim_k_pad, t.dk_acc, t.dim_k_pad, tr.row_lo,
                         tr.row_hi);
  // dQ += dS·K over the keys each row group sees.
  panel_gemm_depth<false>(s.dlogits, s.ld, rows_pad, t.k_rows + t.t0 * kPanel,
                          t.len_k_pad * kPanel, t.dim_k_pad, t.dq_acc + t.i0 * t.dim_k_pad,
                          t.dim_k_pad, tr.key_lo, tr.key_hi);
}

}  // namespace

const BackwardKernel& backward_kernel() {
  static const BackwardKernel k{SDPA_KERNEL_NAME, kPanel,         kBackwardRows,
                                kBackwardKeys,    &backward_tile, &transpose_panel};
  return k;
}

}  // namespace sdpa::kernels::SDPA_KERNEL_NS
