// The split-KV decode kernel for one chunk of keys, written once over the SIMD trait and compiled
// per instruction set (included from kernels_<isa>.cpp after flash_forward_impl.hpp, inside the
// same ISA namespace, so it reuses Simd, logits_row and exp_row).
//
// For every query row r of one (batch, kv-head) and the chunk's keys c (decode.hpp):
//   S[r][c] = q_r · k_c            kRowBlock rows at a time: each key row is loaded once per block
//   t = S·scale + bias, −inf where masked;  m = max t;  P = exp(t − m);  l = Σ P;  (u = Σ P·(t − m))
//   acc[r] = Σ_c P[r][c] · v_c     register blocks of kRowBlock rows × 2·kValuePairs vectors; keys
//                                  a row does not see skipped (their value never reaches acc); no
//                                  test per key when every row sees the whole chunk
// int8 scales are applied once per (row, key): to the score (key scale) and to P (value scale).
// Key and value rows are read where they are (f32), or widened from bf16 / int8 in registers (the
// ISA translation units define __AVX512F__ / __AVX2__ through their flags; the scalar one neither).

namespace sdpa::kernels::SDPA_KERNEL_NS {
namespace {

constexpr int kRowBlock = 4;                         // query rows per register block

// kLanes elements of a key/value row from element d on, as floats (int8: without its scale).
template <RowType kType>
V load_elements(const void* row, std::int64_t d) {
  if constexpr (kType == RowType::f32) {
    return Simd::load(static_cast<const float*>(row) + d);
  } else if constexpr (kType == RowType::bf16) {
    const std::uint16_t* p = static_cast<const std::uint16_t*>(row) + d;
#if defined(__AVX512F__)
    const __m512i wide =
        _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
#elif defined(__AVX2__)
    const __m256i wide =
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
#else
    float lanes[kLanes];
    for (int i = 0; i < kLanes; ++i) {
      const std::uint32_t bits = static_cast<std::uint32_t>(p[i]) << 16;
      std::memcpy(&lanes[i], &bits, sizeof bits);
    }
    return Simd::load(lanes);
#endif
  } else {
    const std::int8_t* p = static_cast<const std::int8_t*>(row) + d;
#if defined(__AVX512F__)
    return _mm512_cvtepi32_ps(
        _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#elif defined(__AVX2__)
    return _mm256_cvtepi32_ps(
        _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
#else
    float lanes[kLanes];
    for (int i = 0; i < kLanes; ++i) lanes[i] = static_cast<float>(p[i]);
    return Simd::load(lanes);
#endif
  }
}

// Rows are read two vectors (2·kLanes elements) at a time. f32 and int8 pairs are elements
// [d, d + kLanes) and [d + kLanes, d + 2·kLanes). A bf16 pair on AVX-512 is one 64-byte load split
// by an AND and a shift into the even elements d, d + 2, … and the odd ones d + 1, d + 3, … (two
// integer operations for 32 elements instead of a widening shuffle and a shift per 16): the query
// rows are permuted the same way (permute_pairs) and the value accumulators interleaved back on
// their store (store_pair), so no product changes, only the order elements sit in registers.
template <RowType kType>
constexpr bool kEvenOdd =
#if defined(__AVX512F__)
    kType == RowType::bf16;
#else
    false;
#endif

template <RowType kType>
[[gnu::always_inline]] inline void load_pair(const void* row, std::int64_t d, V& first, V& second) {
#if defined(__AVX512F__)
  if constexpr (kEvenOdd<kType>) {
    const __m512i bits =
        _mm512_loadu_si512(static_cast<const std::uint16_t*>(row) + d);
    first = _mm512_castsi512_ps(_mm512_slli_epi32(bits, 16));
    second = _mm512_castsi512_ps(_mm512_and_si512(bits, _mm512_set1_epi32(-65536)));
    return;
  }
#endif
  first = load_elements<kType>(row, d);
  second = load_elements<kType>(row, d + kLanes);
}

// The query layout of load_pair: within each whole pair of vectors, even elements then odd ones
// (bf16 on AVX-512); a trailing single vector and every other type stay in order.
template <RowType kType>
void permute_pairs(const float* q, std::int64_t n, float* out) {
  std::int64_t d = 0;
  if constexpr (kEvenOdd<kType>)
    for (; d + 2 * kLanes <= n; d += 2 * kLanes)
      for (int i = 0; i < kLanes; ++i) {
        out[d + i] = q[d + 2 * i];
        out[d + kLanes + i] = q[d + 2 * i + 1];
      }
  for (; d < n; ++d) out[d] = q[d];
}

// Stores two accumulator vectors of load_pair's layout as elements [d, d + 2·kLanes) in order.
template <RowType kType>
[[gnu::always_inline]] inline void store_pair(float* out, V first, V second) {
#if defined(__AVX512F__)
  if constexpr (kEvenOdd<kType>) {
    const __m512i low = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i high =
        _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
    Simd::store(out, _mm512_permutex2var_ps(first, low, second));
    Simd::store(out + kLanes, _mm512_permutex2var_ps(first, high, second));
    return;
  }
#endif
  Simd::store(out, first);
  Simd::store(out + kLanes, second);
}

constexpr int kMaxChunkKeys = 256;  // the split rule's chunk size (core/decode.hpp)
constexpr int kPrefetchKeys = 16;  // rows ahead that are prefetched (see prefetch_row)

template <RowType kType>
constexpr std::int64_t element_bytes() {
  return kType == RowType::f32 ? 4 : kType == RowType::bf16 ? 2 : 1;
}

// Asks for every cache line of one key/value row of `elements` elements. Rows of different keys
// may lie anywhere (strided tensors, cache pages), so the hardware prefetcher alone leaves a
// thread waiting at each row; a few rows ahead keeps the loads in flight.
template <RowType kType>
void prefetch_row(const void* row, std::int64_t elements) {
  const auto* bytes = static_cast<const char*>(row);
  for (std::int64_t b = 0; b < elements * element_bytes<kType>(); b += 64)
    __builtin_prefetch(bytes + b);
}

// Prefetches row `ahead` of the order a chunk reads its rows in: its key rows (the score pass),
// then its value rows (the value pass). The score pass asks kPrefetchKeys rows ahead of itself, so
// toward its end it brings in the first value rows and the value pass does not start on a stall.
template <RowType kType>
void prefetch_ahead(const DecodeChunk& chunk, int ahead, std::int64_t dk, std::int64_t dv) {
  if (ahead < chunk.count)
    prefetch_row<kType>(chunk.k_rows[ahead], dk);
  else if (ahead < 2 * chunk.count)
    prefetch_row<kType>(chunk.v_rows[ahead - chunk.count], dv);
}

// Horizontal sums of kLanes vectors at once: lane j of the result = Σ lanes of a[j]. A
// transpose-add tree (log2 kLanes levels of two shuffles and one add, each level halving the vector
// count): 15 shuffle+add steps for 16 sums on AVX-512 where 16 separate reductions take 4 each.
inline V transpose_sum(V (&a)[kLanes]) {
#if defined(__AVX512F__) || defined(__AVX2__)
#if defined(__AVX512F__)
#define SDPA_PS(op) _mm512_##op##_ps
#else
#define SDPA_PS(op) _mm256_##op##_ps
#endif
  // Level 1 (within 128-bit blocks): t[j] holds a[2j] partials in lanes 0, 2 and a[2j+1] in 1, 3.
  V t[kLanes / 2];
#pragma GCC unroll 8
  for (int j = 0; j < kLanes / 2; ++j)
    t[j] = SDPA_PS(add)(SDPA_PS(unpacklo)(a[2 * j], a[2 * j + 1]),
                        SDPA_PS(unpackhi)(a[2 * j], a[2 * j + 1]));
  // Level 2: u[j] holds a[4j .. 4j+3] partials in lanes 0..3 of every 128-bit block.
  V u[kLanes / 4];
#pragma GCC unroll 4
  for (int j = 0; j < kLanes / 4; ++j)
    u[j] = SDPA_PS(add)(SDPA_PS(shuffle)(t[2 * j], t[2 * j + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                        SDPA_PS(shuffle)(t[2 * j], t[2 * j + 1], _MM_SHUFFLE(3, 2, 3, 2)));
#undef SDPA_PS
#if defined(__AVX512F__)
  // Level 3: w[j] = blocks (u[2j].0+1, u[2j].2+3, u[2j+1].0+1, u[2j+1].2+3).
  V w[2];
#pragma GCC unroll 2
  for (int j = 0; j < 2; ++j)
    w[j] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * j], u[2 * j + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(u[2 * j], u[2 * j + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  // Level 4: blocks (a[0..3], a[4..7], a[8..11], a[12..15]) complete.
  return _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(w[0], w[1], _MM_SHUFFLE(3, 1, 3, 1)));
#else
  // Level 3: low block of u[0] + its high block → a[0..3]; the same for u[1] → a[4..7].
  return _mm256_add_ps(_mm256_permute2f128_ps(u[0], u[1], 0x20),
                       _mm256_permute2f128_ps(u[0], u[1], 0x31));
#endif
#else
  float sums[kLanes];
  for (int j = 0; j < kLanes; ++j) sums[j] = Simd::reduce_add(a[j]);
  return Simd::load(sums);
#endif
}

constexpr int kTreeKeys = kLanes / kRowBlock;  // keys per transpose-summed block (4 on AVX-512)
static_assert(kTreeKeys * kRowBlock == kLanes, "a score block fills one vector of sums");
constexpr int kMaxDim = 1024;  // the largest padded head dimension (core/decode.hpp)

// scores[r][c .. c + kTreeKeys) = q_r · k_c for the kRowBlock rows of `q` (load_pair's layout,
// row stride dk): kLanes accumulator chains (row i, key n at index i·kTreeKeys + n), each key
// vector widened once and each query vector loaded once per step, the kLanes dot products summed by
// one transpose_sum. `prefetch`: ask for the rows kPrefetchKeys ahead (dv: value row elements).
template <RowType kType>
[[gnu::always_inline]] inline void score_block_tree(const float* q, std::int64_t dk,
                                                    std::int64_t dv, const DecodeChunk& chunk,
                                                    int c, bool prefetch, float* scores,
                                                    std::int64_t ld) {
  V acc[kLanes];
#pragma GCC unroll 16
  for (int j = 0; j < kLanes; ++j) acc[j] = Simd::zero();
  if (prefetch)
    for (int n = 0; n < kTreeKeys; ++n)
      prefetch_ahead<kType>(chunk, c + n + kPrefetchKeys, dk, dv);
  std::int64_t d = 0;
  for (; d + 2 * kLanes <= dk; d += 2 * kLanes) {
    V k0[kTreeKeys], k1[kTreeKeys];
#pragma GCC unroll 4
    for (int n = 0; n < kTreeKeys; ++n) load_pair<kType>(chunk.k_rows[c + n], d, k0[n], k1[n]);
#pragma GCC unroll 4
    for (int i = 0; i < kRowBlock; ++i) {
      const V q0 = Simd::load(q + i * dk + d), q1 = Simd::load(q + i * dk + d + kLanes);
#pragma GCC unroll 4
      for (int n = 0; n < kTreeKeys; ++n) {
        acc[i * kTreeKeys + n] = Simd::fma(q0, k0[n], acc[i * kTreeKeys + n]);
        acc[i * kTreeKeys + n] = Simd::fma(q1, k1[n], acc[i * kTreeKeys + n]);
      }
    }
  }
  if (d < dk) {  // a last single vector
    V k[kTreeKeys];
#pragma GCC unroll 4
    for (int n = 0; n < kTreeKeys; ++n) k[n] = load_elements<kType>(chunk.k_rows[c + n], d);
#pragma GCC unroll 4
    for (int i = 0; i < kRowBlock; ++i) {
      const V qv = Simd::load(q + i * dk + d);
#pragma GCC unroll 4
      for (int n = 0; n < kTreeKeys; ++n)
        acc[i * kTreeKeys + n] = Simd::fma(qv, k[n], acc[i * kTreeKeys + n]);
    }
  }
  const V sums = transpose_sum(acc);  // lane i·kTreeKeys + n: row i, key c + n
#if defined(__AVX512F__)
  static_assert(kTreeKeys == 4, "one 128-bit block per row");
  _mm_storeu_ps(scores + c, _mm512_castps512_ps128(sums));
  _mm_storeu_ps(scores + ld + c, _mm512_extractf32x4_ps(sums, 1));
  _mm_storeu_ps(scores + 2 * ld + c, _mm512_extractf32x4_ps(sums, 2));
  _mm_storeu_ps(scores + 3 * ld + c, _mm512_extractf32x4_ps(sums, 3));
#else
  float lanes[kLanes];
  Simd::store(lanes, sums);
  for (int i = 0; i < kRowBlock; ++i)
    std::memcpy(scores + i * ld + c, lanes + i * kTreeKeys, sizeof(float) * kTreeKeys);
#endif
}

// The same for one key (the chunk's last keys past whole blocks): one horizontal sum per row, for
// kRows rows (kRowBlock, or 1 for a single row).
template <RowType kType, int kRows = kRowBlock>
void score_one(const float* q, std::int64_t dk, const DecodeChunk& chunk, int c, float* scores,
               std::int64_t ld) {
  V acc[kRows];
#pragma GCC unroll 4
  for (int i = 0; i < kRows; ++i) acc[i] = Simd::zero();
  std::int64_t d = 0;
  for (; d + 2 * kLanes <= dk; d += 2 * kLanes) {
    V k0, k1;
    load_pair<kType>(chunk.k_rows[c], d, k0, k1);
#pragma GCC unroll 4
    for (int i = 0; i < kRows; ++i) {
      acc[i] = Simd::fma(Simd::load(q + i * dk + d), k0, acc[i]);
      acc[i] = Simd::fma(Simd::load(q + i * dk + d + kLanes), k1, acc[i]);
    }
  }
  if (d < dk) {
    const V k = load_elements<kType>(chunk.k_rows[c], d);
#pragma GCC unroll 4
    for (int i = 0; i < kRows; ++i) acc[i] = Simd::fma(Simd::load(q + i * dk + d), k, acc[i]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < kRows; ++i) scores[i * ld + c] = Simd::reduce_add(acc[i]);
}

// scores[c .. c + kLanes) = q · k_c for a single query row (multi-head attention at Lq = 1): one
// accumulator chain per key, the query vectors loaded once per step for all kLanes keys, the
// kLanes dot products summed by one transpose_sum (a block of kRowBlock rows would be three
// quarters zero rows).
template <RowType kType>
[[gnu::always_inline]] inline void score_block_single(const float* q, std::int64_t dk,
                                                      std::int64_t dv, const DecodeChunk& chunk,
                                                      int c, float* scores) {
  V acc[kLanes];
#pragma GCC unroll 16
  for (int n = 0; n < kLanes; ++n) acc[n] = Simd::zero();
  for (int n = 0; n < kLanes; ++n) prefetch_ahead<kType>(chunk, c + n + kPrefetchKeys, dk, dv);
  std::int64_t d = 0;
  for (; d + 2 * kLanes <= dk; d += 2 * kLanes) {
    const V q0 = Simd::load(q + d), q1 = Simd::load(q + d + kLanes);
#pragma GCC unroll 16
    for (int n = 0; n < kLanes; ++n) {
      V k0, k1;
      load_pair<kType>(chunk.k_rows[c + n], d, k0, k1);
      acc[n] = Simd::fma(q0, k0, acc[n]);
      acc[n] = Simd::fma(q1, k1, acc[n]);
    }
  }
  if (d < dk) {  // a last single vector
    const V qv = Simd::load(q + d);
#pragma GCC unroll 16
    for (int n = 0; n < kLanes; ++n)
      acc[n] = Simd::fma(qv, load_elements<kType>(chunk.k_rows[c + n], d), acc[n]);
  }
  Simd::store(scores + c, transpose_sum(acc));
}

// row[c] *= scales[c] for c < count (int8 rows: the key scale onto each score, the value scale
// onto each weight — once per (row, key), not once per element).
inline void scale_row(float* row, const float* scales, int count) {
  int c = 0;
  for (; c + kLanes <= count; c += kLanes)
    Simd::store(row + c, Simd::mul(Simd::load(row + c), Simd::load(scales + c)));
  for (; c < count; ++c) row[c] *= scales[c];
}

template <RowType kType>
void chunk_scores(const DecodeShape& shape, const DecodeRows& rows, const DecodeChunk& chunk,
                  float* scores, std::int64_t ld) {
  const std::int64_t dk = shape.dim_k_pad, dv = shape.dim_v_pad;
  alignas(64) float permuted[kEvenOdd<kType> ? kRowBlock * kMaxDim : 1];
  if (rows.rows_pad == 1) {
    const float* q = rows.q;
    if constexpr (kEvenOdd<kType>) {
      permute_pairs<kType>(q, dk, permuted);
      q = permuted;
    }
    int c = 0;
    for (; c + kLanes <= chunk.count; c += kLanes) score_block_single<kType>(q, dk, dv, chunk, c, scores);
    for (; c < chunk.count; ++c) score_one<kType, 1>(q, dk, chunk, c, scores, ld);
  } else {
    for (int r0 = 0; r0 < rows.rows_pad; r0 += kRowBlock) {
      const float* q = rows.q + r0 * dk;
      if constexpr (kEvenOdd<kType>) {
        for (int i = 0; i < kRowBlock; ++i) permute_pairs<kType>(q + i * dk, dk, permuted + i * dk);
        q = permuted;
      }
      float* block = scores + r0 * ld;
      int c = 0;
      for (; c + kTreeKeys <= chunk.count; c += kTreeKeys)
        score_block_tree<kType>(q, dk, dv, chunk, c, r0 == 0, block, ld);
      for (; c < chunk.count; ++c) score_one<kType>(q, dk, chunk, c, block, ld);
    }
  }
  if constexpr (kType == RowType::i8)
    for (int r = 0; r < rows.rows_pad; ++r) scale_row(scores + r * ld, chunk.k_scales, chunk.count);
}

// A weight of −0 marks a key the row does not see (chunk_softmax): its value is never read, so a
// NaN or ±inf there cannot reach the row as 0·NaN. A visible key whose weight underflowed to +0
// still multiplies its value, as in the prefill kernel: a non-finite value the row sees is never
// hidden by rounding (the fp64 reference, whose weight does not underflow, is non-finite too).
inline bool hidden(float w) { return w == 0.0f && __builtin_signbit(w); }

// acc[r][d0 .. d0 + (2·kPairs + kSingle)·kLanes) = Σ_c P[r][c]·v_c for one register block of rows
// (P already times the int8 value scale). kAllVisible: every row of the call sees every key of the
// chunk (no −0 weight), so no weight is tested.
template <RowType kType, int kPairs, int kSingle, bool kAllVisible, int kRows = kRowBlock>
void value_block(const DecodeChunk& chunk, const float* p, std::int64_t ld, int r0, std::int64_t d0,
                 float* acc_out, std::int64_t acc_ld, std::int64_t dv) {
  constexpr int kVectors = 2 * kPairs + kSingle;
  V acc[kRows][kVectors];
#pragma GCC unroll 4
  for (int i = 0; i < kRows; ++i)
#pragma GCC unroll 8
    for (int x = 0; x < kVectors; ++x) acc[i][x] = Simd::zero();
  const float* w_row = p + r0 * ld;
  // The first pass over the values (d0 = 0, r0 = 0) brings in the whole rows the later ones
  // reuse.
  const bool prefetch = d0 == 0 && r0 == 0;
  for (int c = 0; c < chunk.count; ++c) {
    if (prefetch && c + kPrefetchKeys < chunk.count)
      prefetch_row<kType>(chunk.v_rows[c + kPrefetchKeys], dv);
    bool all = true;
    if constexpr (!kAllVisible) {
      bool any = false;
#pragma GCC unroll 4
      for (int i = 0; i < kRows; ++i) {
        any |= !hidden(w_row[i * ld + c]);
        all &= !hidden(w_row[i * ld + c]);
      }
      if (!any) continue;
    }
    V v[kVectors];
#pragma GCC unroll 4
    for (int x = 0; x < kPairs; ++x)
      load_pair<kType>(chunk.v_rows[c], d0 + 2 * x * kLanes, v[2 * x], v[2 * x + 1]);
    if constexpr (kSingle == 1)
      v[kVectors - 1] = load_elements<kType>(chunk.v_rows[c], d0 + 2 * kPairs * kLanes);
    if (all) {  // the usual case: every row sees the key, no branch per row
#pragma GCC unroll 4
      for (int i = 0; i < kRows; ++i) {
        const V w = Simd::set1(w_row[i * ld + c]);
#pragma GCC unroll 8
        for (int x = 0; x < kVectors; ++x) acc[i][x] = Simd::fma(w, v[x], acc[i][x]);
      }
      continue;
    }
#pragma GCC unroll 4
    for (int i = 0; i < kRows; ++i) {
      if (hidden(w_row[i * ld + c])) continue;  // masked: its value is not read
      const V w = Simd::set1(w_row[i * ld + c]);
#pragma GCC unroll 8
      for (int x = 0; x < kVectors; ++x) acc[i][x] = Simd::fma(w, v[x], acc[i][x]);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < kRows; ++i) {
    float* out = acc_out + (r0 + i) * acc_ld + d0;
#pragma GCC unroll 4
    for (int x = 0; x < kPairs; ++x)
      store_pair<kType>(out + 2 * x * kLanes, acc[i][2 * x], acc[i][2 * x + 1]);
    if constexpr (kSingle == 1) Simd::store(out + 2 * kPairs * kLanes, acc[i][kVectors - 1]);
  }
}

constexpr int kValuePairs = kLanes >= 16 ? 2 : 1;  // pairs of value vectors per register block

// One value_block of kRows rows from column d0 on, as wide as the `vectors` vectors left allow.
template <RowType kType, bool kAllVisible, int kRows>
void value_pass(const DecodeChunk& chunk, const float* p, std::int64_t ld, int r0, std::int64_t d0,
                std::int64_t vectors, float* acc, std::int64_t dv) {
  if (vectors >= 2 * kValuePairs)
    value_block<kType, kValuePairs, 0, kAllVisible, kRows>(chunk, p, ld, r0, d0, acc, dv, dv);
  else if (vectors == 3)
    value_block<kType, 1, 1, kAllVisible, kRows>(chunk, p, ld, r0, d0, acc, dv, dv);
  else if (vectors == 2)
    value_block<kType, 1, 0, kAllVisible, kRows>(chunk, p, ld, r0, d0, acc, dv, dv);
  else
    value_block<kType, 0, 1, kAllVisible, kRows>(chunk, p, ld, r0, d0, acc, dv, dv);
}

template <RowType kType, bool kAllVisible>
void chunk_values(const DecodeShape& shape, const DecodeRows& rows, const DecodeChunk& chunk,
                  const float* p, std::int64_t ld, float* acc) {
  const std::int64_t dv = shape.dim_v_pad;
  for (std::int64_t d0 = 0; d0 < dv;) {
    const std::int64_t vectors = (dv - d0) / kLanes;
    if (rows.rows_pad == 1)  // a single row: one register block of 1 row
      value_pass<kType, kAllVisible, 1>(chunk, p, ld, 0, d0, vectors, acc, dv);
    else
      for (int r0 = 0; r0 < rows.rows_pad; r0 += kRowBlock)
        value_pass<kType, kAllVisible, kRowBlock>(chunk, p, ld, r0, d0, vectors, acc, dv);
    d0 += std::min<std::int64_t>(vectors, 2 * kValuePairs) * kLanes;
  }
}

// Scores → probabilities relative to each row's chunk maximum; fills the chunk state's m, l, u.
// Returns whether every query row (padding rows aside) sees every key of the chunk.
bool chunk_softmax(const DecodeShape& shape, const DecodeRows& rows, const DecodeChunk& chunk,
                   const ChunkState& state, float* scores, std::int64_t ld) {
  const std::int64_t key_end = chunk.key0 + chunk.count;
  bool all_visible = true;
  for (int r = 0; r < rows.rows_pad; ++r) {
    float* row = scores + r * ld;
    for (std::int64_t c = chunk.count; c < ld; ++c) row[c] = 0.0f;  // lane padding
    if (state.moment != nullptr) state.moment[r] = 0.0f;
    const float row_max =
        r >= rows.rows
            ? kNegInf
            : logits_row(row, chunk.key0, ld, max_i64(rows.key_begin[r], chunk.key0),
                         min_i64(rows.key_end[r], key_end), shape.scale, shape.softcap,
                         rows.bias != nullptr ? rows.bias[r] : nullptr, rows.bias_stride,
                         rows.mask != nullptr ? rows.mask[r] : nullptr, rows.mask_stride);
    // A NaN logit (NaN in q or k) may be dropped by the maximum, which then reads −inf although
    // the row sees keys: such a row is exponentiated against 0, as in the prefill kernel, so that
    // it becomes NaN instead of passing for a row with no visible key.
    bool nan_logit = false;
    if (row_max == kNegInf && r < rows.rows)
      for (std::int64_t c = 0; c < chunk.count; ++c) nan_logit |= row[c] != row[c];
    if (row_max == kNegInf && !nan_logit) {  // no visible key in this chunk (or a padding row)
      state.max[r] = row_max;
      state.sum[r] = 0.0f;
      for (std::int64_t c = 0; c < ld; ++c) row[c] = -0.0f;  // hidden (value_block)
      all_visible &= r >= rows.rows;
      continue;
    }
    const float base = nan_logit ? 0.0f : row_max;
    state.max[r] = base;
    // Keys the row does not see have logit −inf (range, mask, −inf bias, a logit overflowing
    // to −inf): their weights become −0 after the exponential (value_block skips exactly those).
    // Whether any logit is −inf: the largest −t is +inf (max(x, acc) keeps acc when x is NaN, so
    // a NaN logit never hides one). Only then are the keys listed one by one.
    V negated = Simd::zero();
    for (std::int64_t c = 0; c < ld; c += kLanes)
      negated = Simd::max(Simd::sub(Simd::zero(), Simd::load(row + c)), negated);
    const bool any_masked = Simd::reduce_max(negated) == -kNegInf;
    std::uint8_t masked[kMaxChunkKeys];
    if (any_masked)
      for (std::int64_t c = 0; c < chunk.count; ++c) masked[c] = row[c] == kNegInf;
    state.sum[r] = state.moment != nullptr ? exp_row_with_moment(row, ld, base, &state.moment[r])
                                           : exp_row(row, ld, base);
    if (any_masked)
      for (std::int64_t c = 0; c < chunk.count; ++c)
        if (masked[c]) row[c] = -0.0f;
    all_visible &= !any_masked || r >= rows.rows;
  }
  return all_visible;
}

template <RowType kKeys, RowType kValues>
void decode_chunk_typed(const DecodeShape& shape, const DecodeRows& rows, const DecodeChunk& chunk,
                        const ChunkState& state, float* scores) {
  const std::int64_t ld = round_up(chunk.count, kLanes);
  chunk_scores<kKeys>(shape, rows, chunk, scores, ld);
  const bool all_visible = chunk_softmax(shape, rows, chunk, state, scores, ld);
  if constexpr (kValues == RowType::i8)  // −0 (hidden) stays −0: scales are ≥ 0
    for (int r = 0; r < rows.rows_pad; ++r) scale_row(scores + r * ld, chunk.v_scales, chunk.count);
  if (all_visible)
    chunk_values<kValues, true>(shape, rows, chunk, scores, ld, state.acc);
  else
    chunk_values<kValues, false>(shape, rows, chunk, scores, ld, state.acc);
}

void decode_chunk(const DecodeShape& shape, const DecodeRows& rows, const DecodeChunk& chunk,
                  const ChunkState& state, float* scores) {
  switch (shape.row_type) {
    case RowType::bf16:
      return decode_chunk_typed<RowType::bf16, RowType::bf16>(shape, rows, chunk, state, scores);
    case RowType::i8:
      return decode_chunk_typed<RowType::i8, RowType::i8>(shape, rows, chunk, state, scores);
    default:
      return decode_chunk_typed<RowType::f32, RowType::f32>(shape, rows, chunk, state, scores);
  }
}

}  // namespace

const DecodeKernel& decode_kernel() {
  static const DecodeKernel k{SDPA_KERNEL_NAME, kLanes, kRowBlock, &decode_chunk};
  return k;
}

}  // namespace sdpa::kernels::SDPA_KERNEL_NS
