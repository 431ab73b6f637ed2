// The 16-lane AVX-512 vector trait of the kernel templates (flash_forward_impl.hpp, ...), shared by
// the AVX-512 and AVX-512-BF16 translation units. Included inside their namespace
// sdpa::kernels::<isa>::(anonymous), after <immintrin.h>, so each gets its own internal copy.

struct Simd {
  using V = __m512;
  static constexpr int kLanes = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  // x, as a value the compiler may not fuse into the operation that uses it (GCC contracts a·b + c
  // into an fma by default): a product passed through it is rounded on its own.
  static V unfused(V x) {
    asm("" : "+v"(x));
    return x;
  }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V div(V a, V b) { return _mm512_div_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static float reduce_max(V v) { return _mm512_reduce_max_ps(v); }
  static float reduce_add(V v) { return _mm512_reduce_add_ps(v); }

  // 2^x: x = n + f with n = round(x), |f| ≤ 1/2; 2^f by a degree-6 polynomial (Cephes exp2f
  // coefficients, relative error < 2 ulp on [−1/2, 1/2]); 2^n by vscalefps. x < −126 gives 0;
  // NaN propagates (the operand order of max/min keeps NaN).
  static V exp2(V x) {
    const V clamped = _mm512_min_ps(_mm512_set1_ps(128.0f), _mm512_max_ps(_mm512_set1_ps(-127.0f), x));
    const V n = _mm512_roundscale_ps(clamped, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return exp2_reduced(x, n, _mm512_sub_ps(clamped, n));
  }

  // 2^(n + f) for exp2's x = n + f (n integral, |f| ≤ 1/2), 0 where x < −126.
  static V exp2_reduced(V x, V n, V f) {
    V p = _mm512_set1_ps(1.535336188319500e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    // p·2^n where x ≥ −126 or NaN, 0 below (one masked instruction, not a select after it).
    const __mmask16 in_range = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-126.0f), _CMP_NLT_UQ);
    return _mm512_maskz_scalef_ps(in_range, p, n);
  }

  // exp2 for a softmax exponent x = t − base with base ≥ every t of the row (x ≤ 0 up to rounding;
  // −inf and NaN as exp2): no overflow clamp, otherwise exp2's operations and bits.
  static V softmax_exp2(V x) {
    const V clamped = _mm512_max_ps(_mm512_set1_ps(-127.0f), x);
    const V n = _mm512_roundscale_ps(clamped, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return exp2_reduced(x, n, _mm512_sub_ps(clamped, n));
  }

  // The operations vector_tanh (softmax_rows_impl.hpp) needs besides arithmetic.
  static V abs(V x) { return _mm512_andnot_ps(_mm512_set1_ps(-0.0f), x); }
  static V min(V a, V b) { return _mm512_min_ps(a, b); }  // b when either is NaN
  // a < bound ? below : otherwise, lane by lane (NaN: otherwise).
  static V select_below(V a, V bound, V below, V otherwise) {
    return _mm512_mask_mov_ps(otherwise, _mm512_cmp_ps_mask(a, bound, _CMP_LT_OQ), below);
  }
  // magnitude (sign bit clear) with the sign of x.
  static V with_sign_of(V magnitude, V x) {
    return _mm512_or_ps(magnitude, _mm512_and_ps(x, _mm512_set1_ps(-0.0f)));
  }
};
