// The backward driver: validate, pack, run the per-ISA backward tile over a fixed partition, reduce.
//
// Work partition (fixed by the shapes, never by the thread count, so results are bitwise identical
// for any number of threads):
//   * keys of each (batch, kv-head) are cut into at most kMaxKeyChunks chunks of whole tiles; one
//     work item = one (batch, kv-head, key chunk). It owns dK and dV of its keys outright (summing
//     over the query heads of the GQA group in a fixed order) and writes its share of dQ into its
//     own partial buffer: no atomics, no races.
//   * dQ = scale · Σ_chunks partial, summed in chunk order; d(scale) = Σ of the items' partial sums
//     in item order.
//   * d(bias), when asked, is a separate pass whose items each own a set of d(bias) elements and
//     recompute the dS tiles that reduce into them, in a fixed order.
// Memory: packed copies and partial dQ are O(L·D) per (batch, kv-head); (batch, kv-head) groups are
// processed a chunk of groups at a time within the workspace budget.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/errors.hpp"
#include "core/half.hpp"
#include "core/mask.hpp"
#include "core/problem.hpp"
#include "core/pinning.hpp"
#include "core/workspace.hpp"
#include "kernels/flash_backward.hpp"

namespace sdpa {
namespace {

using kernels::BackwardKernel;

constexpr std::int64_t kMaxKeyChunks = 8;
constexpr std::int64_t kMinTilesPerChunk = 4;  // of 384 keys: chunks of at least 1536 keys
constexpr std::size_t kDefaultPackBudget = std::size_t{64} << 20;
// A multiple of every ISA's microkernel rows (4, 6, 12): tiles read their query rows and keys in
// groups of the microkernel's rows, so padding to this is always enough.
constexpr std::int64_t kRowQuantum = 12;
// A multiple of every ISA's panel width (16, 32) and microkernel rows: the row stride of short
// sequences' scratch tiles.
constexpr std::int64_t kKeyQuantum = 96;

const BackwardKernel& backward_kernel_for(Isa isa) {
  switch (isa) {
    case Isa::avx512: return kernels::backward_kernel_avx512();
    case Isa::avx2: return kernels::backward_kernel_avx2();
    default: return kernels::backward_kernel_scalar();
  }
}

std::int64_t round_up(std::int64_t x, std::int64_t to) { return (x + to - 1) / to * to; }
std::int64_t ceil_div(std::int64_t x, std::int64_t y) { return (x + y - 1) / y; }

// Offsets (in floats) of the packed arrays of one (batch, kv-head) group.
struct GroupLayout {
  std::int64_t k_panels = 0, vt_panels = 0, k_rows = 0;
  std::int64_t heads = 0;      // offset of the per-head block
  std::int64_t head_size = 0;  // floats per query head: q_rows, q_panels, do_rows, do_panels, lse, delta
  std::int64_t q_rows = 0, q_panels = 0, do_rows = 0, do_panels = 0, lse = 0, delta = 0;  // within a head
  std::int64_t dq_partials = 0;  // [chunks][group heads][Lq_pad][Dk_pad]
  std::int64_t total = 0;
};

struct BackwardPlan {
  const BackwardKernel* kernel = nullptr;
  std::int64_t nr = 0, rows = 0, keys = 0;
  std::int64_t len_q_pad = 0, len_k_pad = 0, dim_k_pad = 0, dim_v_pad = 0;
  std::int64_t chunk_keys = 0, chunks = 0;
  std::int64_t groups = 0, groups_per_round = 1;
  GroupLayout layout;
  std::int64_t tile_ld = 0;        // row stride of the scratch tiles: keys, cut to the problem's
  std::int64_t tile_floats = 0;    // one [rows][tile_ld] scratch tile, rows cut likewise
  std::int64_t acc_keys = 0;       // key rows of the dK/dV accumulators, cut likewise
  std::size_t scratch_floats = 0;  // per thread: 4 tiles + dK/dV accumulators
  int threads = 1;
};

BackwardPlan make_backward_plan(const BackwardProblem& bp) {
  const Problem& p = bp.forward;
  BackwardPlan plan;
  plan.kernel = &backward_kernel_for(p.isa);
  plan.nr = plan.kernel->panel;
  plan.rows = plan.kernel->block_rows;
  plan.keys = plan.kernel->block_keys;
  plan.len_q_pad = round_up(std::max<std::int64_t>(p.len_q, 1), kRowQuantum);
  // Whole key panels suffice (tiles stop at the last panel), so short sequences pack little.
  plan.len_k_pad = round_up(std::max<std::int64_t>(p.len_k, 1), plan.nr);
  plan.dim_k_pad = round_up(p.dim_k, plan.nr);
  plan.dim_v_pad = round_up(p.dim_v, plan.nr);
  // Enough chunks for parallel work when there are few (batch, kv-head) groups, but whole runs of
  // tiles each: every chunk costs a dQ partial to zero and to reduce.
  const std::int64_t tiles = ceil_div(p.len_k, plan.keys);
  plan.chunks = std::min(kMaxKeyChunks, ceil_div(tiles, kMinTilesPerChunk));
  plan.chunk_keys = plan.chunks > 0 ? ceil_div(tiles, plan.chunks) * plan.keys : plan.keys;
  if (plan.chunks > 0) plan.chunks = ceil_div(p.len_k, plan.chunk_keys);
  plan.groups = p.batch * p.heads_kv;
  // No more threads than work items: idle threads would only wait at the barriers.
  plan.threads = static_cast<int>(std::clamp<std::int64_t>(plan.groups * plan.chunks, 1, p.threads));

  GroupLayout& g = plan.layout;
  g.k_panels = 0;
  g.vt_panels = g.k_panels + plan.len_k_pad * p.dim_k;
  g.k_rows = g.vt_panels + plan.len_k_pad * p.dim_v;
  g.heads = g.k_rows + plan.len_k_pad * plan.dim_k_pad;
  g.q_rows = 0;
  g.q_panels = g.q_rows + plan.len_q_pad * p.dim_k;
  g.do_rows = g.q_panels + plan.len_q_pad * plan.dim_k_pad;
  g.do_panels = g.do_rows + plan.len_q_pad * p.dim_v;
  g.lse = g.do_panels + plan.len_q_pad * plan.dim_v_pad;
  g.delta = g.lse + plan.len_q_pad;
  g.head_size = g.delta + plan.len_q_pad;
  g.dq_partials = g.heads + p.group * g.head_size;
  g.total = g.dq_partials + std::max<std::int64_t>(plan.chunks, 1) * p.group * plan.len_q_pad * plan.dim_k_pad;

  // 3 tiles for the kernel, 1 for d(bias) tiles, then the dK/dV accumulators of one key tile.
  // Short sequences get scratch for the rows and keys they have, not for whole tiles.
  plan.tile_ld = std::min(plan.keys, round_up(plan.len_k_pad, kKeyQuantum));
  plan.tile_floats = std::min(plan.rows, plan.len_q_pad) * plan.tile_ld;
  plan.acc_keys = std::min(plan.keys, round_up(plan.len_k_pad, kRowQuantum));
  plan.scratch_floats = static_cast<std::size_t>(4 * plan.tile_floats +
                                                 plan.acc_keys * (plan.dim_k_pad + plan.dim_v_pad));
  const std::size_t group_bytes = static_cast<std::size_t>(g.total) * sizeof(float);
  const std::size_t scratch_bytes = plan.scratch_floats * sizeof(float) * static_cast<std::size_t>(plan.threads);
  std::size_t budget = kDefaultPackBudget;
  if (p.workspace_limit > 0) {
    const std::size_t minimum = group_bytes + scratch_bytes;
    if (p.workspace_limit < minimum)
      fail("options.workspace_limit = ", p.workspace_limit,
           " bytes is too small: this backward call needs at least ", minimum, " bytes (",
           group_bytes, " for one (batch, kv-head) group + ", plan.threads, " threads x ",
           plan.scratch_floats * sizeof(float), " bytes of scratch)");
    budget = p.workspace_limit - scratch_bytes;
  }
  plan.groups_per_round = std::max<std::int64_t>(
      1, std::min<std::int64_t>(plan.groups, static_cast<std::int64_t>(budget / group_bytes)));
  // Each round ends at a barrier, so its items should split evenly over the threads: with rounds
  // of whole multiples of the thread count, every thread gets the same mix of chunk sizes (3
  // groups of 1.5 + 1.5 + 1 chunk costs left one of 2 threads idle for a sixth of each round).
  // Rounds only decide which groups share the packed memory, never a result: groups are
  // independent and d(scale) is summed in (group, chunk) order across rounds.
  if (plan.groups_per_round < plan.groups && plan.groups_per_round > plan.threads)
    plan.groups_per_round -= plan.groups_per_round % plan.threads;
  return plan;
}

// ---- packing ------------------------------------------------------------------------------------

// Row j of src(b, h, ·, ·), columns [c0, c0 + n), into dst (zeros past dim or past len).
void copy_row(const View4<const float>& src, std::int64_t b, std::int64_t h, std::int64_t j,
              std::int64_t len, std::int64_t c0, std::int64_t n, std::int64_t dim, float* dst) {
  std::int64_t c = 0;
  if (j < len) {
    const float* row = &src.at(b, h, j, c0);
    const std::int64_t real = std::min(n, dim - c0);
    if (src.s3 == 1) {
      for (; c < real; ++c) dst[c] = row[c];
    } else {
      for (; c < real; ++c) dst[c] = row[c * src.s3];
    }
  }
  for (; c < n; ++c) dst[c] = 0.0f;
}

// dst[panel][d][n] = src(key panel·NR + n, d): the transposed-panel layout (Kᵀ, Vᵀ). Rows of
// contiguous elements go through the kernel's register transposes.
void pack_transposed_panels(const BackwardKernel& kernel, const View4<const float>& src,
                            std::int64_t b, std::int64_t h, std::int64_t len, std::int64_t len_pad,
                            std::int64_t dim, std::int64_t nr, float* dst) {
  if (src.s3 == 1) {
    for (std::int64_t j0 = 0; j0 < len_pad; j0 += nr) {
      const auto rows = static_cast<int>(std::clamp<std::int64_t>(len - j0, 0, nr));
      kernel.transpose_panel(rows > 0 ? &src.at(b, h, j0, 0) : nullptr, src.s2, rows, dim,
                             dst + j0 * dim);
    }
    return;
  }
  std::vector<float> row(static_cast<std::size_t>(dim));
  for (std::int64_t j0 = 0; j0 < len_pad; j0 += nr) {
    float* panel = dst + j0 * dim;
    for (std::int64_t n = 0; n < nr; ++n) {
      copy_row(src, b, h, j0 + n, len, 0, dim, dim, row.data());
      for (std::int64_t d = 0; d < dim; ++d) panel[d * nr + n] = row[static_cast<std::size_t>(d)];
    }
  }
}

// dst[col / NR][j][col % NR] = src(j, col): the column-panel layout (K rows, Q and dO panels).
void pack_column_panels(const View4<const float>& src, std::int64_t b, std::int64_t h,
                        std::int64_t len, std::int64_t len_pad, std::int64_t dim,
                        std::int64_t dim_pad, std::int64_t nr, float* dst) {
  for (std::int64_t c0 = 0; c0 < dim_pad; c0 += nr) {
    float* panel = dst + c0 / nr * len_pad * nr;
    for (std::int64_t j = 0; j < len_pad; ++j) copy_row(src, b, h, j, len, c0, nr, dim, panel + j * nr);
  }
}

// dst[j][d] = src(j, d), rows past len zero.
void pack_rows(const View4<const float>& src, std::int64_t b, std::int64_t h, std::int64_t len,
               std::int64_t len_pad, std::int64_t dim, float* dst) {
  for (std::int64_t j = 0; j < len_pad; ++j) copy_row(src, b, h, j, len, 0, dim, dim, dst + j * dim);
}

// The packing of one round is cut into tasks of similar size, so that the threads finish it
// together: per group, Kᵀ panels, Vᵀ panels and K column panels; per query head, Q (rows and
// column panels) and dO (rows, column panels, lse and delta).
constexpr std::int64_t kKeyPackTasks = 3;
constexpr std::int64_t kHeadPackTasks = 2;

void pack_keys_values_part(const BackwardProblem& bp, const BackwardPlan& plan, std::int64_t g,
                           std::int64_t part, float* group) {
  const Problem& p = bp.forward;
  const std::int64_t b = g / p.heads_kv, hk = g % p.heads_kv;
  const GroupLayout& l = plan.layout;
  // Keys past this batch entry's key length are packed as zeros: no row sees them, and whatever
  // they hold (NaN in an unused cache slot) must not reach a gradient as 0·NaN.
  const std::int64_t len = p.key_length(b);
  if (part == 0)
    pack_transposed_panels(*plan.kernel, p.k, b, hk, len, plan.len_k_pad, p.dim_k, plan.nr, group + l.k_panels);
  else if (part == 1)
    pack_transposed_panels(*plan.kernel, p.v, b, hk, len, plan.len_k_pad, p.dim_v, plan.nr, group + l.vt_panels);
  else
    pack_column_panels(p.k, b, hk, len, plan.len_k_pad, p.dim_k, plan.dim_k_pad, plan.nr,
                       group + l.k_rows);
}

// Rows that see no key (padding past the query length, fully masked rows: lse = −inf; with a
// sink, rows whose causal / window range is empty) have no gradient; their Q and dO are zeroed
// so that NaN there cannot reach dK or dV as 0·NaN.
bool row_has_gradient(const BackwardProblem& bp, std::int64_t b, std::int64_t h, std::int64_t i) {
  const Problem& p = bp.forward;
  return i < p.query_length(b) && bp.lse.at(b, h, i, 0) != -INFINITY && !visible_keys(p, b, i).empty();
}

// Part 0: Q (rows, column panels); part 1: dO (rows, column panels), lse and delta_i = dO_i · O_i.
void pack_query_head_part(const BackwardProblem& bp, const BackwardPlan& plan, std::int64_t g,
                          std::int64_t head_in_group, std::int64_t part, float* group) {
  const Problem& p = bp.forward;
  const std::int64_t b = g / p.heads_kv, h = (g % p.heads_kv) * p.group + head_in_group;
  const GroupLayout& l = plan.layout;
  float* head = group + l.heads + head_in_group * l.head_size;
  const bool queries = part == 0;
  const View4<const float>& src = queries ? p.q : bp.dout;
  const std::int64_t dim = queries ? p.dim_k : p.dim_v, dim_pad = queries ? plan.dim_k_pad : plan.dim_v_pad;
  float* rows = head + (queries ? l.q_rows : l.do_rows);
  float* panels = head + (queries ? l.q_panels : l.do_panels);
  pack_rows(src, b, h, p.len_q, plan.len_q_pad, dim, rows);
  pack_column_panels(src, b, h, p.len_q, plan.len_q_pad, dim, dim_pad, plan.nr, panels);
  for (std::int64_t i = 0; i < plan.len_q_pad; ++i) {
    const bool real = row_has_gradient(bp, b, h, i);
    if (!real && i < p.len_q) {
      std::fill_n(rows + i * dim, dim, 0.0f);
      for (std::int64_t c0 = 0; c0 < dim_pad; c0 += plan.nr)
        std::fill_n(panels + c0 * plan.len_q_pad + i * plan.nr, plan.nr, 0.0f);
    }
    if (queries) continue;
    head[l.lse + i] = real ? bp.lse.at(b, h, i, 0) : -INFINITY;
    float delta = 0.0f;  // delta_i = dO_i · O_i
    for (std::int64_t d = 0; real && d < p.dim_v; ++d) delta += bp.dout.at(b, h, i, d) * p.out.at(b, h, i, d);
    head[l.delta + i] = delta;
  }
}

// ---- rows whose lse cannot carry log(l) -------------------------------------------------------
//
// The tiles recompute P = exp(s − lse) from the forward's fp32 lse = m + log(l). Its rounding,
// u·|lse| with u = 2^-24, is a relative error of P; where |lse| is large it swamps log(l) itself:
// at |lse| ~ 1e28 the fp32 lse rounds back to m, and three tied keys each get P = 1 instead of 1/3
// (a fuzz finding, docs/RELIABILITY.md). For rows with |lse| ≥ kRenormaliseLse (where that error
// exceeds 2^-16, the size of the rounding of the logits themselves there) a pass before the tiles
// sums l'_i = Σ_j exp(s_ij − lse_i) (+ exp(sink − lse_i)) over the row, from logits computed by
// the tile code itself (bit for bit those the tiles use), and the tiles use P = exp(s − lse) / l'.
// That is exp(s − m) / Σ exp(s − m) up to a few roundings, whatever lse lost. The pass costs one
// more Q·Kᵀ for those rows only; rows below the threshold are untouched (the same bits as without).
constexpr float kRenormaliseLse = 256.0f;

bool renormalised_row(float lse) { return std::isfinite(lse) && std::abs(lse) >= kRenormaliseLse; }

// 1/l' per query row (b, h, i) at (b·Hq + h)·Lq + i, 1 where the row is not renormalised; empty
// when no row of the call is (then nothing else changes either).
std::vector<float> initial_row_norms(const BackwardProblem& bp) {
  const Problem& p = bp.forward;
  bool any = false;
  for (std::int64_t b = 0; b < p.batch && !any; ++b)
    for (std::int64_t h = 0; h < p.heads_q && !any; ++h)
      for (std::int64_t i = 0; i < p.query_length(b) && !any; ++i)
        any = renormalised_row(bp.lse.at(b, h, i, 0));
  if (!any) return {};
  return std::vector<float>(static_cast<std::size_t>(p.batch * p.heads_q * p.len_q), 1.0f);
}

const float* row_norms_of(const std::vector<float>& norms, const Problem& p, std::int64_t b,
                          std::int64_t h) {
  return norms.empty() ? nullptr : norms.data() + (b * p.heads_q + h) * p.len_q;
}

// ---- the tile loop ------------------------------------------------------------------------------

// Visible key ranges of every query row of batch entry b.
struct RowRanges {
  std::vector<std::int64_t> begin, end;
};

std::vector<RowRanges> all_row_ranges(const Problem& p) {
  std::vector<RowRanges> ranges(static_cast<std::size_t>(p.batch));
  for (std::int64_t b = 0; b < p.batch; ++b) {
    RowRanges& r = ranges[static_cast<std::size_t>(b)];
    r.begin.resize(static_cast<std::size_t>(p.len_q));
    r.end.resize(static_cast<std::size_t>(p.len_q));
    for (std::int64_t i = 0; i < p.len_q; ++i) {
      const KeyRange k = visible_keys(p, b, i);
      r.begin[static_cast<std::size_t>(i)] = k.begin;
      r.end[static_cast<std::size_t>(i)] = k.end;
    }
  }
  return ranges;
}

// The tile description shared by the main pass and the d(bias) pass; rows, keys and outputs are
// filled in by the caller.
kernels::BackwardTile tile_for_head(const BackwardProblem& bp, const BackwardPlan& plan,
                                    std::int64_t g, std::int64_t head_in_group, const float* group) {
  const Problem& p = bp.forward;
  const GroupLayout& l = plan.layout;
  const float* head = group + l.heads + head_in_group * l.head_size;
  kernels::BackwardTile t;
  t.dim_k = p.dim_k;
  t.dim_v = p.dim_v;
  t.dim_k_pad = plan.dim_k_pad;
  t.dim_v_pad = plan.dim_v_pad;
  t.len_q_pad = plan.len_q_pad;
  t.len_k_pad = plan.len_k_pad;
  t.scale = p.scale;
  t.softcap = p.softcap;
  t.k_panels = group + l.k_panels;
  t.vt_panels = group + l.vt_panels;
  t.k_rows = group + l.k_rows;
  t.q_rows = head + l.q_rows;
  t.q_panels = head + l.q_panels;
  t.do_rows = head + l.do_rows;
  t.do_panels = head + l.do_panels;
  t.lse = head + l.lse;
  t.delta = head + l.delta;
  (void)g;
  return t;
}

// Points the tile at query rows [i0, i0 + rows) of (b, h) and keys [t0, t0 + n_keys).
void place_tile(kernels::BackwardTile& t, const Problem& p, const RowRanges& ranges, std::int64_t b,
                std::int64_t h, std::int64_t i0, int rows, std::int64_t t0, std::int64_t n_keys) {
  t.i0 = i0;
  t.rows = rows;
  t.t0 = t0;
  t.n_keys = n_keys;
  t.key_begin = ranges.begin.data() + i0;
  t.key_end = ranges.end.data() + i0;
  if (p.mask) {
    t.mask = &p.mask->at(b, h, i0, 0);
    t.mask_row_stride = p.mask->s2;
    t.mask_col_stride = p.mask->s3;
  }
  if (p.bias) {
    t.bias = &p.bias->at(b, h, i0, 0);
    t.bias_row_stride = p.bias->s2;
    t.bias_col_stride = p.bias->s3;
  }
}

// Whether any of rows [i0, i0 + rows) sees a key in [t0, t1).
bool tile_visible(const RowRanges& r, std::int64_t i0, std::int64_t rows, std::int64_t t0,
                  std::int64_t t1) {
  for (std::int64_t i = i0; i < i0 + rows; ++i) {
    const auto k = static_cast<std::size_t>(i);
    if (r.begin[k] < r.end[k] && r.begin[k] < t1 && r.end[k] > t0) return true;
  }
  return false;
}

kernels::BackwardScratch scratch_tiles(const BackwardPlan& plan, float* scratch) {
  const std::int64_t tile = plan.tile_floats;
  return {scratch, scratch + tile, scratch + 2 * tile, plan.tile_ld};
}

struct Item {
  std::int64_t group_in_round, chunk, cost;
};

// One (batch, kv-head, key chunk): dK and dV of its keys, its dQ partial, its d(scale) share.
double run_item(const BackwardProblem& bp, const BackwardPlan& plan,
                const std::vector<RowRanges>& ranges, const std::vector<float>& norms,
                std::int64_t g, const Item& item, float* group, float* scratch) {
  const Problem& p = bp.forward;
  const std::int64_t b = g / p.heads_kv, hk = g % p.heads_kv;
  const GroupLayout& l = plan.layout;
  const kernels::BackwardScratch s = scratch_tiles(plan, scratch);
  float* dk_acc = scratch + 4 * plan.tile_floats;
  float* dv_acc = dk_acc + plan.acc_keys * plan.dim_k_pad;
  const std::int64_t head_dq = plan.len_q_pad * plan.dim_k_pad;
  float* dq_partial = group + l.dq_partials + item.chunk * p.group * head_dq;
  std::fill(dq_partial, dq_partial + p.group * head_dq, 0.0f);

  double dscale = 0.0;
  const std::int64_t chunk_begin = item.chunk * plan.chunk_keys;
  const std::int64_t chunk_end = std::min(p.len_k, chunk_begin + plan.chunk_keys);
  const RowRanges& rr = ranges[static_cast<std::size_t>(b)];
  for (std::int64_t t0 = chunk_begin; t0 < chunk_end; t0 += plan.keys) {
    const std::int64_t n_keys = std::min(plan.keys, round_up(chunk_end - t0, plan.nr));
    std::fill(dk_acc, dk_acc + plan.acc_keys * (plan.dim_k_pad + plan.dim_v_pad), 0.0f);
    for (std::int64_t hg = 0; hg < p.group; ++hg) {
      const std::int64_t h = hk * p.group + hg;
      kernels::BackwardTile t = tile_for_head(bp, plan, g, hg, group);
      t.dk_acc = dk_acc;
      t.dv_acc = dv_acc;
      t.dq_acc = dq_partial + hg * head_dq;
      t.dscale = bp.dscale != nullptr ? &dscale : nullptr;  // raw scores kept only when asked
      t.norm = row_norms_of(norms, p, b, h);
      for (std::int64_t i0 = 0; i0 < p.len_q; i0 += plan.rows) {
        const int rows = static_cast<int>(std::min(plan.rows, p.len_q - i0));
        if (!tile_visible(rr, i0, rows, t0, t0 + n_keys)) continue;
        place_tile(t, p, rr, b, h, i0, rows, t0, n_keys);
        plan.kernel->tile(t, s);
      }
    }
    for (std::int64_t j = t0; j < std::min(p.len_k, t0 + n_keys); ++j) {
      const float* dk_row = dk_acc + (j - t0) * plan.dim_k_pad;
      const float* dv_row = dv_acc + (j - t0) * plan.dim_v_pad;
      for (std::int64_t d = 0; d < p.dim_k; ++d) bp.dk.at(b, hk, j, d) = p.scale * dk_row[d];
      for (std::int64_t d = 0; d < p.dim_v; ++d) bp.dv.at(b, hk, j, d) = dv_row[d];
    }
  }
  return dscale;
}

// The renormalisation pass (above) for query rows [i0, i0 + rows) of query head hg of group g:
// each row's sum over every key tile in key order (one task per row block: the same bits for any
// thread count), then 1/l' into `norms` for the rows that need it.
void renormalise_rows(const BackwardProblem& bp, const BackwardPlan& plan,
                      const std::vector<RowRanges>& ranges, std::int64_t g, std::int64_t hg,
                      std::int64_t i0, const float* group, float* scratch, std::vector<float>& norms) {
  const Problem& p = bp.forward;
  const std::int64_t b = g / p.heads_kv, h = (g % p.heads_kv) * p.group + hg;
  const int rows = static_cast<int>(std::min(plan.rows, p.len_q - i0));
  const float* lse = group + plan.layout.heads + hg * plan.layout.head_size + plan.layout.lse;
  bool any = false;  // (the packed lse is −inf on rows without a gradient)
  for (int r = 0; r < rows && !any; ++r) any = renormalised_row(lse[i0 + r]);
  if (!any) return;
  std::vector<double> sums(static_cast<std::size_t>(rows), 0.0);
  const RowRanges& rr = ranges[static_cast<std::size_t>(b)];
  kernels::BackwardTile t = tile_for_head(bp, plan, g, hg, group);
  t.row_sums = sums.data();
  const kernels::BackwardScratch s = scratch_tiles(plan, scratch);
  for (std::int64_t t0 = 0; t0 < p.len_k; t0 += plan.keys) {
    const std::int64_t n_keys = std::min(plan.keys, round_up(p.len_k - t0, plan.nr));
    if (!tile_visible(rr, i0, rows, t0, t0 + n_keys)) continue;
    place_tile(t, p, rr, b, h, i0, rows, t0, n_keys);
    plan.kernel->tile(t, s);
  }
  const double sink = p.sink(h);
  for (int r = 0; r < rows; ++r) {
    if (!renormalised_row(lse[i0 + r])) continue;
    double sum = sums[static_cast<std::size_t>(r)];
    if (sink != -INFINITY) sum += std::exp(sink - static_cast<double>(lse[i0 + r]));
    if (sum > 0.0 && std::isfinite(sum))
      norms[static_cast<std::size_t>((b * p.heads_q + h) * p.len_q + i0 + r)] = static_cast<float>(1.0 / sum);
  }
}

std::int64_t chunk_cost(const Problem& p, const RowRanges& r, std::int64_t k0, std::int64_t k1) {
  std::int64_t pairs = 0;
  for (std::int64_t i = 0; i < p.len_q; ++i) {
    const auto x = static_cast<std::size_t>(i);
    pairs += std::max<std::int64_t>(0, std::min(r.end[x], k1) - std::max(r.begin[x], k0));
  }
  return pairs;
}

// dq(b, h) = scale · Σ_chunks partial, in chunk order, for rows [i0, i1).
// Each element is summed from 0 in chunk order; the loops run along rows so that they vectorize.
void reduce_dq(const BackwardProblem& bp, const BackwardPlan& plan, std::int64_t g,
               std::int64_t hg, std::int64_t i0, std::int64_t i1, const float* group,
               float* row_sum) {
  const Problem& p = bp.forward;
  const std::int64_t b = g / p.heads_kv, h = (g % p.heads_kv) * p.group + hg;
  const std::int64_t head_dq = plan.len_q_pad * plan.dim_k_pad;
  const float* partials = group + plan.layout.dq_partials + hg * head_dq;
  for (std::int64_t i = i0; i < i1; ++i) {
    std::fill_n(row_sum, p.dim_k, 0.0f);
    for (std::int64_t c = 0; c < plan.chunks; ++c) {
      const float* partial = partials + c * p.group * head_dq + i * plan.dim_k_pad;
      for (std::int64_t d = 0; d < p.dim_k; ++d) row_sum[d] += partial[d];
    }
    float* dq = &bp.dq.at(b, h, i, 0);
    const std::int64_t stride = bp.dq.s3;
    for (std::int64_t d = 0; d < p.dim_k; ++d) dq[d * stride] = p.scale * row_sum[d];
  }
}

// ---- d(bias) ------------------------------------------------------------------------------------

// A d(bias) work item owns the elements with these indices along the dims d(bias) keeps; a
// broadcast (size-1) dimension is summed over entirely by every item.
struct BiasItem {
  std::int64_t b, h, q_block, key_tile;  // -1 = all (broadcast dimension)
};

std::vector<BiasItem> bias_items(const BackwardProblem& bp, const BackwardPlan& plan) {
  const Problem& p = bp.forward;
  const auto& s = bp.dbias_shape;
  const std::int64_t nb = s[0] > 1 ? p.batch : 1, nh = s[1] > 1 ? p.heads_q : 1;
  const std::int64_t nq = s[2] > 1 ? ceil_div(p.len_q, plan.rows) : 1;
  const std::int64_t nk = s[3] > 1 ? ceil_div(p.len_k, plan.keys) : 1;
  std::vector<BiasItem> items;
  for (std::int64_t b = 0; b < nb; ++b)
    for (std::int64_t h = 0; h < nh; ++h)
      for (std::int64_t q = 0; q < nq; ++q)
        for (std::int64_t k = 0; k < nk; ++k)
          items.push_back({s[0] > 1 ? b : -1, s[1] > 1 ? h : -1, s[2] > 1 ? q : -1, s[3] > 1 ? k : -1});
  return items;
}

// Adds every dS tile of the round's groups that reduces into this item's d(bias) elements.
void run_bias_item(const BackwardProblem& bp, const BackwardPlan& plan,
                   const std::vector<RowRanges>& ranges, const std::vector<float>& norms,
                   const BiasItem& item,
                   std::int64_t round_begin, std::int64_t round_end, const float* packed,
                   float* scratch) {
  const Problem& p = bp.forward;
  const kernels::BackwardScratch s = scratch_tiles(plan, scratch);
  float* dlogits = scratch + 3 * plan.tile_floats;  // [rows][tile_ld]
  const View4<float>& db = *bp.dbias;
  const std::int64_t q_blocks = ceil_div(p.len_q, plan.rows), key_tiles = ceil_div(p.len_k, plan.keys);
  for (std::int64_t g = round_begin; g < round_end; ++g) {
    const std::int64_t b = g / p.heads_kv, hk = g % p.heads_kv;
    if (item.b >= 0 && item.b != b) continue;
    const float* group = packed + (g - round_begin) * plan.layout.total;
    const RowRanges& rr = ranges[static_cast<std::size_t>(b)];
    for (std::int64_t hg = 0; hg < p.group; ++hg) {
      const std::int64_t h = hk * p.group + hg;
      if (item.h >= 0 && item.h != h) continue;
      kernels::BackwardTile t = tile_for_head(bp, plan, g, hg, group);
      t.dlogits = dlogits;
      t.norm = row_norms_of(norms, p, b, h);
      for (std::int64_t qb = 0; qb < q_blocks; ++qb) {
        if (item.q_block >= 0 && item.q_block != qb) continue;
        const std::int64_t i0 = qb * plan.rows;
        const int rows = static_cast<int>(std::min(plan.rows, p.len_q - i0));
        for (std::int64_t kt = 0; kt < key_tiles; ++kt) {
          if (item.key_tile >= 0 && item.key_tile != kt) continue;
          const std::int64_t t0 = kt * plan.keys;
          const std::int64_t n_keys = std::min(plan.keys, round_up(p.len_k - t0, plan.nr));
          if (!tile_visible(rr, i0, rows, t0, t0 + n_keys)) continue;
          place_tile(t, p, rr, b, h, i0, rows, t0, n_keys);
          plan.kernel->tile(t, s);
          const std::int64_t keys = std::min(n_keys, p.len_k - t0);
          for (int r = 0; r < rows; ++r)
            for (std::int64_t c = 0; c < keys; ++c)
              db.at(b, h, i0 + r, t0 + c) += dlogits[r * plan.tile_ld + c];
        }
      }
    }
  }
}

void zero_dbias(const BackwardProblem& bp) {
  const auto& s = bp.dbias_shape;
  const View4<float>& db = *bp.dbias;
  for (std::int64_t b = 0; b < s[0]; ++b)
    for (std::int64_t h = 0; h < s[1]; ++h)
      for (std::int64_t i = 0; i < s[2]; ++i)
        for (std::int64_t j = 0; j < s[3]; ++j) db.at(b, h, i, j) = 0.0f;
}

// ---- the driver -------------------------------------------------------------------------------

void zero_grads_without_keys(const BackwardProblem& bp) {
  const Problem& p = bp.forward;
  for (std::int64_t b = 0; b < p.batch; ++b)
    for (std::int64_t h = 0; h < p.heads_q; ++h)
      for (std::int64_t i = 0; i < p.len_q; ++i)
        for (std::int64_t d = 0; d < p.dim_k; ++d) bp.dq.at(b, h, i, d) = 0.0f;
}

double run_backward(const BackwardProblem& bp, const BackwardPlan& plan, std::vector<float>& norms) {
  const Problem& p = bp.forward;
  if (bp.dbias) zero_dbias(bp);
  if (p.len_k == 0) {  // no keys: every gradient is zero (dK, dV are empty)
    zero_grads_without_keys(bp);
    return 0.0;
  }
  if (plan.groups == 0 || p.group == 0) return 0.0;
  const std::vector<RowRanges> ranges = all_row_ranges(p);
  const Workspace packed = acquire_workspace(static_cast<std::size_t>(plan.layout.total) *
                                             static_cast<std::size_t>(plan.groups_per_round) * sizeof(float));
  const Workspace scratch =
      acquire_workspace(plan.scratch_floats * static_cast<std::size_t>(plan.threads) * sizeof(float));
  const std::vector<BiasItem> dbias_items = bp.dbias ? bias_items(bp, plan) : std::vector<BiasItem>{};
  std::vector<Item> items;
  std::vector<double> item_dscale;
  double dscale = 0.0;
  const std::int64_t row_blocks = ceil_div(p.len_q, plan.rows);

  const CpuPlan cpus(plan.threads);  // one CPU per thread when the team takes them all
#pragma omp parallel num_threads(plan.threads)
  {
    const ThreadPin pin(cpus, omp_get_thread_num());
    float* my_scratch = scratch.floats() + plan.scratch_floats * static_cast<std::size_t>(omp_get_thread_num());
    for (std::int64_t round = 0; round < plan.groups; round += plan.groups_per_round) {
      const std::int64_t round_end = std::min(plan.groups, round + plan.groups_per_round);
      const std::int64_t n_groups = round_end - round;
#pragma omp single
      {
        items.clear();
        for (std::int64_t g = 0; g < n_groups; ++g) {
          const RowRanges& rr = ranges[static_cast<std::size_t>((round + g) / p.heads_kv)];
          for (std::int64_t c = 0; c < plan.chunks; ++c) {
            const std::int64_t k0 = c * plan.chunk_keys;
            items.push_back({g, c, chunk_cost(p, rr, k0, std::min(p.len_k, k0 + plan.chunk_keys))});
          }
        }
        item_dscale.assign(items.size(), 0.0);
      }
      // Pack (tasks above: kKeyPackTasks per group, then kHeadPackTasks per query head).
      const std::int64_t tasks_per_group = kKeyPackTasks + p.group * kHeadPackTasks;
#pragma omp for schedule(dynamic, 1)
      for (std::int64_t task = 0; task < n_groups * tasks_per_group; ++task) {
        const std::int64_t g = task / tasks_per_group, part = task % tasks_per_group;
        float* group = packed.floats() + g * plan.layout.total;
        if (part < kKeyPackTasks)
          pack_keys_values_part(bp, plan, round + g, part, group);
        else
          pack_query_head_part(bp, plan, round + g, (part - kKeyPackTasks) / kHeadPackTasks,
                               (part - kKeyPackTasks) % kHeadPackTasks, group);
      }
      if (!norms.empty()) {  // rows whose lse cannot carry log(l), see above
#pragma omp for schedule(dynamic, 1)
        for (std::int64_t task = 0; task < n_groups * p.group * row_blocks; ++task) {
          const std::int64_t g = task / (p.group * row_blocks);
          renormalise_rows(bp, plan, ranges, round + g, task / row_blocks % p.group,
                           task % row_blocks * plan.rows, packed.floats() + g * plan.layout.total,
                           my_scratch, norms);
        }
      }
      // Group by group (the threads share one group's packed data in the caches), largest items
      // first within a group; each item's result does not depend on who runs it or when.
#pragma omp single
      {
        std::vector<std::size_t> order(items.size());
        for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
        std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
          const Item& x = items[a];
          const Item& y = items[b];
          return x.group_in_round != y.group_in_round ? x.group_in_round < y.group_in_round
                                                      : x.cost > y.cost;
        });
        std::vector<Item> sorted;
        for (std::size_t i : order) sorted.push_back(items[i]);
        items = sorted;
      }
#pragma omp for schedule(dynamic, 1)
      for (std::size_t w = 0; w < items.size(); ++w) {
        const Item& it = items[w];
        float* group = packed.floats() + it.group_in_round * plan.layout.total;
        item_dscale[static_cast<std::size_t>(it.group_in_round * plan.chunks + it.chunk)] =
            run_item(bp, plan, ranges, norms, round + it.group_in_round, it, group, my_scratch);
      }
#pragma omp for schedule(dynamic, 1)
      for (std::int64_t task = 0; task < n_groups * p.group * row_blocks; ++task) {
        const std::int64_t g = task / (p.group * row_blocks);
        const std::int64_t hg = task / row_blocks % p.group, rb = task % row_blocks;
        reduce_dq(bp, plan, round + g, hg, rb * plan.rows, std::min(p.len_q, (rb + 1) * plan.rows),
                  packed.floats() + g * plan.layout.total, my_scratch);
      }
      if (bp.dbias) {
#pragma omp for schedule(dynamic, 1)
        for (std::size_t w = 0; w < dbias_items.size(); ++w)
          run_bias_item(bp, plan, ranges, norms, dbias_items[w], round, round_end, packed.floats(),
                        my_scratch);
      }
#pragma omp single
      for (double d : item_dscale) dscale += d;  // in (group, chunk) order
    }
  }
  return dscale;
}

