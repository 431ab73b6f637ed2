// Tensor views, dtypes and version.
#include <cstddef>
#include <limits>

#include "core/errors.hpp"
#include "sdpa/sdpa.hpp"

namespace sdpa {

std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::f16: return 2;
    case DType::bf16: return 2;
    case DType::boolean: return 1;
    case DType::i32: return 4;
    case DType::i64: return 8;
  }
  return 0;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32: return "f32";
    case DType::f64: return "f64";
    case DType::f16: return "f16";
    case DType::bf16: return "bf16";
    case DType::boolean: return "bool";
    case DType::i32: return "i32";
    case DType::i64: return "i64";
  }
  return "?";
}

Tensor Tensor::contiguous(void* data, DType dtype, std::initializer_list<std::int64_t> shape) {
  if (shape.size() > 4) fail("Tensor::contiguous: rank ", shape.size(), " > 4");
  Tensor t;
  t.data = data;
  t.dtype = dtype;
  t.rank = static_cast<int>(shape.size());
  int d = 0;
  for (std::int64_t extent : shape) t.shape[d++] = extent;
  std::int64_t stride = 1;
  for (d = t.rank - 1; d >= 0; --d) {
    t.stride[d] = stride;
    if (d > 0 && __builtin_mul_overflow(stride, t.shape[d], &stride))
      fail("Tensor::contiguous: the strides of this shape overflow 64 bits (dimension ", d, ")");
  }
  return t;
}

Tensor Tensor::strided(void* data, DType dtype, std::initializer_list<std::int64_t> shape,
                       std::initializer_list<std::int64_t> stride) {
  if (shape.size() > 4) fail("Tensor::strided: rank ", shape.size(), " > 4");
  if (shape.size() != stride.size())
    fail("Tensor::strided: ", shape.size(), " extents but ", stride.size(), " strides");
  Tensor t;
  t.data = data;
  t.dtype = dtype;
  t.rank = static_cast<int>(shape.size());
  int d = 0;
  for (std::int64_t extent : shape) t.shape[d++] = extent;
  d = 0;
  for (std::int64_t s : stride) t.stride[d++] = s;
  return t;
}

std::int64_t Tensor::numel() const {
  std::int64_t n = 1;
  for (int d = 0; d < rank; ++d)  // saturates instead of overflowing (validation rejects those)
    if (__builtin_mul_overflow(n, shape[d], &n)) return std::numeric_limits<std::int64_t>::max();
  return n;
}

const char* version() { return SDPA_VERSION; }

}  // namespace sdpa
