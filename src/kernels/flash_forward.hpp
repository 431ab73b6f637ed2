// Interface between the forward driver (src/core/forward.cpp: validation, packing, threads) and the
// per-ISA fused attention kernels (src/kernels/flash_forward_<isa>.cpp).
//
// Only plain structs here: the ISA translation units are compiled with different -m flags, so they
// must not share inline functions with the rest of the library (the linker could pick an AVX-512
// copy for the scalar path).
#pragma once

#include <cstdint>

namespace sdpa::kernels {

/// Keys and values of one (batch, kv-head), packed by the driver so the microkernels stream them
/// with unit stride. NR = FlashKernel::panel.
///   k_panels: [ceil(Lk / NR)][Dk][NR]          K transposed in panels of NR keys, zero past Lk
///   v_panels: [ceil(Dv / NR)][len_k_padded][NR] V in panels of NR value columns, zero padded
/// A kernel with bf16_products reads bf16 panels instead (pointers reinterpreted), pairs of
/// consecutive depth elements interleaved for vdpbf16ps, Dk2 = Dk rounded up to even:
///   k_panels: [ceil(Lk / NR)][Dk2 / 2][NR][2]        element (key n, dim d) at [d/2][n][d%2]
///   v_panels: [ceil(Dv / NR)][len_k_padded / 2][NR][2] element (key j, column c) at [j/2][c][j%2]
struct PackedKeysValues {
  const float* k_panels = nullptr;
  const float* v_panels = nullptr;
  std::int64_t len_k_padded = 0;  // ceil(Lk / NR) * NR
};

/// Sizes shared by every block of one call.
struct BlockShape {
  std::int64_t len_k = 0, dim_k = 0, dim_v = 0;
  float scale = 1.0f;
  float softcap = 0.0f;  // 0 = off; else logits are softcap·tanh(q·k·scale / softcap) + bias
};

/// Element format of q and out in a QueryBlock (raw 16-bit patterns for bf16 / f16, see
/// core/half.hpp). K and V reach the kernels already packed by the driver.
enum class Element : std::uint8_t { f32, bf16, f16 };

/// One block of consecutive query rows of one (batch, query head). Row r of the block is query row
/// row_begin + r. Pointers address row r = 0, key / column 0; strides are in elements.
struct QueryBlock {
  int rows = 0;  // ≤ FlashKernel::block_rows
  const void* q = nullptr;  // q_element values
  Element q_element = Element::f32;
  std::int64_t q_row_stride = 0, q_col_stride = 0;
  void* out = nullptr;  // out_element values
  Element out_element = Element::f32;
  std::int64_t out_row_stride = 0, out_col_stride = 0;
  float* lse = nullptr;  // optional
  std::int64_t lse_stride = 0;
  float* entropy = nullptr;  // optional: −Σ p log p of each row
  std::int64_t entropy_stride = 0;
  float* weights = nullptr;  // optional [rows][Lk]
  std::int64_t weights_row_stride = 0, weights_col_stride = 0;
  // Keys each row may see from causal / window / lengths (mask.hpp): key_begin[r] <= j < key_end[r].
  const std::int64_t* key_begin = nullptr;
  const std::int64_t* key_end = nullptr;
  const std::uint8_t* mask = nullptr;  // optional bool, true = attend
  std::int64_t mask_row_stride = 0, mask_col_stride = 0;
  const float* bias = nullptr;  // optional additive bias
  std::int64_t bias_row_stride = 0, bias_col_stride = 0;
  // Attention sink of rows [0, sink_rows) (the block's non-padding rows): an extra logit with no
  // value in their softmax. −inf = none.
  float sink = -__builtin_inff();
  int sink_rows = 0;
};

/// Per-thread scratch memory, sized by the driver from FlashKernel's block sizes:
///   q_packed [block_rows][dim_k], scores [block_rows][block_keys],
///   acc [block_rows][ceil(Dv / NR) * NR], row_state [4][block_rows]
struct Scratch {
  float* q_packed = nullptr;
  float* scores = nullptr;
  float* acc = nullptr;
  float* row_state = nullptr;
};

struct FlashKernel {
  const char* name = "";
  int panel = 0;       // NR: keys per K panel and value columns per V panel
  int block_rows = 0;  // query rows per block
  int block_keys = 0;  // keys per score tile (a multiple of panel)
  bool bf16_products = false;  // bf16 q (QueryBlock) and bf16 packed K/V (PackedKeysValues)
  /// Fused forward for one query block: out (and lse, weights when given) for its rows.
  void (*forward_block)(const BlockShape&, const PackedKeysValues&, const QueryBlock&,
                        const Scratch&) = nullptr;
  /// values[0..n) = tanh(values[0..n)) with the kernels' vectorized tanh (for accuracy tests).
  void (*tanh)(float* values, std::int64_t n) = nullptr;
  /// One fp32 K panel: dst[d][n] = src[n·row_stride + d] for d < dim, n < rows ≤ panel (row
  /// elements contiguous), 0 for rows ≤ n < panel.
  void (*transpose_panel)(const float* src, std::int64_t row_stride, int rows, std::int64_t dim,
                          float* dst) = nullptr;
};

const FlashKernel& flash_kernel_scalar();
const FlashKernel& flash_kernel_avx2();
const FlashKernel& flash_kernel_avx512();
/// AVX512_BF16 dot products, bf16 inputs only; call only when the CPU has AVX512_BF16.
const FlashKernel& flash_kernel_avx512_bf16();

}  // namespace sdpa::kernels