// dL/d(sink_h) = −Σ_{b, i} p_sink·D_i with p_sink = exp(sink_h − lse_i) (divided by l'_i where
// the row is renormalised, see above), D_i = dO_i·O_i, over the real rows of head h (padding rows
// have no sink). One task per head, rows in a fixed order, in double: the same bits for any
// thread count.
void sink_gradients(const BackwardProblem& bp, const std::vector<float>& norms) {
  const Problem& p = bp.forward;
#pragma omp parallel for schedule(static) num_threads(static_cast<int>(std::clamp<std::int64_t>(p.heads_q, 1, p.threads)))
  for (std::int64_t h = 0; h < p.heads_q; ++h) {
    const double sink = p.sink(h);
    double sum = 0.0;
    for (std::int64_t b = 0; sink != -INFINITY && b < p.batch; ++b)
      for (std::int64_t i = 0; i < p.query_length(b); ++i) {
        if (!row_has_gradient(bp, b, h, i)) continue;  // out = 0: no term
        const double lse = bp.lse.at(b, h, i, 0);
        double delta = 0.0;
        for (std::int64_t d = 0; d < p.dim_v; ++d)
          delta += double(bp.dout.at(b, h, i, d)) * double(p.out.at(b, h, i, d));
        const double norm = norms.empty() ? 1.0 : norms[static_cast<std::size_t>((b * p.heads_q + h) * p.len_q + i)];
        sum -= std::exp(sink - lse) * norm * delta;
      }
    bp.dsinks[h * bp.dsinks_stride] = static_cast<float>(sum);
  }
}

