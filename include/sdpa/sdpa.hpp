// sdpa — exact, fast, memory-efficient scaled dot-product attention on CPU.
//
//   out = softmax(Q·Kᵀ·scale + bias) · V        scale = 1/sqrt(Dk) unless given
//
// Options::softcap = c > 0 caps the scores first (Gemma-2 order): t = c·tanh(Q·Kᵀ·scale / c), then
// the bias is added, masked keys become −inf, then the softmax. Options::sinks gives each query head
// h a learned logit sink_h that joins every row's softmax as an extra key with no value: it absorbs
// probability mass, out = Σ_j p_j v_j over the real keys only, and lse includes it.
//
// This is the one public header. Tensors are views: a pointer, a dtype, a shape and strides counted
// in elements (any strides, so [B, L, H, D] memory works without a copy; a stride of 0 broadcasts).
//
//   q   [B, Hq,  Lq, Dk]      k   [B, Hkv, Lk, Dk]      v   [B, Hkv, Lk, Dv]
//   out [B, Hq,  Lq, Dv]      lse [B, Hq,  Lq]          weights [B, Hq, Lq, Lk]
//   mask / bias [B|1, Hq|1, Lq|1, Lk|1]   (a size-1 dimension broadcasts)
//
// Hq must be a multiple of Hkv (grouped-query / multi-query attention): query head h reads key/value
// head h / (Hq / Hkv).
//
// Dtypes: q, k, v (and dout) are all f32, all bf16 or all f16 (16-bit values as raw bit patterns,
// uint16_t). Products are accumulated and the softmax is computed in fp32 whatever the input dtype.
// out and the gradients dq, dk, dv are in the inputs' dtype, or f32 when the caller passes f32
// tensors ("fp32 on request"); lse, weights, entropy, mask/bias and dbias are always f32 / bool.
// With bf16 inputs on a CPU with AVX512_BF16 the forward multiplies in bf16 (vdpbf16ps: Q·Kᵀ exact
// products summed in fp32; the probabilities P rounded to bf16 for P·V, as GPU flash attention
// does); elsewhere 16-bit inputs are widened to fp32 when packed and run the fp32 kernels.
// The backward always widens 16-bit tensors to fp32 copies first. The split-KV decode plan reads
// f32 only: 16-bit calls always take the prefill plan.
//
// Every function validates all of its arguments before it writes anything: on error it throws
// sdpa::Error, whose message names the argument, the expected and the given value, and no output
// has been touched.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <new>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>

namespace sdpa {

/// Thrown for invalid arguments: the message names the argument, what was expected, what was given.
class Error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// Thrown when memory the library needs cannot be allocated (scratch workspace): the message names
/// the bytes and what they were for. A std::bad_alloc, so generic out-of-memory handling (and
/// Python's MemoryError) catches it; nothing has been written to any output when it is thrown.
class OutOfMemory : public std::bad_alloc {
 public:
  explicit OutOfMemory(const std::string& message) : message_(message) {}
  const char* what() const noexcept override { return message_.what(); }

 private:
  std::runtime_error message_;  // copying it cannot throw (a std::string member could)
};

enum class DType : std::uint8_t { f32, f64, f16, bf16, boolean, i32, i64 };

/// Bytes per element of `dtype`.
std::size_t dtype_size(DType dtype);
/// Short name of `dtype` ("f32", "bool", ...), as used in error messages.
const char* dtype_name(DType dtype);

/// A strided view of up to four dimensions. Strides are in elements and may be zero or negative.
struct Tensor {
  void* data = nullptr;
  DType dtype = DType::f32;
  int rank = 0;
  std::array<std::int64_t, 4> shape{};
  std::array<std::int64_t, 4> stride{};

  /// A row-major (C order) view of `shape`.
  static Tensor contiguous(void* data, DType dtype, std::initializer_list<std::int64_t> shape);
  /// A view with explicit strides (in elements); `shape` and `stride` must have the same length.
  static Tensor strided(void* data, DType dtype, std::initializer_list<std::int64_t> shape,
                        std::initializer_list<std::int64_t> stride);

