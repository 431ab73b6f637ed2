// Run-time choice of the kernels' instruction set (CPUID, once).
#pragma once

#include "sdpa/sdpa.hpp"

namespace sdpa {

/// Whether this CPU (and OS) can run kernels built for `isa`.
bool cpu_supports(Isa isa);

/// `automatic` (or the SDPA_ISA environment variable) -> the best supported ISA; a named ISA the
/// CPU lacks -> sdpa::Error.
Isa resolve_isa(Isa requested);

}  // namespace sdpa
