// AVX2 + FMA instantiation of the attention kernels (forward and backward). 8 lanes;
// panels of 16 keys; a 6 × 16 register block uses 12 of the 16 ymm registers for accumulators.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/decode.hpp"
#include "kernels/flash_backward.hpp"
#include "kernels/flash_forward.hpp"

namespace sdpa::kernels::avx2_impl {
namespace {

struct Simd {
  using V = __m256;
  static constexpr int kLanes = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  // x, not fused into the operation that uses it (as the AVX-512 trait's unfused).
  static V unfused(V x) {
    asm("" : "+x"(x));
    return x;
  }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static float reduce_max(V v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
  }
  static float reduce_add(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }

  // 2^x as in the AVX-512 kernel; 2^n is built in the exponent bits (n + 127) << 23, with x
  // clamped to [−126, 127] so the exponent stays normal; x < −126 gives 0; NaN propagates.
  static V exp2(V x) {
    const V clamped = _mm256_min_ps(_mm256_set1_ps(127.0f), _mm256_max_ps(_mm256_set1_ps(-126.0f), x));
    const V n = _mm256_round_ps(clamped, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const V f = _mm256_sub_ps(clamped, n);
    V p = _mm256_set1_ps(1.535336188319500e-4f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.339887440266574e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.618437357674640e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550332471162809e-2f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402264791363012e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931472028550421e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    const __m256i exponent = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    const V result = _mm256_mul_ps(p, _mm256_castsi256_ps(exponent));
    const V underflow = _mm256_cmp_ps(x, _mm256_set1_ps(-126.0f), _CMP_LT_OQ);
    return _mm256_andnot_ps(underflow, result);
  }

  // exp2 for a softmax exponent (x ≤ 0 up to rounding): the AVX-512 kernel drops exp2's overflow
  // clamp there; here it is exp2 itself.
  static V softmax_exp2(V x) { return exp2(x); }

  // The operations vector_tanh (softmax_rows_impl.hpp) needs besides arithmetic.
  static V abs(V x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }  // b when either is NaN
  // a < bound ? below : otherwise, lane by lane (NaN: otherwise).
  static V select_below(V a, V bound, V below, V otherwise) {
    return _mm256_blendv_ps(otherwise, below, _mm256_cmp_ps(a, bound, _CMP_LT_OQ));
  }
  // magnitude (sign bit clear) with the sign of x.
  static V with_sign_of(V magnitude, V x) {
    return _mm256_or_ps(magnitude, _mm256_and_ps(x, _mm256_set1_ps(-0.0f)));
  }
};

constexpr int kMicroRows = 6;
constexpr int kBlockRows = 96;
constexpr int kBlockKeys = 256;

}  // namespace
}  // namespace sdpa::kernels::avx2_impl

#define SDPA_KERNEL_NS avx2_impl
#define SDPA_KERNEL_NAME "avx2"
#include "kernels/flash_forward_impl.hpp"
#include "kernels/flash_backward_impl.hpp"
#include "kernels/decode_impl.hpp"

namespace sdpa::kernels {
const FlashKernel& flash_kernel_avx2() { return avx2_impl::kernel(); }
const BackwardKernel& backward_kernel_avx2() { return avx2_impl::backward_kernel(); }
const DecodeKernel& decode_kernel_avx2() { return avx2_impl::decode_kernel(); }
}  // namespace sdpa::kernels
