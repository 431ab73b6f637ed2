// sdpa: the command-line tool. Registers the subcommands, runs the one chosen (or the demo when
// none is), and turns every exception into the exit-code contract of commands.hpp:
//   0 success (also --help, --version) · 1 I/O or other runtime failure · 2 bad arguments or
//   shapes · 3 not enough memory (an output or the scratch workspace would not fit).
#include <cstdlib>
#include <iostream>
#include <new>
#include <string>

#include "cli/commands.hpp"
#include "io/npy.hpp"
#include "sdpa/sdpa.hpp"

namespace {

constexpr int exit_io_error = 1;
constexpr int exit_bad_arguments = 2;
constexpr int exit_out_of_memory = 3;

// The contract promises one line on stderr, so a multi-line message is folded onto one.
int report(const std::string& message, int exit_code) {
  std::string line = message;
  for (char& c : line)
    if (c == '\n' || c == '\r') c = ' ';
  std::cerr << "sdpa: error: " << line << std::endl;
  return exit_code;
}

void register_commands(CLI::App& app) {
  app.set_version_flag("--version", sdpa::version());
  app.require_subcommand(0, 1);
  app.footer("With no subcommand, sdpa runs the demo on its defaults (sdpa demo --help).");
  sdpa::cli::add_run_command(app);
  sdpa::cli::add_grad_command(app);
  sdpa::cli::add_demo_command(app);
  sdpa::cli::add_lab_command(app);
  sdpa::cli::add_decode_command(app);
#ifdef SDPA_CLI_HAVE_BENCH
  sdpa::cli::add_bench_command(app);
#endif
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"sdpa: exact, fast scaled dot-product attention on CPU", "sdpa"};
  try {
    register_commands(app);
    app.parse(argc, argv);  // the chosen subcommand runs as a callback inside parse()
    if (app.get_subcommands().empty()) return sdpa::cli::run_default_demo();
    return EXIT_SUCCESS;
  } catch (const CLI::ParseError& e) {
    // --help and --version are "errors" with exit code 0; CLI11 prints them. Every real parse
    // error gets our one-line format and exit 2 (CLI11's own codes are 100+).
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return app.exit(e);
    return report(e.what(), exit_bad_arguments);
  } catch (const sdpa::Error& e) {
    return report(e.what(), exit_bad_arguments);
  } catch (const sdpa::npy::IoError& e) {
    return report(e.what(), exit_io_error);
  } catch (const sdpa::OutOfMemory& e) {
    return report(e.what(), exit_out_of_memory);
  } catch (const std::bad_alloc&) {
    return report("out of memory (the inputs or requested outputs are too large)", exit_out_of_memory);
  } catch (const std::exception& e) {
    return report(e.what(), exit_io_error);
  }
}
