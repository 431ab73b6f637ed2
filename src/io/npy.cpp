// NumPy .npy reader and writer. Format:
// https://numpy.org/devdocs/reference/generated/numpy.lib.format.html
//
//   "\x93NUMPY" major minor  header_len (u16 LE for v1, u32 LE for v2/v3)  header  data
//
// The header is a Python dict literal padded with spaces and ended by '\n', e.g.
//   {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
// The reader parses it with a small strict grammar (no eval): exactly the three keys, in any order,
// each once; string values in single or double quotes without escapes; True/False; a tuple of
// non-negative decimal integers without leading zeros ("(3,)" for rank 1, "()" for rank 0).
// Whitespace (space, tab, CR, LF) is allowed between tokens and a trailing comma is optional.
#include "io/npy.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <sstream>
#include <string_view>
#include <utility>

#include "core/errors.hpp"
#include "io/atomic_file.hpp"

namespace sdpa::npy {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr std::size_t kMagicSize = 6;
/// The reader refuses headers longer than this (numpy's own writer never comes close: a rank-32
/// shape of 19-digit extents is under 1 KiB).
constexpr std::size_t kMaxHeaderSize = std::size_t{1} << 20;
constexpr int kMaxRank = 32;
constexpr std::int64_t kMaxInt64 = std::numeric_limits<std::int64_t>::max();

template <typename... Parts>
[[noreturn]] void io_fail(const std::string& name, const Parts&... parts) {
  std::ostringstream message;
  message << name << ": ";
  (message << ... << parts);
  throw IoError(message.str());
}

/// a * b, or false if the product does not fit in int64 (a, b >= 0).
bool checked_multiply(std::int64_t a, std::int64_t b, std::int64_t& product) {
  if (a != 0 && b > kMaxInt64 / a) return false;
  product = a * b;
  return true;
}

/// Product of the extents (all >= 0), or false on int64 overflow. Extents are multiplied in
/// any order with the same verdict: overflow is judged on the nonzero extents, as numpy does.
bool checked_numel(const std::vector<std::int64_t>& shape, std::int64_t& numel) {
  std::int64_t nonzero_product = 1;
  bool has_zero = false;
  for (std::int64_t extent : shape) {
    if (extent == 0) {
      has_zero = true;
    } else if (!checked_multiply(nonzero_product, extent, nonzero_product)) {
      return false;
    }
  }
  numel = has_zero ? 0 : nonzero_product;
  return true;
}

std::uint32_t read_le(const std::byte* bytes, int count) {
  std::uint32_t value = 0;
  for (int i = count - 1; i >= 0; --i)
    value = (value << 8) | std::to_integer<std::uint32_t>(bytes[i]);
  return value;
}

/// A byte or character as text for error messages: 'x', or \xNN when not printable.
std::string describe_char(char c) {
  const auto u = static_cast<unsigned char>(c);
  if (u >= 0x20 && u < 0x7f) return std::string("'") + c + "'";
  static const char kHex[] = "0123456789abcdef";
  return std::string("byte \\x") + kHex[u >> 4] + kHex[u & 15];
}

// ---- preamble
// ------------------------------------------------------------------------------------

struct Preamble {
  int major = 0;
  std::size_t header_offset = 0;  // where the dict text starts
  std::size_t header_size = 0;    // bytes of dict text (with padding and '\n')
};

constexpr std::size_t kLongestPreamble = 12;

/// Parses magic, version and header length from the first `available` bytes of a file of
/// `file_size` bytes (available = min(file_size, kLongestPreamble) suffices).
Preamble parse_preamble(const std::byte* bytes, std::size_t available, std::uint64_t file_size,
                        const std::string& name) {
  const std::size_t magic_seen = std::min(available, kMagicSize);
  if (magic_seen > 0 && std::memcmp(bytes, kMagic, magic_seen) != 0)
    io_fail(name, "not a .npy file: bad magic (expected \"\\x93NUMPY\")");
  if (available < kMagicSize + 2)
    io_fail(name, "truncated: ", file_size, " bytes is too short for a .npy preamble");
  Preamble preamble;
  preamble.major = std::to_integer<int>(bytes[6]);
  const int minor = std::to_integer<int>(bytes[7]);
  if (preamble.major < 1 || preamble.major > 3 || minor != 0)
    io_fail(name, "unsupported .npy version ", preamble.major, ".", minor,
            " (supported: 1.0, 2.0, 3.0)");
  const int length_bytes = preamble.major == 1 ? 2 : 4;
  preamble.header_offset = kMagicSize + 2 + static_cast<std::size_t>(length_bytes);
  if (available < preamble.header_offset)
    io_fail(name, "truncated: ", file_size, " bytes is too short for a version ", preamble.major,
            ".0 preamble");
  preamble.header_size = read_le(bytes + kMagicSize + 2, length_bytes);
  if (preamble.header_size > kMaxHeaderSize)
    io_fail(name, "header length ", preamble.header_size, " exceeds the limit of ", kMaxHeaderSize,
            " bytes");
  if (file_size - preamble.header_offset < preamble.header_size)
    io_fail(name, "truncated: header length is ", preamble.header_size, " bytes, file has ",
            file_size - preamble.header_offset, " after the preamble");
  return preamble;
}

// ---- header dict
// ---------------------------------------------------------------------------------

struct Header {
  DType dtype = DType::f32;
  bool swap_bytes = false;  // file byte order differs from this machine's
  bool normalize_bool = false;
  bool fortran_order = false;
  std::vector<std::int64_t> shape;
  std::int64_t numel = 0;
  std::uint64_t data_bytes = 0;
};

/// Maps a descr string to a dtype and whether its bytes need swapping on this machine.
void interpret_descr(const std::string& descr, const ReadOptions& options, const std::string& name,
                     Header& header) {
  // bfloat16 from ml_dtypes is saved as a 2-byte void ('<V2'); some tools spell it 'bfloat16'.
  // Neither says its byte order, so both are read as little endian (the byte order of every
  // machine ml_dtypes runs on).
  if (descr == "<V2" || descr == "|V2" || descr == "bfloat16") {
    if (!options.u2_as_bf16)
      io_fail(name, "descr '", descr, "' (bfloat16) needs ReadOptions::u2_as_bf16");
    header.dtype = DType::bf16;
    header.swap_bytes = std::endian::native == std::endian::big;
    return;
  }
  if (descr == "|b1") {
    header.dtype = DType::boolean;
    header.normalize_bool = true;
    return;
  }
  const bool little = !descr.empty() && descr[0] == '<';
  const bool big = !descr.empty() && descr[0] == '>';
  const std::string_view code = (little || big) ? std::string_view(descr).substr(1) : "";
  if (code == "f4") {
    header.dtype = DType::f32;
  } else if (code == "f8") {
    header.dtype = DType::f64;
  } else if (code == "f2") {
    header.dtype = DType::f16;
  } else if (code == "i4") {
    header.dtype = DType::i32;
  } else if (code == "i8") {
    header.dtype = DType::i64;
  } else if (code == "u2") {
    if (!options.u2_as_bf16)
      io_fail(name, "descr '", descr,
              "' (uint16) is not supported; set ReadOptions::u2_as_bf16 to read it as bf16");
    header.dtype = DType::bf16;
  } else {
    io_fail(name, "unsupported descr '", descr,
            "' (supported: <f4 >f4 <f8 >f8 <f2 >f2 |b1 <i4 >i4 <i8 >i8; <u2 >u2 <V2 as bf16)");
  }
  header.swap_bytes = big != (std::endian::native == std::endian::big);
}

/// A strict recursive-descent parser for the header dict.
class DictParser {
 public:
  DictParser(std::string_view text, const std::string& name) : text_(text), name_(name) {}

