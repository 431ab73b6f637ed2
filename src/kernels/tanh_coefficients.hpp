// Constants of the kernels' vectorized tanh (vector_tanh in softmax_rows_impl.hpp, written once over
// each ISA's Simd operations), included inside each ISA's namespace.
//
//   |x| < 0.625:  tanh x = x + x³·P(x²), P of degree 4 (an odd polynomial: no cancellation near 0,
//                 tanh x = x exactly for tiny x); coefficients fitted here by iteratively reweighted
//                 least squares towards the minimax relative error on [0, 0.625] (4.4e-9 in exact
//                 arithmetic, below fp32's 2⁻²⁴ = 6.0e-8).
//   |x| ≥ 0.625:  tanh |x| = 1 − 2/(e^{2|x|} + 1) with the kernels' exp2, |x| clamped at 10
//                 (tanh 10 rounds to 1 in fp32), so ±inf and ±1e38 give ±1 without overflow.
// Measured against std::tanh in double over every fp32 value in [0, 10] (and so, by symmetry and
// the clamp, over all of them): max error 1.63 ulp of the result, max absolute error 9.7e-8
// (tests/test_softcap_sinks.cpp sweeps 2^20 values on every ISA and checks ≤ 2 ulp). NaN stays NaN.

constexpr float kTanhSmall = 0.625f;
constexpr float kTanhC0 = -3.333328068e-01f;
constexpr float kTanhC1 = 1.333144158e-01f;
constexpr float kTanhC2 = -5.373971537e-02f;
constexpr float kTanhC3 = 2.063908800e-02f;
constexpr float kTanhC4 = -5.704987328e-03f;
constexpr float kTwoLog2e = 2.88539008177792681472f;  // 2·log2(e): e^{2x} = 2^{2x·log2 e}
