// libFuzzer target: the .npy parser (npy::parse) on arbitrary bytes. Every input must either parse
// or be rejected with npy::IoError naming the file; nothing else may escape, and ASan/UBSan watch
// every read. A parsed array must be self-consistent (data size = numel · itemsize, rank ≤ 32), and
// ReadOptions::u2_as_bf16 may only add accepted inputs: whatever parses without it parses the same
// with it. Float arrays must convert to f32, and arrays of rank ≤ 4 give a tensor view.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "io/npy.hpp"

namespace {

using sdpa::npy::Array;

constexpr char kName[] = "fuzz.npy";

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_npy: %s\n", what);
  std::abort();
}

bool parses(const std::byte* bytes, std::size_t size, bool u2_as_bf16, Array& array) {
  sdpa::npy::ReadOptions options;
  options.u2_as_bf16 = u2_as_bf16;
  try {
    array = sdpa::npy::parse(bytes, size, kName, options);
    return true;
  } catch (const sdpa::npy::IoError& e) {
    if (std::strncmp(e.what(), kName, sizeof kName - 1) != 0)
      fail("IoError does not name the file");
    return false;
  }
}

void check_array(Array& array) {
  if (array.shape.size() > 32) fail("rank above 32 accepted");
  if (static_cast<std::size_t>(array.numel()) * sdpa::dtype_size(array.dtype) != array.data.size())
    fail("data size does not match shape");
  const bool floating = array.dtype == sdpa::DType::f32 || array.dtype == sdpa::DType::f64 ||
                        array.dtype == sdpa::DType::f16 || array.dtype == sdpa::DType::bf16;
  if (floating && sdpa::npy::to_f32(array).size() != static_cast<std::size_t>(array.numel()))
    fail("to_f32 size differs from numel");
  if (array.dtype == sdpa::DType::boolean)
    for (std::byte b : array.data)
      if (b != std::byte{0} && b != std::byte{1}) fail("bool byte other than 0 or 1");
  if (array.shape.size() <= 4 && array.tensor().numel() != array.numel())
    fail("tensor numel differs");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto* bytes = reinterpret_cast<const std::byte*>(data);
  Array plain, with_flag;
  const bool plain_ok = parses(bytes, size, false, plain);
  const bool flag_ok = parses(bytes, size, true, with_flag);
  if (plain_ok && !flag_ok) fail("u2_as_bf16 rejected an input that parses without it");
  if (plain_ok && (plain.dtype != with_flag.dtype || plain.shape != with_flag.shape ||
                   plain.data != with_flag.data))
    fail("u2_as_bf16 changed the result of an input that parses without it");
  if (flag_ok) check_array(with_flag);
  return 0;
}
