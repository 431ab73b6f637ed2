#include "core/isa.hpp"

#include <cstdlib>
#include <cstring>

#include "core/errors.hpp"

namespace sdpa {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::automatic: return "automatic";
    case Isa::scalar: return "scalar";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
  }
  return "?";
}

bool cpu_supports(Isa isa) {
  switch (isa) {
    case Isa::automatic:
    case Isa::scalar: return true;
#if defined(__x86_64__) || defined(__i386__)
    case Isa::avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("fma");
#else
    default: return false;
#endif
  }
  return false;
}

bool cpu_has_avx512_bf16() {
#if defined(__x86_64__) || defined(__i386__)
  static const bool has = cpu_supports(Isa::avx512) && __builtin_cpu_supports("avx512bf16");
  return has;
#else
  return false;
#endif
}

bool uses_bf16_products(Isa isa) { return isa == Isa::avx512 && cpu_has_avx512_bf16(); }

Isa best_isa() {
  static const Isa best = cpu_supports(Isa::avx512) ? Isa::avx512
                          : cpu_supports(Isa::avx2) ? Isa::avx2
                                                    : Isa::scalar;
  return best;
}

Isa resolve_isa(Isa requested) {
  if (requested == Isa::automatic) {
    const char* env = std::getenv("SDPA_ISA");
    if (env == nullptr || *env == '\0') return best_isa();
    if (std::strcmp(env, "scalar") == 0) requested = Isa::scalar;
    else if (std::strcmp(env, "avx2") == 0) requested = Isa::avx2;
    else if (std::strcmp(env, "avx512") == 0) requested = Isa::avx512;
    else fail("SDPA_ISA = '", env, "': expected scalar, avx2 or avx512");
  }
  if (!cpu_supports(requested))
    fail("options.isa = ", isa_name(requested), ": this CPU does not support it (best: ",
         isa_name(best_isa()), ")");
  return requested;
}

}  // namespace sdpa
