// sdpa::KvCache — a paged key/value cache for decoding many sequences at once, stored as fp32,
// bf16 or int8, attended by the split-KV decode kernel straight from its pages.
//
//   pool:   `blocks` pages of `block_tokens` tokens each, shared by every sequence
//   page:   for each kv-head h: key rows [block_tokens][Dk'] and value rows [block_tokens][Dv']
//           (D' = D rounded up to 16 elements, zero padded), plus per-row scales for int8
//   table:  each sequence lists its pages in token order; token t sits in page table[t /
//   block_tokens]
//
// Sequences of different lengths grow one page at a time from the shared pool and give their pages
// back when removed. attend() runs the queries of one sequence against its cached keys
// (bottom-right causal by default: the last query sees every key); bf16 and int8 rows are widened
// in registers, nothing is unpacked to memory. The pool is allocated (and zeroed) up front, on
// transparent huge pages where Linux allows them (a decode call streams all of it); a pool that
// cannot be allocated throws sdpa::OutOfMemory naming the bytes.
//
//   KvCache cache({.heads_kv = 8, .dim_k = 128, .block_tokens = 256, .blocks = 1024,
//                  .storage = KvStorage::bf16});
//   int s = cache.add_sequence();
//   cache.append(s, k_new, v_new);           // [Hkv, T, Dk], [Hkv, T, Dv] fp32, any strides
//   cache.attend(s, q, out);                 // q [Hq, Lq, Dk] → out [Hq, Lq, Dv]
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>

#include "sdpa/sdpa.hpp"

namespace sdpa {

/// How a KvCache stores keys and values.
///   f32:  as given (4 bytes per element).
///   bf16: rounded to bfloat16, round to nearest even (2 bytes; relative error ≤ 2⁻⁹ per element).
///   i8:   symmetric int8 with one fp32 scale per (token, kv-head) row — each row of Dk (or Dv)
///         elements is one quantization block: x ≈ s·n, s = max|x| / 127, n = round(x / s) in
///         [−127, 127] (1 byte per element + 4 per row; absolute error ≤ max|x| / 254 per element).
///         Values must be finite.
enum class KvStorage : std::uint8_t { f32, bf16, i8 };

/// "f32", "bf16" or "i8".
const char* kv_storage_name(KvStorage storage);

struct KvCacheConfig {
  std::int64_t heads_kv = 1;
  std::int64_t dim_k = 0;
  std::int64_t dim_v = 0;           ///< 0 = dim_k
  std::int64_t block_tokens = 256;  ///< tokens per page
  std::int64_t blocks = 0;          ///< pages in the shared pool (all allocated up front)
  KvStorage storage = KvStorage::f32;
};

struct AttendOptions {
  std::optional<float> scale;            ///< default 1/sqrt(Dk)
  Causal causal = Causal::bottom_right;  ///< query i of Lq sees keys j <= i + length − Lq
  int threads = 0;                       ///< 0 = all
  Isa isa = Isa::automatic;
};

class KvCache {
 public:
  /// Allocates the pool. Throws sdpa::Error for sizes < 1 (dim_v may be 0 = dim_k).
  explicit KvCache(const KvCacheConfig& config);
  ~KvCache();
  KvCache(KvCache&&) noexcept;
  KvCache& operator=(KvCache&&) noexcept;

  /// The configuration with dim_v resolved.
  const KvCacheConfig& config() const;

  /// A new, empty sequence; returns its id.
  int add_sequence();
  /// Removes a sequence and returns its pages to the pool.
  void remove_sequence(int sequence);
  /// Tokens cached for `sequence`.
  std::int64_t length(int sequence) const;

  /// Appends T tokens: k [Hkv, T, Dk] and v [Hkv, T, Dv], fp32, any strides. Throws sdpa::Error
  /// (and caches nothing) for wrong shapes, an unknown sequence, a pool without enough free pages,
  /// or a non-finite value with int8 storage.
  void append(int sequence, const Tensor& k, const Tensor& v);

  /// Attention of `sequence`'s queries q [Hq, Lq, Dk] (Hq a multiple of Hkv; fp32, any strides)
  /// over its cached keys: out [Hq, Lq, Dv], and lse [Hq, Lq] when given. The split-KV decode plan
  /// (fixed chunks of 256 keys merged in key order): the same bits for any thread count.
  RunInfo attend(int sequence, const Tensor& q, const Tensor& out,
                 const AttendOptions& options = {},
                 const std::optional<Tensor>& lse = std::nullopt) const;

  /// Bytes one token takes in the pool: keys and values of every kv-head (and int8 scales).
  std::size_t bytes_per_token() const;
  /// Bytes of the whole pool (allocated up front).
  std::size_t bytes() const;
  /// Pages not used by any sequence.
  std::int64_t free_blocks() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sdpa
