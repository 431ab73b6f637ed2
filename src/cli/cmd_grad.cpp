// sdpa grad: gradients of attention on .npy files.
//
//   sdpa grad --q q.npy --k k.npy --v v.npy --dout dout.npy --dq dq.npy --dk dk.npy --dv dv.npy
//             [--out o.npy --lse lse.npy] [--dbias db.npy] [options of sdpa run] [--json]
//
// Flow: parse the flag values → read every input (converted to f32) → validate shapes → the
// forward, unless its out and lse are given → backward (dq, dk, dv, [dbias], d(scale)) → write the
// gradients, all or none → print a summary with d(scale).
// Same options and error rules as `sdpa run`: exit 2 for bad arguments or shapes, 1 for file
// problems, and a failed call leaves no output file.
#include <iomanip>
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

struct GradArgs : AttentionFlags {
  std::string dout;                       // required input
  std::string out, lse;                   // the forward's outputs: both or neither
  std::string dq, dk, dv, dbias, dsinks;  // outputs (dbias, dsinks optional)
};

void check_paths(const GradArgs& args) {
  if (args.out.empty() != args.lse.empty())
    fail(args.out.empty() ? "--lse" : "--out",
         " given alone: --out and --lse are the forward's outputs for these inputs; give both, or "
         "neither and sdpa grad runs the forward");
  if (!args.dbias.empty() && args.bias.empty())
    fail("--dbias ", args.dbias, ": given without --bias (there is no bias to differentiate)");
  if (!args.dsinks.empty() && args.sinks.empty())
    fail("--dsinks ", args.dsinks, ": given without --sinks (there are no sinks to differentiate)");
  check_distinct_outputs({{"--dq", &args.dq},
                          {"--dk", &args.dk},
                          {"--dv", &args.dv},
                          {"--dbias", &args.dbias},
                          {"--dsinks", &args.dsinks}});
}

// The library's argument names in command-line terms (see with_flag_context).
template <typename Call>
auto in_flag_terms(const GradArgs& a, Call&& call) {
  std::vector<FlagName> names = attention_flag_names(a);
  names.insert(names.end(), {{"grads.dbias", "--dbias", &a.dbias},
                             {"grads.dsinks", "--dsinks", &a.dsinks},
                             {"dout.", "--dout", &a.dout},
                             {"out.", "--out", &a.out},
                             {"lse.", "--lse", &a.lse}});
  return with_flag_context(names, std::forward<Call>(call));
}

// ---- inputs -----------------------------------------------------------------------------------

// The arrays the tensors view: they must outlive the calls.
struct Inputs {
  npy::Array q, k, v, dout;              // f32, or all four bf16 / all four f16
  std::optional<npy::Array> out, lse;    // when given: out f32 or the inputs' dtype, lse f32
  std::optional<npy::Array> mask, bias;  // bool, f32
  std::optional<npy::Array> sinks;       // f32 [Hq]
  std::vector<std::int32_t> key_lengths, query_lengths;
};

