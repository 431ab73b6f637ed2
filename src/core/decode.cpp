// The split-KV decode driver (see decode.hpp for the partition rule): work items are (group,
// chunk) pairs, run in any order on any thread, each writing its own partial state; then every
// query row merges its chunks' states in key order (in fp64) and writes out, lse and entropy.
#include "core/decode.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/mask.hpp"
#include "core/pinning.hpp"
#include "core/workspace.hpp"
#include "kernels/decode.hpp"

static_assert(sdpa::kDecodeChunkKeys <= 256,
              "src/kernels/decode_impl.hpp's kMaxChunkKeys (256) bounds the keys of one chunk");

namespace sdpa {
namespace {

using kernels::DecodeKernel;

const DecodeKernel& decode_kernel_for(Isa isa) {
  switch (isa) {
    case Isa::avx512:
      return kernels::decode_kernel_avx512();
    case Isa::avx2:
      return kernels::decode_kernel_avx2();
    default:
      return kernels::decode_kernel_scalar();
  }
}

std::int64_t round_up(std::int64_t x, std::int64_t to) { return (x + to - 1) / to * to; }

struct DecodePlan {
  const DecodeKernel* kernel = nullptr;
  std::int64_t rows = 0, rows_pad = 0, dim_k_pad = 0, dim_v_pad = 0;
  std::int64_t groups = 0;              // B · Hkv
  std::vector<std::int64_t> key_begin;  // per batch entry: the keys some row may see
  std::vector<std::int64_t> key_end;
  std::vector<std::int64_t> first_item;  // per group, and one past the last group
  std::size_t state_floats = 0;          // per item: max, sum, moment [rows_pad] + acc
  std::size_t scratch_floats = 0;        // per thread
  int threads = 1;