  void parse(const ReadOptions& options, Header& header) {
    bool seen_descr = false, seen_fortran = false, seen_shape = false;
    skip_space();
    expect('{');
    while (true) {
      skip_space();
      if (peek() == '}') break;
      const std::size_t key_at = pos_;
      const std::string key = parse_string("a key");
      skip_space();
      expect(':');
      skip_space();
      if (key == "descr") {
        if (seen_descr) fail_at(key_at, "duplicate key 'descr'");
        seen_descr = true;
        if (peek() == '[') fail_at(pos_, "structured dtypes (a list descr) are not supported");
        interpret_descr(parse_string("a descr string"), options, name_, header);
      } else if (key == "fortran_order") {
        if (seen_fortran) fail_at(key_at, "duplicate key 'fortran_order'");
        seen_fortran = true;
        header.fortran_order = parse_bool();
      } else if (key == "shape") {
        if (seen_shape) fail_at(key_at, "duplicate key 'shape'");
        seen_shape = true;
        header.shape = parse_shape();
      } else {
        fail_at(key_at, "unknown key '", key, "' (expected 'descr', 'fortran_order', 'shape')");
      }
      skip_space();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() != '}') fail_at(pos_, "expected ',' or '}', found ", found());
    }
    ++pos_;  // '}'
    skip_space();
    if (pos_ != text_.size()) fail_at(pos_, "unexpected ", found(), " after the closing '}'");
    if (!seen_descr) header_fail("missing key 'descr'");
    if (!seen_fortran) header_fail("missing key 'fortran_order'");
    if (!seen_shape) header_fail("missing key 'shape'");
  }

