// The split-KV decode plan (flash-decoding) for calls with few query rows against many keys.
//
// Partition rule (documented, so results never depend on the thread count): for each (batch,
// kv-head) the keys are cut at multiples of kDecodeChunkKeys (key j belongs to chunk
// j / kDecodeChunkKeys), restricted to the keys some query row of that batch entry may see. Each
// chunk's partial softmax state is computed for all Hq / Hkv · Lq query rows of the group at once,
// and the chunks are merged in key order. Any thread computes any chunk; the bits are the same.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/problem.hpp"
#include "kernels/decode.hpp"

namespace sdpa {

/// Keys per chunk of the split-KV plan (fixed: part of the rule that makes results reproducible).
inline constexpr std::int64_t kDecodeChunkKeys = 256;
/// The plan serves calls with at most this many query rows per (batch, kv-head) group
/// (Hq / Hkv · Lq) and Lq ≤ kDecodeMaxQueries; larger ones run the tiled prefill kernel.
inline constexpr std::int64_t kDecodeMaxRows = 64;
inline constexpr std::int64_t kDecodeMaxQueries = 16;
/// ... and head dimensions up to this (its per-thread scratch grows with them).
inline constexpr std::int64_t kDecodeMaxDim = 1024;

struct DecodeRun {
  int threads = 0;
  std::size_t workspace_bytes = 0;
};

/// Whether forward() runs `p` with the split-KV plan: few query rows (see above), no attention
/// weights requested (they need the final max and sum of every row first), and a workspace within
/// options.workspace_limit. Otherwise the prefill plan serves the call.
bool decode_plan_applies(const Problem& p);

/// Runs the split-KV plan on a problem for which decode_plan_applies() holds, reading keys and
/// values from the problem's k and v tensors.
DecodeRun run_decode(const Problem& p);

/// Where the split-KV plan reads key and value rows from (the k/v tensors of a Problem, or the
/// pages of a KvCache). Row pointers must stay valid during the call; each key row must hold
/// round_up(Dk, lanes) readable elements, zero past Dk, each value row round_up(Dv, lanes).
class DecodeSource {
 public:
  virtual ~DecodeSource() = default;
  virtual kernels::RowType row_type() const = 0;
  /// Floats of per-thread scratch that rows() may use for one chunk of kDecodeChunkKeys keys.
  virtual std::size_t scratch_floats(std::int64_t lanes) const = 0;
  /// Row pointers (and, for int8 rows, scales) of keys [key0, key0 + count) of (b, hk).
  virtual void rows(std::int64_t b, std::int64_t hk, std::int64_t key0, int count,
                    std::int64_t lanes, const void** k_rows, const void** v_rows, float* k_scales,
                    float* v_scales, float* scratch) const = 0;
};

/// The split-KV plan with keys and values from `source` (p.k and p.v are not read).
DecodeRun run_split_kv(const Problem& p, const DecodeSource& source);
/// Its workspace bytes.
std::size_t split_kv_workspace_bytes(const Problem& p, const DecodeSource& source);

/// Which plan forward() runs: automatic is forward() itself; the others force one (for tests and
/// benchmarks comparing the two; split_kv on a call it cannot serve throws sdpa::Error).
enum class ForwardPlan { automatic, prefill, split_kv };
RunInfo forward_with_plan(const Tensor& q, const Tensor& k, const Tensor& v, const Options& options,
                          const Outputs& outputs, ForwardPlan plan);

}  // namespace sdpa
