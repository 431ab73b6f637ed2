// Run-time choice of the kernels' instruction set (CPUID, once).
#pragma once

#include "sdpa/sdpa.hpp"

namespace sdpa {

/// Whether this CPU (and OS) can run kernels built for `isa`.
bool cpu_supports(Isa isa);

/// `automatic` (or the SDPA_ISA environment variable) -> the best supported ISA; a named ISA the
/// CPU lacks -> sdpa::Error.
Isa resolve_isa(Isa requested);

/// Whether the CPU has the AVX512_BF16 dot products (vdpbf16ps).
bool cpu_has_avx512_bf16();

/// Whether a bf16 forward with kernels of `isa` multiplies in bf16 (the AVX-512-BF16 kernel: only
/// with isa avx512 on a CPU with AVX512_BF16); otherwise bf16 inputs are widened to fp32.
bool uses_bf16_products(Isa isa);

}  // namespace sdpa
