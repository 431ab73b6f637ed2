// sdpa::KvCache: the paged pool, the conversions into its storage types, and attend() through the
// split-KV decode driver with the pages as the source of key/value rows.
#include "sdpa/kv_cache.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdlib>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "core/decode.hpp"
#include "core/errors.hpp"
#include "core/isa.hpp"
#include "core/problem.hpp"
#include "core/workspace.hpp"

namespace sdpa {
namespace {

constexpr std::int64_t kRowAlign = 16;  // elements: a whole vector on every ISA

std::int64_t round_up(std::int64_t x, std::int64_t to) { return (x + to - 1) / to * to; }

std::size_t element_bytes(KvStorage s) {
  return s == KvStorage::f32 ? 4 : s == KvStorage::bf16 ? 2 : 1;
}

// bfloat16 by round to nearest even; NaN stays a (quiet) NaN.
std::uint16_t to_bf16(float x) {
  std::uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x40u);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>(bits >> 16);
}

// The pool's key or value bytes, zeroed: allocate_large's memory, so that a large pool sits on
// huge pages (a decode call streams the whole of it).
class PoolBytes {
 public:
  void allocate(std::size_t bytes, const char* what) {
    void* data = allocate_large(bytes);
    if (data == nullptr && bytes > 0)
      throw OutOfMemory("cannot allocate " + std::to_string(bytes) + " bytes for the KV cache's " +
                        what + " (a smaller config.blocks holds fewer tokens)");
    if (data != nullptr) std::memset(data, 0, bytes);
    data_.reset(static_cast<unsigned char*>(data));
    size_ = bytes;
  }
  unsigned char* data() { return data_.get(); }
  const unsigned char* data() const { return data_.get(); }
  std::size_t size() const { return size_; }

 private:
  struct Free {
    void operator()(unsigned char* p) const { std::free(p); }
  };
  std::unique_ptr<unsigned char, Free> data_;
  std::size_t size_ = 0;
};

std::string shape_text(const Tensor& t) {
  std::string text = "[";
  for (int d = 0; d < t.rank; ++d) text += (d ? ", " : "") + std::to_string(t.shape[d]);
  return text + "]";
}

void check_tensor(const Tensor& t, const char* name, std::int64_t d0, std::int64_t d1,
                  std::int64_t d2, int rank, const char* expected) {
  if (t.rank != rank) fail(name, ".rank: expected ", rank, " (", expected, "), got ", t.rank);
  if (t.dtype != DType::f32) fail(name, ".dtype: expected f32, got ", dtype_name(t.dtype));
  const std::int64_t want[3] = {d0, d1, d2};
  for (int d = 0; d < rank; ++d)
    if (want[d] >= 0 && t.shape[d] != want[d])
      fail(name, ".shape = ", shape_text(t), ": expected ", expected, " with shape[", d,
           "] = ", want[d]);
  for (int d = 0; d < rank; ++d)
    if (t.shape[d] < 0) fail(name, ".shape[", d, "] = ", t.shape[d], ": expected >= 0");
  if (t.data == nullptr && t.numel() > 0)
    fail(name, ".data: expected a non-null pointer, got null");
}

}  // namespace

const char* kv_storage_name(KvStorage storage) {
  switch (storage) {
    case KvStorage::f32:
      return "f32";
    case KvStorage::bf16:
      return "bf16";
    case KvStorage::i8:
      return "i8";
  }
  return "?";
}

struct KvCache::Impl {
  KvCacheConfig config;
  std::int64_t row_k = 0, row_v = 0;  // padded elements per key / value row
  std::size_t elem = 4;
  PoolBytes keys, values;                       // [blocks][heads][block_tokens][row] elements
  std::vector<float> key_scales, value_scales;  // [blocks][heads][block_tokens] (int8 only)
  std::vector<std::int64_t> free;               // free page ids (a stack)
  struct Sequence {
    bool live = false;
    std::int64_t length = 0;
    std::vector<std::int64_t> pages;
  };
  std::vector<Sequence> sequences;

  std::size_t row_index(std::int64_t page, std::int64_t head, std::int64_t token) const {
    return static_cast<std::size_t>((page * config.heads_kv + head) * config.block_tokens + token);
  }
  const Sequence& sequence(int id, const char* what) const {
    if (id < 0 || static_cast<std::size_t>(id) >= sequences.size() ||
        !sequences[static_cast<std::size_t>(id)].live)
      fail(what, ": sequence ", id, " does not exist (ids come from add_sequence)");
    return sequences[static_cast<std::size_t>(id)];
  }

