// Scalar conversions between fp32 and the two 16-bit floating-point formats (bits in uint16_t):
//   bf16: fp32's sign and 8-bit exponent, 7 mantissa bits (the top half of an fp32)
//   f16:  IEEE binary16, 5-bit exponent, 10 mantissa bits (max 65504, subnormals below 2^-14)
// Narrowing rounds to nearest, ties to even; NaN stays NaN (quiet), ±inf stays ±inf, overflow
// gives ±inf. Widening is exact.
//
// Every function is `static inline` (internal linkage): this header is included by translation
// units compiled with different -m flags, and a shared inline definition could let the linker pick
// an AVX-512 copy for the scalar path.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace sdpa::half {

static inline float bits_to_float(std::uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

static inline std::uint32_t float_to_bits(float f) {
  std::uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

static inline float bf16_to_float(std::uint16_t h) { return bits_to_float(std::uint32_t{h} << 16); }

static inline std::uint16_t float_to_bf16(float f) {
  const std::uint32_t bits = float_to_bits(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x0040u);
  return static_cast<std::uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

static inline float f16_to_float(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t{h & 0x8000u} << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa · 2^−24, exact in fp32
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));  // inf, NaN
  return bits_to_float(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

static inline std::uint16_t float_to_f16(float f) {
  std::uint32_t x = float_to_bits(f);
  const auto sign = static_cast<std::uint16_t>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return static_cast<std::uint16_t>(sign | 0x7e00u | ((x >> 13) & 0x3ffu));
  if (x >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // ≥ 65520: inf
  if (x < 0x38800000u) {  // below 2^−14: a multiple of 2^−24 (x·2^24 is exact in fp32)
    const float scaled = bits_to_float(x) * 0x1p24f;
    return static_cast<std::uint16_t>(sign | static_cast<std::uint16_t>(std::nearbyint(scaled)));
  }
  const std::uint32_t rebased = x - 0x38000000u;  // exponent bias 127 → 15
  return static_cast<std::uint16_t>(sign | ((rebased + 0xfffu + ((rebased >> 13) & 1u)) >> 13));
}

}  // namespace sdpa::half