// ---- bf16 / f16 tensors: widened to fp32 copies, gradients narrowed back ------------------------
// The backward kernels are fp32 only: a 16-bit call runs on contiguous fp32 copies of its 16-bit
// tensors (one extra fp32 copy of each, outside options.workspace_limit) and narrows the
// gradients asked for in 16 bits from fp32 results (round to nearest even).

bool has_16bit(const BackwardProblem& bp) {
  return bp.forward.dtype != DType::f32 || bp.forward.out_dtype != DType::f32 ||
         bp.dq_dtype != DType::f32 || bp.dk_dtype != DType::f32 || bp.dv_dtype != DType::f32;
}

// Calls fn(element offset, flat row-major index) for every element of a rank-4 view.
template <typename Fn>
void for_each_element(const Tensor& t, Fn fn) {
  std::size_t flat = 0;
  for (std::int64_t a = 0; a < t.shape[0]; ++a)
    for (std::int64_t b = 0; b < t.shape[1]; ++b)
      for (std::int64_t c = 0; c < t.shape[2]; ++c)
        for (std::int64_t d = 0; d < t.shape[3]; ++d)
          fn(a * t.stride[0] + b * t.stride[1] + c * t.stride[2] + d * t.stride[3], flat++);
}

// A contiguous fp32 copy of rank-4 `t` (any float dtype) in `storage`, as a tensor.
Tensor widened(const Tensor& t, std::vector<float>& storage) {
  storage.resize(static_cast<std::size_t>(t.numel()));
  if (t.dtype == DType::f32) {
    const auto* src = static_cast<const float*>(t.data);
    for_each_element(t, [&](std::int64_t at, std::size_t n) { storage[n] = src[at]; });
  } else {
    const auto* src = static_cast<const std::uint16_t*>(t.data);
    const bool bf16 = t.dtype == DType::bf16;
    for_each_element(t, [&](std::int64_t at, std::size_t n) {
      storage[n] = bf16 ? half::bf16_to_float(src[at]) : half::f16_to_float(src[at]);
    });
  }
  return Tensor::contiguous(storage.data(), DType::f32,
                            {t.shape[0], t.shape[1], t.shape[2], t.shape[3]});
}

