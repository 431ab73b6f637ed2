// Tests of `sdpa grad`, run as a separate process: .npy round trips against the fp64 reference
// gradients (reference::backward<double>) with the accuracy rule of backward_support.hpp, d(scale)
// in the JSON and text summaries, and every error path with its exit code, its one-line message and
// the promise that a failing call leaves no output file (and no temporary file) behind.
#ifdef SDPA_CLI_PATH

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "backward_support.hpp"
#include "core/problem.hpp"
#include "io/npy.hpp"

namespace sdpa::test {
namespace {

namespace fs = std::filesystem;
using Shape = std::vector<std::int64_t>;

std::size_t count(const Shape& shape) {
  std::size_t n = 1;
  for (std::int64_t extent : shape) n *= static_cast<std::size_t>(extent);
  return n;
}

template <typename T>
npy::Array array_of(DType dtype, const Shape& shape, const std::vector<T>& values) {
  npy::Array array;
  array.dtype = dtype;
  array.shape = shape;
  array.data.resize(values.size() * sizeof(T));
  std::memcpy(array.data.data(), values.data(), array.data.size());
  return array;
}

Tensor view_of(std::vector<float>& values, const Shape& shape) {
  Tensor t;
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

// One gradient problem as row-major float arrays, with the options the command line is given.
struct GradProblem {
  Shape q_shape, k_shape, v_shape, out_shape, bias_shape;
  std::vector<float> q, k, v, dout, bias;  // bias empty: none
  std::vector<float> sinks;                // empty, or [Hq]
  std::vector<std::uint8_t> mask;          // empty, or [1, 1, Lq, Lk]
  std::vector<std::int32_t> key_lengths, query_lengths;
  Options
      options;  // scale, causal, window (mask, bias, lengths are attached by options_with_views)

  Options options_with_views() {
    Options o = options;
    if (!bias.empty()) o.bias = view_of(bias, bias_shape);
    if (!sinks.empty()) o.sinks = view_of(sinks, {q_shape[1]});
    if (!mask.empty())
      o.mask = Tensor::contiguous(mask.data(), DType::boolean, {1, 1, q_shape[2], k_shape[2]});
    o.key_lengths = key_lengths;
    o.query_lengths = query_lengths;
    return o;
  }
};

GradProblem random_problem(std::int64_t B, std::int64_t Hq, std::int64_t Hkv, std::int64_t Lq,
                           std::int64_t Lk, std::int64_t Dk, std::int64_t Dv, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  GradProblem p;
  p.q_shape = {B, Hq, Lq, Dk};
  p.k_shape = {B, Hkv, Lk, Dk};
  p.v_shape = {B, Hkv, Lk, Dv};
  p.out_shape = {B, Hq, Lq, Dv};
  for (auto [values, shape] : {std::pair{&p.q, &p.q_shape}, std::pair{&p.k, &p.k_shape},
                               std::pair{&p.v, &p.v_shape}, std::pair{&p.dout, &p.out_shape}}) {
    values->resize(count(*shape));
    for (float& x : *values) x = normal(rng);
  }
  return p;
}

void add_bias(GradProblem& p, const Shape& shape, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  p.bias_shape = shape;
  p.bias.resize(count(shape));
  for (float& x : p.bias) x = normal(rng);
}

// The references of `p` (with a dbias when p has a bias).
BackwardReferences references(GradProblem p) {
  std::vector<float> out(count(p.out_shape)),
      lse(count({p.q_shape[0], p.q_shape[1], p.q_shape[2]}));
  std::vector<float> dq(p.q.size()), dk(p.k.size()), dv(p.v.size()), dbias(p.bias.size());
  std::vector<float> dsinks(p.sinks.size());
  Grads grads;
  grads.dq = view_of(dq, p.q_shape);
  grads.dk = view_of(dk, p.k_shape);
  grads.dv = view_of(dv, p.v_shape);
  if (!p.bias.empty()) grads.dbias = view_of(dbias, p.bias_shape);
  if (!p.sinks.empty()) grads.dsinks = view_of(dsinks, {p.q_shape[1]});
  return BackwardReferences(validate_backward(
      view_of(p.q, p.q_shape), view_of(p.k, p.k_shape), view_of(p.v, p.v_shape),
      view_of(out, p.out_shape), view_of(p.dout, p.out_shape),
      view_of(lse, {p.q_shape[0], p.q_shape[1], p.q_shape[2]}), p.options_with_views(), grads));
}

struct CliResult {
  int exit_code = -1;
  std::string out, err;  // stdout, stderr
};

std::string read_text(const fs::path& path) {
  std::ifstream file(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
}

// Each test gets a fresh directory: `work` holds the .npy files (and nothing else, so stray
// temporary files show up), the captured stdout / stderr sit beside it.
class CliGrad : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "sdpa_cli_grad_XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    root_ = pattern;
    work_ = root_ / "work";
    fs::create_directory(work_);
  }
  void TearDown() override { fs::remove_all(root_); }

  std::string path(const std::string& name) const { return (work_ / name).string(); }
  std::string flag(const std::string& name, const std::string& file) const {
    return " --" + name + " '" + path(file) + "'";
  }

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

  void write(const std::string& name, const npy::Array& array) {
    npy::write(path(name), array);
    inputs_.insert(name);
  }
  // Writes q, k, v, dout (and the bias, mask and lengths when p has them).
  void write_problem(const GradProblem& p) {
    write("q.npy", array_of(DType::f32, p.q_shape, p.q));
    write("k.npy", array_of(DType::f32, p.k_shape, p.k));
    write("v.npy", array_of(DType::f32, p.v_shape, p.v));
    write("dout.npy", array_of(DType::f32, p.out_shape, p.dout));
    if (!p.bias.empty()) write("bias.npy", array_of(DType::f32, p.bias_shape, p.bias));
    if (!p.sinks.empty()) write("sinks.npy", array_of(DType::f32, {p.q_shape[1]}, p.sinks));
    if (!p.mask.empty())
      write("mask.npy", array_of(DType::boolean, {1, 1, p.q_shape[2], p.k_shape[2]}, p.mask));
    if (!p.key_lengths.empty())
      write("kl.npy", array_of(DType::i32, {p.q_shape[0]}, p.key_lengths));
    if (!p.query_lengths.empty())
      write("ql.npy", array_of(DType::i32, {p.q_shape[0]}, p.query_lengths));
  }
  // `sdpa grad` on the files of write_problem, gradients to dq.npy, dk.npy, dv.npy.
  std::string grad_arguments() const {
    return "grad" + flag("q", "q.npy") + flag("k", "k.npy") + flag("v", "v.npy") +
           flag("dout", "dout.npy") + flag("dq", "dq.npy") + flag("dk", "dk.npy") +
           flag("dv", "dv.npy");
  }

  std::vector<float> read_f32(const std::string& name) const {
    return npy::to_f32(npy::read(path(name)));
  }
  Shape shape_of(const std::string& name) const { return npy::read(path(name)).shape; }

  std::set<std::string> files_in_work() const {
    std::set<std::string> names;
    for (const auto& entry : fs::directory_iterator(work_)) names.insert(entry.path().filename());
    return names;
  }

  // A failed call: exit code, one line "sdpa: error: ...mentioning...", and the directory holds
  // exactly the files the test wrote (no output, no temporary file).
  void expect_failure(const CliResult& r, int exit_code, const std::string& mentioning) const {
    EXPECT_EQ(r.exit_code, exit_code) << r.err;
    EXPECT_EQ(r.err.rfind("sdpa: error: ", 0), 0u) << r.err;
    EXPECT_EQ(r.err.find('\n'), r.err.size() - 1) << "expected one line: " << r.err;
    EXPECT_NE(r.err.find(mentioning), std::string::npos)
        << "expected '" << mentioning << "' in " << r.err;
    EXPECT_EQ(files_in_work(), inputs_);
  }

  // Checks dq.npy, dk.npy, dv.npy (and db.npy when `dbias`) and the JSON's dscale against `refs`.
  void expect_gradients_match(const BackwardReferences& refs, const GradProblem& p,
                              const CliResult& r, bool dbias) const {
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(shape_of("dq.npy"), p.q_shape);
    EXPECT_EQ(shape_of("dk.npy"), p.k_shape);
    EXPECT_EQ(shape_of("dv.npy"), p.v_shape);
    EXPECT_TRUE(
        gradient_rule("dq", read_f32("dq.npy"), refs.naive32.dq, refs.ref64.dq, refs.bounds.dq));
    EXPECT_TRUE(
        gradient_rule("dk", read_f32("dk.npy"), refs.naive32.dk, refs.ref64.dk, refs.bounds.dk));
    EXPECT_TRUE(
        gradient_rule("dv", read_f32("dv.npy"), refs.naive32.dv, refs.ref64.dv, refs.bounds.dv));
    if (dbias) {
      EXPECT_EQ(shape_of("db.npy"), p.bias_shape);
      EXPECT_TRUE(gradient_rule("dbias", read_f32("db.npy"), refs.naive32.dbias, refs.ref64.dbias,
                                refs.bounds.dbias));
    }
    const auto summary = nlohmann::json::parse(r.out);
    EXPECT_TRUE(gradient_rule("dscale", {summary["dscale"].get<float>()}, {refs.naive32.dscale},
                              {refs.ref64.dscale}, {refs.bounds.dscale}));
  }

  fs::path root_, work_;
  std::set<std::string> inputs_;  // names of the files this test put in work_
};

// ---- round trips --------------------------------------------------------------------------------

TEST_F(CliGrad, RoundTripWithBiasMatchesFp64Reference) {
  GradProblem p = random_problem(2, 4, 2, 9, 13, 16, 8, 1);  // GQA, Lq != Lk, Dk != Dv
  add_bias(p, {1, 4, 9, 13}, 2);                             // broadcast over the batch
  p.options.causal = Causal::bottom_right;
  write_problem(p);
  const CliResult r = run(grad_arguments() + flag("bias", "bias.npy") + flag("dbias", "db.npy") +
                          " --causal bottom-right --json");
  expect_gradients_match(references(p), p, r, true);
  EXPECT_EQ(files_in_work(),
            (std::set<std::string>{"q.npy", "k.npy", "v.npy", "dout.npy", "bias.npy", "dq.npy",
                                   "dk.npy", "dv.npy", "db.npy"}));
}

TEST_F(CliGrad, CombinesMaskLengthsWindowAndScale) {
  GradProblem p = random_problem(2, 2, 1, 10, 14, 8, 8, 3);
  p.mask.resize(10 * 14);
  for (std::size_t n = 0; n < p.mask.size(); ++n) p.mask[n] = n % 5 != 0;
  p.key_lengths = {14, 9};
  p.query_lengths = {10, 7};
  p.options.causal = Causal::top_left;
  p.options.window = Window{4, 2};
  p.options.scale = 0.3f;
  write_problem(p);
  const CliResult r = run(grad_arguments() + flag("mask", "mask.npy") +
                          flag("key-lengths", "kl.npy") + flag("query-lengths", "ql.npy") +
                          " --causal top-left --window 4,2 --scale 0.3 --threads 2 --json");
  expect_gradients_match(references(p), p, r, false);
}

TEST_F(CliGrad, SoftcapAndSinksWithDsinksMatchFp64Reference) {
  GradProblem p = random_problem(2, 4, 2, 9, 13, 16, 8, 31);
  add_bias(p, {1, 4, 9, 13}, 32);
  p.sinks = {0.5f, 2.0f, -std::numeric_limits<float>::infinity(), -1.0f};
  p.options.softcap = 1.5f;
  p.options.scale = 1.0f;  // with N(0, 1) inputs and Dk 16, most scores pass the cap
  p.options.causal = Causal::bottom_right;
  write_problem(p);
  const CliResult r = run(grad_arguments() + flag("bias", "bias.npy") + flag("sinks", "sinks.npy") +
                          flag("dsinks", "ds.npy") + " --softcap 1.5 --scale 1 --causal bottom-right --json");
  const BackwardReferences refs = references(p);
  expect_gradients_match(refs, p, r, false);
  EXPECT_EQ(shape_of("ds.npy"), (Shape{4}));
  EXPECT_TRUE(gradient_rule("dsinks", read_f32("ds.npy"), refs.naive32.dsinks, refs.ref64.dsinks,
                            refs.bounds.dsinks));
  const auto s = nlohmann::json::parse(r.out);
  EXPECT_EQ(s["options"]["softcap"], 1.5);
  EXPECT_EQ(s["options"]["sinks"], path("sinks.npy"));
  EXPECT_EQ(s["outputs"]["dsinks"], path("ds.npy"));
}

TEST_F(CliGrad, DsinksWithoutSinksOrSinksOfWrongShapeExit2) {
  GradProblem p = random_problem(1, 2, 1, 4, 4, 4, 4, 33);
  write_problem(p);
  expect_failure(run(grad_arguments() + flag("dsinks", "ds.npy")), 2, "--sinks");
  write("sinks.npy", array_of(DType::f32, {3}, std::vector<float>{1, 2, 3}));
  expect_failure(run(grad_arguments() + flag("sinks", "sinks.npy") + flag("dsinks", "ds.npy")), 2,
                 "--sinks " + path("sinks.npy") + ": options.sinks.shape[0] = 3 does not match "
                 "q.shape[1] (Hq) = 2");
  expect_failure(run(grad_arguments() + " --softcap -2"), 2, "--softcap");
}

TEST_F(CliGrad, GivenOutAndLseGiveTheSameGradientsAsComputingThem) {
  const GradProblem p = random_problem(1, 2, 2, 17, 11, 8, 6, 4);
  write_problem(p);
  const CliResult forward =
      run("run" + flag("q", "q.npy") + flag("k", "k.npy") + flag("v", "v.npy") +
          flag("out", "out.npy") + flag("lse", "lse.npy") + " --isa scalar --threads 1");
  ASSERT_EQ(forward.exit_code, 0) << forward.err;
  const CliResult computed = run(grad_arguments() + " --isa scalar --threads 1 --json");
  ASSERT_EQ(computed.exit_code, 0) << computed.err;
  const std::vector<float> dq = read_f32("dq.npy"), dk = read_f32("dk.npy"),
                           dv = read_f32("dv.npy");
  const CliResult given = run(grad_arguments() + flag("out", "out.npy") + flag("lse", "lse.npy") +
                              " --isa scalar --threads 1 --json");
  ASSERT_EQ(given.exit_code, 0) << given.err;
  EXPECT_TRUE(bitwise_equal(dq, read_f32("dq.npy")));
  EXPECT_TRUE(bitwise_equal(dk, read_f32("dk.npy")));
  EXPECT_TRUE(bitwise_equal(dv, read_f32("dv.npy")));
  const auto first = nlohmann::json::parse(computed.out), second = nlohmann::json::parse(given.out);
  EXPECT_EQ(first["forward"], "computed");
  EXPECT_EQ(second["forward"], "given");
  EXPECT_TRUE(second["forward_ms"].is_null());
  EXPECT_EQ(first["dscale"], second["dscale"]);
}

TEST_F(CliGrad, AcceptsF64Inputs) {
  const GradProblem p = random_problem(1, 2, 1, 6, 7, 5, 4, 5);
  const auto widen = [](const std::vector<float>& v) {
    return std::vector<double>(v.begin(), v.end());
  };
  write("q.npy", array_of(DType::f64, p.q_shape, widen(p.q)));
  write("k.npy", array_of(DType::f64, p.k_shape, widen(p.k)));
  write("v.npy", array_of(DType::f64, p.v_shape, widen(p.v)));
  write("dout.npy", array_of(DType::f64, p.out_shape, widen(p.dout)));
  expect_gradients_match(references(p), p, run(grad_arguments() + " --json"), false);
}

TEST_F(CliGrad, JsonIsOneObjectWithShapesTimingDscaleAndOutputs) {
  GradProblem p = random_problem(1, 2, 2, 8, 8, 4, 4, 6);
  add_bias(p, {8, 8}, 7);
  write_problem(p);
  const CliResult r =
      run(grad_arguments() + flag("bias", "bias.npy") + flag("dbias", "db.npy") + " --json");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.find('\n'), r.out.size() - 1) << "expected one line: " << r.out;
  const auto s = nlohmann::json::parse(r.out);
  EXPECT_EQ(s["command"], "grad");
  EXPECT_EQ(s["shapes"]["Lq"], 8);
  EXPECT_EQ(s["options"]["bias"], path("bias.npy"));
  for (const char* key :
       {"isa", "threads", "forward_ms", "backward_ms", "flops", "gflops", "dscale"})
    EXPECT_TRUE(s.contains(key)) << key;
  EXPECT_TRUE(s["dscale"].is_number());
  EXPECT_EQ(s["outputs"]["dbias"], path("db.npy"));
}

TEST_F(CliGrad, TextSummaryNamesShapesSpeedAndDscale) {
  write_problem(random_problem(1, 1, 1, 5, 5, 4, 4, 8));
  const CliResult r = run(grad_arguments());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* text : {"sdpa grad", "Lq=5", "backward", "GFLOP/s", "d(scale)", "dq="})
    EXPECT_NE(r.out.find(text), std::string::npos) << text << " not in\n" << r.out;
}