  std::int64_t items() const { return first_item.back(); }
  std::int64_t first_chunk(std::int64_t b) const {
    return key_begin[static_cast<std::size_t>(b)] / kDecodeChunkKeys;
  }
  std::size_t workspace_bytes() const {
    return (state_floats * static_cast<std::size_t>(items()) +
            scratch_floats * static_cast<std::size_t>(threads)) *
           sizeof(float);
  }
};

DecodePlan make_decode_plan(const Problem& p, const DecodeSource& source) {
  DecodePlan plan;
  plan.kernel = &decode_kernel_for(p.isa);
  const std::int64_t lanes = plan.kernel->lanes;
  plan.rows = p.group * p.len_q;
  // One row (multi-head attention at Lq = 1) runs the kernel's single-row blocks instead of
  // padding to a block of row_block rows, three of them zeros.
  plan.rows_pad = plan.rows == 1 ? 1 : round_up(plan.rows, plan.kernel->row_block);
  plan.dim_k_pad = round_up(p.dim_k, lanes);
  plan.dim_v_pad = round_up(p.dim_v, lanes);
  plan.groups = p.batch * p.heads_kv;
  plan.first_item.push_back(0);
  for (std::int64_t b = 0; b < p.batch; ++b) {
    std::int64_t first = p.len_k, last = 0;
    for (std::int64_t i = 0; i < p.len_q; ++i) {
      const KeyRange r = visible_keys(p, b, i);
      if (r.empty()) continue;
      first = std::min(first, r.begin);
      last = std::max(last, r.end);
    }
    if (first >= last) first = last = 0;
    plan.key_begin.push_back(first);
    plan.key_end.push_back(last);
    const std::int64_t chunks =
        last > first ? (last - 1) / kDecodeChunkKeys - first / kDecodeChunkKeys + 1 : 0;
    for (std::int64_t hk = 0; hk < p.heads_kv; ++hk)
      plan.first_item.push_back(plan.first_item.back() + chunks);
  }
  plan.state_floats = static_cast<std::size_t>(plan.rows_pad * (3 + plan.dim_v_pad));
  // q [rows_pad][dim_k_pad] + scores [rows_pad][C] + row pointers 2·C (as 2 floats each)
  // + scales 2·C + the source's own scratch.
  const std::int64_t c = kDecodeChunkKeys;
  plan.scratch_floats =
      static_cast<std::size_t>(plan.rows_pad * plan.dim_k_pad + plan.rows_pad * c + 6 * c) +
      source.scratch_floats(lanes);
  plan.threads = static_cast<int>(std::clamp<std::int64_t>(plan.items(), 1, p.threads));
  return plan;
}

// The query rows of group g into q [rows_pad][dim_k_pad] (zero padded) and the per-row tables.
struct GroupRows {
  std::vector<std::int64_t> key_begin, key_end;
  std::vector<const std::uint8_t*> mask;
  std::vector<const float*> bias;
};

kernels::DecodeRows prepare_rows(const Problem& p, const DecodePlan& plan, std::int64_t g, float* q,
                                 GroupRows& tables) {
  const std::int64_t b = g / p.heads_kv, hk = g % p.heads_kv;
  const auto rows_pad = static_cast<std::size_t>(plan.rows_pad);
  tables.key_begin.assign(rows_pad, 0);
  tables.key_end.assign(rows_pad, 0);
  tables.mask.assign(rows_pad, nullptr);
  tables.bias.assign(rows_pad, nullptr);
  std::fill(q, q + plan.rows_pad * plan.dim_k_pad, 0.0f);
  for (std::int64_t r = 0; r < plan.rows; ++r) {
    const std::int64_t h = hk * p.group + r / p.len_q, i = r % p.len_q;
    const KeyRange range = visible_keys(p, b, i);
    const auto ru = static_cast<std::size_t>(r);
    tables.key_begin[ru] = range.begin;
    tables.key_end[ru] = range.end;
    if (p.mask) tables.mask[ru] = &p.mask->at(b, h, i, 0);
    if (p.bias) tables.bias[ru] = &p.bias->at(b, h, i, 0);
    const float* src = &p.q.at(b, h, i, 0);
    for (std::int64_t d = 0; d < p.dim_k; ++d) q[r * plan.dim_k_pad + d] = src[d * p.q.s3];
  }
  kernels::DecodeRows rows;
  rows.rows = static_cast<int>(plan.rows);
  rows.rows_pad = static_cast<int>(plan.rows_pad);
  rows.q = q;
  rows.key_begin = tables.key_begin.data();
  rows.key_end = tables.key_end.data();
  if (p.mask) {
    rows.mask = tables.mask.data();
    rows.mask_stride = p.mask->s3;
  }
  if (p.bias) {
    rows.bias = tables.bias.data();
    rows.bias_stride = p.bias->s3;
  }
  return rows;
}

// Keys and values of the problem's k / v tensors: rows used in place when they are contiguous and
// whole vectors, else copied (zero padded) into the scratch.
class TensorSource final : public DecodeSource {
 public:
  explicit TensorSource(const Problem& p) : p_(p) {}
  kernels::RowType row_type() const override { return kernels::RowType::f32; }
  std::size_t scratch_floats(std::int64_t lanes) const override {
    return static_cast<std::size_t>(
        (pack_k(lanes) ? kDecodeChunkKeys * round_up(p_.dim_k, lanes) : 0) +
        (pack_v(lanes) ? kDecodeChunkKeys * round_up(p_.dim_v, lanes) : 0));
  }
  void rows(std::int64_t b, std::int64_t hk, std::int64_t key0, int count, std::int64_t lanes,
            const void** k_rows, const void** v_rows, float*, float*,
            float* scratch) const override {
    const std::int64_t dk_pad = round_up(p_.dim_k, lanes), dv_pad = round_up(p_.dim_v, lanes);
    const bool copy_k = pack_k(lanes), copy_v = pack_v(lanes);
    float* k_pack = scratch;
    float* v_pack = scratch + (copy_k ? kDecodeChunkKeys * dk_pad : 0);
    for (int c = 0; c < count; ++c) {
      const std::int64_t j = key0 + c;
      const float* k = &p_.k.at(b, hk, j, 0);
      const float* v = &p_.v.at(b, hk, j, 0);
      if (copy_k) {
        float* dst = k_pack + c * dk_pad;
        for (std::int64_t d = 0; d < dk_pad; ++d) dst[d] = d < p_.dim_k ? k[d * p_.k.s3] : 0.0f;
        k = dst;
      }
      if (copy_v) {
        float* dst = v_pack + c * dv_pad;
        for (std::int64_t d = 0; d < dv_pad; ++d) dst[d] = d < p_.dim_v ? v[d * p_.v.s3] : 0.0f;
        v = dst;
      }
      k_rows[c] = k;
      v_rows[c] = v;
    }
  }