 private:
  char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  std::string found() const { return pos_ < text_.size() ? describe_char(text_[pos_]) : "the end"; }

  void skip_space() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' ||
                                   text_[pos_] == '\n' || text_[pos_] == '\r'))
      ++pos_;
  }

  void expect(char c) {
    if (peek() != c) fail_at(pos_, "expected '", c, "', found ", found());
    ++pos_;
  }

  template <typename... Parts>
  [[noreturn]] void header_fail(const Parts&... parts) const {
    io_fail(name_, "malformed header: ", parts...);
  }
  template <typename... Parts>
  [[noreturn]] void fail_at(std::size_t at, const Parts&... parts) const {
    io_fail(name_, "malformed header at offset ", at, ": ", parts...);
  }

  std::string parse_string(const char* what) {
    const char quote = peek();
    if (quote != '\'' && quote != '"') fail_at(pos_, "expected ", what, ", found ", found());
    const std::size_t start = ++pos_;
    while (pos_ < text_.size() && text_[pos_] != quote) {
      if (text_[pos_] == '\\') fail_at(pos_, "escapes in strings are not supported");
      if (text_[pos_] == '\n') fail_at(pos_, "unterminated string");
      ++pos_;
    }
    if (pos_ == text_.size()) fail_at(start - 1, "unterminated string");
    return std::string(text_.substr(start, pos_++ - start));
  }

  bool parse_bool() {
    for (const auto& [word, value] : {std::pair{"True", true}, std::pair{"False", false}}) {
      const std::string_view w(word);
      if (text_.substr(pos_, w.size()) == w) {
        pos_ += w.size();
        return value;
      }
    }
    fail_at(pos_, "expected True or False for 'fortran_order', found ", found());
  }

  std::int64_t parse_extent(std::size_t index) {
    const std::size_t start = pos_;
    if (peek() == '-') fail_at(start, "negative dimension in shape (extent ", index, ")");
    if (peek() < '0' || peek() > '9')
      fail_at(pos_, "expected an integer in shape, found ", found());
    if (peek() == '0' && pos_ + 1 < text_.size() && text_[pos_ + 1] >= '0' &&
        text_[pos_ + 1] <= '9')
      fail_at(pos_, "leading zero in shape extent");
    std::int64_t value = 0;
    while (peek() >= '0' && peek() <= '9') {
      const int digit = peek() - '0';
      if (value > (kMaxInt64 - digit) / 10)
        fail_at(start, "shape extent ", index, " does not fit in 64 bits");
      value = value * 10 + digit;
      ++pos_;
    }
    return value;
  }

  /// "()", "(n,)", "(n, m)", "(n, m,)": a Python tuple of ints.
  std::vector<std::int64_t> parse_shape() {
    std::vector<std::int64_t> shape;
    expect('(');
    skip_space();
    if (peek() == ')') {
      ++pos_;
      return shape;
    }
    while (true) {
      if (shape.size() == kMaxRank) fail_at(pos_, "rank exceeds ", kMaxRank);
      shape.push_back(parse_extent(shape.size()));
      skip_space();
      if (peek() == ')') {
        // "(3)" is the integer 3 in Python, not a tuple.
        if (shape.size() == 1) fail_at(pos_, "a one-element shape needs a trailing comma: (n,)");
        ++pos_;
        return shape;
      }
      expect(',');
      skip_space();
      if (peek() == ')') {
        ++pos_;
        return shape;
      }
    }
  }

  std::string_view text_;
  const std::string& name_;
  std::size_t pos_ = 0;
};

