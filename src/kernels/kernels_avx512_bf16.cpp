// AVX-512-BF16 instantiation of the forward kernel, for bf16 inputs (compiled with the AVX-512
// flags plus -mavx512bf16; chosen only on a CPU with AVX512_BF16, src/core/forward.cpp). The
// template source is flash_forward_impl.hpp, as for every ISA; SDPA_KERNEL_BF16_PRODUCTS switches
// its two matrix products to vdpbf16ps (bf16_gemm_impl.hpp): Q·Kᵀ on bf16 Q and K, P·V with P
// rounded to bf16. Softmax, masks and outputs are the AVX-512 kernel's, in fp32. No backward here:
// the backward widens bf16 to fp32 and runs the AVX-512 kernel.
#include <immintrin.h>

#include <cstdint>

#include "kernels/flash_forward.hpp"

namespace sdpa::kernels::avx512_bf16_impl {
namespace {

#include "kernels/simd_avx512_impl.hpp"

constexpr int kMicroRows = 12;
constexpr int kBlockRows = 96;
// 1024-key tiles (bf16 K and V take half the bytes of fp32's): 2–3% faster than 256 at L = 1024 to
// 16384 and D = 64 to 256 on Zen 5, 1% faster than 512.
constexpr int kBlockKeys = 1024;

}  // namespace
}  // namespace sdpa::kernels::avx512_bf16_impl

#define SDPA_KERNEL_NS avx512_bf16_impl
#define SDPA_KERNEL_NAME "avx512-bf16"
#define SDPA_KERNEL_BF16_PRODUCTS 1
#include "kernels/flash_forward_impl.hpp"

namespace sdpa::kernels {
const FlashKernel& flash_kernel_avx512_bf16() { return avx512_bf16_impl::kernel(); }
}  // namespace sdpa::kernels
