// AVX-512 instantiation of the attention kernels, forward and backward (compiled with -mavx512f
// -mavx512bw -mavx512dq -mavx512vl -mfma). 16 lanes; panels of 32 keys; a 12 × 32 register block
// uses 24 of the 32 zmm registers for accumulators.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "kernels/decode.hpp"
#include "kernels/flash_backward.hpp"
#include "kernels/flash_forward.hpp"

namespace sdpa::kernels::avx512_impl {
namespace {

#include "kernels/simd_avx512_impl.hpp"

constexpr int kMicroRows = 12;
constexpr int kBlockRows = 96;
constexpr int kBlockKeys = 256;

}  // namespace
}  // namespace sdpa::kernels::avx512_impl

#define SDPA_KERNEL_NS avx512_impl
#define SDPA_KERNEL_NAME "avx512"
#include "kernels/flash_forward_impl.hpp"
#include "kernels/flash_backward_impl.hpp"
#include "kernels/decode_impl.hpp"

namespace sdpa::kernels {
const FlashKernel& flash_kernel_avx512() { return avx512_impl::kernel(); }
const BackwardKernel& backward_kernel_avx512() { return avx512_impl::backward_kernel(); }
const DecodeKernel& decode_kernel_avx512() { return avx512_impl::decode_kernel(); }
}  // namespace sdpa::kernels
