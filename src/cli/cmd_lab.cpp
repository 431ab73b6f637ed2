// sdpa lab: reproduce the claims behind scaled dot-product attention by measurement.
//
//   sdpa lab variance|saturation|temperature|gradients|ablation|additive [--seed N] [--json-out F]
//   sdpa lab report --out report.html [--seed N] [--json-out F] [--chartjs PATH]
//
// Each experiment prints its tables and claims (with verdicts computed from the data) and, with
// --json-out, writes every number as JSON. `report` runs all of them and writes one self-contained
// HTML page. Outputs are written atomically, after the experiments finished. --quick shrinks every
// experiment (tests). A progress bar is drawn on stderr when it is a terminal (not with
// --no-progress).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <iomanip>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "cli/progress.hpp"
#include "core/errors.hpp"
#include "io/atomic_file.hpp"
#include "io/npy.hpp"
#include "lab/lab.hpp"
#include "layer/gemm.hpp"
#include "sdpa/sdpa.hpp"

namespace sdpa::cli {
namespace {

struct LabArgs {
  std::uint64_t seed = 1;
  std::string json_out;
  int threads = 0;
  bool quick = false;
  bool no_progress = false;
  // variance
  std::int64_t samples = 10000;
  // temperature / gradients
  std::int64_t dim = 64, length = 0;  // length 0 = the experiment's default
  // ablation / additive
  lab::TrainConfig train;
  std::int64_t bench_length = 256;
  // report
  std::string out, chart_js = lab::kDefaultChartJs;
};

// ---- configs from the arguments
// ------------------------------------------------------------------

lab::VarianceConfig variance_config(const LabArgs& a) {
  lab::VarianceConfig c;
  c.seed = a.seed;
  c.samples = a.quick ? 2000 : a.samples;
  if (c.samples < 2) fail("--samples = ", c.samples, ": expected >= 2");
  return c;
}

lab::SaturationConfig saturation_config(const LabArgs& a) {
  lab::SaturationConfig c;
  c.seed = a.seed;
  c.threads = a.threads;
  if (a.quick) c.queries = 16;
  return c;
}

lab::TemperatureConfig temperature_config(const LabArgs& a) {
  lab::TemperatureConfig c;
  c.seed = a.seed;
  c.threads = a.threads;
  c.dim = a.dim;
  if (a.length > 0) c.length = a.length;
  if (c.dim < 1) fail("--dim = ", c.dim, ": expected >= 1");
  return c;
}

lab::GradientsConfig gradients_config(const LabArgs& a) {
  lab::GradientsConfig c;
  c.seed = a.seed;
  c.threads = a.threads;
  if (a.length > 0) c.length = a.length;
  return c;
}

lab::TrainConfig train_config(const LabArgs& a) {
  lab::TrainConfig c = a.train;
  c.seed = a.seed;
  if (a.quick) c.steps = std::min<std::int64_t>(c.steps, 60), c.eval_size = 128;
  return c;
}

lab::AdditiveConfig additive_config(const LabArgs& a) {
  lab::AdditiveConfig c;
  c.train = train_config(a);
  c.bench_length = a.quick ? 64 : a.bench_length;
  if (c.bench_length < 1) fail("--bench-length = ", c.bench_length, ": expected >= 1");
  return c;
}

// ---- running
// ----------------------------------------------------------------------------------------

void write_json(const std::string& path, const lab::Json& json) {
  if (path.empty()) return;
  const std::string text = json.dump(2) + "\n";
  io::write_file_atomically(path, {text});
}

/// Fails before hours of work when `path`'s directory cannot take the output file.
void check_output_directory(const std::string& path, const char* option) {
  if (path.empty()) return;
  const std::size_t slash = path.find_last_of('/');
  const std::string directory =
      slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
  if (::access(directory.c_str(), W_OK | X_OK) != 0)
    throw npy::IoError(path + ": cannot write " + option + " here (directory '" + directory +
                       "' is missing or not writable)");
}

// The lab's matrices are small: one OpenBLAS thread is faster and makes every run of a seed
// compute the same sums in the same order on any machine.
void prepare() { layer::set_blas_threads(1); }

void run_one(const LabArgs& args, const std::string& name) {
  check_output_directory(args.json_out, "--json-out");
  prepare();
  ProgressBar bar(!args.no_progress);
  lab::Experiment e;
  if (name == "variance")
    e = lab::run_variance(variance_config(args));
  else if (name == "saturation")
    e = lab::run_saturation(saturation_config(args));
  else if (name == "temperature")
    e = lab::run_temperature(temperature_config(args));
  else if (name == "gradients")
    e = lab::run_gradients(gradients_config(args));
  else if (name == "ablation")
    e = lab::run_ablation({train_config(args)}, bar.callback());
  else if (name == "additive")
    e = lab::run_additive(additive_config(args), bar.callback());
  bar.finish();
  std::cout << lab::to_text(e) << "(" << std::fixed << std::setprecision(1) << e.seconds << " s)\n";
  write_json(args.json_out, lab::to_json(e));
}

void run_report(const LabArgs& args) {
  check_output_directory(args.out, "--out");
  check_output_directory(args.json_out, "--json-out");
  const std::string chart_js = lab::read_chart_js(args.chart_js);  // fail before the work
  prepare();
  const auto start = std::chrono::steady_clock::now();
  ProgressBar bar(!args.no_progress);
  // Weights of each experiment in the overall bar (roughly their share of the time on defaults).
  std::vector<lab::Experiment> experiments;
  auto step = [&](double done, const std::string& what) {
    if (auto p = bar.callback()) p(done, what);
  };
  auto share = [&](double begin, double width) -> lab::Progress {
    auto p = bar.callback();
    if (!p) return {};
    return [p, begin, width](double f, const std::string& s) { p(begin + width * f, s); };
  };
  step(0.00, "variance");
  experiments.push_back(lab::run_variance(variance_config(args)));
  step(0.03, "saturation");
  experiments.push_back(lab::run_saturation(saturation_config(args)));
  step(0.05, "temperature");
  experiments.push_back(lab::run_temperature(temperature_config(args)));
  step(0.07, "gradients");
  experiments.push_back(lab::run_gradients(gradients_config(args)));
  experiments.push_back(lab::run_ablation({train_config(args)}, share(0.10, 0.60)));
  const lab::Experiment ablation = experiments.back();
  experiments.push_back(lab::run_additive(additive_config(args), share(0.70, 0.30), &ablation));
  bar.finish();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  const lab::Json run_info = {{"version", sdpa::version()},
                              {"seed", args.seed},
                              {"mode", args.quick ? "quick (reduced sizes)" : "defaults"},
                              {"seconds", seconds},
                              {"threads", args.threads}};
  const std::string html = lab::render_report(experiments, chart_js, run_info);
  lab::Json all = {{"run", run_info}, {"experiments", lab::Json::array()}};
  std::size_t supported = 0, claims = 0;
  for (const lab::Experiment& e : experiments) {
    std::cout << lab::to_text(e) << "(" << std::fixed << std::setprecision(1) << e.seconds
              << " s)\n\n";
    all["experiments"].push_back(lab::to_json(e));
    for (const lab::Claim& c : e.claims) supported += c.supported ? 1 : 0, ++claims;
  }
  io::write_file_atomically(args.out, {html});
  write_json(args.json_out, all);
  std::cout << supported << " of " << claims << " claims supported; wrote " << args.out << " ("
            << html.size() / 1024 << " KiB) in " << std::setprecision(1) << seconds << " s\n";
}

// ---- options
// --------------------------------------------------------------------------------------

void add_common(CLI::App& cmd, LabArgs& a) {
  cmd.add_option("--seed", a.seed, "random seed (the same seed gives the same numbers)")
      ->capture_default_str();
  cmd.add_option("--json-out", a.json_out, "write every number as JSON to this file");
  cmd.add_option("--threads", a.threads,
                 "attention threads for the measurement experiments (0 = all)")
      ->capture_default_str();
  cmd.add_flag("--quick", a.quick, "reduced sizes (seconds; for tests)");
  cmd.add_flag("--no-progress", a.no_progress, "no progress bar on stderr");
}

void add_training(CLI::App& cmd, LabArgs& a) {
  lab::TrainConfig& t = a.train;
  cmd.add_option("--steps", t.steps, "training steps per variant")->capture_default_str();
  cmd.add_option("--batch", t.batch, "sequences per step")->capture_default_str();
  cmd.add_option("--pairs", t.pairs, "key-value items per sequence")->capture_default_str();
  cmd.add_option("--vocabulary", t.vocabulary, "distinct key and value symbols")
      ->capture_default_str();
  cmd.add_option("--d-model", t.d_model, "model width")->capture_default_str();
  cmd.add_option("--heads", t.heads, "attention heads")->capture_default_str();
  cmd.add_option("--d-k", t.d_k, "query/key width per head")->capture_default_str();
  cmd.add_option("--optimizer", t.optimizer, "adam or sgd")
      ->check(CLI::IsMember({"adam", "sgd"}))
      ->capture_default_str();
  cmd.add_option("--lr", t.learning_rate, "learning rate (default: adam 3e-3, sgd 0.3)");
  cmd.add_option("--eval-every", t.eval_every, "steps between evaluations")->capture_default_str();
  cmd.add_option("--eval-size", t.eval_size, "held-out sequences")->capture_default_str();
}

}  // namespace

void add_lab_command(CLI::App& app) {
  CLI::App* lab =
      app.add_subcommand("lab", "reproduce the theory of scaled attention by measurement");
  lab->require_subcommand(1);
  auto args = std::make_shared<LabArgs>();  // shared with the callbacks, which outlive this scope

  struct Entry {
    const char* name;
    const char* help;
  };
  const Entry entries[] = {
      {"variance", "Var(q·k) vs d_k, unscaled and scaled by 1/sqrt(d_k)"},
      {"saturation", "softmax([x,0,0,0]) saturation and the kernel's entropy telemetry vs d_k"},
      {"temperature", "entropy, max weight and gradient vs temperature τ"},
      {"gradients", "gradient norms through attention, scaled vs unscaled, vs d_k"},
      {"ablation", "train MHA + readout on key-value retrieval: scaled / unscaled / learnable τ"},
      {"additive", "additive (Bahdanau) vs dot-product attention: accuracy, parameters, time"}};
  for (const Entry& entry : entries) {
    CLI::App* cmd = lab->add_subcommand(entry.name, entry.help);
    add_common(*cmd, *args);
    const std::string name = entry.name;
    if (name == "variance")
      cmd->add_option("--samples", args->samples, "(q, k) pairs per d_k")->capture_default_str();
    if (name == "temperature") cmd->add_option("--dim", args->dim, "d_k")->capture_default_str();
    if (name == "temperature" || name == "gradients")
      cmd->add_option("--length", args->length, "Lq = Lk (default: 128 temperature, 64 gradients)");
    if (name == "ablation" || name == "additive") add_training(*cmd, *args);
    if (name == "additive")
      cmd->add_option("--bench-length", args->bench_length, "sequence length of the layer timing")
          ->capture_default_str();
    cmd->callback([args, name] { run_one(*args, name); });
  }

  CLI::App* report = lab->add_subcommand("report", "run every experiment and write one HTML page");
  add_common(*report, *args);
  report->add_option("--out", args->out, "the HTML file to write")->required();
  report->add_option("--chartjs", args->chart_js, "Chart.js to inline (Debian: libjs-chart.js)")
      ->capture_default_str();
  report->callback([args] { run_report(*args); });
}

}  // namespace sdpa::cli
