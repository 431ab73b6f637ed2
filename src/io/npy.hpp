// NumPy .npy files: read (v1, v2, v3; little and big endian; C and Fortran order) and write
// (v1, little endian, C order, atomically: temp file + rename). The reader treats its input as
// untrusted: bounded header size, checked shape arithmetic, file size must match the header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "sdpa/sdpa.hpp"

namespace sdpa::npy {

/// Any failure to read or write a file (missing, unreadable, malformed, truncated, unsupported
/// dtype). The message starts with the file's path.
class IoError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// An array in memory: native-endian, C order (row-major), `data.size() == numel * dtype_size`.
struct Array {
  DType dtype = DType::f32;
  std::vector<std::int64_t> shape;
  std::vector<std::byte> data;

  std::int64_t numel() const;
  /// A contiguous sdpa::Tensor view of this array (rank ≤ 4; a higher rank is an sdpa::Error).
  Tensor tensor();
};

struct ReadOptions {
  /// Read '<u2' / '>u2' (and ml_dtypes' bfloat16 descr) as bf16 rather than rejecting it.
  bool u2_as_bf16 = false;
};

/// Reads a .npy file. Supported descrs: f4, f8, f2, b1 (bool), i4, i8, u2 (with u2_as_bf16), and
/// the bfloat16 descr; either byte order; C or Fortran order (converted to C order).
/// Exactly: '<f4' '>f4' '<f8' '>f8' '<f2' '>f2' '|b1' '<i4' '>i4' '<i8' '>i8'; with u2_as_bf16 also
/// '<u2' '>u2' and ml_dtypes' bfloat16 ('<V2', '|V2', or 'bfloat16'; read as little endian).
/// Bool bytes other than 0 read as 1. Rank up to 32; headers up to 1 MiB; the file size must be
/// exactly header + numel · itemsize.
Array read(const std::string& path, const ReadOptions& options = {});

/// Parses an in-memory .npy image (the same rules as read; `name` is used in messages).
Array parse(const std::byte* bytes, std::size_t size, const std::string& name);
Array parse(const std::byte* bytes, std::size_t size, const std::string& name,
            const ReadOptions& options);

/// Writes `array` to `path` atomically: the bytes go to a temporary file in the same directory,
/// which is renamed over `path` only when complete. On failure no file at `path` is created or
/// changed, and the temporary file is removed. Every dtype is written; bf16 as '<u2' (numpy has no
/// bfloat16; read it back with u2_as_bf16). An invalid dtype or a data size that does not match
/// the shape is an IoError.
void write(const std::string& path, const Array& array);

/// Converts a floating-point array (f32, f64, f16, bf16) to f32 values (C order); any other dtype
/// is an sdpa::Error.
std::vector<float> to_f32(const Array& array);

/// Builds an f32 array of `shape` from `values` (C order, numel values).
Array from_f32(std::vector<std::int64_t> shape, const float* values);

}  // namespace sdpa::npy