Header parse_header(const std::byte* text, const Preamble& preamble, const ReadOptions& options,
                    const std::string& name) {
  // v1/v2 headers are latin-1, v3 UTF-8; the grammar accepts only ASCII outside strings and no
  // supported descr contains anything else, so both decode the same way here.
  const std::string_view dict(reinterpret_cast<const char*>(text), preamble.header_size);
  Header header;
  DictParser(dict, name).parse(options, header);
  if (!checked_numel(header.shape, header.numel)) io_fail(name, "shape product overflows 64 bits");
  std::int64_t data_bytes = 0;
  if (!checked_multiply(header.numel, static_cast<std::int64_t>(dtype_size(header.dtype)),
                        data_bytes))
    io_fail(name, "data size (", header.numel, " elements of ", dtype_size(header.dtype),
            " bytes) overflows 64 bits");
  header.data_bytes = static_cast<std::uint64_t>(data_bytes);
  return header;
}

void check_data_size(const Header& header, std::uint64_t data_available, const std::string& name) {
  if (data_available < header.data_bytes)
    io_fail(name, "truncated: header says ", header.data_bytes, " bytes of data, file has ",
            data_available);
  if (data_available > header.data_bytes)
    io_fail(name, "trailing bytes: header says ", header.data_bytes, " bytes of data, file has ",
            data_available);
}

// ---- data
// ----------------------------------------------------------------------------------------

void swap_elements(std::byte* data, std::size_t count, std::size_t item_size) {
  for (std::size_t i = 0; i < count; ++i)
    std::reverse(data + i * item_size, data + (i + 1) * item_size);
}

/// Fortran (column-major) → C (row-major) order of `shape`.
std::vector<std::byte> fortran_to_c(const std::vector<std::byte>& fortran,
                                    const std::vector<std::int64_t>& shape, std::size_t item_size) {
  std::vector<std::byte> c_order(fortran.size());
  const std::size_t rank = shape.size();
  std::vector<std::int64_t> fortran_stride(rank), index(rank, 0);
  std::int64_t stride = 1;
  for (std::size_t d = 0; d < rank; ++d) {
    fortran_stride[d] = stride;
    stride *= shape[d];
  }
  // Walk the output in C order, keeping the Fortran offset of the current index.
  const std::size_t count = fortran.size() / item_size;
  std::int64_t source = 0;
  for (std::size_t i = 0; i < count; ++i) {
    std::memcpy(&c_order[i * item_size], &fortran[static_cast<std::size_t>(source) * item_size],
                item_size);
    for (std::size_t d = rank; d-- > 0;) {
      source += fortran_stride[d];
      if (++index[d] < shape[d]) break;
      source -= fortran_stride[d] * shape[d];
      index[d] = 0;
    }
  }
  return c_order;
}

/// Turns the raw data bytes of the file (already of the right size) into a native C-order array.
Array finish(Header&& header, std::vector<std::byte>&& raw) {
  Array array;
  array.dtype = header.dtype;
  const std::size_t item_size = dtype_size(header.dtype);
  if (header.swap_bytes && item_size > 1)
    swap_elements(raw.data(), raw.size() / item_size, item_size);
  if (header.normalize_bool)
    for (std::byte& b : raw) b = b != std::byte{0} ? std::byte{1} : std::byte{0};
  if (header.fortran_order && header.shape.size() > 1 && !raw.empty())
    raw = fortran_to_c(raw, header.shape, item_size);
  array.shape = std::move(header.shape);
  array.data = std::move(raw);
  return array;
}

// ---- files
// ---------------------------------------------------------------------------------------

std::string errno_text() { return std::strerror(errno); }

/// Closes a file descriptor when it goes out of scope.
class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get() const { return fd_; }
  /// Closes now and reports close()'s verdict (it can report a deferred write error).
  bool close() {
    const int fd = std::exchange(fd_, -1);
    return ::close(fd) == 0;
  }

 private:
  int fd_;
};

/// Reads exactly `size` bytes at `offset`, or fails naming the file.
void read_exactly(int fd, std::uint64_t offset, std::byte* out, std::size_t size,
                  const std::string& path) {
  std::size_t done = 0;
  while (done < size) {
    const ssize_t got = ::pread(fd, out + done, std::min<std::size_t>(size - done, 1 << 30),
                                static_cast<off_t>(offset + done));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) io_fail(path, "read failed: ", errno_text());
    if (got == 0) io_fail(path, "truncated: file shrank while being read");
    done += static_cast<std::size_t>(got);
  }
}

const char* write_descr(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return "<f4";
    case DType::f64:
      return "<f8";
    case DType::f16:
      return "<f2";
    case DType::bf16:
      return "<u2";  // numpy has no bfloat16; read back with u2_as_bf16
    case DType::boolean:
      return "|b1";
    case DType::i32:
      return "<i4";
    case DType::i64:
      return "<i8";
  }
  return nullptr;
}

