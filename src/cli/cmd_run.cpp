// sdpa run: attention on .npy files.
//
//   sdpa run --q q.npy --k k.npy --v v.npy --out o.npy [options]
//
// Flow: parse the flag values → read every input (q, k, v kept in bf16 / f16 when all three share
// that dtype, otherwise converted to f32) → validate shapes → allocate
// the outputs → forward (--repeat times, median time) → write the outputs → print a summary.
// Outputs are written only after every computation succeeded, all or none (npy_args::
// write_all_or_nothing), so a failing run leaves no output file behind and an existing one untouched.
#include <cstdint>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "cli/attention_flags.hpp"
#include "cli/common.hpp"
#include "cli/npy_args.hpp"
#include "core/errors.hpp"
#include "core/problem.hpp"
#include "io/npy.hpp"

namespace sdpa::cli {
namespace {

using namespace npy_args;

// ---- command-line values ----------------------------------------------------------------------

struct RunArgs : AttentionFlags {
  std::string out;                    // required output path
  std::string lse, weights, entropy;  // optional output paths ("" = not given)
  int repeat = 1;
};

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
  const npy::ReadOptions read_options = cli::read_options(args);
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

// The library's argument names in command-line terms: "--k k.npy: k.shape[3] ..." rather than
// "k.shape[3] ..." (npy_args::with_flag_context).
template <typename Call>
auto in_flag_terms(const RunArgs& a, Call&& call) {
  return with_flag_context(attention_flag_names(a), std::forward<Call>(call));
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
  const double ms = median(timing.times_ms);
  json outputs = {{"out", args.out}};
  if (!args.lse.empty()) outputs["lse"] = args.lse;
  if (!args.weights.empty()) outputs["weights"] = args.weights;
  if (!args.entropy.empty()) outputs["entropy"] = args.entropy;
  return json{
      {"command", "run"},
      {"shapes", shapes_json(p)},
      {"options", options_json(p, args)},
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
  print_call_lines("run", s);
  std::cout << "\n  time     " << s["time_ms"].get<double>() << " ms (median of " << s["repeat"]
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
  add_qkv_flags(cmd, a);
  cmd.add_option("--out", a.out,
                 "output .npy [B, Hq, Lq, Dv]: f32, or bf16 / f16 like q, k, v (see --out-dtype)")
      ->required();
  add_option_flags(cmd, a, "q, k, v");
  cmd.add_option("--lse", a.lse, "also write the log-sum-exp per row, f32 [B, Hq, Lq]");
  cmd.add_option("--weights", a.weights, "also write the softmax weights, f32 [B, Hq, Lq, Lk]");
  cmd.add_option("--entropy", a.entropy,
                 "also write each row's attention entropy (nats), f32 [B, Hq, Lq]");
  cmd.add_option("--repeat", a.repeat, "run N times, report the median time")
      ->check(CLI::Range(1, 1 << 20))
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
