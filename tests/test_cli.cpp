// Tests of the `sdpa` command-line tool, run as a separate process: .npy round trips against the
// fp64 reference, the JSON summary, and every error path with its exit code, its one-line message,
// and the promise that a failing run leaves no output file (and no temporary file) behind.
#ifdef SDPA_CLI_PATH

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <thread>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/problem.hpp"
#include "core/reference.hpp"
#include "io/npy.hpp"
#include "test_support.hpp"

namespace {

namespace fs = std::filesystem;
using sdpa::DType;
using Shape = std::vector<std::int64_t>;

struct CliResult {
  int exit_code = -1;
  std::string out, err;  // stdout, stderr
};

std::string read_text(const fs::path& path) {
  std::ifstream file(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
}

template <typename T>
sdpa::npy::Array array_of(DType dtype, Shape shape, const std::vector<T>& values) {
  sdpa::npy::Array array;
  array.dtype = dtype;
  array.shape = std::move(shape);
  array.data.resize(values.size() * sizeof(T));
  std::memcpy(array.data.data(), values.data(), array.data.size());
  return array;
}

std::vector<float> values_f32(const sdpa::npy::Array& array) { return sdpa::npy::to_f32(array); }

// Random N(0, 1) inputs of one attention problem, as row-major float vectors.
struct Qkv {
  Shape q_shape, k_shape, v_shape;
  std::vector<float> q, k, v;
};

std::vector<float> normal_values(std::size_t count, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> values(count);
  for (float& x : values) x = normal(rng);
  return values;
}

std::size_t numel(const Shape& shape) {
  std::size_t n = 1;
  for (std::int64_t extent : shape) n *= static_cast<std::size_t>(extent);
  return n;
}

Qkv random_qkv(std::int64_t B, std::int64_t Hq, std::int64_t Hkv, std::int64_t Lq, std::int64_t Lk,
               std::int64_t Dk, std::int64_t Dv, std::uint64_t seed = 1) {
  std::mt19937_64 rng(seed);
  Qkv x{{B, Hq, Lq, Dk}, {B, Hkv, Lk, Dk}, {B, Hkv, Lk, Dv}, {}, {}, {}};
  x.q = normal_values(numel(x.q_shape), rng);
  x.k = normal_values(numel(x.k_shape), rng);
  x.v = normal_values(numel(x.v_shape), rng);
  return x;
}

sdpa::Tensor view(std::vector<float>& values, const Shape& shape) {
  sdpa::Tensor t;
  t.data = values.data();
  t.rank = static_cast<int>(shape.size());
  std::int64_t stride = 1;
  for (int d = t.rank - 1; d >= 0; --d) {
    t.shape[static_cast<std::size_t>(d)] = shape[static_cast<std::size_t>(d)];
    t.stride[static_cast<std::size_t>(d)] = stride;
    stride *= shape[static_cast<std::size_t>(d)];
  }
  return t;
}

// The fp64 reference and naive fp32 results of `x` under `options` (mask / bias / lengths views in
// `options` must point at memory that lives through the call).
sdpa::test::References references(Qkv x, const sdpa::Options& options) {
  std::vector<float> out(numel({x.q_shape[0], x.q_shape[1], x.q_shape[2], x.v_shape[3]}));
  sdpa::Outputs outputs;
  outputs.out = view(out, {x.q_shape[0], x.q_shape[1], x.q_shape[2], x.v_shape[3]});
  const sdpa::Problem problem = sdpa::validate_forward(view(x.q, x.q_shape), view(x.k, x.k_shape),
                                                       view(x.v, x.v_shape), options, outputs);
  return sdpa::test::References(problem);
}

// A v1 .npy file in Fortran order (first index fastest), which npy::write never produces.
void write_fortran_f32(const fs::path& path, const Shape& shape,
                       const std::vector<float>& c_order) {
  std::string header = "{'descr': '<f4', 'fortran_order': True, 'shape': (";
  for (std::int64_t extent : shape) header += std::to_string(extent) + ", ";
  header += "), }";
  while ((10 + header.size() + 1) % 64 != 0) header += ' ';
  header += '\n';
  std::vector<float> fortran(c_order.size());
  sdpa::test::Index extents{};
  for (std::size_t d = 0; d < shape.size(); ++d) extents[d] = shape[d];
  std::size_t c_offset = 0;
  sdpa::test::for_each_index(
      static_cast<int>(shape.size()), extents, [&](const sdpa::test::Index& index) {
        std::size_t offset = 0;
        for (std::size_t d = shape.size(); d-- > 0;)
          offset = offset * static_cast<std::size_t>(shape[d]) + static_cast<std::size_t>(index[d]);
        fortran[offset] = c_order[c_offset++];
      });
  std::ofstream file(path, std::ios::binary);
  const auto header_len = static_cast<std::uint16_t>(header.size());
  file.write("\x93NUMPY\x01\x00", 8);
  const char len_bytes[2] = {static_cast<char>(header_len & 0xff),
                             static_cast<char>(header_len >> 8)};
  file.write(len_bytes, 2);
  file << header;
  file.write(reinterpret_cast<const char*>(fortran.data()),
             static_cast<std::streamsize>(fortran.size() * sizeof(float)));
}

// Each test gets a fresh directory: `work` holds the .npy files (and nothing else, so stray temp
// files show up), the captured stdout / stderr sit beside it.
class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "sdpa_cli_test_XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    root_ = pattern;
    work_ = root_ / "work";
    fs::create_directory(work_);
  }
  void TearDown() override { fs::remove_all(root_); }

  std::string path(const std::string& name) const { return (work_ / name).string(); }

  CliResult run(const std::string& arguments) const {
    const fs::path out = root_ / "stdout.txt", err = root_ / "stderr.txt";
    const std::string command = std::string("'") + SDPA_CLI_PATH + "' " + arguments + " >'" +
                                out.string() + "' 2>'" + err.string() + "'";
    const int status = std::system(command.c_str());
    CliResult result;
    result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    result.out = read_text(out);
    result.err = read_text(err);
    return result;
  }

