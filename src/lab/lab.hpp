// sdpa lab: the claims behind scaled dot-product attention, each reproduced by a measurement.
//
// Every experiment is a function of its config (seed included) that returns an Experiment: the
// measured data, tables, chart specifications and claims whose verdicts are computed from the
// data. The CLI (src/cli/cmd_lab.cpp) prints the tables and writes JSON; report.cpp renders all of
// them as one self-contained HTML page.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace sdpa::lab {

using Json = nlohmann::ordered_json;

// ---- results
// -------------------------------------------------------------------------------------

struct Series {
  std::string label;
  std::vector<double> x, y;  // line charts: points (x, y); bar charts: y per category, x unused
  bool dashed = false;       // drawn dashed (theory curves)
};

struct Chart {
  std::string title, x_label, y_label;
  bool bar = false;  // bar chart over `categories`; otherwise a line chart over numeric x
  bool log_x = false, log_y = false;
  std::vector<std::string> categories;
  std::vector<Series> series;
};

struct Table {
  std::string title;
  std::vector<std::string> columns;
  std::vector<std::vector<std::string>> rows;
};

/// A statement from the literature and whether this run's measurements support it.
struct Claim {
  std::string statement;
  bool supported = false;
  std::string evidence;  // the numbers the verdict was computed from
};

struct Experiment {
  std::string name;   // the subcommand: "variance", ...
  std::string title;  // a heading
  std::string setup;  // one paragraph: what was measured, how
  Json parameters;    // the config, as run
  Json data;          // every measured number
  std::vector<Table> tables;
  std::vector<Chart> charts;
  std::vector<Claim> claims;
  double seconds = 0;  // wall time of the run (not deterministic, unlike everything else)
};

Json to_json(const Experiment& experiment);
/// The tables and claims as plain text (what a subcommand prints).
std::string to_text(const Experiment& experiment);

/// Called during long experiments with the fraction done and a short status line.
using Progress = std::function<void(double fraction, const std::string& status)>;

// ---- experiments -----------------------------------------------------------------------------

struct VarianceConfig {
  std::uint64_t seed = 1;
  std::int64_t samples = 10000;  // (q, k) pairs per d_k
  std::vector<std::int64_t> dims{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
};
/// Var(q·k) for q, k ~ N(0, I_dk): measured vs d_k, and after scaling by 1/sqrt(d_k).
Experiment run_variance(const VarianceConfig& config);

struct SaturationConfig {
  std::uint64_t seed = 1;
  double x_max = 10, x_step = 0.25;                  // softmax([x, 0, 0, 0]) for x in [0, x_max]
  std::int64_t keys = 256, queries = 64, heads = 4;  // the kernel's entropy telemetry part
  std::vector<std::int64_t> dims{4, 16, 64, 256, 1024};
  int threads = 0;
};
/// Softmax saturation: max weight, entropy and Jacobian norm of softmax([x,0,0,0]); and the fused
/// kernel's per-row entropy (Outputs::entropy) of random attention, scaled vs unscaled, vs d_k.
Experiment run_saturation(const SaturationConfig& config);

struct TemperatureConfig {
  std::uint64_t seed = 1;
  std::int64_t dim = 64, length = 128, heads = 4;
  int threads = 0;
};
/// Temperature τ (scale = 1/τ) swept over τ/sqrt(d) in 2^[-3, 3]: entropy, max weight, gradient
/// norm.
Experiment run_temperature(const TemperatureConfig& config);

struct GradientsConfig {
  std::uint64_t seed = 1;
  std::int64_t length = 64, heads = 4;
  std::vector<std::int64_t> dims{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};
  int threads = 0;
};
/// Gradient norms through attention (to Q, K and V), scaled vs unscaled, vs d_k.
Experiment run_gradients(const GradientsConfig& config);

/// The synthetic task and the training loop shared by ablation and additive.
struct TrainConfig {
  std::uint64_t seed = 1;
  std::int64_t pairs = 16;       // key–value pairs per sequence
  std::int64_t vocabulary = 64;  // distinct keys, and distinct values
  std::int64_t d_model = 64, heads = 4, d_k = 64;
  std::int64_t batch = 64, steps = 300, eval_every = 10, eval_size = 512;
  std::string optimizer = "adam";  // adam | sgd
  double learning_rate = 0;        // 0 = the optimizer's default (adam 3e-3, sgd 0.3)
  int threads = 1;                 // attention threads (the problems are tiny)
};

struct AblationConfig {
  TrainConfig train;
};
Experiment run_ablation(const AblationConfig& config, const Progress& progress = {});

struct AdditiveConfig {
  TrainConfig train;
  std::int64_t bench_length = 256, bench_dim = 64;  // the attention-only timing
};
/// Additive (Bahdanau) attention vs scaled and unscaled dot-product attention on the same task.
/// `ablation`, when given, is a finished ablation run of the same TrainConfig whose dot-product
/// curves are reused instead of training them again.
Experiment run_additive(const AdditiveConfig& config, const Progress& progress = {},
                        const Experiment* ablation = nullptr);

// ---- the report ---------------------------------------------------------------------------------

/// Where Chart.js is read from unless --chartjs says otherwise (Debian package libjs-chart.js).
inline constexpr const char* kDefaultChartJs = "/usr/share/javascript/chart.js/chart.min.js";

/// Reads Chart.js from `path`; a missing or unreadable file is an sdpa::npy::IoError saying which
/// package provides it.
std::string read_chart_js(const std::string& path);

/// One self-contained HTML page (Chart.js inlined, no network) with every experiment's claims,
/// charts and tables.
std::string render_report(const std::vector<Experiment>& experiments, const std::string& chart_js,
                          const Json& run_info);

}  // namespace sdpa::lab