// ---- errors -------------------------------------------------------------------------------------

TEST_F(CliGrad, MissingInputFileExits1AndNamesTheFile) {
  write_problem(random_problem(1, 1, 1, 4, 4, 4, 4, 9));
  fs::remove(path("dout.npy"));
  inputs_.erase("dout.npy");
  expect_failure(run(grad_arguments()), 1, "dout.npy");
}

TEST_F(CliGrad, DoutOfWrongShapeExits2AndNamesDout) {
  GradProblem p = random_problem(1, 2, 2, 4, 5, 4, 3, 10);
  write_problem(p);
  write("dout.npy", array_of(DType::f32, {1, 2, 4, 4}, std::vector<float>(32, 1.0f)));
  expect_failure(run(grad_arguments()), 2, "--dout");
}

TEST_F(CliGrad, LseOfWrongShapeExits2AndNamesLse) {
  const GradProblem p = random_problem(1, 2, 2, 4, 5, 4, 3, 11);
  write_problem(p);
  write("out.npy", array_of(DType::f32, p.out_shape, std::vector<float>(count(p.out_shape))));
  write("lse.npy", array_of(DType::f32, {1, 2, 5}, std::vector<float>(10)));
  expect_failure(run(grad_arguments() + flag("out", "out.npy") + flag("lse", "lse.npy")), 2,
                 "--lse");
}

