// What `sdpa run` and `sdpa grad` share for their .npy files and flags: reading attention inputs
// (floats of any supported dtype, converted to f32 where asked; masks must be bool, lengths i32 or
// i64, every array at most rank 4), --window, library errors in flag terms, and writing several
// outputs as one unit. Bad values are sdpa::Error (exit 2), file problems npy::IoError (exit 1).
#pragma once

#include <unistd.h>

#include <charconv>
#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <limits>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/errors.hpp"
#include "io/npy.hpp"
#include "sdpa/sdpa.hpp"

namespace sdpa::cli::npy_args {

// ---- flag values -----------------------------------------------------------------------------

/// One side of --window: an integer >= -1.
inline std::int64_t parse_window_side(std::string_view text, const std::string& whole) {
  std::int64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || error != std::errc() || end != text.data() + text.size() || value < -1)
    fail("--window = '", whole, "': expected L,R with integers >= -1 (-1 = unbounded)");
  return value;
}

/// --window L,R.
inline Window parse_window(const std::string& text) {
  const std::size_t comma = text.find(',');
  if (comma == std::string::npos)
    fail("--window = '", text, "': expected L,R with integers >= -1 (-1 = unbounded)");
  const std::string_view view(text);
  return Window{parse_window_side(view.substr(0, comma), text),
                parse_window_side(view.substr(comma + 1), text)};
}

/// Fails when two of the (flag, path) outputs name one file ("o.npy" and "./o.npy" included):
/// they would silently overwrite each other. Empty paths (outputs not requested) are skipped.
inline void check_distinct_outputs(
    std::initializer_list<std::pair<const char*, const std::string*>> outputs) {
  std::set<std::string> seen;
  for (const auto& [flag, path] : outputs) {
    if (path->empty()) continue;
    if (!seen.insert(std::filesystem::absolute(*path).lexically_normal().string()).second)
      fail(flag, " '", *path,
           "': this file is already another output (each output needs its own path)");
  }
}

// ---- inputs ----------------------------------------------------------------------------------

inline void check_rank_at_most_4(const npy::Array& array, const char* flag,
                                 const std::string& path) {
  if (array.shape.size() > 4)
    fail(flag, " ", path, ": rank ", array.shape.size(), ": expected at most 4 ([B, H, L, D])");
}

/// A floating-point array (f32, f64, f16, bf16) as stored.
inline npy::Array read_float(const std::string& path, const char* flag,
                             const npy::ReadOptions& read_options) {
  npy::Array array = npy::read(path, read_options);
  check_rank_at_most_4(array, flag, path);
  switch (array.dtype) {
    case DType::f32:
    case DType::f64:
    case DType::f16:
    case DType::bf16:
      return array;
    default:
      fail(flag, " ", path, ": dtype ", dtype_name(array.dtype),
           ": expected a floating-point array (f32, f64, f16 or bf16)");
  }
}

/// `array` (any floating-point dtype) converted to f32.
inline npy::Array as_f32(npy::Array array) {
  if (array.dtype == DType::f32) return array;
  return npy::from_f32(array.shape, npy::to_f32(array).data());
}

/// A floating-point array (f32, f64, f16, bf16) converted to f32.
inline npy::Array read_f32(const std::string& path, const char* flag,
                           const npy::ReadOptions& read_options) {
  return as_f32(read_float(path, flag, read_options));
}

/// A bool mask (true = attend).
inline npy::Array read_mask(const std::string& path) {
  npy::Array array = npy::read(path);
  check_rank_at_most_4(array, "--mask", path);
  if (array.dtype != DType::boolean)
    fail("--mask ", path, ": dtype ", dtype_name(array.dtype), ": expected bool (true = attend)");
  return array;
}