  void write(const std::string& name, const sdpa::npy::Array& array) {
    sdpa::npy::write(path(name), array);
    inputs_.insert(name);
  }
  void write_f32(const std::string& name, const Shape& shape, const std::vector<float>& values) {
    write(name, array_of(DType::f32, shape, values));
  }
  void write_qkv(const Qkv& x) {
    write_f32("q.npy", x.q_shape, x.q);
    write_f32("k.npy", x.k_shape, x.k);
    write_f32("v.npy", x.v_shape, x.v);
  }
  std::string qkv_arguments(const std::string& out = "out.npy") const {
    return "run --q '" + path("q.npy") + "' --k '" + path("k.npy") + "' --v '" + path("v.npy") +
           "' --out '" + path(out) + "'";
  }

  std::set<std::string> files_in_work() const {
    std::set<std::string> names;
    for (const auto& entry : fs::directory_iterator(work_)) names.insert(entry.path().filename());
    return names;
  }

  // A failed run: exit code, one line "sdpa: error: ...mentioning...", and the directory holds
  // exactly the files the test wrote (no output, no temporary file).
  void expect_failure(const CliResult& r, int exit_code, const std::string& mentioning) const {
    EXPECT_EQ(r.exit_code, exit_code) << r.err;
    EXPECT_EQ(r.err.rfind("sdpa: error: ", 0), 0u) << r.err;
    EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "expected one line: " << r.err;
    EXPECT_NE(r.err.find(mentioning), std::string::npos)
        << "expected '" << mentioning << "' in " << r.err;
    EXPECT_EQ(files_in_work(), inputs_);
  }

  fs::path root_, work_;
  std::set<std::string> inputs_;  // names of the files this test put in work_
};

// ---- round trips --------------------------------------------------------------------------------

TEST_F(Cli, RunRoundTripMatchesFp64Reference) {
  const Qkv x = random_qkv(2, 4, 2, 19, 23, 16, 8);  // GQA, Lq != Lk, Dk != Dv
  write_qkv(x);
  const CliResult r = run(qkv_arguments());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const sdpa::npy::Array out = sdpa::npy::read(path("out.npy"));
  EXPECT_EQ(out.dtype, DType::f32);
  EXPECT_EQ(out.shape, (Shape{2, 4, 19, 8}));
  const auto refs = references(x, {});
  EXPECT_TRUE(sdpa::test::accuracy_rule("out", values_f32(out), refs.naive32.out, refs.ref64.out));
  EXPECT_EQ(files_in_work(), (std::set<std::string>{"q.npy", "k.npy", "v.npy", "out.npy"}));
}

// A negative thread count is refused with the flag and the accepted range named (it printed the
// largest double as the upper bound before).
TEST_F(Cli, BenchAndDecodeRejectNegativeThreadsNamingTheRange) {
  for (const char* command : {"bench --decode --threads -1", "decode --threads -1"}) {
    const CliResult r = run(command);
    EXPECT_EQ(r.exit_code, 2) << command;
    EXPECT_NE(r.err.find("--threads: Value -1 not in range 0 to 4096"), std::string::npos)
        << command << ": " << r.err;
  }
}

TEST_F(Cli, RunAcceptsF64Inputs) {
  const Qkv x = random_qkv(1, 2, 2, 9, 11, 8, 8, 7);
  const auto widen = [](const std::vector<float>& v) {
    return std::vector<double>(v.begin(), v.end());
  };
  write("q.npy", array_of(DType::f64, x.q_shape, widen(x.q)));
  write("k.npy", array_of(DType::f64, x.k_shape, widen(x.k)));
  write("v.npy", array_of(DType::f64, x.v_shape, widen(x.v)));
  const CliResult r = run(qkv_arguments());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto refs = references(x, {});
  EXPECT_TRUE(sdpa::test::accuracy_rule("out", values_f32(sdpa::npy::read(path("out.npy"))),
                                        refs.naive32.out, refs.ref64.out));
}

// ---- bf16 / f16 inputs -----------------------------------------------------------------------

// q, k, v of `x` rounded to `dtype` (16-bit patterns) and the library's output on them, computed
// in-process with `out_dtype` (the CLI must give the very same bits: same kernels, any threads).
struct Native16 {
  std::vector<std::uint16_t> q, k, v, out;
  std::vector<float> out32;
};

Native16 native_16bit(const Qkv& x, DType dtype, DType out_dtype) {
  Native16 n;
  for (float f : x.q) n.q.push_back(sdpa::test::narrow(dtype, f));
  for (float f : x.k) n.k.push_back(sdpa::test::narrow(dtype, f));
  for (float f : x.v) n.v.push_back(sdpa::test::narrow(dtype, f));
  const Shape o_shape{x.q_shape[0], x.q_shape[1], x.q_shape[2], x.v_shape[3]};
  n.out.assign(numel(o_shape), 0);
  n.out32.assign(numel(o_shape), 0.0f);
  const auto as = [](auto& values, const Shape& shape, DType type) {
    std::vector<float> no_data;
    sdpa::Tensor t = view(no_data, shape);  // contiguous shape and strides
    t.data = values.data();
    t.dtype = type;
    return t;
  };
  sdpa::Outputs outputs;
  outputs.out =
      out_dtype == DType::f32 ? as(n.out32, o_shape, DType::f32) : as(n.out, o_shape, dtype);
  sdpa::forward(as(n.q, x.q_shape, dtype), as(n.k, x.k_shape, dtype), as(n.v, x.v_shape, dtype), {},
                outputs);
  return n;
}