TEST_F(CliGrad, OutWithoutLseExits2) {
  const GradProblem p = random_problem(1, 1, 1, 4, 4, 4, 4, 12);
  write_problem(p);
  write("out.npy", array_of(DType::f32, p.out_shape, std::vector<float>(count(p.out_shape))));
  expect_failure(run(grad_arguments() + flag("out", "out.npy")), 2, "--out");
}

TEST_F(CliGrad, DbiasWithoutBiasExits2) {
  write_problem(random_problem(1, 1, 1, 4, 4, 4, 4, 13));
  expect_failure(run(grad_arguments() + flag("dbias", "db.npy")), 2, "--bias");
}

TEST_F(CliGrad, SameOutputPathTwiceExits2) {
  write_problem(random_problem(1, 1, 1, 4, 4, 4, 4, 14));
  const std::string arguments = "grad" + flag("q", "q.npy") + flag("k", "k.npy") +
                                flag("v", "v.npy") + flag("dout", "dout.npy") +
                                flag("dq", "dq.npy") + flag("dk", "dk.npy") + " --dv '" +
                                (work_ / "." / "dq.npy").string() + "'";
  expect_failure(run(arguments), 2, "dq.npy");
}

TEST_F(CliGrad, MismatchedHeadDimensionExits2AndNamesK) {
  write_problem(random_problem(1, 1, 1, 4, 4, 4, 4, 15));
  write("k.npy", array_of(DType::f32, {1, 1, 4, 5}, std::vector<float>(20, 1.0f)));
  expect_failure(run(grad_arguments()), 2, "--k");
}

