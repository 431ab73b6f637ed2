// Tests of the .npy reader and writer (src/io/npy.hpp). Every file image is built here, byte by
// byte; the "numpy wrote" images were produced by numpy 2.4 (np.lib.format.write_array) and are
// copied in so the tests need no Python.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "io/npy.hpp"

namespace {

namespace fs = std::filesystem;
using sdpa::DType;
using sdpa::npy::Array;
using sdpa::npy::IoError;
using sdpa::npy::ReadOptions;
using Bytes = std::vector<std::byte>;

constexpr char kName[] = "test.npy";

Bytes bytes_of(std::string_view text) {
  Bytes out(text.size());
  std::memcpy(out.data(), text.data(), text.size());
  return out;
}

Bytes from_hex(std::string_view hex) {
  Bytes out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<std::byte>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
  return out;
}

Bytes concat(Bytes a, const Bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

/// A .npy image of version `major`.0 with header `dict`, padded (spaces + '\n') so the data starts
/// at a multiple of 64 bytes, followed by `data`.
Bytes npy_image(std::string_view dict, const Bytes& data, int major = 1) {
  const std::size_t preamble = major == 1 ? 10 : 12;
  std::string header(dict);
  header.append((64 - (preamble + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  std::string out("\x93NUMPY", 6);
  out += static_cast<char>(major);
  out += '\0';
  const std::size_t length_bytes = preamble - 8;
  for (std::size_t i = 0; i < length_bytes; ++i)
    out += static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return concat(bytes_of(out + header), data);
}

/// The raw bytes of `values` in little (or big) endian order.
template <typename T>
Bytes raw(std::initializer_list<T> values, bool big_endian = false) {
  Bytes out(values.size() * sizeof(T));
  std::byte* element = out.data();
  for (T v : values) {
    std::memcpy(element, &v, sizeof(T));
    if ((std::endian::native == std::endian::big) != big_endian)
      std::reverse(element, element + sizeof(T));
    element += sizeof(T);
  }
  return out;
}

template <typename T>
std::vector<T> values_of(const Array& array) {
  std::vector<T> out(array.data.size() / sizeof(T));
  std::memcpy(out.data(), array.data.data(), array.data.size());
  return out;
}

Array parse_image(const Bytes& image, const ReadOptions& options = {}) {
  return sdpa::npy::parse(image.data(), image.size(), kName, options);
}

/// The message of the IoError parse() throws, or a test failure if it does not throw.
std::string parse_error(const Bytes& image, const ReadOptions& options = {}) {
  try {
    parse_image(image, options);
  } catch (const IoError& error) {
    return error.what();
  }
  ADD_FAILURE() << "parse() accepted an invalid image";
  return "";
}

/// Checks that parsing `image` throws an IoError that starts with the name and contains `needle`.
#define EXPECT_REJECTED(image, needle, ...)                                    \
  do {                                                                         \
    const std::string message = parse_error(image __VA_OPT__(, ) __VA_ARGS__); \
    EXPECT_EQ(message.rfind(std::string(kName) + ": ", 0), 0u) << message;     \
    EXPECT_PRED_FORMAT2(::testing::IsSubstring, needle, message);              \
  } while (0)

std::string valid_dict(std::string_view shape = "(2,)") {
  return "{'descr': '<f4', 'fortran_order': False, 'shape': " + std::string(shape) + ", }";
}

/// A fresh directory, removed with its contents after the test.
class NpyFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "sdpa_npy_test.XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }
  std::string path(const std::string& file) const { return (dir_ / file).string(); }
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir_)) names.push_back(entry.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }
  void write_bytes(const std::string& file, const Bytes& bytes) const {
    std::ofstream out(path(file), std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
  }
  Bytes read_bytes(const std::string& file) const {
    std::ifstream in(path(file), std::ios::binary);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return bytes_of(text);
  }

  fs::path dir_;
};

Array make_array(DType dtype, std::vector<std::int64_t> shape, Bytes data) {
  Array array;
  array.dtype = dtype;
  array.shape = std::move(shape);
  array.data = std::move(data);
  return array;
}

// ---- images numpy wrote
// --------------------------------------------------------------------------

// np.arange(6, dtype='<f4').reshape(2, 3) / 4
Bytes numpy_f32_2x3() {
  return concat(bytes_of(std::string("\x93NUMPY\x01\x00v\x00", 10) +
                         "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }" +
                         std::string(58, ' ') + "\n"),
                from_hex("000000000000803e0000003f0000403f0000803f0000a03f"));
}

TEST(NpyRead, ReadsNumpyVersion1File) {
  const Array array = parse_image(numpy_f32_2x3());
  EXPECT_EQ(array.dtype, DType::f32);
  EXPECT_EQ(array.shape, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(values_of<float>(array), (std::vector<float>{0, 0.25f, 0.5f, 0.75f, 1, 1.25f}));
}

TEST(NpyRead, ReadsNumpyVersion2BigEndianFortranFile) {
  // np.lib.format.write_array(f, np.asfortranarray(np.arange(6, dtype='>f8').reshape(2, 3)),
  //                           version=(2, 0))
  const Bytes image = concat(
      bytes_of(std::string("\x93NUMPY\x02\x00t\x00\x00\x00", 12) +
               "{'descr': '>f8', 'fortran_order': True, 'shape': (2, 3), }" + std::string(57, ' ') +
               "\n"),
      from_hex(
          "000000000000000040080000000000003ff0000000000000401000000000000040000000000000004014"
          "000000000000"));
  const Array array = parse_image(image);
  EXPECT_EQ(array.dtype, DType::f64);
  EXPECT_EQ(array.shape, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(values_of<double>(array), (std::vector<double>{0, 1, 2, 3, 4, 5}));
}

TEST(NpyRead, ReadsNumpyVersion3File) {
  // np.lib.format.write_array(f, np.array([-1, 2, 70000], dtype='<i4'), version=(3, 0))
  const Bytes image = concat(bytes_of(std::string("\x93NUMPY\x03\x00t\x00\x00\x00", 12) +
                                      "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }" +
                                      std::string(58, ' ') + "\n"),
                             from_hex("ffffffff0200000070110100"));
  const Array array = parse_image(image);
  EXPECT_EQ(array.dtype, DType::i32);
  EXPECT_EQ(values_of<std::int32_t>(array), (std::vector<std::int32_t>{-1, 2, 70000}));
}

TEST(NpyRead, ReadsNumpyBoolFile) {
  const Bytes image =
      concat(bytes_of(std::string("\x93NUMPY\x01\x00v\x00", 10) +
                      "{'descr': '|b1', 'fortran_order': False, 'shape': (2, 2), }" +
                      std::string(58, ' ') + "\n"),
             from_hex("01000001"));
  const Array array = parse_image(image);
  EXPECT_EQ(array.dtype, DType::boolean);
  EXPECT_EQ(values_of<std::uint8_t>(array), (std::vector<std::uint8_t>{1, 0, 0, 1}));
}

TEST(NpyRead, ReadsMlDtypesBfloat16FileWithFlag) {
  // np.save(f, np.array([1.5, -2], dtype=ml_dtypes.bfloat16)) writes descr '<V2'.
  const Bytes image = concat(bytes_of(std::string("\x93NUMPY\x01\x00v\x00", 10) +
                                      "{'descr': '<V2', 'fortran_order': False, 'shape': (2,), }" +
                                      std::string(60, ' ') + "\n"),
                             from_hex("c03f00c0"));
  const Array array = parse_image(image, {.u2_as_bf16 = true});
  EXPECT_EQ(array.dtype, DType::bf16);
  EXPECT_EQ(sdpa::npy::to_f32(array), (std::vector<float>{1.5f, -2.0f}));
  EXPECT_REJECTED(image, "u2_as_bf16");
}

TEST(NpyRead, ReadsNumpyBigEndianHalfFile) {
  const Bytes image = concat(bytes_of(std::string("\x93NUMPY\x01\x00v\x00", 10) +
                                      "{'descr': '>f2', 'fortran_order': False, 'shape': (3,), }" +
                                      std::string(60, ' ') + "\n"),
                             from_hex("3c00c0007bff"));
  const Array array = parse_image(image);
  EXPECT_EQ(array.dtype, DType::f16);
  EXPECT_EQ(sdpa::npy::to_f32(array), (std::vector<float>{1.0f, -2.0f, 65504.0f}));
}

TEST(NpyRead, ScalarShapeGivesRankZero) {
  const Bytes image = concat(bytes_of(std::string("\x93NUMPY\x01\x00v\x00", 10) +
                                      "{'descr': '<i8', 'fortran_order': False, 'shape': (), }" +
                                      std::string(62, ' ') + "\n"),
                             from_hex("fbffffffffffffff"));
  const Array array = parse_image(image);
  EXPECT_TRUE(array.shape.empty());
  EXPECT_EQ(array.numel(), 1);
  EXPECT_EQ(values_of<std::int64_t>(array), (std::vector<std::int64_t>{-5}));
}

// ---- byte order, layout, dtypes
// ------------------------------------------------------------------

TEST(NpyRead, BigEndianIsConvertedToNative) {
  EXPECT_EQ(values_of<float>(
                parse_image(npy_image("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }",
                                      raw<float>({1.5f, -3}, true)))),
            (std::vector<float>{1.5f, -3}));
  EXPECT_EQ(values_of<std::int32_t>(
                parse_image(npy_image("{'descr': '>i4', 'fortran_order': False, 'shape': (2,), }",
                                      raw<std::int32_t>({-2, 0x01020304}, true)))),
            (std::vector<std::int32_t>{-2, 0x01020304}));
  EXPECT_EQ(values_of<std::int64_t>(
                parse_image(npy_image("{'descr': '>i8', 'fortran_order': False, 'shape': (1,), }",
                                      raw<std::int64_t>({-0x0102030405060708}, true)))),
            (std::vector<std::int64_t>{-0x0102030405060708}));
  const Array bf16 =
      parse_image(npy_image("{'descr': '>u2', 'fortran_order': False, 'shape': (1,), }",
                            raw<std::uint16_t>({0x3fc0}, true)),
                  {.u2_as_bf16 = true});
  EXPECT_EQ(bf16.dtype, DType::bf16);
  EXPECT_EQ(sdpa::npy::to_f32(bf16), (std::vector<float>{1.5f}));
}

TEST(NpyRead, LittleEndianU2WithFlagIsBf16) {
  const Array array =
      parse_image(npy_image("{'descr': '<u2', 'fortran_order': False, 'shape': (2,), }",
                            raw<std::uint16_t>({0x3f80, 0xc040})),
                  {.u2_as_bf16 = true});
  EXPECT_EQ(array.dtype, DType::bf16);
  EXPECT_EQ(sdpa::npy::to_f32(array), (std::vector<float>{1.0f, -3.0f}));
}

TEST(NpyRead, FortranOrderIsTransposedToC) {
  // Logical 2×3 matrix [[0,1,2],[3,4,5]] stored column by column.
  const Array matrix =
      parse_image(npy_image("{'descr': '<i4', 'fortran_order': True, 'shape': (2, 3), }",
                            raw<std::int32_t>({0, 3, 1, 4, 2, 5})));
  EXPECT_EQ(values_of<std::int32_t>(matrix), (std::vector<std::int32_t>{0, 1, 2, 3, 4, 5}));

  // Rank 3, shape (2, 3, 4): element (i, j, k) = 100i + 10j + k sits at i + 2j + 6k in the file.
  std::vector<std::int32_t> fortran(24);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 4; ++k) fortran[i + 2 * j + 6 * k] = 100 * i + 10 * j + k;
  Bytes data(fortran.size() * 4);
  std::memcpy(data.data(), fortran.data(), data.size());
  const Array cube =
      parse_image(npy_image("{'descr': '<i4', 'fortran_order': True, 'shape': (2, 3, 4), }", data));
  const auto values = values_of<std::int32_t>(cube);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      for (int k = 0; k < 4; ++k) EXPECT_EQ(values[12 * i + 4 * j + k], 100 * i + 10 * j + k);
}

TEST(NpyRead, BoolBytesOtherThanZeroReadAsOne) {
  const Array array = parse_image(
      npy_image("{'descr': '|b1', 'fortran_order': False, 'shape': (3,), }", from_hex("00ff02")));
  EXPECT_EQ(values_of<std::uint8_t>(array), (std::vector<std::uint8_t>{0, 1, 1}));
}

TEST(NpyRead, KeysInAnyOrderWithSpacingAndNoTrailingComma) {
  const Array array = parse_image(npy_image(
      "  {\"shape\" :( 2 , 1 ) ,'fortran_order':False,\t'descr'  :  '<f4'}", raw<float>({1, 2})));
  EXPECT_EQ(array.shape, (std::vector<std::int64_t>{2, 1}));
  EXPECT_EQ(values_of<float>(array), (std::vector<float>{1, 2}));
}

TEST(NpyRead, ZeroExtentGivesEmptyArray) {
  const Array array = parse_image(npy_image(valid_dict("(3, 0, 5)"), {}));
  EXPECT_EQ(array.numel(), 0);
  EXPECT_TRUE(array.data.empty());
}

TEST(NpyRead, Rank32IsAcceptedAndRank33Rejected) {
  std::string shape = "(";
  for (int d = 0; d < 32; ++d) shape += "1, ";
  EXPECT_EQ(parse_image(npy_image(valid_dict(shape + ")"), raw<float>({7}))).shape.size(), 32u);
  EXPECT_REJECTED(npy_image(valid_dict(shape + "1)"), raw<float>({7})), "rank exceeds 32");
}

TEST(NpyRead, MissingFileIsRejectedWithPath) {
  try {
    sdpa::npy::read("/nonexistent-dir-for-sdpa/q.npy");
    FAIL() << "read() of a missing file did not throw";
  } catch (const IoError& error) {
    EXPECT_EQ(std::string(error.what()).rfind("/nonexistent-dir-for-sdpa/q.npy: cannot open", 0),
              0u)
        << error.what();
  }
}

// ---- rejections
// ----------------------------------------------------------------------------------

TEST(NpyReject, BadMagic) {
  Bytes image = npy_image(valid_dict(), raw<float>({1, 2}));
  image[1] = std::byte{'X'};
  EXPECT_REJECTED(image, "bad magic");
  EXPECT_REJECTED(bytes_of("PK\x03\x04"), "bad magic");
}

TEST(NpyReject, EmptyOrTinyFile) {
  EXPECT_REJECTED(Bytes{}, "truncated: 0 bytes");
  EXPECT_REJECTED(bytes_of("\x93NUM"), "truncated: 4 bytes");
  EXPECT_REJECTED(bytes_of(std::string("\x93NUMPY\x02\x00\x10", 9)), "version 2.0 preamble");
}

TEST(NpyReject, UnsupportedVersion) {
  for (auto [major, minor] : {std::pair{0, 0}, {4, 0}, {1, 1}, {2, 5}}) {
    Bytes image = npy_image(valid_dict(), raw<float>({1, 2}));
    image[6] = static_cast<std::byte>(major);
    image[7] = static_cast<std::byte>(minor);
    EXPECT_REJECTED(
        image, "unsupported .npy version " + std::to_string(major) + "." + std::to_string(minor));
  }
}

TEST(NpyReject, HugeHeaderLength) {
  Bytes image = npy_image(valid_dict(), raw<float>({1, 2}), 2);
  for (int i = 8; i < 12; ++i) image[i] = std::byte{0xff};
  EXPECT_REJECTED(image, "header length 4294967295 exceeds the limit");
}

TEST(NpyReject, HeaderLongerThanFile) {
  Bytes image = npy_image(valid_dict(), raw<float>({1, 2}));
  image[8] = std::byte{0x00};
  image[9] = std::byte{0x10};  // 4096 bytes of header
  EXPECT_REJECTED(image, "truncated: header length is 4096 bytes");
}

TEST(NpyReject, MalformedDict) {
  const std::pair<const char*, const char*> cases[] = {
      {"{'descr': '<f4', 'fortran_order': False}", "missing key 'shape'"},
      {"{'fortran_order': False, 'shape': (2,)}", "missing key 'descr'"},
      {"{'descr': '<f4', 'shape': (2,)}", "missing key 'fortran_order'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}",
       "unknown key 'extra'"},
      {"{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}",
       "duplicate key 'descr'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2)}", "trailing comma"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, }", "expected an integer"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (,)}", "expected an integer"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': [2]}", "expected '('"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2.0,)}", "expected ','"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (02,)}", "leading zero"},
      {"{'descr': '<f4', 'fortran_order': 0, 'shape': (2,)}", "expected True or False"},
      {"{'descr': <f4, 'fortran_order': False, 'shape': (2,)}", "expected a descr string"},
      {"{'descr: '<f4', 'fortran_order': False, 'shape': (2,)}", "expected ':'"},
      {"{'descr' '<f4', 'fortran_order': False, 'shape': (2,)}", "expected ':'"},
      {"{'descr': '<f4' 'fortran_order': False, 'shape': (2,)}", "expected ',' or '}'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,)", "expected ',' or '}'"},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} x", "after the closing '}'"},
      {"{'descr': '<\\f4', 'fortran_order': False, 'shape': (2,)}", "escapes"},
      {"'descr': '<f4', 'fortran_order': False, 'shape': (2,)", "expected '{'"},
      {"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,)}", "structured dtypes"},
      {"", "expected '{'"},
  };
  for (const auto& [dict, needle] : cases) {
    SCOPED_TRACE(dict);
    const std::string message = parse_error(npy_image(dict, raw<float>({1, 2})));
    EXPECT_EQ(message.rfind("test.npy: malformed header", 0), 0u) << message;
    EXPECT_PRED_FORMAT2(::testing::IsSubstring, needle, message);
  }
}

TEST(NpyReject, NegativeDimension) {
  EXPECT_REJECTED(npy_image(valid_dict("(2, -1)"), raw<float>({1, 2})), "negative dimension");
}

TEST(NpyReject, OverflowingShapeProduct) {
  // Each extent fits in int64; the product does not.
  EXPECT_REJECTED(npy_image(valid_dict("(4294967296, 4294967296)"), {}), "shape product overflows");
  EXPECT_REJECTED(npy_image(valid_dict("(0, 4294967296, 4294967296)"), {}),
                  "shape product overflows");
  EXPECT_REJECTED(npy_image(valid_dict("(99999999999999999999,)"), {}), "does not fit in 64 bits");
  // numel fits, numel × 4 bytes does not.
  EXPECT_REJECTED(npy_image(valid_dict("(4611686018427387904,)"), {}), "data size");
}

TEST(NpyReject, TruncatedData) {
  const std::string message = parse_error(npy_image(valid_dict("(1024,)"), Bytes(100)));
  EXPECT_EQ(message, "test.npy: truncated: header says 4096 bytes of data, file has 100");
}

TEST(NpyReject, TrailingBytes) {
  EXPECT_REJECTED(npy_image(valid_dict("(2,)"), raw<float>({1, 2, 3})),
                  "trailing bytes: header says 8 bytes of data, file has 12");
}

TEST(NpyReject, UnsupportedDescr) {
  for (const char* descr : {"<c8", "<u4", "|u1", "|O", "<M8[ns]", "=f4", "f4", "<f16", "<b1"}) {
    SCOPED_TRACE(descr);
    EXPECT_REJECTED(
        npy_image(
            std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (0,), }", {}),
        std::string("unsupported descr '") + descr + "'");
  }
}

TEST(NpyReject, U2WithoutFlag) {
  EXPECT_REJECTED(npy_image("{'descr': '<u2', 'fortran_order': False, 'shape': (1,), }",
                            raw<std::uint16_t>({1})),
                  "set ReadOptions::u2_as_bf16");
}

// ---- files: read, write, atomicity
// ---------------------------------------------------------------

TEST_F(NpyFiles, EveryDtypeSurvivesWriteAndRead) {
  const std::pair<DType, Bytes> cases[] = {
      {DType::f32, raw<float>({1.5f, -0.0f, std::numeric_limits<float>::infinity(), 3e-41f, 7, 8})},
      {DType::f64, raw<double>({1e300, -2.5, 5e-324, 0, 1, 2})},
      {DType::f16, raw<std::uint16_t>({0x3c00, 0x8001, 0x7c00, 0x7e00, 0x0400, 0xfbff})},
      {DType::bf16, raw<std::uint16_t>({0x3f80, 0xbf80, 0x7f80, 0x0001, 0x4000, 0xc000})},
      {DType::boolean, from_hex("010001010000")},
      {DType::i32, raw<std::int32_t>({-1, 2147483647, -2147483647 - 1, 0, 5, 6})},
      {DType::i64, raw<std::int64_t>({-1, 9223372036854775807, 3, 0, 5, 6})},
  };
  for (const auto& [dtype, data] : cases) {
    SCOPED_TRACE(sdpa::dtype_name(dtype));
    const std::string file = path(std::string(sdpa::dtype_name(dtype)) + ".npy");
    sdpa::npy::write(file, make_array(dtype, {3, 2}, data));
    const Array back = sdpa::npy::read(file, {.u2_as_bf16 = true});
    EXPECT_EQ(back.dtype, dtype);
    EXPECT_EQ(back.shape, (std::vector<std::int64_t>{3, 2}));
    EXPECT_EQ(back.data, data);
  }
}

TEST_F(NpyFiles, WrittenFileMatchesNumpyByteForByte) {
  const float values[] = {0, 0.25f, 0.5f, 0.75f, 1, 1.25f};
  sdpa::npy::write(path("a.npy"), sdpa::npy::from_f32({2, 3}, values));
  EXPECT_EQ(read_bytes("a.npy"), numpy_f32_2x3());
}

TEST_F(NpyFiles, WrittenHeaderIsVersion1PaddedTo64) {
  const std::vector<float> values(24, 0.5f);
  for (const std::vector<std::int64_t>& shape : {std::vector<std::int64_t>{},
                                                 {5},
                                                 {1, 2, 3, 4},
                                                 {2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 12}}) {
    const Array array = sdpa::npy::from_f32(shape, values.data());
    sdpa::npy::write(path("h.npy"), array);
    const Bytes bytes = read_bytes("h.npy");
    ASSERT_GE(bytes.size(), 64u);
    EXPECT_EQ(bytes[6], std::byte{1});
    EXPECT_EQ(bytes[7], std::byte{0});
    const std::size_t data_offset =
        10 + (std::to_integer<std::size_t>(bytes[8]) | std::to_integer<std::size_t>(bytes[9]) << 8);
    EXPECT_EQ(data_offset % 64, 0u);
    EXPECT_EQ(bytes[data_offset - 1], std::byte{'\n'});
    EXPECT_EQ(bytes.size() - data_offset, array.data.size());
    EXPECT_EQ(sdpa::npy::read(path("h.npy")).shape, shape);
  }
}

TEST_F(NpyFiles, OverwriteReplacesTargetAndLeavesNoTempFiles) {
  const float one[] = {1}, two[] = {2, 3};
  sdpa::npy::write(path("x.npy"), sdpa::npy::from_f32({1}, one));
  sdpa::npy::write(path("x.npy"), sdpa::npy::from_f32({2}, two));
  EXPECT_EQ(entries(), (std::vector<std::string>{"x.npy"}));
  EXPECT_EQ(sdpa::npy::to_f32(sdpa::npy::read(path("x.npy"))), (std::vector<float>{2, 3}));
}

TEST_F(NpyFiles, WriteIntoMissingDirectoryFailsAndCreatesNothing) {
  const float one[] = {1};
  const std::string target = path("missing/x.npy");
  try {
    sdpa::npy::write(target, sdpa::npy::from_f32({1}, one));
    FAIL() << "write() into a missing directory did not throw";
  } catch (const IoError& error) {
    EXPECT_EQ(std::string(error.what()).rfind(target + ": ", 0), 0u) << error.what();
  }
  EXPECT_FALSE(fs::exists(path("missing")));
  EXPECT_TRUE(entries().empty());
}

TEST_F(NpyFiles, FailedRenameRemovesTempFileAndKeepsTarget) {
  // The target is a non-empty directory: the temp file is written, then the rename fails.
  fs::create_directory(path("x.npy"));
  write_bytes("x.npy/keep", bytes_of("keep"));
  const float one[] = {1};
  EXPECT_THROW(sdpa::npy::write(path("x.npy"), sdpa::npy::from_f32({1}, one)), IoError);
  EXPECT_EQ(entries(), (std::vector<std::string>{"x.npy"}));
  EXPECT_TRUE(fs::is_directory(path("x.npy")));
  EXPECT_EQ(read_bytes("x.npy/keep"), bytes_of("keep"));
}

TEST_F(NpyFiles, UnsupportedDtypeIsRejectedAndCreatesNothing) {
  const Array bad = make_array(static_cast<DType>(42), {1}, Bytes(4));
  try {
    sdpa::npy::write(path("x.npy"), bad);
    FAIL() << "write() of an invalid dtype did not throw";
  } catch (const IoError& error) {
    EXPECT_EQ(std::string(error.what()).rfind(path("x.npy") + ": ", 0), 0u) << error.what();
    EXPECT_PRED_FORMAT2(::testing::IsSubstring, "unsupported dtype", error.what());
  }
  EXPECT_TRUE(entries().empty());
}

TEST_F(NpyFiles, DataSizeNotMatchingShapeIsRejected) {
  EXPECT_THROW(sdpa::npy::write(path("x.npy"), make_array(DType::f32, {3}, Bytes(8))), IoError);
  EXPECT_THROW(sdpa::npy::write(path("x.npy"), make_array(DType::f32, {-1}, Bytes{})), IoError);
  EXPECT_TRUE(entries().empty());
}

TEST_F(NpyFiles, TruncatedFileIsRejectedWithPath) {
  write_bytes("q.npy", npy_image(valid_dict("(1024,)"), Bytes(100)));
  try {
    sdpa::npy::read(path("q.npy"));
    FAIL() << "read() of a truncated file did not throw";
  } catch (const IoError& error) {
    EXPECT_EQ(std::string(error.what()),
              path("q.npy") + ": truncated: header says 4096 bytes of data, file has 100");
  }
}

TEST_F(NpyFiles, ReadAppliesTheSameRulesAsParse) {
  write_bytes("trailing.npy", npy_image(valid_dict("(1,)"), raw<float>({1, 2})));
  write_bytes("u2.npy", npy_image("{'descr': '<u2', 'fortran_order': False, 'shape': (1,), }",
                                  raw<std::uint16_t>({0x3f80})));
  write_bytes("short.npy", bytes_of(std::string("\x93NUMPY\x01\x00\xff\x00{", 11)));
  EXPECT_THROW(sdpa::npy::read(path("trailing.npy")), IoError);
  EXPECT_THROW(sdpa::npy::read(path("u2.npy")), IoError);
  EXPECT_EQ(sdpa::npy::read(path("u2.npy"), {.u2_as_bf16 = true}).dtype, DType::bf16);
  EXPECT_THROW(sdpa::npy::read(path("short.npy")), IoError);
  EXPECT_THROW(sdpa::npy::read(dir_.string()), IoError);  // a directory is not a .npy file
}

// ---- conversions and views
// -----------------------------------------------------------------------

TEST(NpyConvert, HalfToF32HandlesSubnormalsInfinityAndNaN) {
  const Array half = make_array(DType::f16, {10},
                                raw<std::uint16_t>({0x0001, 0x03ff, 0x0400, 0x3c00, 0xc000, 0x7bff,
                                                    0x7c00, 0xfc00, 0x7e00, 0x8000}));
  const std::vector<float> f = sdpa::npy::to_f32(half);
  EXPECT_EQ(f[0], std::ldexp(1.0f, -24));         // smallest subnormal
  EXPECT_EQ(f[1], 1023 * std::ldexp(1.0f, -24));  // largest subnormal
  EXPECT_EQ(f[2], std::ldexp(1.0f, -14));         // smallest normal
  EXPECT_EQ(f[3], 1.0f);
  EXPECT_EQ(f[4], -2.0f);
  EXPECT_EQ(f[5], 65504.0f);
  EXPECT_EQ(f[6], std::numeric_limits<float>::infinity());
  EXPECT_EQ(f[7], -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(f[8]));
  EXPECT_EQ(f[9], 0.0f);
  EXPECT_TRUE(std::signbit(f[9]));
}

TEST(NpyConvert, F64AndBf16ToF32) {
  EXPECT_EQ(sdpa::npy::to_f32(make_array(DType::f64, {2}, raw<double>({0.1, -1e300}))),
            (std::vector<float>{0.1f, -std::numeric_limits<float>::infinity()}));
  const std::vector<float> b =
      sdpa::npy::to_f32(make_array(DType::bf16, {3}, raw<std::uint16_t>({0x3f80, 0xff80, 0x0001})));
  EXPECT_EQ(b[0], 1.0f);
  EXPECT_EQ(b[1], -std::numeric_limits<float>::infinity());
  EXPECT_EQ(b[2], std::ldexp(1.0f, -133));  // bf16 subnormal
}

TEST(NpyConvert, NonFloatToF32IsAnErrorNamingTheDtype) {
  for (DType dtype : {DType::i32, DType::i64, DType::boolean}) {
    const Array array = make_array(dtype, {1}, Bytes(sdpa::dtype_size(dtype)));
    try {
      sdpa::npy::to_f32(array);
      FAIL() << "to_f32 accepted " << sdpa::dtype_name(dtype);
    } catch (const sdpa::Error& error) {
      EXPECT_PRED_FORMAT2(::testing::IsSubstring, std::string("dtype ") + sdpa::dtype_name(dtype),
                          error.what());
    }
  }
}

TEST(NpyConvert, FromF32BuildsF32Array) {
  const float values[] = {1, 2, 3, 4, 5, 6};
  const Array array = sdpa::npy::from_f32({3, 2}, values);
  EXPECT_EQ(array.dtype, DType::f32);
  EXPECT_EQ(array.shape, (std::vector<std::int64_t>{3, 2}));
  EXPECT_EQ(array.numel(), 6);
  EXPECT_EQ(values_of<float>(array), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  EXPECT_THROW(sdpa::npy::from_f32({-1}, values), sdpa::Error);
}

TEST(NpyConvert, TensorIsContiguousViewUpToRank4) {
  std::vector<float> values(2 * 3 * 4 * 5);
  Array array = sdpa::npy::from_f32({2, 3, 4, 5}, values.data());
  const sdpa::Tensor t = array.tensor();
  EXPECT_EQ(t.data, array.data.data());
  EXPECT_EQ(t.dtype, DType::f32);
  EXPECT_EQ(t.rank, 4);
  EXPECT_EQ(t.shape, (std::array<std::int64_t, 4>{2, 3, 4, 5}));
  EXPECT_EQ(t.stride, (std::array<std::int64_t, 4>{60, 20, 5, 1}));

  Array vector = sdpa::npy::from_f32({7}, values.data());
  EXPECT_EQ(vector.tensor().rank, 1);
  EXPECT_EQ(vector.tensor().stride[0], 1);
  Array scalar = sdpa::npy::from_f32({}, values.data());
  EXPECT_EQ(scalar.tensor().rank, 0);

  Array rank5 = sdpa::npy::from_f32({1, 2, 1, 3, 1}, values.data());
  EXPECT_THROW(rank5.tensor(), sdpa::Error);
}

}  // namespace
