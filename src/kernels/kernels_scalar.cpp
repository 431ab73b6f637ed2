// Portable instantiation of the attention kernels, forward and backward: plain C++ on 8-float
// "vectors" (the compiler may vectorize them with the baseline instruction set). Always correct,
// on any CPU; the reference point for the ISA-specific kernels.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/decode.hpp"
#include "kernels/flash_backward.hpp"
#include "kernels/flash_forward.hpp"

namespace sdpa::kernels::scalar_impl {
namespace {

struct Simd {
  static constexpr int kLanes = 8;
  struct V {
    float lane[kLanes];
  };
  static V zero() { return set1(0.0f); }
  static V set1(float x) {
    V v;
    for (float& lane : v.lane) lane = x;
    return v;
  }
  static V load(const float* p) {
    V v;
    std::memcpy(v.lane, p, sizeof v.lane);
    return v;
  }
  static void store(float* p, V v) { std::memcpy(p, v.lane, sizeof v.lane); }
  static V fma(V a, V b, V c) {
    for (int i = 0; i < kLanes; ++i) c.lane[i] += a.lane[i] * b.lane[i];
    return c;
  }
  // x, not fused into the operation that uses it (as the AVX-512 trait's unfused).
  static V unfused(V x) {
    asm("" : "+m"(x));
    return x;
  }
  static V mul(V a, V b) {
    for (int i = 0; i < kLanes; ++i) a.lane[i] *= b.lane[i];
    return a;
  }
  static V add(V a, V b) {
    for (int i = 0; i < kLanes; ++i) a.lane[i] += b.lane[i];
    return a;
  }
  static V sub(V a, V b) {
    for (int i = 0; i < kLanes; ++i) a.lane[i] -= b.lane[i];
    return a;
  }
  static V div(V a, V b) {
    for (int i = 0; i < kLanes; ++i) a.lane[i] /= b.lane[i];
    return a;
  }
  // max(a, b) as x86 maxps: b when either is NaN.
  static V max(V a, V b) {
    for (int i = 0; i < kLanes; ++i) a.lane[i] = a.lane[i] > b.lane[i] ? a.lane[i] : b.lane[i];
    return a;
  }
  // Reductions in a fixed tree order, like the vector kernels.
  static float reduce_max(V v) {
    for (int width = kLanes / 2; width > 0; width /= 2)
      for (int i = 0; i < width; ++i)
        v.lane[i] = v.lane[i] > v.lane[i + width] ? v.lane[i] : v.lane[i + width];
    return v.lane[0];
  }
  static float reduce_add(V v) {
    for (int width = kLanes / 2; width > 0; width /= 2)
      for (int i = 0; i < width; ++i) v.lane[i] += v.lane[i + width];
    return v.lane[0];
  }
  static float exp2_lane(float x) {
    if (!(x >= -126.0f)) return x != x ? x : 0.0f;  // NaN stays NaN; underflow gives 0
    if (x > 127.0f) x = 127.0f;
    // Round to nearest by the 1.5·2^23 trick (exact for |x| < 2^22).
    const float n = (x + 12582912.0f) - 12582912.0f;
    const float f = x - n;
    float p = 1.535336188319500e-4f;
    p = p * f + 1.339887440266574e-3f;
    p = p * f + 9.618437357674640e-3f;
    p = p * f + 5.550332471162809e-2f;
    p = p * f + 2.402264791363012e-1f;
    p = p * f + 6.931472028550421e-1f;
    p = p * f + 1.0f;
    const std::uint32_t bits = static_cast<std::uint32_t>(static_cast<std::int32_t>(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return p * scale;
  }
  static V exp2(V x) {
    for (float& lane : x.lane) lane = exp2_lane(lane);
    return x;
  }
  // exp2 for a softmax exponent (x ≤ 0 up to rounding): the AVX-512 kernel drops exp2's overflow
  // clamp there; here it is exp2 itself.
  static V softmax_exp2(V x) { return exp2(x); }

  // The operations vector_tanh (softmax_rows_impl.hpp) needs besides arithmetic, as the x86
  // instructions of the vector kernels do them.
  static V abs(V x) {
    for (float& lane : x.lane) lane = std::fabs(lane);
    return x;
  }
  // min(a, b) as x86 minps: b when either is NaN.
  static V min(V a, V b) {
    for (int i = 0; i < kLanes; ++i) a.lane[i] = a.lane[i] < b.lane[i] ? a.lane[i] : b.lane[i];
    return a;
  }
  // a < bound ? below : otherwise, lane by lane (NaN: otherwise).
  static V select_below(V a, V bound, V below, V otherwise) {
    for (int i = 0; i < kLanes; ++i)
      if (a.lane[i] < bound.lane[i]) otherwise.lane[i] = below.lane[i];
    return otherwise;
  }
  // magnitude (sign bit clear) with the sign of x.
  static V with_sign_of(V magnitude, V x) {
    for (int i = 0; i < kLanes; ++i) magnitude.lane[i] = std::copysign(magnitude.lane[i], x.lane[i]);
    return magnitude;
  }
};

constexpr int kMicroRows = 4;
constexpr int kBlockRows = 64;
constexpr int kBlockKeys = 128;

}  // namespace
}  // namespace sdpa::kernels::scalar_impl

#define SDPA_KERNEL_NS scalar_impl
#define SDPA_KERNEL_NAME "scalar"
#include "kernels/flash_forward_impl.hpp"
#include "kernels/flash_backward_impl.hpp"
#include "kernels/decode_impl.hpp"

namespace sdpa::kernels {
const FlashKernel& flash_kernel_scalar() { return scalar_impl::kernel(); }
const BackwardKernel& backward_kernel_scalar() { return scalar_impl::backward_kernel(); }
const DecodeKernel& decode_kernel_scalar() { return scalar_impl::decode_kernel(); }
}  // namespace sdpa::kernels