  /// The number of elements (the product of the extents; INT64_MAX when that overflows).
  std::int64_t numel() const;
};

/// Where the causal diagonal sits when Lq != Lk.
///   top_left:     query i sees keys j <= i                     (training, prefill from scratch)
///   bottom_right: query i sees keys j <= i + (Lk - Lq)          (the last query sees every key: KV cache)
/// With per-batch lengths, Lq and Lk are that batch entry's query_lengths / key_lengths.
enum class Causal { none, top_left, bottom_right };

/// Sliding window around each query's diagonal position p (p = i, or i + Lk - Lq when the causal
/// alignment is bottom_right): query i sees keys j with p - left <= j <= p + right.
/// -1 means unbounded on that side. Combined with a causal mask, right is effectively 0.
struct Window {
  std::int64_t left = -1;
  std::int64_t right = -1;
};

/// Instruction set of the kernels. `automatic` picks the best the CPU has (CPUID, once); naming one
/// the CPU lacks is an error. The environment variable SDPA_ISA=scalar|avx2|avx512 overrides
/// `automatic`.
enum class Isa { automatic, scalar, avx2, avx512 };

const char* isa_name(Isa isa);
/// The best instruction set this CPU supports (never `automatic`).
Isa best_isa();

struct Options {
  std::optional<float> scale;             ///< default 1/sqrt(Dk); must be finite
  Causal causal = Causal::none;
  std::optional<Tensor> mask;             ///< bool, true = attend; [B|1, Hq|1, Lq|1, Lk|1]
  std::optional<Tensor> bias;             ///< f32, added to the scaled logits; -inf allowed; same broadcast
  std::optional<Window> window;
  std::span<const std::int32_t> key_lengths;    ///< empty, or [B]: keys j >= key_lengths[b] are padding
  std::span<const std::int32_t> query_lengths;  ///< empty, or [B]: rows i >= query_lengths[b] are padding,
                                                ///< written as out = 0, lse = -inf, weights = 0
  int threads = 0;                        ///< 0 = all available (OpenMP)
  std::size_t workspace_limit = 0;        ///< bytes of scratch memory allowed; 0 = unlimited
  Isa isa = Isa::automatic;
  /// Logit softcap c (Gemma-2): 0 = off; else finite and > 0, and the scores become
  /// c·tanh(scale·q·k / c) BEFORE the bias is added and the masks applied. Backward: the chain
  /// rule through tanh (d(bias) is dL/d(logit), d(scale) includes the factor 1 − tanh²).
  float softcap = 0.0f;
  /// Attention sinks: f32 [Hq], any stride; each value finite, or −inf for "no sink in this head".
  /// Query head h's rows get an extra logit sink_h with no value in their softmax (it is not
  /// capped, scaled or masked): l += exp(sink_h − m), lse includes it, out sums over the real keys
  /// (a row that sees no key: out = 0, lse = sink_h), weights are the real keys' probabilities
  /// (a row sums to 1 − p_sink), entropy is that of the full distribution including the sink.
  /// Padding rows (i >= query_lengths[b]) have no sink: out = 0, lse = −inf.
  std::optional<Tensor> sinks;
};

struct Outputs {
  Tensor out;                             ///< [B, Hq, Lq, Dv], required: the inputs' dtype or f32
  std::optional<Tensor> lse;              ///< f32 [B, Hq, Lq]: natural-log log-sum-exp of each row's logits
  std::optional<Tensor> weights;          ///< f32 [B, Hq, Lq, Lk]: the softmax probabilities (O(L²) memory);
                                          ///< asking for them selects the prefill plan, so with
                                          ///< Lq ≤ 16 out may then differ in its last bits
  std::optional<Tensor> entropy;          ///< f32 [B, Hq, Lq]: each row's attention entropy
                                          ///< H = −Σ p log p = lse − Σ p·s (nats), computed inside the
                                          ///< fused kernel; 0 for a row with no visible key
};

/// What a call did, for summaries and benchmarks.
struct RunInfo {
  Isa isa = Isa::automatic;               ///< the instruction set the kernels ran with
  int threads = 0;                        ///< threads used
  double flops = 0;                       ///< 4·Dk-and-Dv-weighted multiply-adds of visible (query, key) pairs:
                                          ///< 2·(Dk + Dv) per visible pair
  std::size_t workspace_bytes = 0;        ///< scratch memory allocated
};

/// The fused, tiled forward pass with online softmax: never materializes the Lq×Lk matrix unless
/// `outputs.weights` is given. f32, bf16 or f16 in (see Dtypes above). A row with no visible key
/// gives out = 0 and lse = -inf. Results are bitwise identical for every thread count.
///
/// Two plans: prefill (query blocks against packed keys/values) and, for decoding — Lq ≤ 16, at
/// most 64 query rows per (batch, kv-head) group (Hq / Hkv · Lq), no weights — split-KV: all query
/// rows of a group read each key/value row once, where it lies in memory, in chunks of 256 keys
/// (chunk c holds keys [256c, 256c + 256)) whose partial softmax states are merged in key order.
RunInfo forward(const Tensor& q, const Tensor& k, const Tensor& v, const Options& options,
                const Outputs& outputs);

/// Merges partial attention results over disjoint key sets into the result over their union (the
/// combine step of split-KV decoding and ring attention; e.g. forward() run on each block of keys):
///
///   lse = log Σ_i exp(lse_i)          out = Σ_i exp(lse_i − lse) · out_i
///
/// outs[i] f32 [B, Hq, Lq, Dv] and lses[i] f32 [B, Hq, Lq] are part i's out and lse (any strides);
/// `out` (same shape) receives the merged output, `lse` (optional, [B, Hq, Lq]) the merged lse.
/// A part whose lse is −inf (it saw no key) contributes nothing, whatever its out holds; a row where
/// every part is −inf gets out = 0, lse = −inf (never NaN; a NaN lse gives a NaN row). Computed in
/// fp64 and summed in part order, so the result is deterministic and independent of `threads`
/// (0 = all). `out` may be the very same view as one of `outs` (merging in place).
void merge_attention(std::span<const Tensor> outs, std::span<const Tensor> lses, const Tensor& out,
                     const std::optional<Tensor>& lse = std::nullopt, int threads = 0);

/// Gradients of a loss L with respect to the inputs, given dL/d(out). Shapes equal those of the
/// corresponding inputs; every field is written completely (no accumulation into existing values).
struct Grads {
  // dq, dk, dv: each in the inputs' dtype or f32.
  Tensor dq;                              ///< [B, Hq, Lq, Dk]
  Tensor dk;                              ///< [B, Hkv, Lk, Dk]: summed over the query heads of a group
  Tensor dv;                              ///< [B, Hkv, Lk, Dv]: likewise
  std::optional<Tensor> dbias;            ///< f32, the shape of options.bias: summed over its broadcast dims
  float* dscale = nullptr;                ///< optional: dL/d(scale) = Σ dS ∘ (q·k)  (temperature gradient)
  /// optional f32 [Hq], requires options.sinks: dL/d(sink_h) = −Σ_rows of head h p_sink·(dO·O),
  /// p_sink = exp(sink_h − lse). Deterministic (a fixed summation order).
  std::optional<Tensor> dsinks;
};

/// The exact backward pass (FlashAttention-2 recomputation from lse; O(L) extra memory).
/// `out` and `lse` are the forward's outputs for the same inputs and options; `dout` is dL/d(out)
/// [B, Hq, Lq, Dv]. Rows with no visible key get zero gradients. Deterministic: bitwise identical
/// for every thread count.
RunInfo backward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                 const Tensor& dout, const Tensor& lse, const Options& options, const Grads& grads);

/// The softmax Jacobian J = diag(p) − p·pᵀ of p = softmax(logits), n × n row-major into `jacobian`.
void softmax_jacobian(std::span<const double> logits, std::span<double> jacobian);

/// J·g = p ∘ (g − p·g) without forming J (J is symmetric, so this is also Jᵀ·g).
void softmax_jacobian_vector_product(std::span<const double> logits, std::span<const double> g,
                                     std::span<double> result);

/// Floating-point operations of a forward call with these shapes and options, counting
/// 2·(Dk + Dv) per visible (query, key) pair (exact for masks given by causal / window / lengths;
/// a bool mask or bias is not inspected).
double forward_flops(const Tensor& q, const Tensor& k, const Tensor& v, const Options& options);

/// The library version, "MAJOR.MINOR.PATCH".
const char* version();

}  // namespace sdpa
