// validate_forward: every check of a forward call's arguments, in one place.
#include <omp.h>

#include <cmath>
#include <string>

#include "core/errors.hpp"
#include "core/half.hpp"
#include "core/isa.hpp"
#include "core/problem.hpp"

namespace sdpa {
namespace {

std::string shape_text(const Tensor& t) {
  std::string text = "[";
  for (int d = 0; d < t.rank; ++d) text += (d ? ", " : "") + std::to_string(t.shape[d]);
  return text + "]";
}

std::string stride_text(const Tensor& t) {
  std::string text = "[";
  for (int d = 0; d < t.rank; ++d) text += (d ? ", " : "") + std::to_string(t.stride[d]);
  return text + "]";
}

void check_rank(const Tensor& t, const char* name, int rank) {
  if (t.rank != rank)
    fail(name, ".rank: expected ", rank, " (", rank == 4 ? "[B, H, L, D]" : "[B, H, L]", "), got ",
         t.rank);
}

void check_dtype(const Tensor& t, const char* name, DType dtype) {
  if (t.dtype != dtype)
    fail(name, ".dtype: expected ", dtype_name(dtype), ", got ", dtype_name(t.dtype));
}

bool is_16bit(DType dtype) { return dtype == DType::bf16 || dtype == DType::f16; }

// q, k and v (and dout): f32, bf16 or f16, all the same.
void check_input_dtypes(const Tensor& q, const Tensor& k, const Tensor& v) {
  if (q.dtype != DType::f32 && !is_16bit(q.dtype))
    fail("q.dtype: expected f32, bf16 or f16, got ", dtype_name(q.dtype));
  if (k.dtype != q.dtype)
    fail("k.dtype = ", dtype_name(k.dtype), " does not match q.dtype = ", dtype_name(q.dtype),
         " (q, k and v must have the same dtype)");
  if (v.dtype != q.dtype)
    fail("v.dtype = ", dtype_name(v.dtype), " does not match q.dtype = ", dtype_name(q.dtype),
         " (q, k and v must have the same dtype)");
}

// An output in the inputs' dtype, or f32 (fp32 results from 16-bit inputs, on request).
void check_output_dtype(const Tensor& t, const char* name, DType input) {
  if (t.dtype == input || t.dtype == DType::f32) return;
  if (input == DType::f32) fail(name, ".dtype: expected f32, got ", dtype_name(t.dtype));
  fail(name, ".dtype: expected ", dtype_name(input), " (the dtype of q, k, v) or f32, got ",
       dtype_name(t.dtype));
}

// Every index computation on a view must be exact in int64, and so must every size derived from
// it (padding, packed copies, bytes of scratch): a view may have at most 2^52 logical elements
// (16 PiB of f32; only zero strides get near that) and its farthest element must lie within 2^62
// elements of its origin. Extents must already be known to be >= 0.
constexpr std::int64_t kMaxElements = std::int64_t{1} << 52;
constexpr std::int64_t kMaxReach = std::int64_t{1} << 62;

void check_index_range(const Tensor& t, const char* name) {
  std::int64_t elements = 1, reach = 0;  // reach = Σ |stride|·(extent − 1)
  bool too_many = false, too_far = false;
  for (int d = 0; d < t.rank; ++d) {
    if (t.shape[d] == 0) return;  // empty: no element is ever addressed
    too_many |= __builtin_mul_overflow(elements, t.shape[d], &elements) || elements > kMaxElements;
    if (t.shape[d] == 1) continue;  // its stride is never used
    const std::int64_t stride = t.stride[d];
    std::int64_t step = 0;
    too_far |= stride < -kMaxReach || stride > kMaxReach ||
               __builtin_mul_overflow(stride < 0 ? -stride : stride, t.shape[d] - 1, &step) ||
               __builtin_add_overflow(reach, step, &reach) || reach > kMaxReach;
  }
  if (too_many)
    fail(name, ".shape: more than 2^52 elements (", shape_text(t), "); expected at most 2^52");
  if (too_far)
    fail(name, ".stride: the last element lies more than 2^62 elements from the first (strides ",
         stride_text(t), ")");
}

// The pointer of a view, after its extents were checked: null only when it has no element.
void check_data(const Tensor& t, const char* name) {
  check_index_range(t, name);
  if (t.data == nullptr && t.numel() > 0) fail(name, ".data: expected a non-null pointer, got null");
}

// A per-query-head f32 vector [Hq] (the attention sinks and their gradient).
void check_head_vector(const Tensor& t, const char* name, std::int64_t heads_q) {
  check_dtype(t, name, DType::f32);
  if (t.rank != 1) fail(name, ".rank: expected 1 ([Hq]), got ", t.rank);
  if (t.shape[0] != heads_q)
    fail(name, ".shape[0] = ", t.shape[0], " does not match q.shape[1] (Hq) = ", heads_q);
}

void check_shape_nonnegative(const Tensor& t, const char* name) {
  for (int d = 0; d < t.rank; ++d)
    if (t.shape[d] < 0) fail(name, ".shape[", d, "] = ", t.shape[d], ": expected >= 0");
}

void check_dim(const Tensor& t, const char* name, int d, const char* what, std::int64_t expected,
               const char* expected_from) {
  if (t.shape[d] != expected)
    fail(name, ".shape[", d, "] (", what, ") = ", t.shape[d], " does not match ", expected_from,
         " = ", expected);
}

template <typename T>
View4<T> view_of(const Tensor& t) {
  View4<T> view;
  view.data = static_cast<T*>(t.data);
  const int pad = 4 - t.rank;  // missing leading dimensions broadcast
  std::int64_t strides[4] = {0, 0, 0, 0};
  for (int d = 0; d < t.rank; ++d) strides[pad + d] = t.shape[d] == 1 ? 0 : t.stride[d];
  view.s0 = strides[0];
  view.s1 = strides[1];
  view.s2 = strides[2];
  view.s3 = strides[3];
  return view;
}

// A mask or bias: rank 1..4, right-aligned against [B, Hq, Lq, Lk]; each dimension full or 1.
template <typename T>
View4<T> broadcast_view(const Tensor& t, const char* name, DType dtype, const Problem& p) {
  check_dtype(t, name, dtype);
  if (t.rank < 1 || t.rank > 4)
    fail(name, ".rank: expected 1 to 4 (broadcastable to [B, Hq, Lq, Lk]), got ", t.rank);
  check_shape_nonnegative(t, name);
  check_data(t, name);
  const std::int64_t full[4] = {p.batch, p.heads_q, p.len_q, p.len_k};
  const char* const full_names[4] = {"B", "Hq", "Lq", "Lk"};
  const int pad = 4 - t.rank;
  for (int d = 0; d < t.rank; ++d) {
    const std::int64_t want = full[pad + d];
    if (t.shape[d] != want && t.shape[d] != 1)
      fail(name, ".shape[", d, "] = ", t.shape[d], ": expected ", full_names[pad + d], " = ", want,
           " or 1 (broadcast)");
  }
  return view_of<T>(t);
}

std::span<const std::int32_t> checked_lengths(std::span<const std::int32_t> lengths,
                                              const char* name, std::int64_t batch,
                                              std::int64_t max_len, const char* max_name) {
  if (lengths.empty()) return lengths;
  if (static_cast<std::int64_t>(lengths.size()) != batch)
    fail(name, ".size(): expected B = ", batch, ", got ", lengths.size());
  for (std::size_t b = 0; b < lengths.size(); ++b)
    if (lengths[b] < 0 || lengths[b] > max_len)
      fail(name, "[", b, "] = ", lengths[b], ": expected 0 <= length <= ", max_name, " = ",
           max_len);
  return lengths;
}

// A per-row output [B, Hq, Lq] (lse, entropy), viewed as (b, h, i, 0).
View4<float> row_output_view(const Tensor& t, const char* name, const Problem& p) {
  check_rank(t, name, 3);
  check_dtype(t, name, DType::f32);
  check_dim(t, name, 0, "B", p.batch, "q.shape[0]");
  check_dim(t, name, 1, "Hq", p.heads_q, "q.shape[1]");
  check_dim(t, name, 2, "Lq", p.len_q, "q.shape[2]");
  check_writable(t, name);
  check_data(t, name);
  View4<float> view;
  view.data = static_cast<float*>(t.data);
  view.s0 = t.stride[0];
  view.s1 = t.stride[1];
  view.s2 = t.stride[2];
  return view;
}

}  // namespace

float Problem::widen(const View4<const float>& f32, const View4<const std::uint16_t>& bits,
                     std::int64_t b, std::int64_t h, std::int64_t i, std::int64_t d) const {
  switch (dtype) {
    case DType::bf16: return half::bf16_to_float(bits.at(b, h, i, d));
    case DType::f16: return half::f16_to_float(bits.at(b, h, i, d));
    default: return f32.at(b, h, i, d);
  }
}

Problem validate_inputs(const Tensor& q, const Tensor& k, const Tensor& v, const Options& options) {
  check_rank(q, "q", 4);
  check_rank(k, "k", 4);
  check_rank(v, "v", 4);
  check_input_dtypes(q, k, v);
  check_shape_nonnegative(q, "q");
  check_shape_nonnegative(k, "k");
  check_shape_nonnegative(v, "v");

  Problem p;
  p.batch = q.shape[0];
  p.heads_q = q.shape[1];
  p.len_q = q.shape[2];
  p.dim_k = q.shape[3];
  p.heads_kv = k.shape[1];
  p.len_k = k.shape[2];
  p.dim_v = v.shape[3];

  check_dim(k, "k", 0, "B", p.batch, "q.shape[0]");
  check_dim(v, "v", 0, "B", p.batch, "q.shape[0]");
  check_dim(k, "k", 3, "Dk", p.dim_k, "q.shape[3]");
  check_dim(v, "v", 1, "Hkv", p.heads_kv, "k.shape[1]");
  check_dim(v, "v", 2, "Lk", p.len_k, "k.shape[2]");
  if (p.dim_k < 1) fail("q.shape[3] (Dk) = ", p.dim_k, ": expected >= 1");
  if (p.dim_v < 1) fail("v.shape[3] (Dv) = ", p.dim_v, ": expected >= 1");
  if (p.heads_kv < 1) fail("k.shape[1] (Hkv) = ", p.heads_kv, ": expected >= 1");
  if (p.heads_q % p.heads_kv != 0)
    fail("q.shape[1] (Hq) = ", p.heads_q, ": expected a multiple of k.shape[1] (Hkv) = ",
         p.heads_kv);
  p.group = p.heads_q / p.heads_kv;
  check_data(q, "q");
  check_data(k, "k");
  check_data(v, "v");
  p.dtype = q.dtype;
  if (p.dtype == DType::f32) {
    p.q = view_of<const float>(q);
    p.k = view_of<const float>(k);
    p.v = view_of<const float>(v);
  } else {
    p.q16 = view_of<const std::uint16_t>(q);
    p.k16 = view_of<const std::uint16_t>(k);
    p.v16 = view_of<const std::uint16_t>(v);
  }

  if (options.scale) {
    if (!std::isfinite(*options.scale))
      fail("options.scale = ", *options.scale, ": expected a finite number");
    p.scale = *options.scale;
  } else {
    p.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(p.dim_k)));
  }
  p.causal = options.causal;
  if (options.window) {
    const Window& w = *options.window;
    if (w.left < -1) fail("options.window.left = ", w.left, ": expected >= 0, or -1 for unbounded");
    if (w.right < -1)
      fail("options.window.right = ", w.right, ": expected >= 0, or -1 for unbounded");
    p.window_left = w.left;
    p.window_right = w.right;
  }
  if (options.mask) p.mask = broadcast_view<const std::uint8_t>(*options.mask, "options.mask", DType::boolean, p);
  if (options.bias) p.bias = broadcast_view<const float>(*options.bias, "options.bias", DType::f32, p);
  p.key_lengths =
      checked_lengths(options.key_lengths, "options.key_lengths", p.batch, p.len_k, "Lk");
  p.query_lengths =
      checked_lengths(options.query_lengths, "options.query_lengths", p.batch, p.len_q, "Lq");

  if (!std::isfinite(options.softcap) || options.softcap < 0.0f)
    fail("options.softcap = ", options.softcap, ": expected a finite number >= 0 (0 = off)");
  p.softcap = options.softcap;
  if (options.sinks) {
    const Tensor& s = *options.sinks;
    check_head_vector(s, "options.sinks", p.heads_q);
    check_data(s, "options.sinks");
    p.sinks = static_cast<const float*>(s.data);
    p.sinks_stride = s.stride[0];
    for (std::int64_t h = 0; h < p.heads_q; ++h) {
      const float sink = p.sink(h);
      if (std::isnan(sink) || sink == INFINITY)
        fail("options.sinks[", h, "] = ", sink, ": expected a finite number or -inf (no sink)");
    }
  }

  if (options.threads < 0) fail("options.threads = ", options.threads, ": expected >= 0 (0 = all)");
  p.threads = options.threads > 0 ? options.threads : omp_get_max_threads();
  p.workspace_limit = options.workspace_limit;
  p.isa = resolve_isa(options.isa);
  return p;
}

