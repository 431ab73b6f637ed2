// The sdpa command-line tool: each subcommand registers itself on the CLI11 app.
//
// Error contract (shared by every subcommand): a callback throws sdpa::Error for bad arguments or
// shapes (main prints the one-line message to stderr and exits 2), sdpa::npy::IoError for file
// problems (exit 1), sdpa::OutOfMemory when an output or the workspace would not fit in memory
// (exit 3). Parse errors from CLI11 exit 2. Outputs are written only after the whole
// computation succeeded, each atomically (npy::write), so no partial output file ever exists.
#pragma once

#include <CLI/CLI.hpp>

namespace sdpa::cli {

void add_run_command(CLI::App& app);    // sdpa run    (src/cli/cmd_run.cpp)
void add_grad_command(CLI::App& app);   // sdpa grad   (src/cli/cmd_grad.cpp)
void add_demo_command(CLI::App& app);   // sdpa demo   (src/cli/cmd_demo.cpp); also `sdpa` alone
void add_bench_command(CLI::App& app);  // sdpa bench  (src/cli/cmd_bench.cpp)
void add_lab_command(CLI::App& app);    // sdpa lab    (src/cli/cmd_lab.cpp)
void add_decode_command(CLI::App& app); // sdpa decode (src/cli/cmd_decode.cpp)

/// Runs the demo on built-in defaults (what `sdpa` with no arguments does).
int run_default_demo();

}  // namespace sdpa::cli