  // Stores one row of `dim` elements (src with stride `stride`) at `dst` (padded to `row`).
  void store_row(const float* src, std::int64_t stride, std::int64_t dim, std::int64_t row,
                 unsigned char* dst, float* scale) const {
    switch (config.storage) {
      case KvStorage::f32: {
        auto* out = reinterpret_cast<float*>(dst);
        for (std::int64_t d = 0; d < row; ++d) out[d] = d < dim ? src[d * stride] : 0.0f;
        break;
      }
      case KvStorage::bf16: {
        auto* out = reinterpret_cast<std::uint16_t*>(dst);
        for (std::int64_t d = 0; d < row; ++d) out[d] = d < dim ? to_bf16(src[d * stride]) : 0;
        break;
      }
      case KvStorage::i8: {
        float largest = 0.0f;
        for (std::int64_t d = 0; d < dim; ++d)
          largest = std::max(largest, std::abs(src[d * stride]));
        const float s = largest / 127.0f;
        const float inverse = s > 0.0f ? 1.0f / s : 0.0f;
        auto* out = reinterpret_cast<std::int8_t*>(dst);
        for (std::int64_t d = 0; d < row; ++d) {
          const float n = d < dim ? std::nearbyint(src[d * stride] * inverse) : 0.0f;
          out[d] = static_cast<std::int8_t>(std::clamp(n, -127.0f, 127.0f));
        }
        *scale = s;
        break;
      }
    }
  }
  // The pages of one sequence as the decode driver's source of key/value rows.
  class PageSource;
};

class KvCache::Impl::PageSource final : public DecodeSource {
 public:
  PageSource(const Impl& cache, const std::vector<std::int64_t>& pages)
      : cache_(cache), pages_(pages) {}
  kernels::RowType row_type() const override {
    switch (cache_.config.storage) {
      case KvStorage::bf16:
        return kernels::RowType::bf16;
      case KvStorage::i8:
        return kernels::RowType::i8;
      default:
        return kernels::RowType::f32;
    }
  }
  std::size_t scratch_floats(std::int64_t) const override { return 0; }
  void rows(std::int64_t, std::int64_t hk, std::int64_t key0, int count, std::int64_t,
            const void** k_rows, const void** v_rows, float* k_scales, float* v_scales,
            float*) const override {
    const std::int64_t bt = cache_.config.block_tokens;
    const bool scaled = cache_.config.storage == KvStorage::i8;
    const std::size_t k_step = static_cast<std::size_t>(cache_.row_k) * cache_.elem;
    const std::size_t v_step = static_cast<std::size_t>(cache_.row_v) * cache_.elem;
    // One division per page the chunk touches, not per key: a page's rows of one head are
    // consecutive.
    for (int c = 0; c < count;) {
      const std::int64_t j = key0 + c;
      const std::int64_t token = j % bt;
      const int run = static_cast<int>(std::min<std::int64_t>(count - c, bt - token));
      const std::size_t r = cache_.row_index(pages_[static_cast<std::size_t>(j / bt)], hk, token);
      const unsigned char* k = cache_.keys.data() + r * k_step;
      const unsigned char* v = cache_.values.data() + r * v_step;
      for (int n = 0; n < run; ++n) {
        k_rows[c + n] = k + static_cast<std::size_t>(n) * k_step;
        v_rows[c + n] = v + static_cast<std::size_t>(n) * v_step;
      }
      if (scaled)
        for (int n = 0; n < run; ++n) {
          k_scales[c + n] = cache_.key_scales[r + static_cast<std::size_t>(n)];
          v_scales[c + n] = cache_.value_scales[r + static_cast<std::size_t>(n)];
        }
      c += run;
    }
  }

 private:
  const Impl& cache_;
  const std::vector<std::int64_t>& pages_;
};

