// The backward tile (FlashAttention-2), written once over the SIMD abstraction. Included from the
// ISA translation units after flash_forward_impl.hpp (which brings the panel GEMM and the softmax
// row operations). For query rows R × keys C of one head:
//   S  = Q·Kᵀ                    P  = exp(S·scale + bias − lse)        (recomputed, never stored)
//   dP = dO·Vᵀ                   dS = P ∘ (dP − delta),  delta_i = dO_i·O_i
//   dV += Pᵀ·dO                  dK += dSᵀ·Q      dQ += dS·K           (scale applied by the driver)
//   d(scale) += Σ dS ∘ (q·k)

namespace sdpa::kernels::SDPA_KERNEL_NS {
namespace {

constexpr int kBackwardKeys = 192;  // a multiple of every ISA's panel width and microkernel rows
static_assert(kBackwardKeys % kPanel == 0 && kBackwardKeys % kMicroRows == 0,
              "backward key tiles must be whole panels and whole microkernel row groups");

// P and dS of the tile's rows, and Σ dS ∘ S_raw into *dscale when it is asked for (only then are
// the raw scores kept: otherwise P overwrites them in place). Returns where P is.
float* probabilities_and_dlogits(const BackwardTile& t, const BackwardScratch& s, double* dscale) {
  const int rows_pad = static_cast<int>(round_up(t.rows, kMicroRows));
  float* probs = dscale != nullptr ? s.probs : s.scores;
  for (int r = 0; r < t.rows; ++r) {
    const float* raw = s.scores + r * kBackwardKeys;
    float* p = probs + r * kBackwardKeys;
    float* ds = s.dlogits + r * kBackwardKeys;  // holds dP on entry
    const float lse = t.lse[t.i0 + r];
    if (lse == kNegInf) {  // the row saw no key: no gradient
      for (std::int64_t c = 0; c < t.n_keys; ++c) p[c] = ds[c] = 0.0f;
      continue;
    }
    if (p != raw)
      for (std::int64_t c = 0; c < t.n_keys; ++c) p[c] = raw[c];
    const float* bias = t.bias ? t.bias + r * t.bias_row_stride : nullptr;
    const std::uint8_t* mask = t.mask ? t.mask + r * t.mask_row_stride : nullptr;
    logits_row(p, t.t0, t.n_keys, t.key_begin[r], t.key_end[r], t.scale, bias, t.bias_col_stride,
               mask, t.mask_col_stride);
    exp_row(p, t.n_keys, lse);
    const V delta = Simd::set1(t.delta[t.i0 + r]);
    if (dscale == nullptr) {
      for (std::int64_t c = 0; c < t.n_keys; c += kLanes)
        Simd::store(ds + c, Simd::mul(Simd::load(p + c), Simd::sub(Simd::load(ds + c), delta)));
      continue;
    }
    V row_dscale = Simd::zero();
    for (std::int64_t c = 0; c < t.n_keys; c += kLanes) {
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
      probs[r * kBackwardKeys + c] = s.dlogits[r * kBackwardKeys + c] = 0.0f;
  return probs;
}

void backward_tile(const BackwardTile& t, const BackwardScratch& s) {
  const std::int64_t rows_pad = round_up(t.rows, kMicroRows);
  const std::int64_t keys_pad = round_up(t.n_keys, kMicroRows);
  // S = Q·Kᵀ and dP = dO·Vᵀ (rows past the tile read zero-padded Q/dO rows).
  panel_gemm<false>(t.q_rows + t.i0 * t.dim_k, t.dim_k, rows_pad, t.k_panels + t.t0 * t.dim_k,
                    t.dim_k * kPanel, t.n_keys, t.dim_k, s.scores, kBackwardKeys);
  panel_gemm<false>(t.do_rows + t.i0 * t.dim_v, t.dim_v, rows_pad, t.vt_panels + t.t0 * t.dim_v,
                    t.dim_v * kPanel, t.n_keys, t.dim_v, s.dlogits, kBackwardKeys);
  const float* probs = probabilities_and_dlogits(t, s, t.dlogits ? nullptr : t.dscale);
  if (t.dlogits != nullptr) {
    for (int r = 0; r < t.rows; ++r)
      for (std::int64_t c = 0; c < t.n_keys; ++c)
        t.dlogits[r * kBackwardKeys + c] = s.dlogits[r * kBackwardKeys + c];
    return;
  }
  // dV += Pᵀ·dO and dK += dSᵀ·Q: rows are keys, the depth is the tile's query rows; Pᵀ and dSᵀ
  // are read transposed in place (P and dS are zero past n_keys up to keys_pad).
  panel_gemm<true, true>(probs, kBackwardKeys, keys_pad, t.do_panels + t.i0 * kPanel,
                         t.len_q_pad * kPanel, t.dim_v_pad, t.rows, t.dv_acc, t.dim_v_pad);
  panel_gemm<true, true>(s.dlogits, kBackwardKeys, keys_pad, t.q_panels + t.i0 * kPanel,
                         t.len_q_pad * kPanel, t.dim_k_pad, t.rows, t.dk_acc, t.dim_k_pad);
  // dQ += dS·K.
  panel_gemm<true>(s.dlogits, kBackwardKeys, rows_pad, t.k_rows + t.t0 * kPanel,
                   t.len_k_pad * kPanel, t.dim_k_pad, t.n_keys, t.dq_acc + t.i0 * t.dim_k_pad,
                   t.dim_k_pad);
}

}  // namespace

const BackwardKernel& backward_kernel() {
  static const BackwardKernel k{SDPA_KERNEL_NAME, kPanel, kBlockRows, kBackwardKeys, &backward_tile};
  return k;
}

}  // namespace sdpa::kernels::SDPA_KERNEL_NS