TEST_F(Cli, RunBf16StoredAsU2WithDtypeFlagWritesBf16Out) {
  const Qkv x = random_qkv(1, 4, 2, 37, 45, 16, 24, 11);
  const Native16 n = native_16bit(x, DType::bf16, DType::bf16);
  write("q.npy", array_of(DType::bf16, x.q_shape, n.q));  // written as '<u2'
  write("k.npy", array_of(DType::bf16, x.k_shape, n.k));
  write("v.npy", array_of(DType::bf16, x.v_shape, n.v));
  EXPECT_NE(read_text(path("q.npy")).find("'<u2'"), std::string::npos);
  const CliResult plain = run(qkv_arguments());  // '<u2' without the flag is not a float array
  EXPECT_NE(plain.exit_code, 0);
  EXPECT_FALSE(fs::exists(path("out.npy")));
  const CliResult r = run(qkv_arguments() + " --dtype bf16 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["dtype"], "bf16");
  EXPECT_NE(read_text(path("out.npy")).find("'<u2'"), std::string::npos);
  sdpa::npy::ReadOptions as_bf16;
  as_bf16.u2_as_bf16 = true;
  const sdpa::npy::Array out = sdpa::npy::read(path("out.npy"), as_bf16);
  ASSERT_EQ(out.dtype, DType::bf16);
  EXPECT_EQ(out.shape, (Shape{1, 4, 37, 24}));
  ASSERT_EQ(out.data.size(), n.out.size() * 2);
  EXPECT_EQ(std::memcmp(out.data.data(), n.out.data(), out.data.size()), 0);
}

TEST_F(Cli, RunF16InputsWriteF16OutOrF32OnRequest) {
  const Qkv x = random_qkv(2, 2, 1, 21, 30, 8, 8, 12);
  const Native16 n16 = native_16bit(x, DType::f16, DType::f16);
  const Native16 n32 = native_16bit(x, DType::f16, DType::f32);
  write("q.npy", array_of(DType::f16, x.q_shape, n16.q));
  write("k.npy", array_of(DType::f16, x.k_shape, n16.k));
  write("v.npy", array_of(DType::f16, x.v_shape, n16.v));
  ASSERT_EQ(run(qkv_arguments()).exit_code, 0);
  const sdpa::npy::Array out = sdpa::npy::read(path("out.npy"));
  ASSERT_EQ(out.dtype, DType::f16);
  ASSERT_EQ(out.data.size(), n16.out.size() * 2);
  EXPECT_EQ(std::memcmp(out.data.data(), n16.out.data(), out.data.size()), 0);
  ASSERT_EQ(run(qkv_arguments("out32.npy") + " --out-dtype f32").exit_code, 0);
  const sdpa::npy::Array out32 = sdpa::npy::read(path("out32.npy"));
  ASSERT_EQ(out32.dtype, DType::f32);
  EXPECT_TRUE(sdpa::test::bitwise_equal(values_f32(out32), n32.out32));
  // A mix of f16 and f32 inputs runs in f32 (f32 out), as before 16-bit support.
  write_f32("k.npy", x.k_shape, x.k);
  ASSERT_EQ(run(qkv_arguments("mixed.npy")).exit_code, 0);
  EXPECT_EQ(sdpa::npy::read(path("mixed.npy")).dtype, DType::f32);
}

TEST_F(Cli, GradBf16WritesBf16GradientsOrF32OnRequest) {
  const Qkv x = random_qkv(1, 2, 1, 13, 17, 8, 8, 13);
  const Native16 n = native_16bit(x, DType::bf16, DType::bf16);
  write("q.npy", array_of(DType::bf16, x.q_shape, n.q));
  write("k.npy", array_of(DType::bf16, x.k_shape, n.k));
  write("v.npy", array_of(DType::bf16, x.v_shape, n.v));
  write("do.npy", array_of(DType::bf16, x.q_shape, n.q));  // dout: any [B, Hq, Lq, Dv] values
  const std::string args = "grad --dtype bf16 --q '" + path("q.npy") + "' --k '" + path("k.npy") +
                           "' --v '" + path("v.npy") + "' --dout '" + path("do.npy") + "'";
  const CliResult r = run(args + " --dq '" + path("dq.npy") + "' --dk '" + path("dk.npy") +
                          "' --dv '" + path("dv.npy") + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  sdpa::npy::ReadOptions as_bf16;
  as_bf16.u2_as_bf16 = true;
  const sdpa::npy::Array dq = sdpa::npy::read(path("dq.npy"), as_bf16);
  EXPECT_EQ(dq.dtype, DType::bf16);
  ASSERT_EQ(run(args + " --out-dtype f32 --dq '" + path("dq32.npy") + "' --dk '" +
                path("dk32.npy") + "' --dv '" + path("dv32.npy") + "'")
                .exit_code,
            0);
  const sdpa::npy::Array dq32 = sdpa::npy::read(path("dq32.npy"));
  ASSERT_EQ(dq32.dtype, DType::f32);
  // The bf16 gradients are the f32 ones rounded to bf16 (the backward widens to fp32).
  const std::vector<float> wide = values_f32(dq32), narrow = values_f32(dq);
  ASSERT_EQ(wide.size(), narrow.size());
  bool any_nonzero = false;
  for (std::size_t i = 0; i < wide.size(); ++i) {
    EXPECT_EQ(narrow[i], sdpa::test::round_to(DType::bf16, wide[i])) << i;
    any_nonzero |= wide[i] != 0.0f;
  }
  EXPECT_TRUE(any_nonzero);
}

TEST_F(Cli, RunAcceptsFortranOrderInputs) {
  const Qkv x = random_qkv(2, 3, 1, 5, 7, 4, 6, 3);
  write_fortran_f32(work_ / "q.npy", x.q_shape, x.q);
  write_fortran_f32(work_ / "k.npy", x.k_shape, x.k);
  write_fortran_f32(work_ / "v.npy", x.v_shape, x.v);
  const CliResult r = run(qkv_arguments());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto refs = references(x, {});
  EXPECT_TRUE(sdpa::test::accuracy_rule("out", values_f32(sdpa::npy::read(path("out.npy"))),
                                        refs.naive32.out, refs.ref64.out));
}

TEST_F(Cli, RunWritesLseAndWeightsMatchingReference) {
  // Lq > Lk with a bottom-right causal mask: the first rows see no key (lse = -inf, weights 0).
  const Qkv x = random_qkv(1, 2, 1, 12, 8, 8, 4, 5);
  write_qkv(x);
  const CliResult r = run(qkv_arguments() + " --causal bottom-right --lse '" + path("lse.npy") +
                          "' --weights '" + path("w.npy") + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  sdpa::Options options;
  options.causal = sdpa::Causal::bottom_right;
  const auto refs = references(x, options);
  const sdpa::npy::Array lse = sdpa::npy::read(path("lse.npy"));
  const sdpa::npy::Array weights = sdpa::npy::read(path("w.npy"));
  EXPECT_EQ(lse.shape, (Shape{1, 2, 12}));
  EXPECT_EQ(weights.shape, (Shape{1, 2, 12, 8}));
  EXPECT_TRUE(sdpa::test::accuracy_rule("out", values_f32(sdpa::npy::read(path("out.npy"))),
                                        refs.naive32.out, refs.ref64.out));
  EXPECT_TRUE(sdpa::test::accuracy_rule("lse", values_f32(lse), refs.naive32.lse, refs.ref64.lse));
  EXPECT_TRUE(sdpa::test::accuracy_rule("weights", values_f32(weights), refs.naive32.weights,
                                        refs.ref64.weights));
}

TEST_F(Cli, RunWritesEntropyMatchingReference) {
  const Qkv x = random_qkv(1, 2, 1, 12, 8, 8, 4, 5);
  write_qkv(x);
  const CliResult r = run(qkv_arguments() + " --causal bottom-right --entropy '" +
                          path("h.npy") + "' --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("\"entropy\""), std::string::npos) << r.out;
  sdpa::Options options;
  options.causal = sdpa::Causal::bottom_right;
  const auto refs = references(x, options);
  const sdpa::npy::Array entropy = sdpa::npy::read(path("h.npy"));
  EXPECT_EQ(entropy.shape, (Shape{1, 2, 12}));
  EXPECT_TRUE(sdpa::test::accuracy_rule("entropy", values_f32(entropy), refs.naive32.entropy,
                                        refs.ref64.entropy));
}

TEST_F(Cli, RunCombinesMaskBiasLengthsWindowAndScale) {
  const std::int64_t B = 2, H = 2, Lq = 10, Lk = 14;
  const Qkv x = random_qkv(B, H, H, Lq, Lk, 8, 8, 11);
  write_qkv(x);
  std::vector<std::uint8_t> mask(numel({1, 1, Lq, Lk}));  // broadcast over batch and heads
  for (std::size_t n = 0; n < mask.size(); ++n) mask[n] = n % 5 != 0;
  std::mt19937_64 rng(3);
  const std::vector<float> bias = normal_values(numel({B, 1, Lq, Lk}), rng);
  const std::vector<std::int64_t> key_lengths{14, 9};
  const std::vector<std::int32_t> query_lengths{10, 7};
  write("mask.npy", array_of(DType::boolean, {1, 1, Lq, Lk}, mask));
  write("bias.npy",
        array_of(DType::f64, {B, 1, Lq, Lk}, std::vector<double>(bias.begin(), bias.end())));
  write("kl.npy", array_of(DType::i64, {B}, key_lengths));
  write("ql.npy", array_of(DType::i32, {B}, query_lengths));
  const CliResult r = run(qkv_arguments() + " --causal top-left --mask '" + path("mask.npy") +
                          "' --bias '" + path("bias.npy") + "' --key-lengths '" + path("kl.npy") +
                          "' --query-lengths '" + path("ql.npy") + "' --window 4,2 --scale 0.3");
  ASSERT_EQ(r.exit_code, 0) << r.err;

  std::vector<float> bias_copy = bias;
  const std::vector<std::int32_t> key_lengths32{14, 9};
  sdpa::Options options;
  options.causal = sdpa::Causal::top_left;
  options.mask = sdpa::Tensor::contiguous(mask.data(), DType::boolean, {1, 1, Lq, Lk});
  options.bias = view(bias_copy, {B, 1, Lq, Lk});
  options.key_lengths = key_lengths32;
  options.query_lengths = query_lengths;
  options.window = sdpa::Window{4, 2};
  options.scale = 0.3f;
  const auto refs = references(x, options);
  EXPECT_TRUE(sdpa::test::accuracy_rule("out", values_f32(sdpa::npy::read(path("out.npy"))),
                                        refs.naive32.out, refs.ref64.out));
}

TEST_F(Cli, RunWithSoftcapAndSinksMatchesReferenceAndReportsThem) {
  const Qkv x = random_qkv(1, 3, 1, 12, 8, 8, 4, 21);
  write_qkv(x);
  std::vector<float> sinks{0.5f, -std::numeric_limits<float>::infinity(), 3.0f};
  write_f32("sinks.npy", {3}, sinks);
  const CliResult r = run(qkv_arguments() + " --causal bottom-right --softcap 0.75 --sinks '" +
                          path("sinks.npy") + "' --lse '" + path("lse.npy") + "' --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto summary = nlohmann::json::parse(r.out);
  EXPECT_EQ(summary["options"]["softcap"], 0.75);
  EXPECT_EQ(summary["options"]["sinks"], path("sinks.npy"));
  sdpa::Options options;
  options.causal = sdpa::Causal::bottom_right;
  options.softcap = 0.75f;
  options.sinks = view(sinks, {3});
  const auto refs = references(x, options);
  EXPECT_TRUE(sdpa::test::accuracy_rule("out", values_f32(sdpa::npy::read(path("out.npy"))),
                                        refs.naive32.out, refs.ref64.out));
  EXPECT_TRUE(sdpa::test::accuracy_rule("lse", values_f32(sdpa::npy::read(path("lse.npy"))),
                                        refs.naive32.lse, refs.ref64.lse));
  const CliResult text = run(qkv_arguments() + " --softcap 0.75 --sinks '" + path("sinks.npy") + "'");
  ASSERT_EQ(text.exit_code, 0) << text.err;
  for (const char* part : {"softcap=0.75", "sinks="})
    EXPECT_NE(text.out.find(part), std::string::npos) << part << " not in\n" << text.out;
}

TEST_F(Cli, SinksOfWrongShapeExits2NamingTheFileAndHq) {
  write_qkv(random_qkv(1, 4, 2, 5, 5, 4, 4, 22));
  write_f32("sinks.npy", {3}, {0.0f, 1.0f, 2.0f});
  expect_failure(run(qkv_arguments() + " --sinks '" + path("sinks.npy") + "'"), 2,
                 "--sinks " + path("sinks.npy") + ": options.sinks.shape[0] = 3 does not match "
                 "q.shape[1] (Hq) = 4");
  write_f32("sinks2.npy", {1, 4}, {0.0f, 1.0f, 2.0f, 3.0f});
  expect_failure(run(qkv_arguments() + " --sinks '" + path("sinks2.npy") + "'"), 2,
                 "--sinks " + path("sinks2.npy") + ": options.sinks.rank: expected 1 ([Hq])");
}

TEST_F(Cli, NegativeOrNonFiniteSoftcapExits2) {
  write_qkv(random_qkv(1, 1, 1, 4, 4, 4, 4, 23));
  expect_failure(run(qkv_arguments() + " --softcap -1"), 2, "--softcap");
  expect_failure(run(qkv_arguments() + " --softcap inf"), 2, "--softcap");
  expect_failure(run(qkv_arguments() + " --softcap 1e300"), 2, "--softcap");
}

TEST_F(Cli, RunIsBitwiseIdenticalForOneAndTwoThreads) {
  write_qkv(random_qkv(1, 4, 4, 70, 70, 32, 32, 9));
  ASSERT_EQ(run(qkv_arguments("one.npy") + " --threads 1").exit_code, 0);
  ASSERT_EQ(run(qkv_arguments("two.npy") + " --threads 2").exit_code, 0);
  EXPECT_EQ(sdpa::npy::read(path("one.npy")).data, sdpa::npy::read(path("two.npy")).data);
}

TEST_F(Cli, RunWithScalarIsaMatchesReference) {
  const Qkv x = random_qkv(1, 2, 2, 17, 17, 12, 12, 13);
  write_qkv(x);
  const CliResult r = run(qkv_arguments() + " --isa scalar --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["isa"], "scalar");
  const auto refs = references(x, {});
  EXPECT_TRUE(sdpa::test::accuracy_rule("out", values_f32(sdpa::npy::read(path("out.npy"))),
                                        refs.naive32.out, refs.ref64.out));
}

// ---- the summary --------------------------------------------------------------------------------

TEST_F(Cli, RunJsonPrintsOneObjectWithShapesTimingAndOutputs) {
  write_qkv(random_qkv(2, 4, 2, 16, 24, 8, 4));
  const CliResult r = run(qkv_arguments() + " --json --repeat 3 --lse '" + path("lse.npy") + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json s = nlohmann::json::parse(r.out);  // throws unless stdout is one object
  ASSERT_TRUE(s.is_object());
  for (const char* key : {"shapes", "options", "isa", "threads", "time_ms", "gflops", "flops",
                          "outputs", "repeat", "times_ms"})
    EXPECT_TRUE(s.contains(key)) << key;
  EXPECT_EQ(s["shapes"],
            (nlohmann::json{
                {"B", 2}, {"Hq", 4}, {"Hkv", 2}, {"Lq", 16}, {"Lk", 24}, {"Dk", 8}, {"Dv", 4}}));
  EXPECT_EQ(s["repeat"], 3);
  EXPECT_EQ(s["times_ms"].size(), 3u);
  EXPECT_DOUBLE_EQ(s["flops"].get<double>(), 2.0 * 4 * 16 * 24 * 2 * (8 + 4));
  EXPECT_GE(s["threads"].get<int>(), 1);
  EXPECT_EQ(s["outputs"]["out"], path("out.npy"));
  EXPECT_EQ(s["outputs"]["lse"], path("lse.npy"));
}

TEST_F(Cli, RunTextSummaryNamesShapesSpeedAndOutput) {
  write_qkv(random_qkv(1, 2, 2, 8, 8, 8, 8));
  const CliResult r = run(qkv_arguments());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* text : {"Hq=2", "Lk=8", "GFLOP/s", "ms", "out.npy"})
    EXPECT_NE(r.out.find(text), std::string::npos) << text << " not in\n" << r.out;
}

// ---- error paths: exit code, message, nothing written ------------------------------------------

TEST_F(Cli, MissingInputFileExits1AndNamesTheFile) {
  write_qkv(random_qkv(1, 1, 1, 4, 4, 4, 4));
  fs::remove(path("k.npy"));
  inputs_.erase("k.npy");
  expect_failure(run(qkv_arguments()), 1, path("k.npy"));
}

TEST_F(Cli, TruncatedNpyExits1) {
  write_qkv(random_qkv(1, 1, 1, 4, 4, 4, 4));
  fs::resize_file(path("v.npy"), fs::file_size(path("v.npy")) - 6);
  expect_failure(run(qkv_arguments()), 1, path("v.npy"));
}

TEST_F(Cli, MismatchedHeadDimensionExits2AndNamesTheArgument) {
  Qkv x = random_qkv(1, 2, 2, 4, 4, 8, 8);
  write_f32("q.npy", x.q_shape, x.q);
  write_f32("k.npy", {1, 2, 4, 6}, std::vector<float>(48, 1.0f));  // Dk 6, q has 8
  write_f32("v.npy", x.v_shape, x.v);
  const CliResult r = run(qkv_arguments());
  expect_failure(r, 2, "--k");
  EXPECT_NE(r.err.find("k.shape[3]"), std::string::npos) << r.err;
}

TEST_F(Cli, InputOfWrongRankExits2) {
  write_qkv(random_qkv(1, 1, 1, 4, 4, 4, 4));
  write_f32("q.npy", {4, 4}, std::vector<float>(16, 0.5f));
  expect_failure(run(qkv_arguments()), 2, "--q");
}

TEST_F(Cli, IntegerInputExits2) {
  write_qkv(random_qkv(1, 1, 1, 4, 4, 4, 4));
  write("v.npy", array_of(DType::i32, {1, 1, 4, 4}, std::vector<std::int32_t>(16, 1)));
  const CliResult r = run(qkv_arguments());
  expect_failure(r, 2, "--v");
  EXPECT_NE(r.err.find(path("v.npy")), std::string::npos) << r.err;
}

TEST_F(Cli, BadWindowValuesExit2) {
  write_qkv(random_qkv(1, 1, 1, 4, 4, 4, 4));
  for (const char* window : {"3", "a,b", "1,2,3", "-5,0", "2,", ",2"}) {
    SCOPED_TRACE(window);
    expect_failure(run(qkv_arguments() + " --window='" + window + "'"), 2, "--window");
  }
}

TEST_F(Cli, WindowAcceptsMinusOneForUnbounded) {
  write_qkv(random_qkv(1, 1, 1, 6, 6, 4, 4));
  EXPECT_EQ(run(qkv_arguments() + " --window -1,2").exit_code, 0);
  EXPECT_EQ(run(qkv_arguments() + " --window=3,-1").exit_code, 0);
}

TEST_F(Cli, BadCausalValueExits2) {
  write_qkv(random_qkv(1, 1, 1, 4, 4, 4, 4));
  expect_failure(run(qkv_arguments() + " --causal sideways"), 2, "--causal");
}

TEST_F(Cli, ZeroRepeatExits2) {
  write_qkv(random_qkv(1, 1, 1, 4, 4, 4, 4));
  expect_failure(run(qkv_arguments() + " --repeat 0"), 2, "--repeat");
}

TEST_F(Cli, BadIsaValueExits2) {
  write_qkv(random_qkv(1, 1, 1, 4, 4, 4, 4));
  expect_failure(run(qkv_arguments() + " --isa sse9"), 2, "--isa");
}

TEST_F(Cli, MaskOfFloatDtypeExits2) {
  write_qkv(random_qkv(1, 1, 1, 4, 4, 4, 4));
  write_f32("mask.npy", {4, 4}, std::vector<float>(16, 1.0f));
  expect_failure(run(qkv_arguments() + " --mask '" + path("mask.npy") + "'"), 2, "--mask");
}

TEST_F(Cli, MaskOfWrongShapeExits2) {
  write_qkv(random_qkv(1, 1, 1, 4, 4, 4, 4));
  write("mask.npy", array_of(DType::boolean, {4, 3}, std::vector<std::uint8_t>(12, 1)));
  expect_failure(run(qkv_arguments() + " --mask '" + path("mask.npy") + "'"), 2, "--mask");
}

TEST_F(Cli, KeyLengthsOfFloatDtypeExit2) {
  write_qkv(random_qkv(2, 1, 1, 4, 4, 4, 4));
  write_f32("kl.npy", {2}, {4.0f, 4.0f});
  expect_failure(run(qkv_arguments() + " --key-lengths '" + path("kl.npy") + "'"), 2,
                 "--key-lengths");
}

TEST_F(Cli, KeyLengthBeyondInt32Exits2) {
  write_qkv(random_qkv(2, 1, 1, 4, 4, 4, 4));
  write("kl.npy", array_of(DType::i64, {2}, std::vector<std::int64_t>{4, std::int64_t{1} << 40}));
  expect_failure(run(qkv_arguments() + " --key-lengths '" + path("kl.npy") + "'"), 2,
                 "--key-lengths");
}

TEST_F(Cli, KeyLengthLongerThanKeysExits2) {
  write_qkv(random_qkv(2, 1, 1, 4, 4, 4, 4));
  write("kl.npy", array_of(DType::i32, {2}, std::vector<std::int32_t>{4, 5}));
  expect_failure(run(qkv_arguments() + " --key-lengths '" + path("kl.npy") + "'"), 2,
                 "--key-lengths");
}

TEST_F(Cli, NonFiniteScaleExits2) {
  write_qkv(random_qkv(1, 1, 1, 4, 4, 4, 4));
  expect_failure(run(qkv_arguments() + " --scale inf"), 2, "scale");
}

TEST_F(Cli, SameOutputPathTwiceExits2) {
  write_qkv(random_qkv(1, 1, 1, 4, 4, 4, 4));
  expect_failure(run(qkv_arguments() + " --lse '" + (work_ / "." / "out.npy").string() + "'"), 2,
                 "out.npy");
}

TEST_F(Cli, OutputInMissingDirectoryExits1) {
  write_qkv(random_qkv(1, 1, 1, 4, 4, 4, 4));
  expect_failure(run(qkv_arguments("no_such_dir/out.npy")), 1, "no_such_dir");
}

TEST_F(Cli, FailedRunLeavesExistingOutputUnchanged) {
  write_qkv(random_qkv(1, 1, 1, 4, 4, 4, 4));
  write_f32("k.npy", {1, 1, 4, 5}, std::vector<float>(20, 1.0f));  // Dk mismatch
  { std::ofstream(path("out.npy")) << "precious"; }
  inputs_.insert("out.npy");
  expect_failure(run(qkv_arguments()), 2, "--k");
  EXPECT_EQ(read_text(path("out.npy")), "precious");
}

TEST_F(Cli, FailedWeightsWriteLeavesNoOutputAtAll) {
  write_qkv(random_qkv(1, 1, 1, 4, 4, 4, 4));
  const CliResult r = run(qkv_arguments() + " --weights '" + path("missing_dir/w.npy") + "'");
  EXPECT_EQ(r.exit_code, 1) << r.err;
  // The message names the output and its missing directory, not a temporary file's name.
  EXPECT_NE(r.err.find("w.npy: cannot write: directory"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("sdpa-partial"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(path("missing_dir")));
  for (const std::string& name : files_in_work())  // all outputs or none: not even out.npy
    EXPECT_TRUE(inputs_.count(name)) << name;
}

// ---- the command line itself ------------------------------------------------------------------

TEST_F(Cli, UnknownOptionExits2WithOneLine) {
  write_qkv(random_qkv(1, 1, 1, 4, 4, 4, 4));
  expect_failure(run(qkv_arguments() + " --bogus 1"), 2, "--bogus");
}

TEST_F(Cli, MissingRequiredOptionExits2) {
  expect_failure(run("run --q '" + path("q.npy") + "'"), 2, "--k");
}

TEST_F(Cli, UnknownSubcommandExits2) { expect_failure(run("frobnicate"), 2, "frobnicate"); }

TEST_F(Cli, HelpExits0AndListsOptions) {
  const CliResult top = run("--help");
  EXPECT_EQ(top.exit_code, 0);
  EXPECT_NE(top.out.find("run"), std::string::npos) << top.out;
  const CliResult sub = run("run --help");
  EXPECT_EQ(sub.exit_code, 0);
  for (const char* flag : {"--q", "--window", "--key-lengths", "--json", "--repeat", "--isa"})
    EXPECT_NE(sub.out.find(flag), std::string::npos) << flag;
}

TEST_F(Cli, VersionFlagPrintsLibraryVersion) {
  const CliResult r = run("--version");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find(sdpa::version()), std::string::npos) << r.out;
}

// ---- demo -------------------------------------------------------------------------------------

TEST_F(Cli, DemoChecksAgainstReferenceAndReportsSpeed) {
  const CliResult r = run(
      "demo --batch 2 --heads 4 --kv-heads 2 --length 96 --dim 32 --causal top-left --threads 2");
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  for (const char* text : {"Hq=4", "Hkv=2", "Lq=96", "GFLOP/s", "max abs error", "-> ok"})
    EXPECT_NE(r.out.find(text), std::string::npos) << text << " not in\n" << r.out;
}

TEST_F(Cli, NoArgumentsRunsDefaultDemo) {
  const CliResult r = run("");
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  for (const char* text : {"sdpa demo", "Lq=1024", "Dk=128", "-> ok"})
    EXPECT_NE(r.out.find(text), std::string::npos) << text << " not in\n" << r.out;
}

TEST_F(Cli, DemoRejectsZeroDimension) { expect_failure(run("demo --dim 0"), 2, "--dim"); }

TEST_F(Cli, DemoRejectsKvHeadsNotDividingHeads) {
  expect_failure(run("demo --heads 8 --kv-heads 3"), 2, "--kv-heads");
}

// ---- reliability: every exit code, malformed files, out of memory, killed writes -------------

// Exit codes (README, "Exit codes"): 0 success, 1 I/O, 2 arguments, 3 not enough memory. 0, 1 and 2
// are exercised above; these add the malformed-file cases of 1 and the memory case of 3.

TEST_F(Cli, InputThatIsADirectoryExits1AndNamesIt) {
  write_qkv(random_qkv(1, 1, 1, 4, 4, 4, 4));
  fs::create_directory(path("dir.npy"));
  inputs_.insert("dir.npy");
  expect_failure(run(qkv_arguments() + " --bias '" + path("dir.npy") + "'"), 1, path("dir.npy"));
}

TEST_F(Cli, UnreadableInputExits1AndNamesIt) {
  if (::geteuid() == 0) GTEST_SKIP() << "root reads files whatever their permissions";
  write_qkv(random_qkv(1, 1, 1, 4, 4, 4, 4));
  fs::permissions(path("k.npy"), fs::perms::none);
  const CliResult r = run(qkv_arguments());
  fs::permissions(path("k.npy"), fs::perms::owner_all);
  expect_failure(r, 1, path("k.npy"));
}

TEST_F(Cli, MalformedNpyFilesExit1AndNameTheFile) {
  write_qkv(random_qkv(1, 1, 1, 4, 4, 4, 4));
  const std::string good = read_text(path("q.npy"));
  std::string huge_header("\x93NUMPY\x02\x00\xff\xff\xff\x7f", 12);  // v2, 2 GiB header length
  huge_header += std::string(64, ' ');
  std::string bad_descr = good;
  bad_descr.replace(bad_descr.find("<f4"), 3, "<c8");
  const std::pair<std::string, std::string> cases[] = {
      {huge_header, "exceeds the limit"},
      {good + '\0', "trailing bytes"},
      {"GIF89a" + good.substr(6), "bad magic"},
      {bad_descr, "unsupported descr '<c8'"},
      {good.substr(0, 20), "truncated"},
  };
  for (const auto& [bytes, why] : cases) {
    { std::ofstream(path("q.npy"), std::ios::binary) << bytes; }
    const CliResult r = run(qkv_arguments());
    expect_failure(r, 1, path("q.npy"));
    EXPECT_NE(r.err.find(why), std::string::npos) << r.err;
  }
}

TEST_F(Cli, WeightsLargerThanMemoryExit3BeforeAnythingIsAllocated) {
  // Lq = Lk = 2^19: the weights would be 2^38 floats (1 TiB); the inputs are 2 MiB each.
  const std::int64_t n = std::int64_t{1} << 19;
  for (const char* name : {"q.npy", "k.npy", "v.npy"})
    write_f32(name, {1, 1, n, 1}, std::vector<float>(static_cast<std::size_t>(n), 0.5f));
  const auto start = std::chrono::steady_clock::now();
  const CliResult r = run(qkv_arguments() + " --weights '" + path("w.npy") + "'");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  expect_failure(r, 3,
                 "--weights " + path("w.npy") + " [1, 1, 524288, 524288] 1099511627776 bytes");
  EXPECT_NE(r.err.find("of memory"), std::string::npos) << r.err;
  EXPECT_LT(seconds, 30.0) << "the check must come before the computation";
}

// Starts the tool with `arguments` (no shell), stdout and stderr discarded; returns its pid.
pid_t spawn_cli(const std::vector<std::string>& arguments) {
  std::vector<std::string> owned{SDPA_CLI_PATH};
  owned.insert(owned.end(), arguments.begin(), arguments.end());
  std::vector<char*> argv;
  for (std::string& a : owned) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {  // only async-signal-safe calls until exec
    const int null = ::open("/dev/null", O_WRONLY);
    ::dup2(null, 1);
    ::dup2(null, 2);
    ::execv(SDPA_CLI_PATH, argv.data());
    ::_exit(127);
  }
  return pid;
}

bool has_file_starting_with(const fs::path& directory, const std::string& prefix) {
  for (const auto& entry : fs::directory_iterator(directory))
    if (entry.path().filename().string().rfind(prefix, 0) == 0) return true;
  return false;
}

// SIGKILL at the moment the weights' temporary file appears (plus `delay`); returns whether the
// process was still running then (the kill landed during the write).
bool kill_during_write(const std::vector<std::string>& arguments, const fs::path& directory,
                       std::chrono::microseconds delay) {
  const pid_t pid = spawn_cli(arguments);
  int status = 0;
  while (::waitpid(pid, &status, WNOHANG) == 0) {
    if (has_file_starting_with(directory, "w.npy.")) {  // a temporary beside w.npy: writing
      std::this_thread::sleep_for(delay);
      const bool running = ::waitpid(pid, &status, WNOHANG) == 0;
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      return running;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  return false;
}

// The file is byte for byte `old`, or a complete .npy of `shape` (never a partial one).
::testing::AssertionResult old_or_complete(const std::string& file, const std::string& old,
                                           const Shape& shape) {
  if (read_text(file) == old) return ::testing::AssertionSuccess();
  try {
    const sdpa::npy::Array array = sdpa::npy::read(file);
    if (array.shape == shape) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << file << " has another shape";
  } catch (const sdpa::npy::IoError& e) {
    return ::testing::AssertionFailure()
           << file << " is neither the old file nor complete: " << e.what();
  }
}

TEST_F(Cli, KilledWhileWritingLeavesEachOutputOldOrComplete) {
  // Weights [1, 1, 4096, 8192]: 128 MiB to write, long enough to be caught in the act.
  write_f32("q.npy", {1, 1, 4096, 1}, std::vector<float>(4096, 0.5f));
  write_f32("k.npy", {1, 1, 8192, 1}, std::vector<float>(8192, 0.25f));
  write_f32("v.npy", {1, 1, 8192, 1}, std::vector<float>(8192, 1.0f));
  const std::vector<std::string> arguments{"run", "--q", path("q.npy"), "--k", path("k.npy"),
                                           "--v", path("v.npy"), "--out", path("out.npy"),
                                           "--weights", path("w.npy"), "--threads", "1"};
  int caught = 0;
  for (int delay_us : {0, 0, 1000, 5000, 20000}) {
    { std::ofstream(path("out.npy")) << "old out"; }
    { std::ofstream(path("w.npy")) << "old weights"; }
    caught += kill_during_write(arguments, work_, std::chrono::microseconds(delay_us));
    EXPECT_TRUE(old_or_complete(path("out.npy"), "old out", {1, 1, 4096, 1})) << delay_us;
    EXPECT_TRUE(old_or_complete(path("w.npy"), "old weights", {1, 1, 4096, 8192})) << delay_us;
  }
  EXPECT_GE(caught, 1) << "no kill landed during a write";
}

// sdpa bench --bandwidth / --decode on small sizes: the tables, the JSON, the ratios in them.
TEST_F(Cli, BenchBandwidthPrintsGigabytesPerSecond) {
  const CliResult r = run("bench --bandwidth --bandwidth-mib 16 --threads 1 --repeats 3 --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json b = nlohmann::json::parse(r.out)["bandwidth"];
  EXPECT_EQ(b["threads"], 1);
  EXPECT_EQ(b["bytes"], 16u << 20);
  EXPECT_GT(b["gbps"].get<double>(), 0.1);
  EXPECT_GE(b["best_gbps"].get<double>(), b["gbps"].get<double>());
}

TEST_F(Cli, BenchDecodeReportsKvBytesGigabytesPerSecondAndPercentOfBandwidth) {
  const CliResult r = run("bench --decode --decode-lengths 300,700 --heads 4 --heads-kv 2 --dim 16 "
                          "--repeats 3 --bandwidth-mib 16 --threads 1 --no-caches --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j["rows"].size(), 2u);
  const nlohmann::json& row = j["rows"][1];
  EXPECT_EQ(row["length"], 700);
  EXPECT_EQ(row["kv_bytes"], 2 * 2 * 700 * 16 * 4);  // K and V, Hkv = 2, D = 16, fp32
  const double gbps = row["kv_bytes"].get<double>() / row["time_ms"].get<double>() * 1e-6;
  EXPECT_NEAR(row["gbps"].get<double>(), gbps, 1e-6 * gbps);
  EXPECT_NEAR(row["percent_of_bandwidth"].get<double>(),
              100 * gbps / j["bandwidth"]["gbps"].get<double>(), 1e-6 * gbps);
  EXPECT_GT(row["speedup_vs_prefill"].get<double>(), 0.0);
  const double fastest = row["kv_bytes"].get<double>() / row["min_ms"].get<double>() * 1e-6;
  EXPECT_NEAR(row["fastest_percent_of_bandwidth"].get<double>(),
              100 * fastest / j["bandwidth"]["best_gbps"].get<double>(), 1e-6 * fastest);

  const CliResult table = run("bench --decode --decode-lengths 300 --heads 4 --heads-kv 2 --dim 16 "
                              "--repeats 1 --bandwidth-mib 16 --threads 1 --no-prefill");
  ASSERT_EQ(table.exit_code, 0) << table.err;
  EXPECT_NE(table.out.find("read bandwidth: 1 threads"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("% of read bandwidth, Lk=300 f32 tensors"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find("fastest repetitions: "), std::string::npos) << table.out;
  EXPECT_EQ(run("bench --decode --heads 6 --heads-kv 4").exit_code, 2);  // not a multiple

  // KvCache rows: bytes per token of f32 / bf16 / int8 storage (int8: + 4-byte scale per row).
  const CliResult caches = run("bench --decode --decode-lengths 300 --heads 4 --heads-kv 2 --dim 16 "
                               "--repeats 1 --bandwidth-mib 16 --threads 1 --no-prefill --json");
  ASSERT_EQ(caches.exit_code, 0) << caches.err;
  const nlohmann::json rows = nlohmann::json::parse(caches.out)["rows"];
  ASSERT_EQ(rows.size(), 4u);
  EXPECT_EQ(rows[1]["storage"], "f32 cache");
  EXPECT_EQ(rows[1]["kv_bytes"], 300 * 2 * (16 + 16) * 4);
  EXPECT_EQ(rows[2]["kv_bytes"], 300 * 2 * (16 + 16) * 2);
  EXPECT_EQ(rows[3]["storage"], "i8 cache");
  EXPECT_EQ(rows[3]["kv_bytes"], 300 * 2 * (16 + 16 + 8));
  EXPECT_EQ(rows[3]["cache_bytes"], 512 * 2 * (16 + 16 + 8));  // two pages of 256 tokens
}

// sdpa decode: generation over the paged cache; the JSON names tokens/s and the cache bytes, the
// tokens do not depend on the thread count, bad arguments exit 2.
TEST_F(Cli, DecodeGeneratesTokensAndReportsCacheBytes) {
  const std::string shape = "decode --d-model 32 --heads 4 --kv-heads 2 --head-dim 16 --sequences 2 "
                            "--prompt 5 --tokens 7 --vocab 50 --block-tokens 4 --storage i8 --json";
  const CliResult r = run(shape + " --threads 1");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["context"], 12);
  EXPECT_EQ(j["cache_bytes_per_token"], 2 * (16 + 16 + 8));
  EXPECT_EQ(j["cache_bytes_used"], 2 * 12 * 2 * (16 + 16 + 8));
  EXPECT_EQ(j["cache_pool_bytes"], 2 * 3 * 4 * 2 * (16 + 16 + 8));  // 3 pages of 4 per sequence
  EXPECT_GT(j["tokens_per_second"].get<double>(), 0.0);
  ASSERT_EQ(j["generated"].size(), 2u);
  EXPECT_EQ(j["generated"][0].size(), 7u);
  for (const auto& token : j["generated"][1]) EXPECT_LT(token.get<int>(), 50);
  const CliResult two = run(shape + " --threads 2");
  ASSERT_EQ(two.exit_code, 0) << two.err;
  EXPECT_EQ(nlohmann::json::parse(two.out)["generated"], j["generated"]);

  const CliResult text = run("decode --d-model 16 --heads 2 --kv-heads 1 --head-dim 8 --prompt 3 "
                             "--tokens 2 --storage bf16 --no-progress");
  ASSERT_EQ(text.exit_code, 0) << text.err;
  EXPECT_NE(text.out.find("tokens/s"), std::string::npos) << text.out;
  EXPECT_NE(text.out.find("bytes per token"), std::string::npos) << text.out;
  const CliResult bad = run("decode --storage f16");
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("--storage = 'f16': expected f32, bf16 or i8"), std::string::npos) << bad.err;
  EXPECT_EQ(run("decode --heads 3 --kv-heads 2").exit_code, 2);
}

}  // namespace

#endif  // SDPA_CLI_PATH
