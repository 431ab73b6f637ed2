// Number formatting for the lab's tables and claim evidence.
#pragma once

#include <cstdio>
#include <string>

namespace sdpa::lab {

/// `value` with `digits` significant digits (printf %g), e.g. general(0.012345, 3) = "0.0123".
inline std::string general(double value, int digits = 4) {
  char text[64];
  std::snprintf(text, sizeof text, "%.*g", digits, value);
  return text;
}

/// `value` with `decimals` digits after the point (printf %f).
inline std::string fixed(double value, int decimals = 3) {
  char text[64];
  std::snprintf(text, sizeof text, "%.*f", decimals, value);
  return text;
}

/// A percentage with one decimal: percent(0.9234) = "92.3%".
inline std::string percent(double fraction) { return fixed(100 * fraction, 1) + "%"; }

}  // namespace sdpa::lab
