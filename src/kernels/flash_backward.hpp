// Interface between the backward driver (src/core/backward.cpp) and the per-ISA backward tile
// kernel. Plain structs only (see flash_forward.hpp for why).
//
// The driver packs, per (batch, kv-head), with NR = BackwardKernel::panel:
//   k_panels  [Lk_pad / NR][Dk][NR]        Kᵀ in key panels          (B operand of S  = Q·Kᵀ)
//   vt_panels [Lk_pad / NR][Dv][NR]        Vᵀ in key panels          (B operand of dP = dO·Vᵀ)
//   k_rows    [Dk_pad / NR][Lk_pad][NR]    K in column panels        (B operand of dQ += dS·K)
// and per query head:
//   q_rows [Lq_pad][Dk], do_rows [Lq_pad][Dv]                         (A operands, row-major)
//   q_panels [Dk_pad / NR][Lq_pad][NR], do_panels [Dv_pad / NR][Lq_pad][NR]
//                                                                     (B operands of dK, dV)
//   lse [Lq_pad], delta [Lq_pad] (delta_i = dO_i · O_i)
// Padding rows/columns are zero.
#pragma once

#include <cstdint>

namespace sdpa::kernels {

/// One tile: query rows [i0, i0 + rows) of one head × keys [t0, t0 + n_keys).
struct BackwardTile {
  std::int64_t dim_k = 0, dim_v = 0, dim_k_pad = 0, dim_v_pad = 0;
  std::int64_t len_q_pad = 0, len_k_pad = 0;
  float scale = 1.0f;
  float softcap = 0.0f;  // 0 = off; else logits are softcap·tanh(q·k·scale / softcap) + bias
  std::int64_t i0 = 0, t0 = 0, n_keys = 0;  // n_keys a multiple of NR, ≤ block_keys
  int rows = 0;                             // ≤ block_rows

  const float *k_panels = nullptr, *vt_panels = nullptr, *k_rows = nullptr;
  const float *q_rows = nullptr, *do_rows = nullptr, *q_panels = nullptr, *do_panels = nullptr;
  const float *lse = nullptr, *delta = nullptr;  // indexed by absolute row i
  // 1/l'_i for rows whose fp32 lse cannot carry log(l) (the driver's renormalisation), 1 for the
  // others; indexed by absolute row i. nullptr: no row of the call needs it (P = exp(s − lse)).
  const float* norm = nullptr;
  const std::int64_t *key_begin = nullptr, *key_end = nullptr;  // at row i0
  const std::uint8_t* mask = nullptr;  // at (i0, key 0)
  std::int64_t mask_row_stride = 0, mask_col_stride = 0;
  const float* bias = nullptr;  // at (i0, key 0)
  std::int64_t bias_row_stride = 0, bias_col_stride = 0;

  // Outputs. With dlogits set, the tile only writes dS = ∂L/∂logits there ([rows][scratch ld]) and
  // touches nothing else; otherwise it accumulates (with a softcap, dS here is the gradient of the
  // raw score, dS·(1 − tanh²)):
  float* dk_acc = nullptr;  // [block_keys][dim_k_pad] Σ dSᵀ·Q for keys t0.. (unscaled)
  float* dv_acc = nullptr;  // [block_keys][dim_v_pad] Σ Pᵀ·dO
  float* dq_acc = nullptr;  // rows i0.. of [len_q_pad][dim_k_pad] Σ dS·K (unscaled)
  double* dscale = nullptr; // += Σ dS ∘ (q·k)
  float* dlogits = nullptr;
  // With row_sums set, the tile only adds Σ_c exp(logit_c − lse) of each of its rows to
  // row_sums[r] (r = i − i0; lse as given, norm not applied) and touches nothing else: the
  // driver's renormalisation pass, from logits computed bit for bit as the other modes compute them.
  double* row_sums = nullptr;
};

/// Per-thread scratch: three [block_rows][ld] tiles (also the layout of BackwardTile::dlogits).
/// ld ≤ block_keys, a multiple of the panel width and of the microkernel's rows, and at least the
/// tile's n_keys rounded up to the microkernel's rows (short sequences need less than block_keys).
struct BackwardScratch {
  float *scores = nullptr, *probs = nullptr, *dlogits = nullptr;
  std::int64_t ld = 0;
};

struct BackwardKernel {
  const char* name = "";
  int panel = 0;       // NR
  int block_rows = 0;  // query rows per tile (a multiple of the microkernel's rows)
  int block_keys = 0;  // keys per tile (a multiple of NR and of the microkernel's rows)
  void (*tile)(const BackwardTile&, const BackwardScratch&) = nullptr;
  /// One transposed panel (Kᵀ, Vᵀ): as FlashKernel::transpose_panel.
  void (*transpose_panel)(const float* src, std::int64_t row_stride, int rows, std::int64_t dim,
                          float* dst) = nullptr;
};

const BackwardKernel& backward_kernel_scalar();
const BackwardKernel& backward_kernel_avx2();
const BackwardKernel& backward_kernel_avx512();

}  // namespace sdpa::kernels