/// The full v1.0 preamble + header, padded with spaces and '\n' so the data starts at a multiple
/// of 64 bytes (as numpy does).
std::string make_header(const char* descr, const std::vector<std::int64_t>& shape) {
  std::string dict = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (";
  for (std::size_t d = 0; d < shape.size(); ++d) {
    if (d > 0) dict += ", ";
    dict += std::to_string(shape[d]);
  }
  dict += shape.size() == 1 ? ",), }" : "), }";
  const std::size_t unpadded = kMagicSize + 2 + 2 + dict.size() + 1;
  dict.append((64 - unpadded % 64) % 64, ' ');
  dict += '\n';
  std::string out(kMagic, kMagicSize);
  out += '\x01';
  out += '\x00';
  out += static_cast<char>(dict.size() & 0xff);
  out += static_cast<char>(dict.size() >> 8);
  return out + dict;
}

void validate_for_write(const std::string& path, const Array& array) {
  if (write_descr(array.dtype) == nullptr)
    io_fail(path, "cannot write dtype ", static_cast<int>(array.dtype), ": unsupported dtype");
  if (array.shape.size() > kMaxRank)
    io_fail(path, "cannot write rank ", array.shape.size(), " (at most ", kMaxRank, ")");
  for (std::size_t d = 0; d < array.shape.size(); ++d)
    if (array.shape[d] < 0)
      io_fail(path, "cannot write negative extent shape[", d, "] = ", array.shape[d]);
  std::int64_t numel = 0, bytes = 0;
  if (!checked_numel(array.shape, numel) ||
      !checked_multiply(numel, static_cast<std::int64_t>(dtype_size(array.dtype)), bytes))
    io_fail(path, "cannot write: shape product overflows 64 bits");
  if (static_cast<std::uint64_t>(bytes) != array.data.size())
    io_fail(path, "cannot write: shape needs ", bytes, " bytes of ", dtype_name(array.dtype),
            " data, array holds ", array.data.size());
}

/// f16 bits → f32, exact for every value (subnormals, ±inf, NaN payloads included).
float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1f;
  const std::uint32_t mantissa = h & 0x3ff;
  if (exponent == 0) {
    // Zero or subnormal: mantissa · 2^-24, exact in f32.
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return sign ? -magnitude : magnitude;
  }
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  return std::bit_cast<float>(sign | ((exponent + 127 - 15) << 23) | (mantissa << 13));
}

}  // namespace

// ---- public
// --------------------------------------------------------------------------------------

std::int64_t Array::numel() const {
  std::int64_t n = 1;
  for (std::int64_t extent : shape) n *= extent;
  return n;
}

Tensor Array::tensor() {
  if (shape.size() > 4) fail("npy::Array::tensor: rank ", shape.size(), " > 4");
  const auto expected = static_cast<std::uint64_t>(numel()) * dtype_size(dtype);
  if (expected != data.size())
    fail("npy::Array::tensor: shape needs ", expected, " bytes of ", dtype_name(dtype),
         " data, array holds ", data.size());
  Tensor t;
  t.data = data.data();
  t.dtype = dtype;
  t.rank = static_cast<int>(shape.size());
  std::int64_t stride = 1;
  for (int d = t.rank - 1; d >= 0; --d) {
    t.shape[d] = shape[d];
    t.stride[d] = stride;
    stride *= shape[d];
  }
  return t;
}

Array parse(const std::byte* bytes, std::size_t size, const std::string& name,
            const ReadOptions& options) {
  if (bytes == nullptr && size > 0) io_fail(name, "null buffer of ", size, " bytes");
  const Preamble preamble = parse_preamble(bytes, std::min(size, kLongestPreamble), size, name);
  Header header = parse_header(bytes + preamble.header_offset, preamble, options, name);
  const std::size_t data_offset = preamble.header_offset + preamble.header_size;
  check_data_size(header, size - data_offset, name);
  std::vector<std::byte> raw(bytes + data_offset, bytes + size);
  return finish(std::move(header), std::move(raw));
}

Array parse(const std::byte* bytes, std::size_t size, const std::string& name) {
  return parse(bytes, size, name, ReadOptions{});
}