 private:
  bool pack_k(std::int64_t lanes) const { return p_.k.s3 != 1 || p_.dim_k % lanes != 0; }
  bool pack_v(std::int64_t lanes) const { return p_.v.s3 != 1 || p_.dim_v % lanes != 0; }
  const Problem& p_;
};

struct ItemStates {
  float* base;
  const DecodePlan& plan;
  kernels::ChunkState at(std::int64_t item, bool moment) const {
    float* s = base + static_cast<std::size_t>(item) * plan.state_floats;
    const std::int64_t n = plan.rows_pad;
    return {s, s + n, moment ? s + 2 * n : nullptr, s + 3 * n};
  }
};

// Merges the chunk states of row r of group g (in key order) and writes its outputs.
void combine_row(const Problem& p, const DecodePlan& plan, const ItemStates& states, std::int64_t g,
                 std::int64_t r, std::vector<double>& acc) {
  const std::int64_t b = g / p.heads_kv, hk = g % p.heads_kv;
  const std::int64_t h = hk * p.group + r / p.len_q, i = r % p.len_q;
  const std::int64_t first = plan.first_item[static_cast<std::size_t>(g)];
  const std::int64_t last = plan.first_item[static_cast<std::size_t>(g) + 1];
  const bool moment = p.entropy.has_value();
  // An attention sink (real rows only) is one more state with m = sink, l = 1, acc = 0, moment 0.
  const double sink = i < p.query_length(b) ? p.sink(h) : -std::numeric_limits<double>::infinity();
  const bool has_sink = sink != -std::numeric_limits<double>::infinity();
  double largest = sink;
  for (std::int64_t item = first; item < last; ++item) {
    const kernels::ChunkState s = states.at(item, moment);
    if (s.sum[r] != 0.0f && s.max[r] > largest) largest = s.max[r];
  }
  std::fill(acc.begin(), acc.end(), 0.0);
  double sum = has_sink ? std::exp(sink - largest) : 0.0;
  double first_moment = has_sink ? (sink - largest) * sum : 0.0;
  bool any = has_sink;
  for (std::int64_t item = first; item < last; ++item) {
    const kernels::ChunkState s = states.at(item, moment);
    if (s.sum[r] == 0.0f) continue;  // no visible key in this chunk (a NaN sum is kept)
    any = true;
    const double shift = static_cast<double>(s.max[r]) - largest;
    const double w = std::exp(shift);
    sum += w * s.sum[r];
    if (moment) first_moment += w * (s.moment[r] + shift * s.sum[r]);
    const float* a = s.acc + r * plan.dim_v_pad;
    for (std::int64_t d = 0; d < p.dim_v; ++d) acc[static_cast<std::size_t>(d)] += w * a[d];
  }
  float* out = &p.out.at(b, h, i, 0);
  const double inv = any ? 1.0 / sum : 0.0;
  for (std::int64_t d = 0; d < p.dim_v; ++d)
    out[d * p.out.s3] = static_cast<float>(acc[static_cast<std::size_t>(d)] * inv);
  if (p.lse)
    p.lse->at(b, h, i, 0) =
        any ? static_cast<float>(largest + std::log(sum)) : -std::numeric_limits<float>::infinity();
  if (p.entropy)
    p.entropy->at(b, h, i, 0) = any ? static_cast<float>(std::log(sum) - first_moment / sum) : 0.0f;
}

}  // namespace

bool decode_plan_applies(const Problem& p) {
  if (p.len_q < 1 || p.len_q > kDecodeMaxQueries || p.group * p.len_q > kDecodeMaxRows)
    return false;
  if (p.weights || p.dim_k > kDecodeMaxDim || p.dim_v > kDecodeMaxDim) return false;
  return p.workspace_limit == 0 ||
         make_decode_plan(p, TensorSource(p)).workspace_bytes() <= p.workspace_limit;
}

DecodeRun run_decode(const Problem& p) { return run_split_kv(p, TensorSource(p)); }

std::size_t split_kv_workspace_bytes(const Problem& p, const DecodeSource& source) {
  return make_decode_plan(p, source).workspace_bytes();
}

DecodeRun run_split_kv(const Problem& p, const DecodeSource& source) {
  const DecodePlan plan = make_decode_plan(p, source);
  const DecodeRun run{plan.threads, plan.workspace_bytes()};
  if (p.batch == 0 || p.heads_q == 0) return run;
  const Workspace states_memory =
      acquire_workspace(plan.state_floats * static_cast<std::size_t>(plan.items()) * sizeof(float));
  const Workspace scratch = acquire_workspace(
      plan.scratch_floats * static_cast<std::size_t>(plan.threads) * sizeof(float));
  const ItemStates states{states_memory.floats(), plan};
  const kernels::DecodeShape shape{p.dim_k,   p.dim_v,           plan.dim_k_pad, plan.dim_v_pad,
                                   p.scale, source.row_type(), p.softcap};
  const std::int64_t lanes = plan.kernel->lanes;
  const std::int64_t c = kDecodeChunkKeys;

  const CpuPlan cpus(plan.threads);  // one CPU per thread when the team takes them all
#pragma omp parallel num_threads(plan.threads)
  {
    const ThreadPin pin(cpus, omp_get_thread_num());
    float* q =
        scratch.floats() + plan.scratch_floats * static_cast<std::size_t>(omp_get_thread_num());
    float* scores = q + plan.rows_pad * plan.dim_k_pad;
    auto* k_rows = reinterpret_cast<const void**>(scores + plan.rows_pad * c);
    const void** v_rows = k_rows + c;
    float* k_scales = reinterpret_cast<float*>(v_rows + c);
    float* v_scales = k_scales + c;
    float* source_scratch = v_scales + c;
    GroupRows tables;
    kernels::DecodeRows rows;
    std::int64_t rows_group = -1;  // the group `rows` describes
#pragma omp for schedule(dynamic, 1)
    for (std::int64_t item = 0; item < plan.items(); ++item) {
      const auto g = static_cast<std::int64_t>(
          std::upper_bound(plan.first_item.begin(), plan.first_item.end(), item) -
          plan.first_item.begin() - 1);
      const std::int64_t b = g / p.heads_kv, hk = g % p.heads_kv;
      if (g != rows_group) {
        rows = prepare_rows(p, plan, g, q, tables);
        rows_group = g;
      }
      const std::int64_t chunk =
          plan.first_chunk(b) + item - plan.first_item[static_cast<std::size_t>(g)];
      const std::int64_t key0 = std::max(chunk * c, plan.key_begin[static_cast<std::size_t>(b)]);
      const std::int64_t key1 =
          std::min((chunk + 1) * c, plan.key_end[static_cast<std::size_t>(b)]);
      kernels::DecodeChunk ck;
      ck.key0 = key0;
      ck.count = static_cast<int>(key1 - key0);
      source.rows(b, hk, key0, ck.count, lanes, k_rows, v_rows, k_scales, v_scales, source_scratch);
      ck.k_rows = k_rows;
      ck.v_rows = v_rows;
      ck.k_scales = k_scales;
      ck.v_scales = v_scales;
      plan.kernel->chunk(shape, rows, ck, states.at(item, p.entropy.has_value()), scores);
    }
    std::vector<double> acc(static_cast<std::size_t>(p.dim_v));
#pragma omp for schedule(static)
    for (std::int64_t n = 0; n < plan.groups * plan.rows; ++n)
      combine_row(p, plan, states, n / plan.rows, n % plan.rows, acc);
  }
  return run;
}

}  // namespace sdpa