template <typename Int>
std::vector<std::int32_t> narrow_lengths(const npy::Array& array, const char* flag,
                                         const std::string& path) {
  std::vector<std::int32_t> lengths(static_cast<std::size_t>(array.numel()));
  const auto* values = reinterpret_cast<const Int*>(array.data.data());
  for (std::size_t b = 0; b < lengths.size(); ++b) {
    if (values[b] < std::numeric_limits<std::int32_t>::min() ||
        values[b] > std::numeric_limits<std::int32_t>::max())
      fail(flag, " ", path, ": element ", b, " = ", values[b], ": does not fit in int32");
    lengths[b] = static_cast<std::int32_t>(values[b]);
  }
  return lengths;
}

/// Per-batch lengths: a 1-d i32 or i64 array, as int32.
inline std::vector<std::int32_t> read_lengths(const std::string& path, const char* flag) {
  const npy::Array array = npy::read(path);
  if (array.shape.size() != 1)
    fail(flag, " ", path, ": rank ", array.shape.size(), ": expected 1 ([B])");
  if (array.dtype == DType::i32) return narrow_lengths<std::int32_t>(array, flag, path);
  if (array.dtype == DType::i64) return narrow_lengths<std::int64_t>(array, flag, path);
  fail(flag, " ", path, ": dtype ", dtype_name(array.dtype), ": expected i32 or i64");
}

// ---- library errors in command-line terms ----------------------------------------------------

/// Which flag and file a library argument name stands for: `prefix` is how the library's message
/// starts ("options.bias", "dout."), `path` null for flags without a file.
struct FlagName {
  std::string_view prefix;
  const char* flag;
  const std::string* path;
};

/// Runs `call`; an sdpa::Error is rethrown with the flag and file it refers to in front ("--k
/// k.npy: k.shape[3] ..."), since a command-line user knows flags and files, not C++ arguments.
template <typename Call>
auto with_flag_context(const std::vector<FlagName>& names, Call&& call) {
  try {
    return call();
  } catch (const Error& e) {
    const std::string_view message = e.what();
    for (const FlagName& name : names)
      if (message.starts_with(name.prefix))
        throw Error(std::string(name.flag) + (name.path ? " " + *name.path : std::string()) + ": " +
                    e.what());
    throw;
  }
}

// ---- outputs ---------------------------------------------------------------------------------

inline npy::Array zeros(std::vector<std::int64_t> shape, DType dtype) {
  npy::Array array;
  array.dtype = dtype;
  array.shape = std::move(shape);
  array.data.resize(static_cast<std::size_t>(array.numel()) * dtype_size(dtype));
  return array;
}

inline npy::Array zeros_f32(std::vector<std::int64_t> shape) {
  return zeros(std::move(shape), DType::f32);
}

/// Writes every (path, array) or none: each goes to a temporary file beside its path first
/// (npy::write, itself atomic); only when all are complete are they renamed into place. On failure
/// the temporary files are removed and the error rethrown, so a call that cannot write one output
/// (a missing directory, a full disk) leaves none. (Only a rename failing after another succeeded,
/// within one directory, could leave a subset; the renames come last and do not copy data.)
inline void write_all_or_nothing(
    const std::vector<std::pair<std::string, const npy::Array*>>& outputs) {
  // A missing directory is named as such before anything is written (rather than through the
  // name of a temporary file that could not be created in it).
  for (const auto& [path, array] : outputs) {
    const std::filesystem::path directory = std::filesystem::absolute(path).parent_path();
    std::error_code error;
    if (!std::filesystem::is_directory(directory, error))
      throw npy::IoError(path + ": cannot write: directory " + directory.string() +
                         " does not exist");
  }
  std::vector<std::string> written;  // temporary paths
  const std::string suffix = ".sdpa-partial-" + std::to_string(::getpid());
  try {
    for (const auto& [path, array] : outputs) {
      npy::write(path + suffix, *array);
      written.push_back(path + suffix);
    }
    for (std::size_t n = 0; n < outputs.size(); ++n) {
      std::error_code error;
      std::filesystem::rename(written[n], outputs[n].first, error);
      if (error) throw npy::IoError(outputs[n].first + ": cannot write: " + error.message());
    }
  } catch (...) {
    for (const std::string& path : written) {
      std::error_code ignored;
      std::filesystem::remove(path, ignored);
    }
    throw;
  }
}

}  // namespace sdpa::cli::npy_args