TEST_F(CliGrad, BadWindowCausalOrIsaExit2) {
  write_problem(random_problem(1, 1, 1, 4, 4, 4, 4, 16));
  expect_failure(run(grad_arguments() + " --window 3"), 2, "--window");
  expect_failure(run(grad_arguments() + " --causal sideways"), 2, "--causal");
  expect_failure(run(grad_arguments() + " --isa sse"), 2, "--isa");
}

TEST_F(CliGrad, MissingRequiredGradientPathExits2) {
  write_problem(random_problem(1, 1, 1, 4, 4, 4, 4, 17));
  expect_failure(run("grad" + flag("q", "q.npy") + flag("k", "k.npy") + flag("v", "v.npy") +
                     flag("dout", "dout.npy") + flag("dq", "dq.npy") + flag("dk", "dk.npy")),
                 2, "--dv");
}

TEST_F(CliGrad, UnwritableLastOutputLeavesNoOutputAtAll) {
  // dq and dk could be written, dv cannot: none of them may exist afterwards.
  write_problem(random_problem(1, 1, 1, 4, 4, 4, 4, 18));
  const std::string arguments = "grad" + flag("q", "q.npy") + flag("k", "k.npy") +
                                flag("v", "v.npy") + flag("dout", "dout.npy") +
                                flag("dq", "dq.npy") + flag("dk", "dk.npy") +
                                flag("dv", "missing_dir/dv.npy");
  expect_failure(run(arguments), 1, "missing_dir");
}

TEST_F(CliGrad, FailedCallLeavesExistingOutputsUnchanged) {
  write_problem(random_problem(1, 1, 1, 4, 4, 4, 4, 19));
  write("k.npy", array_of(DType::f32, {1, 1, 4, 5}, std::vector<float>(20, 1.0f)));  // Dk mismatch
  { std::ofstream(path("dq.npy")) << "precious"; }
  inputs_.insert("dq.npy");
  expect_failure(run(grad_arguments()), 2, "--k");
  EXPECT_EQ(read_text(path("dq.npy")), "precious");
}

TEST_F(CliGrad, HelpListsTheGradientOptions) {
  const CliResult top = run("--help");
  EXPECT_NE(top.out.find("grad"), std::string::npos) << top.out;
  const CliResult r = run("grad --help");
  EXPECT_EQ(r.exit_code, 0);
  for (const char* text :
       {"--dout", "--dq", "--dk", "--dv", "--dbias", "--dsinks", "--sinks", "--softcap", "--lse",
        "--window", "--json"})
    EXPECT_NE(r.out.find(text), std::string::npos) << text;
}

}  // namespace
}  // namespace sdpa::test

#endif  // SDPA_CLI_PATH
