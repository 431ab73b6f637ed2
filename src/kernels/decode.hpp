// Interface between the split-KV decode driver (src/core/decode.cpp) and the per-ISA decode
// kernels (src/kernels/decode_impl.hpp, instantiated in kernels_<isa>.cpp).
//
// Decoding attends a few query rows (Lq ≤ 16, times the Hq / Hkv heads of a GQA group) against a
// long key sequence: memory bound. So all query rows of one (batch, kv-head) are processed together
// (each key/value element is read once per chunk of keys, not once per query head), keys are read
// straight from their rows (no packing), and the keys are cut into chunks of a fixed size whose
// partial softmax states (max, sum, acc) the driver merges in chunk order.
//
// Only plain structs here (see flash_forward.hpp for why).
#pragma once

#include <cstdint>

namespace sdpa::kernels {

/// How key/value elements are stored. f32 rows are used as they are; bf16 rows (upper halves of
/// f32, round-to-nearest-even) and int8 rows (symmetric, one fp32 scale per row: x = scale · q)
/// are widened in registers.
enum class RowType : std::uint8_t { f32, bf16, i8 };

/// The query rows of one (batch, kv-head): R = group · Lq rows, row r = (head r / Lq, query r %
/// Lq).
struct DecodeRows {
  int rows = 0;              // R
  int rows_pad = 0;          // 1 when R = 1, else R rounded up to DecodeKernel::row_block
                             // (padding rows are zero)
  const float* q = nullptr;  // [rows_pad][dim_k_pad], zero padded: the kernel's dot products
  // For each row: visible keys [key_begin[r], key_end[r]) (mask.hpp) and, when given, the bool mask
  // and the bias of that row at key 0 (element j at mask[r][j · mask_stride]).
  const std::int64_t* key_begin = nullptr;
  const std::int64_t* key_end = nullptr;
  const std::uint8_t* const* mask = nullptr;
  std::int64_t mask_stride = 0;
  const float* const* bias = nullptr;
  std::int64_t bias_stride = 0;
};

/// Sizes shared by every chunk of one call. dim_k_pad / dim_v_pad are multiples of the kernel's
/// vector width; each key row holds dim_k_pad elements (those past dim_k are zero) and each value
/// row dim_v_pad readable elements (those past dim_v are ignored).
struct DecodeShape {
  std::int64_t dim_k = 0, dim_v = 0, dim_k_pad = 0, dim_v_pad = 0;
  float scale = 1.0f;
  RowType row_type = RowType::f32;  // of the key and the value rows alike
  float softcap = 0.0f;  // 0 = off; else logits are softcap·tanh(q·k·scale / softcap) + bias
};

/// The keys [key0, key0 + count) of one chunk: row c of the chunk is key key0 + c, its elements at
/// k_rows[c] / v_rows[c] (of the element type the shape names; int8 rows scaled by k_scales[c] /
/// v_scales[c]).
struct DecodeChunk {
  std::int64_t key0 = 0;
  int count = 0;  // ≤ DecodeKernel::max_chunk
  const void* const* k_rows = nullptr;
  const void* const* v_rows = nullptr;
  const float* k_scales = nullptr;
  const float* v_scales = nullptr;
};

/// The softmax state of every row over one chunk: max m, sum l = Σ exp(t − m), acc = Σ exp(t − m)·v
/// ([rows_pad][dim_v_pad]) and, when `moment` is given, Σ exp(t − m)·(t − m) (for the entropy).
/// A row that sees no key of the chunk gets m = −inf, l = 0, acc = 0, moment = 0.
struct ChunkState {
  float* max = nullptr;
  float* sum = nullptr;
  float* moment = nullptr;
  float* acc = nullptr;
};

struct DecodeKernel {
  const char* name = "";
  int lanes = 0;      // vector width in floats: dim_k_pad and dim_v_pad are multiples of it
  int row_block = 0;  // rows_pad is a multiple of it, or 1 (one row: single-row blocks)
  /// One chunk of keys for every row. `scores` is scratch of rows_pad · round_up(count, lanes)
  /// floats.
  void (*chunk)(const DecodeShape&, const DecodeRows&, const DecodeChunk&, const ChunkState&,
                float* scores) = nullptr;
};

const DecodeKernel& decode_kernel_scalar();
const DecodeKernel& decode_kernel_avx2();
const DecodeKernel& decode_kernel_avx512();

}  // namespace sdpa::kernels