Problem validate_forward(const Tensor& q, const Tensor& k, const Tensor& v, const Options& options,
                         const Outputs& outputs) {
  Problem p = validate_inputs(q, k, v, options);

  const Tensor& out = outputs.out;
  check_rank(out, "out", 4);
  check_output_dtype(out, "out", p.dtype);
  check_dim(out, "out", 0, "B", p.batch, "q.shape[0]");
  check_dim(out, "out", 1, "Hq", p.heads_q, "q.shape[1]");
  check_dim(out, "out", 2, "Lq", p.len_q, "q.shape[2]");
  check_dim(out, "out", 3, "Dv", p.dim_v, "v.shape[3]");
  check_writable(out, "out");
  check_data(out, "out");
  p.out_dtype = out.dtype;
  if (out.dtype == DType::f32) p.out = view_of<float>(out);
  else p.out16 = view_of<std::uint16_t>(out);

  if (outputs.lse) p.lse = row_output_view(*outputs.lse, "lse", p);
  if (outputs.entropy) p.entropy = row_output_view(*outputs.entropy, "entropy", p);
  if (outputs.weights) {
    const Tensor& w = *outputs.weights;
    check_rank(w, "weights", 4);
    check_dtype(w, "weights", DType::f32);
    check_dim(w, "weights", 0, "B", p.batch, "q.shape[0]");
    check_dim(w, "weights", 1, "Hq", p.heads_q, "q.shape[1]");
    check_dim(w, "weights", 2, "Lq", p.len_q, "q.shape[2]");
    check_dim(w, "weights", 3, "Lk", p.len_k, "k.shape[2]");
    check_writable(w, "weights");
    check_data(w, "weights");
    p.weights = view_of<float>(w);
  }
  return p;
}

