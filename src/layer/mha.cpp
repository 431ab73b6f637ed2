// MultiHeadAttention: projections (sgemm) around the fused kernel, its backward, and the KV cache.
// Shapes in comments: B batch, Lq/Lk lengths, h/h_kv heads, widths qw = h·d_k, kw = h_kv·d_k,
// vw = h_kv·d_v, ow = h·d_v.
#include "sdpa/mha.hpp"

#include <algorithm>
#include <cmath>
#include <random>
#include <utility>

#include "core/errors.hpp"
#include "layer/gemm.hpp"

namespace sdpa {
namespace {

MhaConfig resolve(MhaConfig c) {
  if (c.d_model < 1) fail("MhaConfig.d_model = ", c.d_model, ": expected >= 1");
  if (c.heads < 1) fail("MhaConfig.heads = ", c.heads, ": expected >= 1");
  if (c.kv_heads == 0) c.kv_heads = c.heads;
  if (c.kv_heads < 1) fail("MhaConfig.kv_heads = ", c.kv_heads, ": expected >= 1 (or 0 = heads)");
  if (c.heads % c.kv_heads != 0)
    fail("MhaConfig.heads = ", c.heads, " is not a multiple of MhaConfig.kv_heads = ", c.kv_heads);
  if (c.d_k == 0) c.d_k = c.d_model / c.heads;
  if (c.d_k < 1)
    fail("MhaConfig.d_k = ", c.d_k, ": expected >= 1 (0 = d_model / heads = ", c.d_model / c.heads,
         ")");
  if (c.d_v == 0) c.d_v = c.d_k;
  if (c.d_v < 1) fail("MhaConfig.d_v = ", c.d_v, ": expected >= 1 (or 0 = d_k)");
  return c;
}

struct Widths {
  std::int64_t q, k, v, o;  // h·d_k, h_kv·d_k, h_kv·d_v, h·d_v
  explicit Widths(const MhaConfig& c)
      : q(c.heads * c.d_k), k(c.kv_heads * c.d_k), v(c.kv_heads * c.d_v), o(c.heads * c.d_v) {}
};

void check_size(std::size_t given, std::int64_t expected, const char* name, const char* formula) {
  if (static_cast<std::int64_t>(given) != expected)
    fail(name, ".size() = ", given, " does not match ", formula, " = ", expected);
}

void check_positive(std::int64_t value, const char* name) {
  if (value < 1) fail(name, " = ", value, ": expected >= 1");
}

/// out [rows, width] = x [rows, d_model] · w [d_model, width] + bias (bias may be empty).
void project(const float* x, std::int64_t rows, std::int64_t d_model, const std::vector<float>& w,
             const std::vector<float>& bias, std::int64_t width, float* out) {
  layer::gemm(false, false, rows, width, d_model, x, d_model, w.data(), width, 0.0f, out, width);
  if (!bias.empty()) layer::add_to_rows(out, bias.data(), rows, width);
}

/// A [B, L, heads, d] buffer (row stride `row_stride`, batch stride `batch_stride`) viewed as the
/// kernel's [B, heads, L, d].
Tensor heads_view(const float* data, std::int64_t batch, std::int64_t heads, std::int64_t length,
                  std::int64_t d, std::int64_t row_stride, std::int64_t batch_stride) {
  return Tensor::strided(const_cast<float*>(data), DType::f32, {batch, heads, length, d},
                         {batch_stride, d, row_stride, 1});
}

void fill_uniform(std::vector<float>& w, double bound, std::mt19937_64& generator) {
  // Spelled out (not std::uniform_real_distribution) so a seed gives the same weights everywhere.
  for (float& x : w)
    x = static_cast<float>((static_cast<double>(generator() >> 11) * 0x1.0p-53 * 2 - 1) * bound);
}

}  // namespace

// ---- construction ---------------------------------------------------------------------------

MultiHeadAttention::MultiHeadAttention(const MhaConfig& config) : config_(resolve(config)) {
  const Widths w(config_);
  const auto n = [](std::int64_t a, std::int64_t b) { return static_cast<std::size_t>(a * b); };
  parameters_.w_q.assign(n(config_.d_model, w.q), 0.0f);
  parameters_.w_k.assign(n(config_.d_model, w.k), 0.0f);
  parameters_.w_v.assign(n(config_.d_model, w.v), 0.0f);
  parameters_.w_o.assign(n(w.o, config_.d_model), 0.0f);
  if (config_.bias) {
    parameters_.b_q.assign(n(1, w.q), 0.0f);
    parameters_.b_k.assign(n(1, w.k), 0.0f);
    parameters_.b_v.assign(n(1, w.v), 0.0f);
    parameters_.b_o.assign(n(1, config_.d_model), 0.0f);
  }
}

std::int64_t MultiHeadAttention::parameter_count() const {
  const MhaParameters& p = parameters_;
  return static_cast<std::int64_t>(p.w_q.size() + p.w_k.size() + p.w_v.size() + p.w_o.size() +
                                   p.b_q.size() + p.b_k.size() + p.b_v.size() + p.b_o.size());
}

void MultiHeadAttention::init_parameters(std::uint64_t seed) {
  std::mt19937_64 generator(seed);
  const double input_bound = std::sqrt(3.0 / static_cast<double>(config_.d_model));
  const double output_bound = std::sqrt(3.0 / static_cast<double>(Widths(config_).o));
  fill_uniform(parameters_.w_q, input_bound, generator);
  fill_uniform(parameters_.w_k, input_bound, generator);
  fill_uniform(parameters_.w_v, input_bound, generator);
  fill_uniform(parameters_.w_o, output_bound, generator);
  for (std::vector<float>* b :
       {&parameters_.b_q, &parameters_.b_k, &parameters_.b_v, &parameters_.b_o})
    std::fill(b->begin(), b->end(), 0.0f);
}

MhaKvCache::MhaKvCache(const MultiHeadAttention& layer, std::int64_t batch, std::int64_t capacity)
    : batch_(batch), capacity_(capacity) {
  check_positive(batch, "MhaKvCache batch");
  check_positive(capacity, "MhaKvCache capacity");
  const Widths w(layer.config());
  key_width_ = w.k;
  value_width_ = w.v;
  keys_.assign(static_cast<std::size_t>(batch * capacity * w.k), 0.0f);
  values_.assign(static_cast<std::size_t>(batch * capacity * w.v), 0.0f);
}

// ---- forward --------------------------------------------------------------------------------

void MultiHeadAttention::forward(std::span<const float> x_q, std::span<const float> x_kv,
                                 std::int64_t batch, std::int64_t len_q, std::int64_t len_k,
                                 const Options& options, std::span<float> y,
                                 MhaActivations* activations, std::span<float> entropy) const {
  const MhaConfig& c = config_;
  const Widths w(c);
  check_positive(batch, "batch");
  check_positive(len_q, "len_q");
  check_positive(len_k, "len_k");
  check_size(x_q.size(), batch * len_q * c.d_model, "x_q", "batch·len_q·d_model");
  check_size(x_kv.size(), batch * len_k * c.d_model, "x_kv", "batch·len_k·d_model");
  check_size(y.size(), batch * len_q * c.d_model, "y", "batch·len_q·d_model");
  if (!entropy.empty())
    check_size(entropy.size(), batch * c.heads * len_q, "entropy", "batch·heads·len_q");

  // Everything goes to local buffers first: an argument error from the kernel leaves y and
  // `activations` untouched.
  MhaActivations a;
  a.batch = batch, a.len_q = len_q, a.len_k = len_k;
  a.q.resize(static_cast<std::size_t>(batch * len_q * w.q));
  a.k.resize(static_cast<std::size_t>(batch * len_k * w.k));
  a.v.resize(static_cast<std::size_t>(batch * len_k * w.v));
  a.attn.resize(static_cast<std::size_t>(batch * len_q * w.o));
  a.lse.resize(static_cast<std::size_t>(batch * c.heads * len_q));
  project(x_q.data(), batch * len_q, c.d_model, parameters_.w_q, parameters_.b_q, w.q, a.q.data());
  project(x_kv.data(), batch * len_k, c.d_model, parameters_.w_k, parameters_.b_k, w.k, a.k.data());
  project(x_kv.data(), batch * len_k, c.d_model, parameters_.w_v, parameters_.b_v, w.v, a.v.data());

  Outputs outputs;
  outputs.out = heads_view(a.attn.data(), batch, c.heads, len_q, c.d_v, w.o, len_q * w.o);
  if (activations != nullptr)
    outputs.lse = Tensor::contiguous(a.lse.data(), DType::f32, {batch, c.heads, len_q});
  if (!entropy.empty())
    outputs.entropy = Tensor::contiguous(entropy.data(), DType::f32, {batch, c.heads, len_q});
  sdpa::forward(heads_view(a.q.data(), batch, c.heads, len_q, c.d_k, w.q, len_q * w.q),
                heads_view(a.k.data(), batch, c.kv_heads, len_k, c.d_k, w.k, len_k * w.k),
                heads_view(a.v.data(), batch, c.kv_heads, len_k, c.d_v, w.v, len_k * w.v), options,
                outputs);

  project(a.attn.data(), batch * len_q, w.o, parameters_.w_o, parameters_.b_o, c.d_model, y.data());
  if (activations != nullptr) *activations = std::move(a);
}

// ---- backward -------------------------------------------------------------------------------

void MultiHeadAttention::backward(std::span<const float> x_q, std::span<const float> x_kv,
                                  const MhaActivations& a, const Options& options,
                                  std::span<const float> dy, MhaGrads& grads) const {
  const MhaConfig& c = config_;
  const Widths w(c);
  const std::int64_t B = a.batch, Lq = a.len_q, Lk = a.len_k;
  check_positive(B, "activations.batch");
  check_size(a.q.size(), B * Lq * w.q, "activations.q", "batch·len_q·heads·d_k");
  check_size(a.k.size(), B * Lk * w.k, "activations.k", "batch·len_k·kv_heads·d_k");
  check_size(a.v.size(), B * Lk * w.v, "activations.v", "batch·len_k·kv_heads·d_v");
  check_size(a.attn.size(), B * Lq * w.o, "activations.attn", "batch·len_q·heads·d_v");
  check_size(a.lse.size(), B * c.heads * Lq, "activations.lse", "batch·heads·len_q");
  check_size(x_q.size(), B * Lq * c.d_model, "x_q", "batch·len_q·d_model");
  check_size(x_kv.size(), B * Lk * c.d_model, "x_kv", "batch·len_k·d_model");
  check_size(dy.size(), B * Lq * c.d_model, "dy", "batch·len_q·d_model");
  check_size(grads.dx_q.size(), B * Lq * c.d_model, "grads.dx_q", "batch·len_q·d_model");
  check_size(grads.dx_kv.size(), B * Lk * c.d_model, "grads.dx_kv", "batch·len_k·d_model");
  if (grads.dx_q.data() == grads.dx_kv.data() && Lq != Lk)
    fail("grads.dx_q and grads.dx_kv are one buffer (self-attention) but len_q = ", Lq,
         " != len_k = ", Lk);

  // dattn [B·Lq, ow] = dy · W_oᵀ, then the attention backward gives dq, dk, dv.
  std::vector<float> dattn(a.attn.size()), dq(a.q.size()), dk(a.k.size()), dv(a.v.size());
  layer::gemm(false, true, B * Lq, w.o, c.d_model, dy.data(), c.d_model, parameters_.w_o.data(),
              c.d_model, 0.0f, dattn.data(), w.o);
  Grads attention_grads;
  attention_grads.dq = heads_view(dq.data(), B, c.heads, Lq, c.d_k, w.q, Lq * w.q);
  attention_grads.dk = heads_view(dk.data(), B, c.kv_heads, Lk, c.d_k, w.k, Lk * w.k);
  attention_grads.dv = heads_view(dv.data(), B, c.kv_heads, Lk, c.d_v, w.v, Lk * w.v);
  attention_grads.dbias = grads.dbias;
  attention_grads.dscale = grads.dscale;
  sdpa::backward(heads_view(a.q.data(), B, c.heads, Lq, c.d_k, w.q, Lq * w.q),
                 heads_view(a.k.data(), B, c.kv_heads, Lk, c.d_k, w.k, Lk * w.k),
                 heads_view(a.v.data(), B, c.kv_heads, Lk, c.d_v, w.v, Lk * w.v),
                 heads_view(a.attn.data(), B, c.heads, Lq, c.d_v, w.o, Lq * w.o),
                 heads_view(dattn.data(), B, c.heads, Lq, c.d_v, w.o, Lq * w.o),
                 Tensor::contiguous(const_cast<float*>(a.lse.data()), DType::f32, {B, c.heads, Lq}),
                 options, attention_grads);

  if (MhaParameters* g = grads.parameters) {
    // dW = xᵀ · d(projection), db = column sums of d(projection).
    g->w_q.resize(parameters_.w_q.size());
    g->w_k.resize(parameters_.w_k.size());
    g->w_v.resize(parameters_.w_v.size());
    g->w_o.resize(parameters_.w_o.size());
    layer::gemm(true, false, w.o, c.d_model, B * Lq, a.attn.data(), w.o, dy.data(), c.d_model, 0.0f,
                g->w_o.data(), c.d_model);
    layer::gemm(true, false, c.d_model, w.q, B * Lq, x_q.data(), c.d_model, dq.data(), w.q, 0.0f,
                g->w_q.data(), w.q);
    layer::gemm(true, false, c.d_model, w.k, B * Lk, x_kv.data(), c.d_model, dk.data(), w.k, 0.0f,
                g->w_k.data(), w.k);
    layer::gemm(true, false, c.d_model, w.v, B * Lk, x_kv.data(), c.d_model, dv.data(), w.v, 0.0f,
                g->w_v.data(), w.v);
    g->b_q.resize(parameters_.b_q.size());
    g->b_k.resize(parameters_.b_k.size());
    g->b_v.resize(parameters_.b_v.size());
    g->b_o.resize(parameters_.b_o.size());
    if (c.bias) {
      layer::column_sums(dy.data(), B * Lq, c.d_model, g->b_o.data());
      layer::column_sums(dq.data(), B * Lq, w.q, g->b_q.data());
      layer::column_sums(dk.data(), B * Lk, w.k, g->b_k.data());
      layer::column_sums(dv.data(), B * Lk, w.v, g->b_v.data());
    }
  }

  // dx_q = dq · W_qᵀ;  dx_kv = dk · W_kᵀ + dv · W_vᵀ (added to dx_q when the buffers are one).
  const bool aliased = grads.dx_q.data() == grads.dx_kv.data();
  layer::gemm(false, true, B * Lq, c.d_model, w.q, dq.data(), w.q, parameters_.w_q.data(), w.q,
              0.0f, grads.dx_q.data(), c.d_model);
  layer::gemm(false, true, B * Lk, c.d_model, w.k, dk.data(), w.k, parameters_.w_k.data(), w.k,
              aliased ? 1.0f : 0.0f, grads.dx_kv.data(), c.d_model);
  layer::gemm(false, true, B * Lk, c.d_model, w.v, dv.data(), w.v, parameters_.w_v.data(), w.v,
              1.0f, grads.dx_kv.data(), c.d_model);
}

// ---- incremental decoding -------------------------------------------------------------------

void MultiHeadAttention::decode_step(std::span<const float> x_new, std::int64_t len_new,
                                     MhaKvCache& cache, const Options& options, std::span<float> y,
                                     std::span<float> entropy) const {
  const MhaConfig& c = config_;
  const Widths w(c);
  const std::int64_t B = cache.batch_;
  check_positive(len_new, "len_new");
  if (cache.key_width_ != w.k || cache.value_width_ != w.v)
    fail("cache: built for key/value widths ", cache.key_width_, "/", cache.value_width_,
         ", this layer has ", w.k, "/", w.v);
  if (cache.length_ + len_new > cache.capacity_)
    fail("cache: length ", cache.length_, " + len_new ", len_new, " exceeds its capacity ",
         cache.capacity_);
  if (options.causal == Causal::top_left)
    fail(
        "options.causal = top_left: decode_step aligns the causal mask bottom-right "
        "(give none or bottom_right)");
  check_size(x_new.size(), B * len_new * c.d_model, "x_new", "cache.batch·len_new·d_model");
  check_size(y.size(), B * len_new * c.d_model, "y", "cache.batch·len_new·d_model");
  if (!entropy.empty())
    check_size(entropy.size(), B * c.heads * len_new, "entropy", "cache.batch·heads·len_new");

  std::vector<float> q(static_cast<std::size_t>(B * len_new * w.q));
  std::vector<float> attn(static_cast<std::size_t>(B * len_new * w.o));
  project(x_new.data(), B * len_new, c.d_model, parameters_.w_q, parameters_.b_q, w.q, q.data());
  // The new keys and values go straight to their cache rows [length, length + len_new) of each
  // sequence; length_ moves only once the attention call has accepted its arguments.
  const std::int64_t old_length = cache.length_, new_length = old_length + len_new;
  for (std::int64_t b = 0; b < B; ++b) {
    const float* x_b = x_new.data() + b * len_new * c.d_model;
    project(x_b, len_new, c.d_model, parameters_.w_k, parameters_.b_k, w.k,
            cache.keys_.data() + (b * cache.capacity_ + old_length) * w.k);
    project(x_b, len_new, c.d_model, parameters_.w_v, parameters_.b_v, w.v,
            cache.values_.data() + (b * cache.capacity_ + old_length) * w.v);
  }

  Options step_options = options;
  step_options.causal = Causal::bottom_right;
  Outputs outputs;
  outputs.out = heads_view(attn.data(), B, c.heads, len_new, c.d_v, w.o, len_new * w.o);
  if (!entropy.empty())
    outputs.entropy = Tensor::contiguous(entropy.data(), DType::f32, {B, c.heads, len_new});
  sdpa::forward(
      heads_view(q.data(), B, c.heads, len_new, c.d_k, w.q, len_new * w.q),
      heads_view(cache.keys_.data(), B, c.kv_heads, new_length, c.d_k, w.k, cache.capacity_ * w.k),
      heads_view(cache.values_.data(), B, c.kv_heads, new_length, c.d_v, w.v,
                 cache.capacity_ * w.v),
      step_options, outputs);
  cache.length_ = new_length;
  project(attn.data(), B * len_new, w.o, parameters_.w_o, parameters_.b_o, c.d_model, y.data());
}

void MultiHeadAttention::decode_step(std::span<const float> x_new, std::int64_t len_new,
                                     KvCache& cache, std::span<const int> sequences,
                                     std::span<float> y, const AttendOptions& options) const {
  const MhaConfig& c = config_;
  const Widths w(c);
  const KvCacheConfig& cc = cache.config();
  const auto S = static_cast<std::int64_t>(sequences.size());
  check_positive(len_new, "len_new");
  if (cc.heads_kv != c.kv_heads || cc.dim_k != c.d_k || cc.dim_v != c.d_v)
    fail("cache: built for heads_kv/dim_k/dim_v = ", cc.heads_kv, "/", cc.dim_k, "/", cc.dim_v,
         ", this layer has ", c.kv_heads, "/", c.d_k, "/", c.d_v);
  check_size(x_new.size(), S * len_new * c.d_model, "x_new", "sequences.size()·len_new·d_model");
  check_size(y.size(), S * len_new * c.d_model, "y", "sequences.size()·len_new·d_model");
  std::int64_t pages = 0;  // every sequence's new pages, checked before anything is appended
  for (const int id : sequences) {
    const std::int64_t length = cache.length(id);  // throws for an unknown id
    pages += (length + len_new + cc.block_tokens - 1) / cc.block_tokens -
             (length + cc.block_tokens - 1) / cc.block_tokens;
  }
  if (pages > cache.free_blocks())
    fail("cache: this step needs ", pages, " more pages, the pool has ", cache.free_blocks(), " free");

  std::vector<float> q(static_cast<std::size_t>(S * len_new * w.q));
  std::vector<float> k(static_cast<std::size_t>(S * len_new * w.k));
  std::vector<float> v(static_cast<std::size_t>(S * len_new * w.v));
  std::vector<float> attn(static_cast<std::size_t>(S * len_new * w.o));
  project(x_new.data(), S * len_new, c.d_model, parameters_.w_q, parameters_.b_q, w.q, q.data());
  project(x_new.data(), S * len_new, c.d_model, parameters_.w_k, parameters_.b_k, w.k, k.data());
  project(x_new.data(), S * len_new, c.d_model, parameters_.w_v, parameters_.b_v, w.v, v.data());
  for (std::int64_t s = 0; s < S; ++s) {
    const int id = sequences[static_cast<std::size_t>(s)];
    // Rows [s·len_new, (s + 1)·len_new) of the projections, seen as [heads, len_new, d].
    cache.append(id,
                 Tensor::strided(k.data() + s * len_new * w.k, DType::f32, {c.kv_heads, len_new, c.d_k},
                                 {c.d_k, w.k, 1}),
                 Tensor::strided(v.data() + s * len_new * w.v, DType::f32, {c.kv_heads, len_new, c.d_v},
                                 {c.d_v, w.v, 1}));
    cache.attend(id,
                 Tensor::strided(q.data() + s * len_new * w.q, DType::f32, {c.heads, len_new, c.d_k},
                                 {c.d_k, w.q, 1}),
                 Tensor::strided(attn.data() + s * len_new * w.o, DType::f32,
                                 {c.heads, len_new, c.d_v}, {c.d_v, w.o, 1}),
                 options);
  }
  project(attn.data(), S * len_new, w.o, parameters_.w_o, parameters_.b_o, c.d_model, y.data());
}

}  // namespace sdpa
