// The forward driver: validate, plan the work partition, pack keys/values, run the per-ISA kernel
// over query blocks on OpenMP threads.
//
// Determinism: every output row is computed by exactly one work item, from the same key tiles in
// the same order, whatever thread runs it. So the result is bitwise identical for any thread count
// and any schedule, and the schedule is free to balance work (largest items first, dynamic).
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "core/decode.hpp"
#include "core/errors.hpp"
#include "core/half.hpp"
#include "core/isa.hpp"
#include "core/mask.hpp"
#include "core/problem.hpp"
#include "core/pinning.hpp"
#include "core/workspace.hpp"
#include "kernels/flash_forward.hpp"

namespace sdpa {
namespace {

using kernels::FlashKernel;

const FlashKernel& kernel_for(Isa isa, DType dtype) {
  if (dtype == DType::bf16 && uses_bf16_products(isa)) return kernels::flash_kernel_avx512_bf16();
  switch (isa) {
    case Isa::avx512: return kernels::flash_kernel_avx512();
    case Isa::avx2: return kernels::flash_kernel_avx2();
    default: return kernels::flash_kernel_scalar();
  }
}

std::int64_t round_up(std::int64_t x, std::int64_t to) { return (x + to - 1) / to * to; }

// Memory plan of one call: packed key/value heads are prepared a chunk of (batch, kv-head) groups
// at a time; each thread has its own scratch for one query block.
struct Plan {
  const FlashKernel* kernel = nullptr;
  std::int64_t panel = 0, len_k_padded = 0, dim_v_padded = 0;
  std::int64_t k_pack_floats = 0, v_pack_floats = 0;  // per (batch, kv-head)
  std::int64_t groups = 0, groups_per_chunk = 1;
  std::int64_t query_blocks = 0;
  std::size_t scratch_floats = 0;  // per thread
  int threads = 1;