// Rounds the contiguous fp32 `values` into 16-bit rank-4 `t`.
void narrow_into(const std::vector<float>& values, const Tensor& t) {
  auto* dst = static_cast<std::uint16_t*>(t.data);
  const bool bf16 = t.dtype == DType::bf16;
  for_each_element(t, [&](std::int64_t at, std::size_t n) {
    dst[at] = bf16 ? half::float_to_bf16(values[n]) : half::float_to_f16(values[n]);
  });
}

RunInfo backward_widened(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                         const Tensor& dout, const Tensor& lse, const Options& options,
                         const Grads& grads) {
  std::vector<float> q32, k32, v32, out32, dout32, dq32, dk32, dv32;
  const Tensor wq = widened(q, q32), wk = widened(k, k32), wv = widened(v, v32);
  const Tensor wout = out.dtype == DType::f32 ? out : widened(out, out32);
  const Tensor wdout = widened(dout, dout32);
  Grads g = grads;
  // 16-bit gradients: computed into fp32 scratch of the same shape, narrowed afterwards.
  const auto scratch = [](const Tensor& like, std::vector<float>& storage) {
    storage.assign(static_cast<std::size_t>(like.numel()), 0.0f);
    return Tensor::contiguous(storage.data(), DType::f32,
                              {like.shape[0], like.shape[1], like.shape[2], like.shape[3]});
  };
  if (grads.dq.dtype != DType::f32) g.dq = scratch(grads.dq, dq32);
  if (grads.dk.dtype != DType::f32) g.dk = scratch(grads.dk, dk32);
  if (grads.dv.dtype != DType::f32) g.dv = scratch(grads.dv, dv32);
  const RunInfo info = backward(wq, wk, wv, wout, wdout, lse, options, g);
  if (grads.dq.dtype != DType::f32) narrow_into(dq32, grads.dq);
  if (grads.dk.dtype != DType::f32) narrow_into(dk32, grads.dk);
  if (grads.dv.dtype != DType::f32) narrow_into(dv32, grads.dv);
  return info;
}

}  // namespace

