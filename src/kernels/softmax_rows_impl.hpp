// Row operations of the softmax shared by the forward and backward kernels: turning raw scores into
// masked logits, and exponentiating against a base. Included inside the ISA namespace after
// panel_gemm_impl.hpp.

constexpr float kLog2e = 1.44269504088896340736f;
constexpr float kNegInf = -__builtin_inff();

#include "kernels/tanh_coefficients.hpp"

// tanh: an odd polynomial for |x| < kTanhSmall, 1 − 2/(e^{2|x|} + 1) above with |x| clamped at 10
// (tanh rounds to 1 there), then the sign of x (tanh_coefficients.hpp: accuracy). NaN stays NaN
// (min(10, NaN) is NaN, and NaN takes the exp branch).
V vector_tanh(V x) {
  const V a = Simd::abs(x);
  const V z = Simd::mul(a, a);
  V p = Simd::set1(kTanhC4);
  p = Simd::fma(p, z, Simd::set1(kTanhC3));
  p = Simd::fma(p, z, Simd::set1(kTanhC2));
  p = Simd::fma(p, z, Simd::set1(kTanhC1));
  p = Simd::fma(p, z, Simd::set1(kTanhC0));
  const V small = Simd::fma(Simd::mul(p, z), a, a);
  const V e = Simd::exp2(Simd::mul(Simd::min(Simd::set1(10.0f), a), Simd::set1(kTwoLog2e)));
  const V one = Simd::set1(1.0f);
  const V large = Simd::sub(one, Simd::div(Simd::set1(2.0f), Simd::add(e, one)));
  return Simd::with_sign_of(Simd::select_below(a, Simd::set1(kTanhSmall), small, large), x);
}

// row[c] = softcap·tanh(row[c]·scale / softcap) for c in [0, n_keys): the Gemma-2 logit cap,
// applied to the raw scores before the bias and the masks. Dividing (rather than multiplying by
// scale / softcap) keeps a tiny softcap from turning a zero score into 0·inf = NaN.
void softcap_row(float* row, std::int64_t n_keys, float scale, float softcap) {
  const V vscale = Simd::set1(scale), vcap = Simd::set1(softcap);
  for (std::int64_t c = 0; c < n_keys; c += kLanes)
    Simd::store(row + c, Simd::mul(vcap, vector_tanh(Simd::div(Simd::mul(Simd::load(row + c), vscale), vcap))));
}

// Turns one row of raw scores q·k over keys [t0, t0 + n_keys) (n_keys a multiple of kLanes) into
// logits t = S·scale + bias in place (t = softcap·tanh(S·scale / softcap) + bias when softcap > 0),
// with −inf for keys the row may not see: outside [key_begin, key_end), or where the mask is false.
// bias / mask point at key 0 of the row (may be null). Returns the row maximum.
float logits_row(float* row, std::int64_t t0, std::int64_t n_keys, std::int64_t key_begin,
                 std::int64_t key_end, float scale, float softcap, const float* bias,
                 std::int64_t bias_stride, const std::uint8_t* mask, std::int64_t mask_stride) {
  const std::int64_t lo = max_i64(key_begin, t0) - t0;  // visible columns [lo, hi)
  const std::int64_t hi = min_i64(key_end, t0 + n_keys) - t0;
  const V vscale = Simd::set1(scale);
  if (lo >= hi) {
    for (std::int64_t c = 0; c < n_keys; ++c) row[c] = kNegInf;
    return kNegInf;
  }
  V vmax = Simd::set1(kNegInf);
  if (softcap > 0.0f) {
    softcap_row(row, n_keys, scale, softcap);
  } else if (lo == 0 && hi == n_keys && bias == nullptr && mask == nullptr) {
    // Fully visible: scale and max in one pass.
    for (std::int64_t c = 0; c < n_keys; c += kLanes) {
      const V t = Simd::mul(Simd::load(row + c), vscale);
      Simd::store(row + c, t);
      vmax = Simd::max(vmax, t);
    }
    return Simd::reduce_max(vmax);
  } else {
    for (std::int64_t c = 0; c < n_keys; c += kLanes)
      Simd::store(row + c, Simd::mul(Simd::load(row + c), vscale));
  }
  for (std::int64_t c = 0; c < lo; ++c) row[c] = kNegInf;
  for (std::int64_t c = hi; c < n_keys; ++c) row[c] = kNegInf;
  if (bias != nullptr) {
    const float* b = bias + t0 * bias_stride;
    for (std::int64_t c = lo; c < hi; ++c) row[c] += b[c * bias_stride];
  }
  if (mask != nullptr) {
    const std::uint8_t* m = mask + t0 * mask_stride;
    for (std::int64_t c = lo; c < hi; ++c)
      if (m[c * mask_stride] == 0) row[c] = kNegInf;
  }
  for (std::int64_t c = 0; c < n_keys; c += kLanes) vmax = Simd::max(vmax, Simd::load(row + c));
  return Simd::reduce_max(vmax);
}