  std::size_t group_floats() const { return static_cast<std::size_t>(k_pack_floats + v_pack_floats); }
  std::size_t workspace_bytes() const {
    return (group_floats() * static_cast<std::size_t>(groups_per_chunk) +
            scratch_floats * static_cast<std::size_t>(threads)) * sizeof(float);
  }
};

constexpr std::size_t kDefaultPackBudget = std::size_t{64} << 20;  // bytes of packed K/V at once

Plan make_plan(const Problem& p) {
  Plan plan;
  plan.kernel = &kernel_for(p.isa, p.dtype);
  const FlashKernel& k = *plan.kernel;
  plan.panel = k.panel;
  plan.len_k_padded = round_up(p.len_k, k.panel);
  plan.dim_v_padded = round_up(p.dim_v, k.panel);
  if (k.bf16_products) {  // bf16 panels: two elements per float of workspace
    plan.k_pack_floats = plan.len_k_padded * round_up(p.dim_k, 2) / 2;
    plan.v_pack_floats = plan.len_k_padded * plan.dim_v_padded / 2;
  } else {
    plan.k_pack_floats = plan.len_k_padded * p.dim_k;
    plan.v_pack_floats = plan.len_k_padded * plan.dim_v_padded;
  }
  plan.groups = p.batch * p.heads_kv;
  plan.query_blocks = (p.len_q + k.block_rows - 1) / k.block_rows;
  // No more threads than work items: idle threads would only wait at the barriers.
  const std::int64_t items = plan.groups * p.group * plan.query_blocks;
  plan.threads = static_cast<int>(std::clamp<std::int64_t>(items, 1, p.threads));
  // q_packed + scores + acc + row state (4 rows of floats) + key ranges (2 rows of int64)
  plan.scratch_floats = static_cast<std::size_t>(k.block_rows) *
                        static_cast<std::size_t>(p.dim_k + k.block_keys + plan.dim_v_padded + 4 + 4);

  const std::size_t group_bytes = plan.group_floats() * sizeof(float);
  const std::size_t scratch_bytes = plan.scratch_floats * sizeof(float) * static_cast<std::size_t>(plan.threads);
  std::size_t pack_budget = kDefaultPackBudget;
  if (p.workspace_limit > 0) {
    const std::size_t minimum = group_bytes + scratch_bytes;
    if (p.workspace_limit < minimum)
      fail("options.workspace_limit = ", p.workspace_limit,
           " bytes is too small: this call needs at least ", minimum, " bytes (", group_bytes,
           " for one packed key/value head + ", plan.threads, " threads x ",
           plan.scratch_floats * sizeof(float), " bytes of scratch)");
    pack_budget = p.workspace_limit - scratch_bytes;
  }
  const std::int64_t fit = group_bytes == 0 ? plan.groups : static_cast<std::int64_t>(pack_budget / group_bytes);
  plan.groups_per_chunk = std::max<std::int64_t>(1, std::min<std::int64_t>(plan.groups, fit));
  return plan;
}

// Input elements widened to fp32 while packing (bf16 / f16 inputs run the fp32 kernels).
float widen(std::uint16_t bits, DType dtype) {
  return dtype == DType::bf16 ? half::bf16_to_float(bits) : half::f16_to_float(bits);
}

// K of one (batch, kv-head), keys [panel_begin·NR, panel_end·NR), transposed into panels
// [panel][Dk][NR]; keys past the batch entry's key length are zero (never seen; NaN-safe).
template <typename T>
void pack_keys_from(const Problem& p, const View4<const T>& k, const Plan& plan, std::int64_t b,
                    std::int64_t hk, std::int64_t panel_begin, std::int64_t panel_end,
                    float* k_panels) {
  const std::int64_t nr = plan.panel;
  for (std::int64_t panel = panel_begin; panel < panel_end; ++panel) {
    float* dst = k_panels + panel * p.dim_k * nr;
    if constexpr (std::is_same_v<T, float>) {
      if (k.s3 == 1) {  // rows of contiguous elements: the kernel's register transposes
        const auto rows = static_cast<int>(std::clamp<std::int64_t>(p.key_length(b) - panel * nr, 0, nr));
        plan.kernel->transpose_panel(rows > 0 ? &k.at(b, hk, panel * nr, 0) : nullptr, k.s2, rows,
                                     p.dim_k, dst);
        continue;
      }
    }
    for (std::int64_t n = 0; n < nr; ++n) {
      const std::int64_t j = panel * nr + n;
      if (j >= p.key_length(b)) {
        for (std::int64_t d = 0; d < p.dim_k; ++d) dst[d * nr + n] = 0.0f;
        continue;
      }
      const T* src = &k.at(b, hk, j, 0);
      if constexpr (std::is_same_v<T, float>) {
        for (std::int64_t d = 0; d < p.dim_k; ++d) dst[d * nr + n] = src[d * k.s3];
      } else {
        for (std::int64_t d = 0; d < p.dim_k; ++d) dst[d * nr + n] = widen(src[d * k.s3], p.dtype);
      }
    }
  }
}

void pack_keys(const Problem& p, const Plan& plan, std::int64_t b, std::int64_t hk,
               std::int64_t panel_begin, std::int64_t panel_end, float* k_panels) {
  if (p.dtype == DType::f32) pack_keys_from(p, p.k, plan, b, hk, panel_begin, panel_end, k_panels);
  else pack_keys_from(p, p.k16, plan, b, hk, panel_begin, panel_end, k_panels);
}

// V of one (batch, kv-head), keys [key_begin, key_end), into panels [Dv / NR][Lk_padded][NR];
// columns past Dv and keys past the batch entry's key length are zero.
template <typename T>
void pack_values_from(const Problem& p, const View4<const T>& v, const Plan& plan, std::int64_t b,
                      std::int64_t hk, std::int64_t key_begin, std::int64_t key_end,
                      float* v_panels) {
  const std::int64_t nr = plan.panel;
  for (std::int64_t col0 = 0; col0 < plan.dim_v_padded; col0 += nr) {
    float* panel = v_panels + col0 / nr * plan.len_k_padded * nr;
    const std::int64_t cols = std::min(nr, p.dim_v - col0);  // real columns in this panel
    for (std::int64_t j = key_begin; j < key_end; ++j) {
      float* dst = panel + j * nr;
      std::int64_t c = 0;
      if (j < p.key_length(b)) {
        const T* src = &v.at(b, hk, j, col0);
        if constexpr (std::is_same_v<T, float>) {
          if (v.s3 == 1) {
            std::memcpy(dst, src, static_cast<std::size_t>(cols) * sizeof(float));
            c = cols;
          }
          for (; c < cols; ++c) dst[c] = src[c * v.s3];
        } else {
          for (; c < cols; ++c) dst[c] = widen(src[c * v.s3], p.dtype);
        }
      }
      for (; c < nr; ++c) dst[c] = 0.0f;
    }
  }
}

void pack_values(const Problem& p, const Plan& plan, std::int64_t b, std::int64_t hk,
                 std::int64_t key_begin, std::int64_t key_end, float* v_panels) {
  if (p.dtype == DType::f32) pack_values_from(p, p.v, plan, b, hk, key_begin, key_end, v_panels);
  else pack_values_from(p, p.v16, plan, b, hk, key_begin, key_end, v_panels);
}

// bf16 panels for the bf16 dot-product kernel (layouts in kernels/flash_forward.hpp), copied bit
// for bit from bf16 inputs: K as [panel][Dk2 / 2][NR][2], V as [Dv / NR][Lk_padded / 2][NR][2].
void pack_keys_bf16(const Problem& p, const Plan& plan, std::int64_t b, std::int64_t hk,
                    std::int64_t panel_begin, std::int64_t panel_end, std::uint16_t* k_panels) {
  const std::int64_t nr = plan.panel, dim_k2 = round_up(p.dim_k, 2);
  const std::int64_t whole_pairs = p.k16.s3 == 1 ? p.dim_k / 2 : 0;  // copied 32 bits at a time
  for (std::int64_t panel = panel_begin; panel < panel_end; ++panel) {
    std::uint16_t* dst = k_panels + panel * dim_k2 * nr;
    for (std::int64_t n = 0; n < nr; ++n) {
      const std::int64_t j = panel * nr + n;
      const bool real = j < p.key_length(b);
      const std::uint16_t* src = real ? &p.k16.at(b, hk, j, 0) : nullptr;
      std::int64_t d = 0;
      if (real) {
        for (; d < 2 * whole_pairs; d += 2) std::memcpy(dst + (d / 2 * nr + n) * 2, src + d, 4);
      }
      for (; d < dim_k2; ++d)
        dst[(d / 2 * nr + n) * 2 + d % 2] = real && d < p.dim_k ? src[d * p.k16.s3] : 0;
    }
  }
}

void pack_values_bf16(const Problem& p, const Plan& plan, std::int64_t b, std::int64_t hk,
                      std::int64_t key_begin, std::int64_t key_end, std::uint16_t* v_panels) {
  const std::int64_t nr = plan.panel;
  for (std::int64_t col0 = 0; col0 < plan.dim_v_padded; col0 += nr) {
    std::uint16_t* panel = v_panels + col0 / nr * plan.len_k_padded * nr;
    const std::int64_t cols = std::min(nr, p.dim_v - col0);
    std::int64_t j = key_begin;
    if (p.v16.s3 == 1 && j % 2 == 0) {
      // Two real keys at a time, their rows interleaved 32 bits per column (vectorizes).
      for (; j + 1 < key_end && j + 1 < p.key_length(b); j += 2) {
        std::uint16_t* dst = panel + j / 2 * nr * 2;
        const std::uint16_t* even = &p.v16.at(b, hk, j, col0);
        const std::uint16_t* odd = &p.v16.at(b, hk, j + 1, col0);
        std::int64_t c = 0;
        for (; c < cols; ++c) {
          const std::uint32_t pair = std::uint32_t{even[c]} | std::uint32_t{odd[c]} << 16;
          std::memcpy(dst + 2 * c, &pair, 4);
        }
        for (; c < nr; ++c) dst[2 * c] = dst[2 * c + 1] = 0;
      }
    }
    for (; j < key_end; ++j) {
      std::uint16_t* dst = panel + (j / 2 * nr) * 2 + j % 2;
      std::int64_t c = 0;
      if (j < p.key_length(b)) {
        const std::uint16_t* src = &p.v16.at(b, hk, j, col0);
        for (; c < cols; ++c) dst[2 * c] = src[c * p.v16.s3];
      }
      for (; c < nr; ++c) dst[2 * c] = 0;
    }
  }
}

// Packs keys [key_begin, key_end) (whole panels) of one (batch, kv-head) in the kernel's format.
void pack_group(const Problem& p, const Plan& plan, std::int64_t b, std::int64_t hk,
                std::int64_t key_begin, std::int64_t key_end, float* group_pack) {
  if (plan.kernel->bf16_products) {
    pack_keys_bf16(p, plan, b, hk, key_begin / plan.panel, key_end / plan.panel,
                   reinterpret_cast<std::uint16_t*>(group_pack));
    pack_values_bf16(p, plan, b, hk, key_begin, key_end,
                     reinterpret_cast<std::uint16_t*>(group_pack + plan.k_pack_floats));
    return;
  }
  pack_keys(p, plan, b, hk, key_begin / plan.panel, key_end / plan.panel, group_pack);
  pack_values(p, plan, b, hk, key_begin, key_end, group_pack + plan.k_pack_floats);
}

// One unit of parallel work: a block of query rows of one (batch, query head).
struct WorkItem {
  std::int64_t group_in_chunk, head, block;  // head is the query head
  std::int64_t cost;                         // key tiles it will visit (for load balancing)
};

std::int64_t block_cost(const Problem& p, std::int64_t b, std::int64_t row_begin, std::int64_t row_end) {
  std::int64_t first = p.len_k, last = 0;
  for (std::int64_t i = row_begin; i < row_end; ++i) {
    const KeyRange r = visible_keys(p, b, i);
    if (r.empty()) continue;
    first = std::min(first, r.begin);
    last = std::max(last, r.end);
  }
  return last > first ? last - first : 0;
}

// Work items of the groups [chunk_begin, chunk_end): group by group, and within a group most
// expensive first (ties in index order). Group-major keeps the threads on the same packed keys and
// values (one head's K/V in the caches instead of one per thread: causal L = 8192 ran almost as
// long as full attention when the items of all groups were sorted by cost together); cost order
// within a group leaves only the last group's cheapest items for the tail.
std::vector<WorkItem> make_work_items(const Problem& p, const Plan& plan, std::int64_t chunk_begin,
                                      std::int64_t chunk_end) {
  const std::int64_t rows = plan.kernel->block_rows;
  std::vector<WorkItem> items;
  for (std::int64_t g = chunk_begin; g < chunk_end; ++g) {
    const std::int64_t b = g / p.heads_kv, hk = g % p.heads_kv;
    for (std::int64_t qb = 0; qb < plan.query_blocks; ++qb) {
      const std::int64_t cost = block_cost(p, b, qb * rows, std::min(p.len_q, (qb + 1) * rows));
      for (std::int64_t h = hk * p.group; h < (hk + 1) * p.group; ++h)
        items.push_back({g - chunk_begin, h, qb, cost});
    }
  }
  std::stable_sort(items.begin(), items.end(), [](const WorkItem& a, const WorkItem& b) {
    return a.group_in_chunk != b.group_in_chunk ? a.group_in_chunk < b.group_in_chunk : a.cost > b.cost;
  });
  return items;
}

kernels::Element element_of(DType dtype) {
  switch (dtype) {
    case DType::bf16: return kernels::Element::bf16;
    case DType::f16: return kernels::Element::f16;
    default: return kernels::Element::f32;
  }
}

// Runs the kernel on one work item.
void run_item(const Problem& p, const Plan& plan, const WorkItem& item, std::int64_t chunk_begin,
              const float* packed, float* scratch) {
  const FlashKernel& kernel = *plan.kernel;
  const std::int64_t g = chunk_begin + item.group_in_chunk;
  const std::int64_t b = g / p.heads_kv, h = item.head;
  const std::int64_t i0 = item.block * kernel.block_rows;
  const int rows = static_cast<int>(std::min<std::int64_t>(kernel.block_rows, p.len_q - i0));

  kernels::Scratch s;
  s.q_packed = scratch;
  s.scores = s.q_packed + kernel.block_rows * p.dim_k;
  s.acc = s.scores + kernel.block_rows * kernel.block_keys;
  s.row_state = s.acc + kernel.block_rows * plan.dim_v_padded;
  auto* key_begin = reinterpret_cast<std::int64_t*>(s.row_state + 4 * kernel.block_rows);
  std::int64_t* key_end = key_begin + kernel.block_rows;
  for (int r = 0; r < rows; ++r) {
    const KeyRange range = visible_keys(p, b, i0 + r);
    key_begin[r] = range.begin;
    key_end[r] = range.end;
  }

  kernels::PackedKeysValues kv;
  const float* group_pack = packed + item.group_in_chunk * static_cast<std::int64_t>(plan.group_floats());
  kv.k_panels = group_pack;
  kv.v_panels = group_pack + plan.k_pack_floats;
  kv.len_k_padded = plan.len_k_padded;

  kernels::QueryBlock blk;
  blk.rows = rows;
  if (p.dtype == DType::f32) {
    blk.q = &p.q.at(b, h, i0, 0);
    blk.q_row_stride = p.q.s2;
    blk.q_col_stride = p.q.s3;
  } else {
    blk.q = &p.q16.at(b, h, i0, 0);
    blk.q_element = element_of(p.dtype);
    blk.q_row_stride = p.q16.s2;
    blk.q_col_stride = p.q16.s3;
  }
  if (p.out_dtype == DType::f32) {
    blk.out = &p.out.at(b, h, i0, 0);
    blk.out_row_stride = p.out.s2;
    blk.out_col_stride = p.out.s3;
  } else {
    blk.out = &p.out16.at(b, h, i0, 0);
    blk.out_element = element_of(p.out_dtype);
    blk.out_row_stride = p.out16.s2;
    blk.out_col_stride = p.out16.s3;
  }
  if (p.lse) {
    blk.lse = &p.lse->at(b, h, i0, 0);
    blk.lse_stride = p.lse->s2;
  }
  if (p.entropy) {
    blk.entropy = &p.entropy->at(b, h, i0, 0);
    blk.entropy_stride = p.entropy->s2;
  }
  if (p.weights) {
    blk.weights = &p.weights->at(b, h, i0, 0);
    blk.weights_row_stride = p.weights->s2;
    blk.weights_col_stride = p.weights->s3;
  }
  blk.key_begin = key_begin;
  blk.key_end = key_end;
  if (p.mask) {
    blk.mask = &p.mask->at(b, h, i0, 0);
    blk.mask_row_stride = p.mask->s2;
    blk.mask_col_stride = p.mask->s3;
  }
  if (p.bias) {
    blk.bias = &p.bias->at(b, h, i0, 0);
    blk.bias_row_stride = p.bias->s2;
    blk.bias_col_stride = p.bias->s3;
  }
  // The sink joins the block's real rows only: padding rows (i >= the query length) stay empty.
  blk.sink = p.sink(h);
  blk.sink_rows = static_cast<int>(std::clamp<std::int64_t>(p.query_length(b) - i0, 0, rows));
  const kernels::BlockShape shape{p.len_k, p.dim_k, p.dim_v, p.scale, p.softcap};
  kernel.forward_block(shape, kv, blk, s);
}

void run_forward(const Problem& p, const Plan& plan) {
  if (p.batch == 0 || p.heads_q == 0 || p.len_q == 0) return;
  const std::size_t pack_floats = plan.group_floats() * static_cast<std::size_t>(plan.groups_per_chunk);
  const Workspace packed = acquire_workspace(pack_floats * sizeof(float));
  const Workspace scratch =
      acquire_workspace(plan.scratch_floats * static_cast<std::size_t>(plan.threads) * sizeof(float));
  const std::int64_t pack_step = std::max<std::int64_t>(256, plan.panel);  // keys per packing task
  const std::int64_t pack_tasks = (plan.len_k_padded + pack_step - 1) / pack_step;
  std::vector<WorkItem> items;

  const CpuPlan cpus(plan.threads);  // one CPU per thread when the team takes them all
#pragma omp parallel num_threads(plan.threads)
  {
    const ThreadPin pin(cpus, omp_get_thread_num());
    float* my_scratch = scratch.floats() + plan.scratch_floats * static_cast<std::size_t>(omp_get_thread_num());
    for (std::int64_t chunk = 0; chunk < plan.groups; chunk += plan.groups_per_chunk) {
      const std::int64_t chunk_end = std::min(plan.groups, chunk + plan.groups_per_chunk);
#pragma omp single
      items = make_work_items(p, plan, chunk, chunk_end);
#pragma omp for schedule(static)
      for (std::int64_t task = 0; task < (chunk_end - chunk) * pack_tasks; ++task) {
        const std::int64_t g = task / pack_tasks, piece = task % pack_tasks;
        const std::int64_t b = (chunk + g) / p.heads_kv, hk = (chunk + g) % p.heads_kv;
        const std::int64_t key_begin = piece * pack_step;
        const std::int64_t key_end = std::min(plan.len_k_padded, key_begin + pack_step);
        float* group_pack = packed.floats() + g * static_cast<std::int64_t>(plan.group_floats());
        pack_group(p, plan, b, hk, key_begin, key_end, group_pack);
      }
#pragma omp for schedule(dynamic, 1)
      for (std::size_t w = 0; w < items.size(); ++w)
        run_item(p, plan, items[w], chunk, packed.floats(), my_scratch);
    }
  }
}

double visible_pair_flops(const Problem& p) {
  double pairs = 0;
  for (std::int64_t b = 0; b < p.batch; ++b)
    for (std::int64_t i = 0; i < p.len_q; ++i) {
      const KeyRange r = visible_keys(p, b, i);
      pairs += static_cast<double>(r.end - r.begin);
    }
  return pairs * static_cast<double>(p.heads_q) * 2.0 * static_cast<double>(p.dim_k + p.dim_v);
}

}  // namespace

RunInfo forward_with_plan(const Tensor& q, const Tensor& k, const Tensor& v, const Options& options,
                          const Outputs& outputs, ForwardPlan choice) {
  const Problem p = validate_forward(q, k, v, options, outputs);
  // The split-KV kernel reads f32 inputs in place: bf16 / f16 calls take the prefill plan.
  const bool f32_only = p.dtype == DType::f32 && p.out_dtype == DType::f32;
  if (choice == ForwardPlan::automatic)
    choice = f32_only && decode_plan_applies(p) ? ForwardPlan::split_kv : ForwardPlan::prefill;
  RunInfo info;
  info.isa = p.isa;
  info.flops = visible_pair_flops(p);
  if (choice == ForwardPlan::split_kv) {  // few query rows: split-KV decode (core/decode.cpp)
    if (p.weights) fail("outputs.weights: the split-KV plan does not write attention weights");
    if (!f32_only)
      fail("q.dtype = ", dtype_name(p.dtype), ", out.dtype = ", dtype_name(p.out_dtype),
           ": the split-KV plan reads and writes f32 only (use the prefill plan)");
    const DecodeRun run = run_decode(p);
    info.threads = run.threads;
    info.workspace_bytes = run.workspace_bytes;
    return info;
  }
  const Plan plan = make_plan(p);
  run_forward(p, plan);
  info.threads = plan.threads;
  info.workspace_bytes = plan.workspace_bytes();
  return info;
}

RunInfo forward(const Tensor& q, const Tensor& k, const Tensor& v, const Options& options,
                const Outputs& outputs) {
  return forward_with_plan(q, k, v, options, outputs, ForwardPlan::automatic);
}

double forward_flops(const Tensor& q, const Tensor& k, const Tensor& v, const Options& options) {
  return visible_pair_flops(validate_inputs(q, k, v, options));
}

}  // namespace sdpa