RunInfo backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                 const Tensor& dout, const Tensor& lse, const Options& options, const Grads& grads) {
  const BackwardProblem bp = validate_backward(q, k, v, out, dout, lse, options, grads);
  if (has_16bit(bp)) return backward_widened(q, k, v, out, dout, lse, options, grads);
  const BackwardPlan plan = make_backward_plan(bp);
  std::vector<float> norms = initial_row_norms(bp);
  const double dscale = run_backward(bp, plan, norms);
  if (bp.dscale != nullptr) *bp.dscale = static_cast<float>(dscale);
  if (bp.dsinks != nullptr) sink_gradients(bp, norms);
  const Problem& p = bp.forward;
  double pairs = 0;
  for (std::int64_t b = 0; b < p.batch; ++b)
    for (std::int64_t i = 0; i < p.len_q; ++i) {
      const KeyRange r = visible_keys(p, b, i);
      pairs += static_cast<double>(r.end - r.begin);
    }
  RunInfo info;
  info.isa = p.isa;
  info.threads = plan.threads;
  info.flops = pairs * static_cast<double>(p.heads_q) * 2.0 * static_cast<double>(3 * p.dim_k + 2 * p.dim_v);
  info.workspace_bytes = static_cast<std::size_t>(plan.layout.total) *
                             static_cast<std::size_t>(plan.groups_per_round) * sizeof(float) +
                         plan.scratch_floats * static_cast<std::size_t>(plan.threads) * sizeof(float);
  return info;
}

}  // namespace sdpa