Array read(const std::string& path, const ReadOptions& options) {
  FileDescriptor file(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (file.get() < 0) io_fail(path, "cannot open: ", errno_text());
  struct stat info {};
  if (::fstat(file.get(), &info) != 0) io_fail(path, "cannot stat: ", errno_text());
  if (!S_ISREG(info.st_mode)) io_fail(path, "not a regular file");
  const auto file_size = static_cast<std::uint64_t>(info.st_size);

  std::byte start[kLongestPreamble];
  const auto start_size =
      static_cast<std::size_t>(std::min<std::uint64_t>(file_size, sizeof start));
  read_exactly(file.get(), 0, start, start_size, path);
  const Preamble preamble = parse_preamble(start, start_size, file_size, path);

  std::vector<std::byte> text(preamble.header_size);
  read_exactly(file.get(), preamble.header_offset, text.data(), text.size(), path);
  Header header = parse_header(text.data(), preamble, options, path);

  const std::uint64_t data_offset = preamble.header_offset + preamble.header_size;
  check_data_size(header, file_size - data_offset, path);
  if (header.data_bytes > std::numeric_limits<std::size_t>::max())
    io_fail(path, "data of ", header.data_bytes, " bytes does not fit in memory");
  std::vector<std::byte> raw(static_cast<std::size_t>(header.data_bytes));
  read_exactly(file.get(), data_offset, raw.data(), raw.size(), path);
  return finish(std::move(header), std::move(raw));
}

void write(const std::string& path, const Array& array) {
  validate_for_write(path, array);
  const std::string header = make_header(write_descr(array.dtype), array.shape);
  // .npy files we write are little endian: a big-endian machine swaps a copy.
  std::vector<std::byte> swapped;
  if (std::endian::native == std::endian::big) {
    swapped = array.data;
    const std::size_t item_size = dtype_size(array.dtype);
    swap_elements(swapped.data(), swapped.size() / item_size, item_size);
  }
  const std::vector<std::byte>& data = swapped.empty() ? array.data : swapped;

  io::write_file_atomically(
      path, {header, std::string_view(reinterpret_cast<const char*>(data.data()), data.size())});
}

std::vector<float> to_f32(const Array& array) {
  const auto numel = static_cast<std::size_t>(array.numel());
  if (array.data.size() != numel * dtype_size(array.dtype))
    fail("npy::to_f32: shape needs ", numel * dtype_size(array.dtype), " bytes of ",
         dtype_name(array.dtype), " data, array holds ", array.data.size());
  std::vector<float> values(numel);
  const std::byte* src = array.data.data();
  switch (array.dtype) {
    case DType::f32:
      if (numel > 0) std::memcpy(values.data(), src, numel * sizeof(float));
      break;
    case DType::f64:
      for (std::size_t i = 0; i < numel; ++i) {
        double v;
        std::memcpy(&v, src + i * sizeof v, sizeof v);
        values[i] = static_cast<float>(v);
      }
      break;
    case DType::f16:
      for (std::size_t i = 0; i < numel; ++i) {
        std::uint16_t h;
        std::memcpy(&h, src + i * sizeof h, sizeof h);
        values[i] = half_to_float(h);
      }
      break;
    case DType::bf16:
      // bf16 is the top half of an f32: widening is exact.
      for (std::size_t i = 0; i < numel; ++i) {
        std::uint16_t b;
        std::memcpy(&b, src + i * sizeof b, sizeof b);
        values[i] = std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
      }
      break;
    default:
      fail("npy::to_f32: dtype ", dtype_name(array.dtype),
           " is not a floating-point type (expected f32, f64, f16 or bf16)");
  }
  return values;
}

Array from_f32(std::vector<std::int64_t> shape, const float* values) {
  for (std::size_t d = 0; d < shape.size(); ++d)
    if (shape[d] < 0) fail("npy::from_f32: shape[", d, "] = ", shape[d], " is negative");
  std::int64_t numel = 0, bytes = 0;
  if (!checked_numel(shape, numel) ||
      !checked_multiply(numel, static_cast<std::int64_t>(sizeof(float)), bytes))
    fail("npy::from_f32: shape product overflows 64 bits");
  if (numel > 0 && values == nullptr)
    fail("npy::from_f32: values is null for ", numel, " elements");
  Array array;
  array.dtype = DType::f32;
  array.shape = std::move(shape);
  array.data.resize(static_cast<std::size_t>(bytes));
  if (bytes > 0) std::memcpy(array.data.data(), values, static_cast<std::size_t>(bytes));
  return array;
}

}  // namespace sdpa::npy
