// borealis train: run (or resume) a training run from a TOML config.
#include <fmt/format.h>

#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "core/config.h"
#include "train/train_config.h"
#include "train/trainer.h"

namespace borealis::cli {

namespace {

struct TrainArgs {
  std::string config;
  std::vector<std::string> overrides;
  std::string resume = "auto";
  std::string run_dir;
  std::int64_t steps = 0;
  std::int64_t stop_at_step = 0;
  bool print_config = false;
  bool list_keys = false;
  bool quiet = false;
};

void list_keys(const ConfigSchema& schema) {
  std::string section;
  for (const auto& key : schema.keys()) {
    const std::string sec = key.path.substr(0, key.path.find('.'));
    if (sec != section) {
      fmt::print("{}[{}]\n", section.empty() ? "" : "\n", sec);
      section = sec;
    }
    std::string line = fmt::format("{} = {}", key.path.substr(sec.size() + 1),
                                   config_value_to_toml(key.default_value));
    std::string choices;
    for (const auto& c : key.choices) choices += (choices.empty() ? "" : ", ") + c;
    fmt::print("{:<34} # {}{}\n", line, key.help,
               choices.empty() ? "" : " (one of: " + choices + ")");
  }
}

}  // namespace

Command add_train(CLI::App& parent) {
  auto a = std::make_shared<TrainArgs>();
  CLI::App* app = parent.add_subcommand(
      "train", "Train a model on a blended mixture, with validation, checkpoints and exact resume");
  app->add_option("config", a->config, "Training config (TOML); see configs/ and --list-keys")
      ->check(CLI::ExistingFile);
  app->add_option("--set", a->overrides,
                  "Override a config key: --set train.steps=100 (repeatable)");
  app->add_option("--resume", a->resume,
                  "auto: continue from the newest good checkpoint of the run directory, if any; "
                  "never: refuse if it has checkpoints; or a checkpoint directory")
      ->capture_default_str();
  app->add_option("--run-dir", a->run_dir, "Same as --set train.run_dir=DIR");
  app->add_option("--steps", a->steps, "Same as --set train.steps=N")->check(CLI::PositiveNumber);
  app->add_option("--stop-at-step", a->stop_at_step,
                  "Stop after this step with a checkpoint, as on a signal (for jobs of a fixed "
                  "number of steps)")
      ->check(CLI::PositiveNumber);
  app->add_flag("--print-config", a->print_config,
                "Print the resolved configuration (every key) and exit");
  app->add_flag("--list-keys", a->list_keys, "List every config key with its default and exit");
  app->add_flag("-q,--quiet", a->quiet, "No step lines or progress bars (logs and errors only)");
  app->footer(
      "Writes RUN_DIR/config.toml, RUN_DIR/metrics.jsonl and RUN_DIR/checkpoints/step-N/.\n"
      "SIGINT/SIGTERM or train.max_minutes: finish the step, checkpoint, exit 0; run the same\n"
      "command again to resume exactly. A second signal exits at once.\n\n"
      "Examples:\n"
      "  borealis train configs/brown-llama-5m.toml\n"
      "  borealis train configs/brown-llama-5m.toml --steps 50 --run-dir runs/try "
      "--set optim.lr=1e-3\n"
      "  borealis plot runs/try && borealis generate --checkpoint runs/try --prompt 'The'");
  return {app, [a] {
            const ConfigSchema schema = train_config_schema();
            if (a->list_keys) {
              list_keys(schema);
              return;
            }
            std::vector<std::string> overrides = a->overrides;
            if (!a->run_dir.empty()) overrides.push_back("train.run_dir=" + a->run_dir);
            if (a->steps > 0) overrides.push_back(fmt::format("train.steps={}", a->steps));
            const Config config = load_config(schema, a->config, overrides);
            if (a->print_config) {
              std::cout << config.to_toml() << std::flush;
              return;
            }
            TrainRunOptions options;
            options.resume = a->resume;
            options.progress = !a->quiet;
            options.stop_at_step = a->stop_at_step;
            run_training(config, options);
          }};
}

}  // namespace borealis::cli