KvCache::KvCache(const KvCacheConfig& requested) : impl_(std::make_unique<Impl>()) {
  KvCacheConfig c = requested;
  if (c.dim_v == 0) c.dim_v = c.dim_k;
  if (c.heads_kv < 1) fail("config.heads_kv = ", c.heads_kv, ": expected >= 1");
  if (c.dim_k < 1) fail("config.dim_k = ", c.dim_k, ": expected >= 1");
  if (c.dim_v < 1) fail("config.dim_v = ", c.dim_v, ": expected >= 1 (or 0 = dim_k)");
  if (c.block_tokens < 1) fail("config.block_tokens = ", c.block_tokens, ": expected >= 1");
  if (c.blocks < 1) fail("config.blocks = ", c.blocks, ": expected >= 1");
  if (c.storage != KvStorage::f32 && c.storage != KvStorage::bf16 && c.storage != KvStorage::i8)
    fail("config.storage = ", static_cast<int>(c.storage), ": expected f32, bf16 or i8");
  Impl& m = *impl_;
  m.config = c;
  m.row_k = round_up(c.dim_k, kRowAlign);
  m.row_v = round_up(c.dim_v, kRowAlign);
  m.elem = element_bytes(c.storage);
  // blocks · heads_kv · block_tokens rows of row_k (row_v) elements, checked for overflow.
  std::size_t rows = 0, key_bytes = 0, value_bytes = 0;
  const auto z = [](std::int64_t x) { return static_cast<std::size_t>(x); };
  if (__builtin_mul_overflow(z(c.blocks), z(c.heads_kv), &rows) ||
      __builtin_mul_overflow(rows, z(c.block_tokens), &rows) ||
      __builtin_mul_overflow(rows, z(m.row_k) * m.elem, &key_bytes) ||
      __builtin_mul_overflow(rows, z(m.row_v) * m.elem, &value_bytes))
    throw OutOfMemory("config.blocks = " + std::to_string(c.blocks) + " pages of " +
                      std::to_string(c.block_tokens) + " tokens x " + std::to_string(c.heads_kv) +
                      " heads: the KV cache would need more than 2^64 bytes");
  m.keys.allocate(key_bytes, "keys");
  m.values.allocate(value_bytes, "values");
  if (c.storage == KvStorage::i8) {
    m.key_scales.resize(rows);
    m.value_scales.resize(rows);
  }
  for (std::int64_t page = c.blocks - 1; page >= 0; --page) m.free.push_back(page);
}

KvCache::~KvCache() = default;
KvCache::KvCache(KvCache&&) noexcept = default;
KvCache& KvCache::operator=(KvCache&&) noexcept = default;

const KvCacheConfig& KvCache::config() const { return impl_->config; }

int KvCache::add_sequence() {
  auto& seqs = impl_->sequences;
  for (std::size_t id = 0; id < seqs.size(); ++id)
    if (!seqs[id].live) {
      seqs[id] = {true, 0, {}};
      return static_cast<int>(id);
    }
  seqs.push_back({true, 0, {}});
  return static_cast<int>(seqs.size() - 1);
}

void KvCache::remove_sequence(int sequence) {
  impl_->sequence(sequence, "remove_sequence");
  Impl::Sequence& s = impl_->sequences[static_cast<std::size_t>(sequence)];
  for (auto page = s.pages.rbegin(); page != s.pages.rend(); ++page) impl_->free.push_back(*page);
  s = {};
}

std::int64_t KvCache::length(int sequence) const {
  return impl_->sequence(sequence, "length").length;
}

void KvCache::append(int sequence, const Tensor& k, const Tensor& v) {
  Impl& m = *impl_;
  const KvCacheConfig& c = m.config;
  m.sequence(sequence, "append");
  check_tensor(k, "k", c.heads_kv, -1, c.dim_k, 3, "[Hkv, T, Dk]");
  const std::int64_t tokens = k.shape[1];
  check_tensor(v, "v", c.heads_kv, tokens, c.dim_v, 3, "[Hkv, T, Dv] with T = k.shape[1]");
  Impl::Sequence& s = m.sequences[static_cast<std::size_t>(sequence)];
  const std::int64_t new_length = s.length + tokens;
  const std::int64_t pages_needed = (new_length + c.block_tokens - 1) / c.block_tokens -
                                    static_cast<std::int64_t>(s.pages.size());
  if (pages_needed > static_cast<std::int64_t>(m.free.size()))
    fail("append: ", tokens, " tokens need ", pages_needed, " more pages of ", c.block_tokens,
         " tokens but the pool has ", m.free.size(), " free of ", c.blocks,
         " (config.blocks); remove sequences or make the pool larger");
  const auto* kd = static_cast<const float*>(k.data);
  const auto* vd = static_cast<const float*>(v.data);
  if (c.storage == KvStorage::i8)
    for (std::int64_t h = 0; h < c.heads_kv; ++h)
      for (std::int64_t t = 0; t < tokens; ++t) {
        for (std::int64_t d = 0; d < c.dim_k; ++d)
          if (!std::isfinite(kd[h * k.stride[0] + t * k.stride[1] + d * k.stride[2]]))
            fail("k[", h, ", ", t, ", ", d, "] is not finite: int8 storage needs finite keys");
        for (std::int64_t d = 0; d < c.dim_v; ++d)
          if (!std::isfinite(vd[h * v.stride[0] + t * v.stride[1] + d * v.stride[2]]))
            fail("v[", h, ", ", t, ", ", d, "] is not finite: int8 storage needs finite values");
      }
  for (std::int64_t n = 0; n < pages_needed; ++n) {
    s.pages.push_back(m.free.back());
    m.free.pop_back();
  }
  float unused = 0;
  for (std::int64_t t = 0; t < tokens; ++t) {
    const std::int64_t j = s.length + t;
    const std::int64_t page = s.pages[static_cast<std::size_t>(j / c.block_tokens)];
    for (std::int64_t h = 0; h < c.heads_kv; ++h) {
      const std::size_t r = m.row_index(page, h, j % c.block_tokens);
      const bool scaled = c.storage == KvStorage::i8;
      m.store_row(kd + h * k.stride[0] + t * k.stride[1], k.stride[2], c.dim_k, m.row_k,
                  m.keys.data() + r * static_cast<std::size_t>(m.row_k) * m.elem,
                  scaled ? &m.key_scales[r] : &unused);
      m.store_row(vd + h * v.stride[0] + t * v.stride[1], v.stride[2], c.dim_v, m.row_v,
                  m.values.data() + r * static_cast<std::size_t>(m.row_v) * m.elem,
                  scaled ? &m.value_scales[r] : &unused);
    }
  }
  s.length = new_length;
}

