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
// 512-key tiles: 1–2% faster than 256 at L = 4096 (fewer per-row softmax steps and P·V calls per
// key); the 96 × 512 score tile (192 KiB) and the tile's packed K and V (512 KiB at D = 128) share
// the 1 MiB L2 of the Zen 5 cores measured; 1024 keys was no faster.
constexpr int kBlockKeys = 512;

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
