// sdpa run: attention on .npy files.
//
//   sdpa run --q q.npy --k k.npy --v v.npy --out o.npy [options]
//
// Flow: parse the flag values → read every input (q, k, v kept in bf16 / f16 when all three share
// that dtype, otherwise converted to f32) → validate shapes → allocate
// the outputs → forward (--repeat times, median time) → write the outputs → print a summary.
// Outputs are written only after every computation succeeded, each atomically (npy::write), so a
// failing run leaves no output file behind and an existing one untouched.
#include <charconv>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "cli/commands.hpp"
#include "cli/common.hpp"
#include "core/errors.hpp"
#include "core/problem.hpp"
#include "io/npy.hpp"

namespace sdpa::cli {
namespace {

// ---- command-line values ----------------------------------------------------------------------

struct RunArgs {
  std::string q, k, v, out;                            // required paths
  std::string mask, bias, key_lengths, query_lengths;  // optional input paths ("" = not given)
  std::string sinks;                                   // optional [Hq] attention sinks
  std::string lse, weights, entropy;                   // optional output paths
  std::string causal = "none";
  std::string window;  // "L,R"
  std::string isa = "auto";
  double scale = 0;
  CLI::Option* scale_option = nullptr;  // scale was given iff this option's count() > 0
  double softcap = 0;                   // 0 = off
  int threads = 0;
  int repeat = 1;
  bool json = false;
  bool u2_as_bf16 = false;
  std::string dtype = "auto";      // --dtype bf16: read '<u2' as bf16
  std::string out_dtype = "input";  // --out-dtype f32: out in f32 for bf16 / f16 inputs
};

// Parses one side of --window: an integer >= -1.
std::int64_t parse_window_side(std::string_view text, const std::string& whole) {
  std::int64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || error != std::errc() || end != text.data() + text.size() || value < -1)
    fail("--window = '", whole, "': expected L,R with integers >= -1 (-1 = unbounded)");
  return value;
}

Window parse_window(const std::string& text) {
  const std::size_t comma = text.find(',');
  if (comma == std::string::npos)
    fail("--window = '", text, "': expected L,R with integers >= -1 (-1 = unbounded)");
  const std::string_view view(text);
  return Window{parse_window_side(view.substr(0, comma), text),
                parse_window_side(view.substr(comma + 1), text)};
}

// Two outputs on one path would silently overwrite each other ("o.npy" and "./o.npy" included).
void check_distinct_outputs(const RunArgs& args) {
  const auto normal = [](const std::string& path) {
    return std::filesystem::absolute(path).lexically_normal().string();
  };
  std::set<std::string> seen{normal(args.out)};
  for (const std::string* path : {&args.lse, &args.weights, &args.entropy})
    if (!path->empty() && !seen.insert(normal(*path)).second)
      fail("output path '", *path,
           "' is given twice (--out, --lse, --weights and --entropy must differ)");
}

// Everything in Options that does not need the input arrays.
Options scalar_options(const RunArgs& args) {
  Options options;
  options.causal = parse_causal(args.causal);
  options.isa = parse_isa(args.isa);
  options.threads = args.threads;
  if (!args.window.empty()) options.window = parse_window(args.window);
  if (args.scale_option->count() > 0) options.scale = static_cast<float>(args.scale);
  options.softcap = static_cast<float>(args.softcap);
  return options;
}

// ---- inputs -----------------------------------------------------------------------------------

// The arrays the tensors view: they must outlive the forward calls.
struct Inputs {
  npy::Array q, k, v;              // f32, or all three bf16 / all three f16
  std::optional<npy::Array> mask;  // bool
  std::optional<npy::Array> bias;  // f32
  std::optional<npy::Array> sinks;  // f32 [Hq]
  std::vector<std::int32_t> key_lengths, query_lengths;
};

void check_rank_at_most_4(const npy::Array& array, const char* flag, const std::string& path) {
  if (array.shape.size() > 4)
    fail(flag, " ", path, ": rank ", array.shape.size(), ": expected at most 4 ([B, H, L, D])");
}

// Reads a floating-point array (f32, f64, f16 or bf16) as stored.
npy::Array read_float(const std::string& path, const char* flag,
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

npy::Array as_f32(npy::Array array) {
  if (array.dtype == DType::f32) return array;
  return npy::from_f32(array.shape, npy::to_f32(array).data());
}

// Reads a floating-point array and converts it to f32.
npy::Array read_f32(const std::string& path, const char* flag,
                    const npy::ReadOptions& read_options) {
  return as_f32(read_float(path, flag, read_options));
}

bool is_16bit(DType dtype) { return dtype == DType::bf16 || dtype == DType::f16; }

npy::Array read_mask(const std::string& path) {
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

// Per-batch lengths: a 1-d integer array (i32 or i64), converted to int32.
std::vector<std::int32_t> read_lengths(const std::string& path, const char* flag) {
  const npy::Array array = npy::read(path);
  if (array.shape.size() != 1)
    fail(flag, " ", path, ": rank ", array.shape.size(), ": expected 1 ([B])");
  if (array.dtype == DType::i32) return narrow_lengths<std::int32_t>(array, flag, path);
  if (array.dtype == DType::i64) return narrow_lengths<std::int64_t>(array, flag, path);
  fail(flag, " ", path, ": dtype ", dtype_name(array.dtype), ": expected i32 or i64");
}

Inputs read_inputs(const RunArgs& args) {
  npy::ReadOptions read_options;
  read_options.u2_as_bf16 = args.u2_as_bf16 || args.dtype == "bf16";
  Inputs in;
  in.q = read_float(args.q, "--q", read_options);
  in.k = read_float(args.k, "--k", read_options);
  in.v = read_float(args.v, "--v", read_options);
  // bf16 / f16 run natively when q, k and v share the dtype; any other mix is computed in f32.
  if (!(is_16bit(in.q.dtype) && in.k.dtype == in.q.dtype && in.v.dtype == in.q.dtype)) {
    in.q = as_f32(std::move(in.q));
    in.k = as_f32(std::move(in.k));
    in.v = as_f32(std::move(in.v));
  }
  if (!args.mask.empty()) in.mask = read_mask(args.mask);
  if (!args.bias.empty()) in.bias = read_f32(args.bias, "--bias", read_options);
  if (!args.sinks.empty()) in.sinks = read_f32(args.sinks, "--sinks", read_options);
  if (!args.key_lengths.empty()) in.key_lengths = read_lengths(args.key_lengths, "--key-lengths");
  if (!args.query_lengths.empty())
    in.query_lengths = read_lengths(args.query_lengths, "--query-lengths");
  return in;
}

void attach_inputs(Inputs& in, Options& options) {
  if (in.mask) options.mask = in.mask->tensor();
  if (in.bias) options.bias = in.bias->tensor();
  if (in.sinks) options.sinks = in.sinks->tensor();
  options.key_lengths = in.key_lengths;
  options.query_lengths = in.query_lengths;
}

// ---- library errors in command-line terms -----------------------------------------------------

// The library names its C++ arguments ("k.shape[3] ...", "options.mask.shape[0] ..."); a CLI user
// knows flags and files, so the message is prefixed with the flag and path it refers to.
std::string flag_context(const std::string& message, const RunArgs& args) {
  struct Name {
    std::string_view prefix;
    const char* flag;
    const std::string* path;
  };
  const Name names[] = {
      {"options.key_lengths", "--key-lengths", &args.key_lengths},
      {"options.query_lengths", "--query-lengths", &args.query_lengths},
      {"options.mask", "--mask", &args.mask},
      {"options.bias", "--bias", &args.bias},
      {"options.sinks", "--sinks", &args.sinks},
      {"options.softcap", "--softcap", nullptr},
      {"options.scale", "--scale", nullptr},
      {"options.window", "--window", nullptr},
      {"options.threads", "--threads", nullptr},
      {"options.isa", "--isa", nullptr},
      {"q.", "--q", &args.q},
      {"k.", "--k", &args.k},
      {"v.", "--v", &args.v},
  };
  for (const Name& name : names)
    if (std::string_view(message).starts_with(name.prefix))
      return std::string(name.flag) + (name.path ? " " + *name.path : std::string()) + ": ";
  return "";
}

template <typename Call>
auto with_flag_context(const RunArgs& args, Call&& call) {
  try {
    return call();
  } catch (const Error& e) {
    throw Error(flag_context(e.what(), args) + e.what());
  }
}

// ---- outputs and the computation --------------------------------------------------------------

struct Results {
  npy::Array out;                     // [B, Hq, Lq, Dv]: the inputs' dtype, or f32 (--out-dtype)
  std::optional<npy::Array> lse;      // f32 [B, Hq, Lq]
  std::optional<npy::Array> weights;  // f32 [B, Hq, Lq, Lk]
  std::optional<npy::Array> entropy;  // f32 [B, Hq, Lq]
};

npy::Array zeros(std::vector<std::int64_t> shape, DType dtype) {
  npy::Array array;
  array.dtype = dtype;
  array.shape = std::move(shape);
  array.data.resize(static_cast<std::size_t>(array.numel()) * dtype_size(dtype));
  return array;
}

npy::Array zeros_f32(std::vector<std::int64_t> shape) {
  return zeros(std::move(shape), DType::f32);
}

Results allocate_results(const Problem& p, const RunArgs& args) {
  std::vector<PlannedOutput> planned{{"--out " + args.out, {p.batch, p.heads_q, p.len_q, p.dim_v}}};
  if (!args.lse.empty()) planned.push_back({"--lse " + args.lse, {p.batch, p.heads_q, p.len_q}});
  if (!args.weights.empty())
    planned.push_back({"--weights " + args.weights, {p.batch, p.heads_q, p.len_q, p.len_k}});
  if (!args.entropy.empty()) planned.push_back({"--entropy " + args.entropy, {p.batch, p.heads_q, p.len_q}});
  check_outputs_fit(planned);
  Results r;
  const DType out_dtype = args.out_dtype == "f32" ? DType::f32 : p.dtype;
  r.out = zeros({p.batch, p.heads_q, p.len_q, p.dim_v}, out_dtype);
  if (!args.lse.empty()) r.lse = zeros_f32({p.batch, p.heads_q, p.len_q});
  if (!args.weights.empty()) r.weights = zeros_f32({p.batch, p.heads_q, p.len_q, p.len_k});
  if (!args.entropy.empty()) r.entropy = zeros_f32({p.batch, p.heads_q, p.len_q});
  return r;
}

Outputs output_views(Results& r) {
  Outputs outputs;
  outputs.out = r.out.tensor();
  if (r.lse) outputs.lse = r.lse->tensor();
  if (r.weights) outputs.weights = r.weights->tensor();
  if (r.entropy) outputs.entropy = r.entropy->tensor();
  return outputs;
}

struct Timing {
  RunInfo info;
  std::vector<double> times_ms;  // one per repeat
};

Timing run_forward(Inputs& in, const Options& options, Results& results, int repeat) {
  const Tensor q = in.q.tensor(), k = in.k.tensor(), v = in.v.tensor();
  const Outputs outputs = output_views(results);
  Timing timing;
  for (int r = 0; r < repeat; ++r)
    timing.times_ms.push_back(time_ms([&] { timing.info = forward(q, k, v, options, outputs); }));
  return timing;
}

void write_results(const Results& results, const RunArgs& args) {
  npy::write(args.out, results.out);
  if (results.lse) npy::write(args.lse, *results.lse);
  if (results.weights) npy::write(args.weights, *results.weights);
  if (results.entropy) npy::write(args.entropy, *results.entropy);
}

// ---- the summary ------------------------------------------------------------------------------

// ordered_json keeps the keys in the order written here, for the text summary and for readers.
nlohmann::ordered_json summary_json(const Problem& p, const RunArgs& args, const Timing& timing) {
  using json = nlohmann::ordered_json;
  auto path_or_null = [](const std::string& path) { return path.empty() ? json() : json(path); };
  const double ms = median(timing.times_ms);
  json outputs = {{"out", args.out}};
  if (!args.lse.empty()) outputs["lse"] = args.lse;
  if (!args.weights.empty()) outputs["weights"] = args.weights;
  if (!args.entropy.empty()) outputs["entropy"] = args.entropy;
  return json{
      {"command", "run"},
      {"shapes",
       {{"B", p.batch},
        {"Hq", p.heads_q},
        {"Hkv", p.heads_kv},
        {"Lq", p.len_q},
        {"Lk", p.len_k},
        {"Dk", p.dim_k},
        {"Dv", p.dim_v}}},
      {"options",
       {{"causal", causal_name(p.causal)},
        {"scale", p.scale},
        {"window", args.window.empty() ? json() : json{p.window_left, p.window_right}},
        {"mask", path_or_null(args.mask)},
        {"bias", path_or_null(args.bias)},
        {"key_lengths", path_or_null(args.key_lengths)},
        {"query_lengths", path_or_null(args.query_lengths)},
        {"softcap", p.softcap},
        {"sinks", path_or_null(args.sinks)}}},
      {"dtype", dtype_name(p.dtype)},
      {"out_dtype", dtype_name(args.out_dtype == "f32" ? DType::f32 : p.dtype)},
      {"isa", isa_name(timing.info.isa)},
      {"threads", timing.info.threads},
      {"repeat", args.repeat},
      {"time_ms", ms},
      {"times_ms", timing.times_ms},
      {"flops", timing.info.flops},
      {"gflops", gflops_per_second(timing.info.flops, ms)},
      {"workspace_bytes", timing.info.workspace_bytes},
      {"outputs", outputs},
  };
}

void print_human(const nlohmann::ordered_json& s) {
  const auto& sh = s["shapes"];
  const auto& opt = s["options"];
  std::cout << "sdpa run\n"
            << "  shapes   B=" << sh["B"] << " Hq=" << sh["Hq"] << " Hkv=" << sh["Hkv"]
            << " Lq=" << sh["Lq"] << " Lk=" << sh["Lk"] << " Dk=" << sh["Dk"] << " Dv=" << sh["Dv"]
            << "\n  options  causal=" << opt["causal"].get<std::string>()
            << " scale=" << opt["scale"]
            << " window=" << (opt["window"].is_null() ? "none" : opt["window"].dump());
  if (opt["softcap"].get<double>() != 0) std::cout << " softcap=" << opt["softcap"];
  for (const char* input : {"mask", "bias", "key_lengths", "query_lengths", "sinks"})
    if (!opt[input].is_null()) std::cout << " " << input << "=" << opt[input].get<std::string>();
  std::cout << "\n  isa      " << s["isa"].get<std::string>() << ", threads " << s["threads"]
            << "\n  time     " << s["time_ms"].get<double>() << " ms (median of " << s["repeat"]
            << ")\n  speed    " << s["gflops"].get<double>() << " GFLOP/s ("
            << s["flops"].get<double>() / 1e9 << " GFLOP)\n  outputs ";
  for (const auto& [name, path] : s["outputs"].items())
    std::cout << " " << name << "=" << path.get<std::string>();
  std::cout << std::endl;
}

void print_summary(const Problem& p, const RunArgs& args, const Timing& timing) {
  const nlohmann::ordered_json s = summary_json(p, args, timing);
  if (args.json)  // paths need not be UTF-8: replace bad bytes rather than throw
    std::cout << s.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace)
              << std::endl;
  else
    print_human(s);
}

void run(const RunArgs& args) {
  Options options = with_flag_context(args, [&] { return scalar_options(args); });
  check_distinct_outputs(args);
  Inputs in = read_inputs(args);
  attach_inputs(in, options);
  const Problem problem = with_flag_context(
      args, [&] { return validate_inputs(in.q.tensor(), in.k.tensor(), in.v.tensor(), options); });
  Results results = allocate_results(problem, args);
  const Timing timing =
      with_flag_context(args, [&] { return run_forward(in, options, results, args.repeat); });
  write_results(results, args);
  print_summary(problem, args, timing);
}

void add_options(CLI::App& cmd, RunArgs& a) {
  cmd.add_option("--q", a.q, "queries .npy [B, Hq, Lq, Dk] (f32, f64, f16, bf16)")->required();
  cmd.add_option("--k", a.k, "keys .npy [B, Hkv, Lk, Dk]")->required();
  cmd.add_option("--v", a.v, "values .npy [B, Hkv, Lk, Dv]")->required();
  cmd.add_option("--out", a.out,
                 "output .npy [B, Hq, Lq, Dv]: f32, or bf16 / f16 like q, k, v (see --out-dtype)")
      ->required();
  cmd.add_option("--causal", a.causal, "causal alignment")
      ->check(CLI::IsMember(causal_choices))
      ->capture_default_str();
  cmd.add_option("--mask", a.mask, "bool .npy, true = attend; broadcast to [B, Hq, Lq, Lk]");
  cmd.add_option("--bias", a.bias, "float .npy added to the scaled logits; same broadcast");
  cmd.add_option("--key-lengths", a.key_lengths, "i32/i64 .npy [B]: keys >= length are padding");
  cmd.add_option("--query-lengths", a.query_lengths,
                 "i32/i64 .npy [B]: rows >= length are padding");
  cmd.add_option("--window", a.window, "sliding window L,R around the diagonal (-1 = unbounded)");
  a.scale_option = cmd.add_option("--scale", a.scale, "logit scale (default 1/sqrt(Dk))");
  cmd.add_option("--softcap", a.softcap,
                 "logit softcap C: scores C*tanh(scale*q.k/C) before bias and masks (0 = off)");
  cmd.add_option("--sinks", a.sinks,
                 "float .npy [Hq]: per-head attention sink logits (-inf = none for that head)");
  cmd.add_option("--lse", a.lse, "also write the log-sum-exp per row, f32 [B, Hq, Lq]");
  cmd.add_option("--weights", a.weights, "also write the softmax weights, f32 [B, Hq, Lq, Lk]");
  cmd.add_option("--entropy", a.entropy,
                 "also write each row's attention entropy (nats), f32 [B, Hq, Lq]");
  cmd.add_option("--threads", a.threads, "threads (0 = all)")->capture_default_str();
  cmd.add_option("--repeat", a.repeat, "run N times, report the median time")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  cmd.add_option("--isa", a.isa, "kernel instruction set")
      ->check(CLI::IsMember(isa_choices))
      ->capture_default_str();
  cmd.add_flag("--json", a.json, "print one JSON object instead of the text summary");
  cmd.add_flag("--u2-as-bf16", a.u2_as_bf16, "read '<u2' arrays as bfloat16 bit patterns");
  cmd.add_option("--dtype", a.dtype,
                 "bf16: read '<u2' arrays as bfloat16 bit patterns (same as --u2-as-bf16); "
                 "q, k, v of one 16-bit dtype run in it, any other mix in f32")
      ->check(CLI::IsMember({"auto", "bf16"}))
      ->capture_default_str();
  cmd.add_option("--out-dtype", a.out_dtype,
                 "input: out in the dtype of q, k, v (bf16 '<u2' / f16 '<f2' for 16-bit "
                 "inputs); f32")
      ->check(CLI::IsMember({"input", "f32"}))
      ->capture_default_str();
}

}  // namespace

void add_run_command(CLI::App& app) {
  CLI::App* cmd =
      app.add_subcommand("run", "attention on .npy files: out = softmax(QKᵀ·scale + bias)·V");
  auto args = std::make_shared<RunArgs>();  // shared with the callback, which outlives this scope
  add_options(*cmd, *args);
  cmd->callback([args] { run(*args); });
}

}  // namespace sdpa::cli
