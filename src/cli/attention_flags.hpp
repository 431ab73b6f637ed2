// The flags `sdpa run` and `sdpa grad` share: the attention call's inputs and options, their help
// texts, their parsing into sdpa::Options, their names in library errors, and their part of the
// JSON summary. Each command adds its own outputs (and `sdpa grad` its dout and forward results).
#pragma once

#include <CLI/CLI.hpp>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/common.hpp"
#include "cli/npy_args.hpp"
#include "core/problem.hpp"
#include "io/npy.hpp"

namespace sdpa::cli {

struct AttentionFlags {
  std::string q, k, v;                                 // required paths
  std::string mask, bias, key_lengths, query_lengths;  // optional input paths ("" = not given)
  std::string sinks;                                   // optional [Hq] attention sinks
  std::string causal = "none";
  std::string window;  // "L,R"
  std::string isa = "auto";
  double scale = 0;
  CLI::Option* scale_option = nullptr;  // scale was given iff this option's count() > 0
  double softcap = 0;                   // 0 = off
  int threads = 0;
  bool json = false;
  bool u2_as_bf16 = false;
  std::string dtype = "auto";       // --dtype bf16: read '<u2' as bf16
  std::string out_dtype = "input";  // --out-dtype f32: results in f32 for bf16 / f16 inputs
};

/// --q, --k, --v (required).
inline void add_qkv_flags(CLI::App& cmd, AttentionFlags& a) {
  cmd.add_option("--q", a.q, "queries .npy [B, Hq, Lq, Dk] (f32, f64, f16, bf16)")->required();
  cmd.add_option("--k", a.k, "keys .npy [B, Hkv, Lk, Dk]")->required();
  cmd.add_option("--v", a.v, "values .npy [B, Hkv, Lk, Dv]")->required();
}

/// The attention options (--causal ... --threads, --isa, --json, --u2-as-bf16, --dtype);
/// `native_inputs` names the inputs that run in a 16-bit dtype they share ("q, k, v").
inline void add_option_flags(CLI::App& cmd, AttentionFlags& a, const std::string& native_inputs) {
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
  cmd.add_option("--threads", a.threads, "threads (0 = all)")->capture_default_str();
  cmd.add_option("--isa", a.isa, "kernel instruction set")
      ->check(CLI::IsMember(isa_choices))
      ->capture_default_str();
  cmd.add_flag("--json", a.json, "print one JSON object instead of the text summary");
  cmd.add_flag("--u2-as-bf16", a.u2_as_bf16, "read '<u2' arrays as bfloat16 bit patterns");
  cmd.add_option("--dtype", a.dtype,
                 "bf16: read '<u2' arrays as bfloat16 bit patterns (same as --u2-as-bf16); " +
                     native_inputs + " of one 16-bit dtype run in it, any other mix in f32")
      ->check(CLI::IsMember({"auto", "bf16"}))
      ->capture_default_str();
}

/// Everything in Options that does not need the input arrays.
inline Options scalar_options(const AttentionFlags& a) {
  Options options;
  options.causal = parse_causal(a.causal);
  options.isa = parse_isa(a.isa);
  options.threads = a.threads;
  if (!a.window.empty()) options.window = npy_args::parse_window(a.window);
  if (a.scale_option->count() > 0) options.scale = static_cast<float>(a.scale);
  options.softcap = static_cast<float>(a.softcap);
  return options;
}

inline npy::ReadOptions read_options(const AttentionFlags& a) {
  npy::ReadOptions options;
  options.u2_as_bf16 = a.u2_as_bf16 || a.dtype == "bf16";
  return options;
}

/// Which flag and file the library's argument names stand for (npy_args::with_flag_context);
/// a command appends the names of its own arguments.
inline std::vector<npy_args::FlagName> attention_flag_names(const AttentionFlags& a) {
  return {{"options.key_lengths", "--key-lengths", &a.key_lengths},
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
          {"v.", "--v", &a.v}};
}

/// The summary's "shapes" object.
inline nlohmann::ordered_json shapes_json(const Problem& p) {
  return {{"B", p.batch},  {"Hq", p.heads_q}, {"Hkv", p.heads_kv}, {"Lq", p.len_q},
          {"Lk", p.len_k}, {"Dk", p.dim_k},   {"Dv", p.dim_v}};
}

/// The summary's "options" object: values as the library used them, input files by path (null
/// when not given).
inline nlohmann::ordered_json options_json(const Problem& p, const AttentionFlags& a) {
  using json = nlohmann::ordered_json;
  const auto path_or_null = [](const std::string& path) { return path.empty() ? json() : json(path); };
  return {{"causal", causal_name(p.causal)},
          {"scale", p.scale},
          {"window", a.window.empty() ? json() : json{p.window_left, p.window_right}},
          {"mask", path_or_null(a.mask)},
          {"bias", path_or_null(a.bias)},
          {"key_lengths", path_or_null(a.key_lengths)},
          {"query_lengths", path_or_null(a.query_lengths)},
          {"softcap", p.softcap},
          {"sinks", path_or_null(a.sinks)}};
}

/// The text summary's first lines, from the JSON summary: "sdpa <command>", its shapes, its
/// options (the inputs given by file named with their paths), its ISA and threads.
inline void print_call_lines(const char* command, const nlohmann::ordered_json& s) {
  const auto& sh = s["shapes"];
  const auto& opt = s["options"];
  std::cout << "sdpa " << command << "\n"
            << "  shapes   B=" << sh["B"] << " Hq=" << sh["Hq"] << " Hkv=" << sh["Hkv"]
            << " Lq=" << sh["Lq"] << " Lk=" << sh["Lk"] << " Dk=" << sh["Dk"] << " Dv=" << sh["Dv"]
            << "\n  options  causal=" << opt["causal"].get<std::string>()
            << " scale=" << opt["scale"]
            << " window=" << (opt["window"].is_null() ? "none" : opt["window"].dump());
  if (opt["softcap"].get<double>() != 0) std::cout << " softcap=" << opt["softcap"];
  for (const char* input : {"mask", "bias", "key_lengths", "query_lengths", "sinks"})
    if (!opt[input].is_null()) std::cout << " " << input << "=" << opt[input].get<std::string>();
  std::cout << "\n  isa      " << s["isa"].get<std::string>() << ", threads " << s["threads"];
}

}  // namespace sdpa::cli