namespace {

// A tensor of exactly `like`'s shape (rank 4), e.g. a gradient or dout (dtype checked elsewhere).
void check_same_shape4(const Tensor& t, const char* name, const std::int64_t (&shape)[4],
                       const char* like) {
  check_rank(t, name, 4);
  for (int d = 0; d < 4; ++d)
    if (t.shape[d] != shape[d])
      fail(name, ".shape[", d, "] = ", t.shape[d], " does not match ", like, ".shape[", d,
           "] = ", shape[d]);
  check_data(t, name);
}

}  // namespace

float BackwardProblem::dout_at(std::int64_t b, std::int64_t h, std::int64_t i,
                               std::int64_t d) const {
  switch (forward.dtype) {
    case DType::bf16: return half::bf16_to_float(dout16.at(b, h, i, d));
    case DType::f16: return half::f16_to_float(dout16.at(b, h, i, d));
    default: return dout.at(b, h, i, d);
  }
}

BackwardProblem validate_backward(const Tensor& q, const Tensor& k, const Tensor& v,
                                  const Tensor& out, const Tensor& dout, const Tensor& lse,
                                  const Options& options, const Grads& grads) {
  BackwardProblem bp;
  Outputs forward_outputs;
  forward_outputs.out = out;
  forward_outputs.lse = lse;
  bp.forward = validate_forward(q, k, v, options, forward_outputs);
  const Problem& p = bp.forward;
  const std::int64_t q_shape[4] = {p.batch, p.heads_q, p.len_q, p.dim_k};
  const std::int64_t k_shape[4] = {p.batch, p.heads_kv, p.len_k, p.dim_k};
  const std::int64_t v_shape[4] = {p.batch, p.heads_kv, p.len_k, p.dim_v};
  const std::int64_t o_shape[4] = {p.batch, p.heads_q, p.len_q, p.dim_v};
  check_same_shape4(dout, "dout", o_shape, "out");
  if (dout.dtype != p.dtype)
    fail("dout.dtype = ", dtype_name(dout.dtype), " does not match q.dtype = ", dtype_name(p.dtype),
         " (dout must have the dtype of q, k and v)");
  if (p.dtype == DType::f32) bp.dout = view_of<const float>(dout);
  else bp.dout16 = view_of<const std::uint16_t>(dout);
  bp.lse = View4<const float>{static_cast<const float*>(lse.data), p.lse->s0, p.lse->s1, p.lse->s2, 0};

  check_same_shape4(grads.dq, "grads.dq", q_shape, "q");
  check_same_shape4(grads.dk, "grads.dk", k_shape, "k");
  check_same_shape4(grads.dv, "grads.dv", v_shape, "v");
  check_output_dtype(grads.dq, "grads.dq", p.dtype);
  check_output_dtype(grads.dk, "grads.dk", p.dtype);
  check_output_dtype(grads.dv, "grads.dv", p.dtype);
  check_writable(grads.dq, "grads.dq");
  check_writable(grads.dk, "grads.dk");
  check_writable(grads.dv, "grads.dv");
  bp.dq_dtype = grads.dq.dtype;
  bp.dk_dtype = grads.dk.dtype;
  bp.dv_dtype = grads.dv.dtype;
  if (grads.dq.dtype == DType::f32) bp.dq = view_of<float>(grads.dq);
  if (grads.dk.dtype == DType::f32) bp.dk = view_of<float>(grads.dk);
  if (grads.dv.dtype == DType::f32) bp.dv = view_of<float>(grads.dv);

  if (grads.dbias) {
    if (!options.bias) fail("grads.dbias: given, but options.bias is not (nothing to differentiate)");
    const Tensor& bias = *options.bias;
    const Tensor& db = *grads.dbias;
    check_dtype(db, "grads.dbias", DType::f32);
    if (db.rank != bias.rank)
      fail("grads.dbias.rank = ", db.rank, " does not match options.bias.rank = ", bias.rank);
    for (int d = 0; d < db.rank; ++d)
      if (db.shape[d] != bias.shape[d])
        fail("grads.dbias.shape[", d, "] = ", db.shape[d], " does not match options.bias.shape[", d,
             "] = ", bias.shape[d]);
    check_writable(db, "grads.dbias");
    check_data(db, "grads.dbias");
    bp.dbias = view_of<float>(db);
    const std::int64_t full[4] = {p.batch, p.heads_q, p.len_q, p.len_k};
    const int pad = 4 - db.rank;
    for (int d = 0; d < 4; ++d) bp.dbias_shape[d] = d < pad ? 1 : (db.shape[d - pad] == 1 ? 1 : full[d]);
  }
  bp.dscale = grads.dscale;
  if (grads.dsinks) {
    if (!options.sinks) fail("grads.dsinks: given, but options.sinks is not (nothing to differentiate)");
    const Tensor& ds = *grads.dsinks;
    check_head_vector(ds, "grads.dsinks", p.heads_q);
    check_writable(ds, "grads.dsinks");
    check_data(ds, "grads.dsinks");
    bp.dsinks = static_cast<float*>(ds.data);
    bp.dsinks_stride = ds.stride[0];
  }
  return bp;
}

