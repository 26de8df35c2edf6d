// The borealis subcommands. Each add_* function declares its subcommand and
// flags on the parent app and returns the function that runs it once the
// command line has been parsed. Commands report user errors by throwing
// borealis::Error; main() prints them as one line and exits non-zero.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>

namespace borealis::cli {

struct Command {
  CLI::App* app = nullptr;
  std::function<void()> run;
};

Command add_version(CLI::App& parent);
Command add_doctor(CLI::App& parent);
Command add_tokenizer(CLI::App& parent);
Command add_data(CLI::App& parent);
Command add_bench(CLI::App& parent);
Command add_train(CLI::App& parent);
Command add_generate(CLI::App& parent);
Command add_serve(CLI::App& parent);
Command add_eval(CLI::App& parent);
Command add_plot(CLI::App& parent);
Command add_launch(CLI::App& parent);
Command add_export(CLI::App& parent);
Command add_import(CLI::App& parent);
// `data mix` and `data sample`, on the `data` app; the function runs whichever was parsed.
std::function<void()> add_data_mix(CLI::App& data);
// `data contamination`, on the `data` app.
Command add_data_contamination(CLI::App& data);

// A flag's old spelling, kept for one release after the flag was renamed so
// that every command spells one idea one way: it sets the same variable as
// `now` and is left out of --help (CLI11's group "" hides an option).
template <class T>
CLI::Option* add_old_spelling(CLI::App& app, const std::string& old, T& variable,
                              const std::string& now) {
  return app.add_option(old, variable, "Old spelling of " + now)->group("");
}

}  // namespace borealis::cli
