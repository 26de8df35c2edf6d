// borealis: one binary, one subcommand per job. Parses the command line,
// applies the global flags, runs the chosen command, and turns every failure
// into one line on stderr with a non-zero exit status:
//   0 success, 1 error (bad input, unmet requirement, I/O), 2 usage error.
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <iterator>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/build_info.h"
#include "core/error.h"
#include "core/log.h"
#include "core/threads.h"

namespace {

constexpr int kExitError = 1;
constexpr int kExitUsage = 2;

int run(int argc, char** argv) {
  using namespace borealis;
  CLI::App app(
      "Borealis: prepare data for, pre-train, evaluate and serve language models for science.\n"
      "Run 'borealis <command> --help' for the flags of a command.",
      "borealis");
  app.set_version_flag("--version", "borealis " + build_info().version);
  app.require_subcommand(0, 1);
  app.footer("Exit status: 0 success, 1 error, 2 bad command line.");
  // The global flags may also follow the command ('borealis data prepare ...
  // --threads 4'): one --threads for every command, not one per command.
  app.fallthrough();

  std::string log_level;
  int threads = 0;
  app.add_option("--log-level", log_level,
                 "Log verbosity: trace, debug, info (default), warn, error, off; "
                 "also read from BOREALIS_LOG_LEVEL")
      ->check(
          CLI::IsMember(std::vector<std::string>(std::begin(kLogLevels), std::end(kLogLevels))));
  app.add_option("--threads", threads,
                 "CPU threads for OpenMP and BLAS (default: OMP_NUM_THREADS or all usable cores)")
      ->check(CLI::PositiveNumber);

  std::vector<cli::Command> commands;
  commands.push_back(cli::add_version(app));
  commands.push_back(cli::add_doctor(app));
  commands.push_back(cli::add_tokenizer(app));
  commands.push_back(cli::add_data(app));
  commands.push_back(cli::add_train(app));
  commands.push_back(cli::add_launch(app));
  commands.push_back(cli::add_bench(app));
  commands.push_back(cli::add_generate(app));
  commands.push_back(cli::add_serve(app));
  commands.push_back(cli::add_eval(app));
  commands.push_back(cli::add_plot(app));
  commands.push_back(cli::add_export(app));
  commands.push_back(cli::add_import(app));

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "error: %s (command line; see 'borealis --help')\n", e.what());
    return kExitUsage;
  }

  init_logging();
  if (!log_level.empty()) set_log_level(log_level);
  if (threads > 0) set_cpu_threads(threads);
  spdlog::debug("borealis {} (commit {}), {} CPU threads", build_info().version,
                build_info().git_commit, cpu_threads());

  for (const auto& command : commands) {
    if (command.app->parsed()) {
      command.run();
      return 0;
    }
  }
  std::fputs(app.help().c_str(), stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const borealis::Error& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "%s\n", e.line().c_str());
  } catch (const std::bad_alloc&) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: out of memory\n");
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: internal error: %s (please report this)\n", e.what());
  }
  return kExitError;
}