Inputs read_inputs(const GradArgs& args) {
  const npy::ReadOptions read_options = cli::read_options(args);
  Inputs in;
  in.q = read_float(args.q, "--q", read_options);
  in.k = read_float(args.k, "--k", read_options);
  in.v = read_float(args.v, "--v", read_options);
  in.dout = read_float(args.dout, "--dout", read_options);
  // bf16 / f16 run natively when q, k, v and dout share the dtype; any other mix in f32.
  const DType dtype = in.q.dtype;
  const bool native = (dtype == DType::bf16 || dtype == DType::f16) && in.k.dtype == dtype &&
                      in.v.dtype == dtype && in.dout.dtype == dtype;
  if (!native) {
    in.q = as_f32(std::move(in.q));
    in.k = as_f32(std::move(in.k));
    in.v = as_f32(std::move(in.v));
    in.dout = as_f32(std::move(in.dout));
  }
  if (!args.out.empty()) {
    in.out = read_float(args.out, "--out", read_options);
    if (!(native && in.out->dtype == dtype)) in.out = as_f32(std::move(*in.out));
  }
  if (!args.lse.empty()) in.lse = read_f32(args.lse, "--lse", read_options);
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

// ---- the computation --------------------------------------------------------------------------

struct Results {
  npy::Array dq, dk, dv;            // shapes of q, k, v: the inputs' dtype, or f32 (--out-dtype)
  std::optional<npy::Array> dbias;  // f32, shape of the bias
  std::optional<npy::Array> dsinks;  // f32 [Hq]
  float dscale = 0;
  RunInfo info;                      // of the backward
  std::optional<double> forward_ms;  // when the forward ran here
  double backward_ms = 0;
};

Results allocate_results(const Problem& p, const Inputs& in, const GradArgs& args) {
  Results r;
  const DType dtype = args.out_dtype == "f32" ? DType::f32 : p.dtype;
  r.dq = zeros({p.batch, p.heads_q, p.len_q, p.dim_k}, dtype);
  r.dk = zeros({p.batch, p.heads_kv, p.len_k, p.dim_k}, dtype);
  r.dv = zeros({p.batch, p.heads_kv, p.len_k, p.dim_v}, dtype);
  if (!args.dbias.empty() && in.bias) r.dbias = zeros_f32(in.bias->shape);
  if (!args.dsinks.empty() && in.sinks) r.dsinks = zeros_f32({p.heads_q});
  return r;
}

Grads grad_views(Results& r) {
  Grads grads;
  grads.dq = r.dq.tensor();
  grads.dk = r.dk.tensor();
  grads.dv = r.dv.tensor();
  if (r.dbias) grads.dbias = r.dbias->tensor();
  if (r.dsinks) grads.dsinks = r.dsinks->tensor();
  grads.dscale = &r.dscale;
  return grads;
}

// Validates the whole backward call (the forward's out and lse allocated here when not given), then
// runs the forward if needed and the backward. Nothing runs before every argument is checked.
Results compute(Inputs& in, const Problem& p, const Options& options, const GradArgs& args) {
  const bool run_forward = !in.out;
  if (run_forward) {
    in.out = zeros_f32({p.batch, p.heads_q, p.len_q, p.dim_v});
    in.lse = zeros_f32({p.batch, p.heads_q, p.len_q});
  }
  Results r = allocate_results(p, in, args);
  const Grads grads = grad_views(r);
  const Tensor q = in.q.tensor(), k = in.k.tensor(), v = in.v.tensor();
  const Tensor out = in.out->tensor(), lse = in.lse->tensor(), dout = in.dout.tensor();
  validate_backward(q, k, v, out, dout, lse, options, grads);
  if (run_forward) {
    Outputs outputs;
    outputs.out = out;
    outputs.lse = lse;
    r.forward_ms = time_ms([&] { forward(q, k, v, options, outputs); });
  }
  r.backward_ms = time_ms([&] { r.info = backward(q, k, v, out, dout, lse, options, grads); });
  return r;
}

void write_results(const Results& r, const GradArgs& args) {
  std::vector<std::pair<std::string, const npy::Array*>> outputs{
      {args.dq, &r.dq}, {args.dk, &r.dk}, {args.dv, &r.dv}};
  if (r.dbias) outputs.emplace_back(args.dbias, &*r.dbias);
  if (r.dsinks) outputs.emplace_back(args.dsinks, &*r.dsinks);
  write_all_or_nothing(outputs);
}

// ---- the summary ------------------------------------------------------------------------------

nlohmann::ordered_json summary_json(const Problem& p, const GradArgs& args, const Results& r) {
  using json = nlohmann::ordered_json;
  json outputs = {{"dq", args.dq}, {"dk", args.dk}, {"dv", args.dv}};
  if (!args.dbias.empty()) outputs["dbias"] = args.dbias;
  if (!args.dsinks.empty()) outputs["dsinks"] = args.dsinks;
  return json{
      {"command", "grad"},
      {"shapes", shapes_json(p)},
      {"options", options_json(p, args)},
      {"forward", args.out.empty() ? json("computed") : json("given")},
      {"isa", isa_name(r.info.isa)},
      {"threads", r.info.threads},
      {"forward_ms", r.forward_ms ? json(*r.forward_ms) : json()},
      {"backward_ms", r.backward_ms},
      {"flops", r.info.flops},
      {"gflops", gflops_per_second(r.info.flops, r.backward_ms)},
      {"workspace_bytes", r.info.workspace_bytes},
      {"dscale", r.dscale},
      {"outputs", outputs},
  };
}

void print_human(const nlohmann::ordered_json& s) {
  print_call_lines("grad", s);
  if (s["forward_ms"].is_null())
    std::cout << "\n  forward  given (--out, --lse)";
  else
    std::cout << "\n  forward  " << s["forward_ms"].get<double>() << " ms";
  std::cout << "\n  backward " << s["backward_ms"].get<double>() << " ms, "
            << s["gflops"].get<double>() << " GFLOP/s (" << s["flops"].get<double>() / 1e9
            << " GFLOP)"
            << "\n  d(scale) " << std::setprecision(9) << s["dscale"].get<double>()
            << std::setprecision(6) << "\n  outputs ";
  for (const auto& [name, path] : s["outputs"].items())
    std::cout << " " << name << "=" << path.get<std::string>();
  std::cout << std::endl;
}

void run(const GradArgs& args) {
  Options options = in_flag_terms(args, [&] { return scalar_options(args); });
  check_paths(args);
  Inputs in = read_inputs(args);
  attach_inputs(in, options);
  const Problem problem = in_flag_terms(
      args, [&] { return validate_inputs(in.q.tensor(), in.k.tensor(), in.v.tensor(), options); });
  const Results results = in_flag_terms(args, [&] { return compute(in, problem, options, args); });
  write_results(results, args);
  const nlohmann::ordered_json summary = summary_json(problem, args, results);
  if (args.json)  // paths need not be UTF-8: replace bad bytes rather than throw
    std::cout << summary.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace)
              << std::endl;
  else
    print_human(summary);
}