MergeProblem validate_merge(std::span<const Tensor> outs, std::span<const Tensor> lses,
                            const Tensor& out, const std::optional<Tensor>& lse, int threads) {
  if (outs.empty()) fail("outs: expected at least one part, got none");
  if (lses.size() != outs.size())
    fail("lses.size() = ", lses.size(), " does not match outs.size() = ", outs.size());
  check_rank(out, "out", 4);
  check_dtype(out, "out", DType::f32);
  check_shape_nonnegative(out, "out");
  MergeProblem m;
  m.batch = out.shape[0];
  m.heads = out.shape[1];
  m.len = out.shape[2];
  m.dim = out.shape[3];
  const std::int64_t out_shape[4] = {m.batch, m.heads, m.len, m.dim};
  for (std::size_t i = 0; i < outs.size(); ++i) {
    const std::string out_name = "outs[" + std::to_string(i) + "]";
    const std::string lse_name = "lses[" + std::to_string(i) + "]";
    check_rank(outs[i], out_name.c_str(), 4);
    check_dtype(outs[i], out_name.c_str(), DType::f32);
    for (int d = 0; d < 4; ++d)
      if (outs[i].shape[d] != out_shape[d])
        fail(out_name, ".shape[", d, "] = ", outs[i].shape[d], " does not match out.shape[", d,
             "] = ", out_shape[d]);
    check_data(outs[i], out_name.c_str());
    check_rank(lses[i], lse_name.c_str(), 3);
    check_dtype(lses[i], lse_name.c_str(), DType::f32);
    for (int d = 0; d < 3; ++d)
      if (lses[i].shape[d] != out_shape[d])
        fail(lse_name, ".shape[", d, "] = ", lses[i].shape[d], " does not match out.shape[", d,
             "] = ", out_shape[d]);
    check_data(lses[i], lse_name.c_str());
    m.outs.push_back(view_of<const float>(outs[i]));
    View4<const float> lse_view;
    lse_view.data = static_cast<const float*>(lses[i].data);
    lse_view.s0 = lses[i].stride[0];
    lse_view.s1 = lses[i].stride[1];
    lse_view.s2 = lses[i].stride[2];
    m.lses.push_back(lse_view);
  }
  check_writable(out, "out");
  check_data(out, "out");
  m.out = view_of<float>(out);
  if (lse) {
    check_rank(*lse, "lse", 3);
    check_dtype(*lse, "lse", DType::f32);
    for (int d = 0; d < 3; ++d)
      if (lse->shape[d] != out_shape[d])
        fail("lse.shape[", d, "] = ", lse->shape[d], " does not match out.shape[", d, "] = ",
             out_shape[d]);
    check_writable(*lse, "lse");
    check_data(*lse, "lse");
    View4<float> view;
    view.data = static_cast<float*>(lse->data);
    view.s0 = lse->stride[0];
    view.s1 = lse->stride[1];
    view.s2 = lse->stride[2];
    m.lse = view;
  }
  if (threads < 0) fail("threads = ", threads, ": expected >= 0 (0 = all)");
  m.threads = threads > 0 ? threads : omp_get_max_threads();
  return m;
}

// An empty output is never written (NumPy gives such arrays zero strides).
void check_writable(const Tensor& t, const char* name) {
  if (t.numel() == 0) return;
  for (int d = 0; d < t.rank; ++d)
    if (t.shape[d] > 1 && t.stride[d] == 0)
      fail(name, ".stride[", d, "] = 0 on a dimension of size ", t.shape[d],
           ": outputs cannot broadcast");
}

}  // namespace sdpa
