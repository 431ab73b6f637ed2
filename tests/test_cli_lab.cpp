// `sdpa lab` as a separate process: JSON output and its determinism for a seed, the report's
// failure modes (no Chart.js, unwritable output) with exit codes and no output file, argument
// errors. The report's rendering is tested in headless Chromium (tests/lab_report_chromium.sh).
#ifdef SDPA_CLI_PATH

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>

namespace {

namespace fs = std::filesystem;

class CliLab : public ::testing::Test {
 protected:
  struct Result {
    int exit_code = -1;
    std::string out, err;
  };

  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "sdpa_cli_lab_XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    root_ = pattern;
    fs::create_directory(root_ / "work");
  }
  void TearDown() override { fs::remove_all(root_); }

  std::string path(const std::string& name) const { return (root_ / "work" / name).string(); }
  static std::string read(const fs::path& p) {
    std::ifstream file(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
  }
  Result run(const std::string& arguments) const {
    const fs::path out = root_ / "stdout.txt", err = root_ / "stderr.txt";
    const std::string command = std::string("'") + SDPA_CLI_PATH + "' " + arguments + " >'" +
                                out.string() + "' 2>'" + err.string() + "'";
    const int status = std::system(command.c_str());
    return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, read(out), read(err)};
  }
  std::size_t files_in_work() const {
    return static_cast<std::size_t>(
        std::distance(fs::directory_iterator(root_ / "work"), fs::directory_iterator()));
  }

  fs::path root_;
};

TEST_F(CliLab, SameSeedGivesTheSameJsonAndAnotherSeedDoesNot) {
  const std::string args = "lab variance --samples 300 --no-progress --json-out ";
  ASSERT_EQ(run(args + "'" + path("a.json") + "' --seed 7").exit_code, 0);
  const Result r = run(args + "'" + path("b.json") + "' --seed 7");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(run(args + "'" + path("c.json") + "' --seed 8").exit_code, 0);
  auto a = nlohmann::json::parse(read(path("a.json"))),
       b = nlohmann::json::parse(read(path("b.json")));
  auto c = nlohmann::json::parse(read(path("c.json")));
  for (auto* j : {&a, &b, &c}) j->erase("seconds");  // wall time is the one thing that varies
  EXPECT_EQ(a, b);
  EXPECT_NE(a["data"], c["data"]);
  EXPECT_EQ(a["name"], "variance");
  EXPECT_EQ(a["claims"].size(), 2u);
  EXPECT_NE(r.out.find("Var(q·k)"), std::string::npos) << r.out;    // the table
  EXPECT_NE(r.out.find("supported]"), std::string::npos) << r.out;  // the verdicts
}

TEST_F(CliLab, AblationWritesOneLearningCurvePerVariant) {
  const Result r =
      run("lab ablation --quick --steps 20 --eval-every 10 --no-progress --json-out '" +
          path("ablation.json") + "'");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(r.err.empty()) << "no progress bar when stderr is not a terminal: " << r.err;
  const auto j = nlohmann::json::parse(read(path("ablation.json")));
  ASSERT_EQ(j["data"]["curves"].size(), 4u);
  for (const auto& curve : j["data"]["curves"]) {
    EXPECT_EQ(curve["steps"], nlohmann::json::array({0, 10, 20}));
    EXPECT_EQ(curve["accuracy"].size(), 3u);
    EXPECT_EQ(curve["entropy"].size(), 3u);
  }
  EXPECT_EQ(j["parameters"]["steps"], 20);
}

TEST_F(CliLab, ReportWithoutChartJsFailsFirstAndWritesNothing) {
  const Result r =
      run("lab report --quick --no-progress --chartjs /nonexistent/chart.min.js --out '" +
          path("report.html") + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("libjs-chart.js"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << "failed before running any experiment: " << r.out;
  EXPECT_EQ(files_in_work(), 0u);
}

TEST_F(CliLab, ReportIntoAMissingDirectoryFailsFirst) {
  const Result r =
      run("lab report --quick --no-progress --out '" + path("missing/report.html") + "'");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("missing"), std::string::npos) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

TEST_F(CliLab, BadArgumentsExitTwo) {
  EXPECT_EQ(run("lab ablation --optimizer rmsprop").exit_code, 2);
  EXPECT_EQ(run("lab ablation --steps 0 --no-progress").exit_code, 2);
  EXPECT_EQ(run("lab ablation --pairs 9 --vocabulary 8 --no-progress").exit_code, 2);
  EXPECT_EQ(run("lab variance --samples 1").exit_code, 2);
  EXPECT_EQ(run("lab").exit_code, 2);
  EXPECT_EQ(run("lab report").exit_code, 2);  // --out is required
}

}  // namespace

#endif  // SDPA_CLI_PATH