// t − base for row element c: the stored logit row[c] − base, or, when the row still holds raw
// scores (kScaled), row[c]·scale rounded on its own (the t logits_row would have stored) − base.
// Not one fma: with logits near 1e30 the largest one's rounding residual (~1e22) would stay in its
// exponent, where t − base must be exactly 0 (base is that rounded logit).
template <bool kScaled>
V logit_gap(const float* row, std::int64_t c, V vscale, V vbase) {
  if constexpr (kScaled)
    return Simd::sub(Simd::unfused(Simd::mul(Simd::load(row + c), vscale)), vbase);
  return Simd::sub(Simd::load(row + c), vbase);
}

// Like exp_row, and also adds Σ p·(t − base) to *moment (the entropy's first moment, relative to
// the base). A masked logit (t = −inf, p = 0) contributes 0, not 0·(−inf): t − base is clamped
// at −FLT_MAX before the product (NaN still propagates).
template <bool kScaled = false>
float exp_row_with_moment(float* row, std::int64_t n_keys, float base, float* moment,
                          float scale = 1.0f) {
  const V vbase = Simd::set1(base), vscale = Simd::set1(scale);
  const V log2e = Simd::set1(kLog2e);
  const V lowest = Simd::set1(-3.40282347e38f);
  V vsum = Simd::zero(), vmoment = Simd::zero();
  for (std::int64_t c = 0; c < n_keys; c += kLanes) {
    const V x = Simd::max(lowest, logit_gap<kScaled>(row, c, vscale, vbase));
    const V p = Simd::softmax_exp2(Simd::mul(x, log2e));
    Simd::store(row + c, p);
    vsum = Simd::add(vsum, p);
    vmoment = Simd::fma(p, x, vmoment);
  }
  *moment += Simd::reduce_add(vmoment);
  return Simd::reduce_add(vsum);
}

// row[c] = exp(row[c] − base) in place; returns the row sum. exp(−inf) = 0, NaN stays NaN. base is
// at least every logit of the row (its max, or its lse): Simd::softmax_exp2.
// kScaled: row[c] = exp(row[c]·scale − base), from raw scores (logit_gap).
template <bool kScaled = false>
float exp_row(float* row, std::int64_t n_keys, float base, float scale = 1.0f) {
  const V vbase = Simd::set1(base), vscale = Simd::set1(scale);
  const V log2e = Simd::set1(kLog2e);
  V vsum = Simd::zero();
  for (std::int64_t c = 0; c < n_keys; c += kLanes) {
    const V p =
        Simd::softmax_exp2(Simd::mul(logit_gap<kScaled>(row, c, vscale, vbase), log2e));
    Simd::store(row + c, p);
    vsum = Simd::add(vsum, p);
  }
  return Simd::reduce_add(vsum);
}
