// sdpa run: attention on .npy files.
//
//   sdpa run --q q.npy --k k.npy --v v.npy --out o.npy [options]
//
// Flow: parse the flag values → read every input (q, k, v kept in bf16 / f16 when all three share
// that dtype, otherwise converted to f32) → validate shapes → allocate
// the outputs → forward (--repeat times, median time) → write the outputs → print a summary.
// Outputs are written only after every computation succeeded, all or none (npy_args::
// write_all_or_nothing), so a failing run leaves no output file behind and an existing one untouched.
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
#include "cli/npy_args.hpp"
#include "core/errors.hpp"
#include "core/problem.hpp"
#include "io/npy.hpp"

namespace sdpa::cli {
namespace {

using namespace npy_args;

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

bool is_16bit(DType dtype) { return dtype == DType::bf16 || dtype == DType::f16; }

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

// The library's argument names in command-line terms (see npy_args::with_flag_context): "--k
// k.npy: k.shape[3] ..." rather than "k.shape[3] ...".
template <typename Call>
auto in_flag_terms(const RunArgs& a, Call&& call) {
  return with_flag_context({{"options.key_lengths", "--key-lengths", &a.key_lengths},
                            {"options.query_lengths", "--query-lengths", &a.query_lengths},
                            {"options.mask", "--mask", &a.mask},
                            {"options.bias", "--bias", &a.bias},
                            {"options.sinks", "--sinks", &a.sinks},
                            {"options.softcap", "--softcap", nullptr},
                            {"options.scale", "--scale", nullptr},
                            {"options.window", "--window", nullptr},
                            {"options.threads", "--threads", nullptr},
                            {"options.isa", "--isa", nullptr},
                            {"q.", "--q", &a.q},
                            {"k.", "--k", &a.k},
                            {"v.", "--v", &a.v}},
                           std::forward<Call>(call));
}

// ---- outputs and the computation --------------------------------------------------------------

struct Results {
  npy::Array out;                     // [B, Hq, Lq, Dv]: the inputs' dtype, or f32 (--out-dtype)
  std::optional<npy::Array> lse;      // f32 [B, Hq, Lq]
  std::optional<npy::Array> weights;  // f32 [B, Hq, Lq, Lk]
  std::optional<npy::Array> entropy;  // f32 [B, Hq, Lq]
};

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

// All outputs or none: a failure writing one (a missing directory, a full disk) leaves none.
void write_results(const Results& results, const RunArgs& args) {
  std::vector<std::pair<std::string, const npy::Array*>> outputs{{args.out, &results.out}};
  if (results.lse) outputs.emplace_back(args.lse, &*results.lse);
  if (results.weights) outputs.emplace_back(args.weights, &*results.weights);
  if (results.entropy) outputs.emplace_back(args.entropy, &*results.entropy);
  write_all_or_nothing(outputs);
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
  Options options = in_flag_terms(args, [&] { return scalar_options(args); });
  check_distinct_outputs({{"--out", &args.out},
                          {"--lse", &args.lse},
                          {"--weights", &args.weights},
                          {"--entropy", &args.entropy}});
  Inputs in = read_inputs(args);
  attach_inputs(in, options);
  const Problem problem = in_flag_terms(
      args, [&] { return validate_inputs(in.q.tensor(), in.k.tensor(), in.v.tensor(), options); });
  Results results = allocate_results(problem, args);
  const Timing timing =
      in_flag_terms(args, [&] { return run_forward(in, options, results, args.repeat); });
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