void add_options(CLI::App& cmd, GradArgs& a) {
  add_qkv_flags(cmd, a);
  cmd.add_option("--dout", a.dout, "dL/d(out) .npy [B, Hq, Lq, Dv]")->required();
  cmd.add_option("--out", a.out,
                 "the forward's out .npy [B, Hq, Lq, Dv] (with --lse; else computed)");
  cmd.add_option("--lse", a.lse, "the forward's lse .npy [B, Hq, Lq] (with --out; else computed)");
  cmd.add_option("--dq", a.dq, "output dL/dq .npy [B, Hq, Lq, Dk] (dtype: see --out-dtype)")
      ->required();
  cmd.add_option("--dk", a.dk, "output dL/dk .npy [B, Hkv, Lk, Dk]")->required();
  cmd.add_option("--dv", a.dv, "output dL/dv .npy [B, Hkv, Lk, Dv]")->required();
  cmd.add_option("--dbias", a.dbias, "output dL/d(bias) .npy, f32, the shape of --bias");
  cmd.add_option("--dsinks", a.dsinks, "output dL/d(sinks) .npy, f32 [Hq] (with --sinks)");
  add_option_flags(cmd, a, "q, k, v, dout");
  cmd.add_option("--out-dtype", a.out_dtype, "input: dq, dk, dv in the dtype of q, k, v; f32")
      ->check(CLI::IsMember({"input", "f32"}))
      ->capture_default_str();
}

}  // namespace

void add_grad_command(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand(
      "grad", "gradients of attention on .npy files: dq, dk, dv, [dbias], d(scale) from dL/d(out)");
  auto args = std::make_shared<GradArgs>();  // shared with the callback, which outlives this scope
  add_options(*cmd, *args);
  cmd->callback([args] { run(*args); });
}

}  // namespace sdpa::cli