RunInfo KvCache::attend(int sequence, const Tensor& q, const Tensor& out,
                        const AttendOptions& options, const std::optional<Tensor>& lse) const {
  const Impl& m = *impl_;
  const KvCacheConfig& c = m.config;
  const Impl::Sequence& s = m.sequence(sequence, "attend");
  check_tensor(q, "q", -1, -1, c.dim_k, 3, "[Hq, Lq, Dk]");
  const std::int64_t heads_q = q.shape[0], len_q = q.shape[1];
  if (heads_q < 1 || heads_q % c.heads_kv != 0)
    fail("q.shape[0] (Hq) = ", heads_q, ": expected a multiple of config.heads_kv = ", c.heads_kv);
  check_tensor(out, "out", heads_q, len_q, c.dim_v, 3, "[Hq, Lq, Dv]");
  check_writable(out, "out");
  if (lse) {
    check_tensor(*lse, "lse", heads_q, len_q, -1, 2, "[Hq, Lq]");
    check_writable(*lse, "lse");
  }
  if (options.scale && !std::isfinite(*options.scale))
    fail("options.scale = ", *options.scale, ": expected a finite number");
  if (options.threads < 0) fail("options.threads = ", options.threads, ": expected >= 0 (0 = all)");

  Problem p;
  p.batch = 1;
  p.heads_q = heads_q;
  p.heads_kv = c.heads_kv;
  p.group = heads_q / c.heads_kv;
  p.len_q = len_q;
  p.len_k = s.length;
  p.dim_k = c.dim_k;
  p.dim_v = c.dim_v;
  p.scale = options.scale ? *options.scale
                          : static_cast<float>(1.0 / std::sqrt(static_cast<double>(c.dim_k)));
  p.q = {static_cast<const float*>(q.data), 0, q.stride[0], q.stride[1], q.stride[2]};
  p.out = {static_cast<float*>(out.data), 0, out.stride[0], out.stride[1], out.stride[2]};
  if (lse)
    p.lse = View4<float>{static_cast<float*>(lse->data), 0, lse->stride[0], lse->stride[1], 0};
  p.causal = options.causal;
  p.threads = options.threads > 0 ? options.threads : omp_get_max_threads();
  p.isa = resolve_isa(options.isa);

  RunInfo info;
  info.isa = p.isa;
  double pairs = 0;
  for (std::int64_t i = 0; i < len_q; ++i) {
    const std::int64_t end = p.causal == Causal::none ? s.length
                             : p.causal == Causal::top_left
                                 ? std::min(s.length, i + 1)
                                 : std::min(s.length, i + 1 + s.length - len_q);
    pairs += static_cast<double>(std::max<std::int64_t>(end, 0));
  }
  info.flops = pairs * static_cast<double>(heads_q) * 2.0 * static_cast<double>(c.dim_k + c.dim_v);
  if (heads_q == 0 || len_q == 0) return info;
  const DecodeRun run = run_split_kv(p, Impl::PageSource(m, s.pages));
  info.threads = run.threads;
  info.workspace_bytes = run.workspace_bytes;
  return info;
}

std::size_t KvCache::bytes_per_token() const {
  const Impl& m = *impl_;
  const std::size_t per_head = static_cast<std::size_t>(m.row_k + m.row_v) * m.elem +
                               (m.config.storage == KvStorage::i8 ? 2 * sizeof(float) : 0);
  return per_head * static_cast<std::size_t>(m.config.heads_kv);
}

std::size_t KvCache::bytes() const {
  const Impl& m = *impl_;
  return m.keys.size() + m.values.size() +
         (m.key_scales.size() + m.value_scales.size()) * sizeof(float);
}

std::int64_t KvCache::free_blocks() const { return static_cast<std::int64_t>(impl_->free.size()); }

}  // namespace sdpa
