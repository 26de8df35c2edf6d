// borealis bench train: time one training step of a model preset on this
// CPU (forward, backward, optimizer), with tokens/s, GFLOP/s, MFU against a
// sgemm peak measured in the same run, and memory.
#include <fmt/format.h>

#include <iostream>
#include <memory>

#include "cli/commands.h"
#include "train/train_bench.h"

namespace borealis::cli {

Command add_bench(CLI::App& parent) {
  auto opts = std::make_shared<TrainBenchOptions>();
  CLI::App* app = parent.add_subcommand("bench", "Benchmarks that print figures");
  app->require_subcommand(1);
  CLI::App* train = app->add_subcommand(
      "train", "Time training steps of a model preset: forward, backward, optimizer, MFU, memory");
  train->add_option("--model", opts->model, "Model preset (gpt2-124m, gpt2-350m, llama-20m, ...)")
      ->capture_default_str();
  train->add_option("--batch", opts->batch, "Sequences per step")->capture_default_str();
  train->add_option("--seq", opts->seq, "Tokens per sequence")->capture_default_str();
  train->add_option("--steps", opts->steps, "Measured steps (after one warm-up step)")
      ->capture_default_str();
  train->add_option("--seed", opts->seed, "Initialisation seed")->capture_default_str();
  return {app, [opts, train] {
            if (train->parsed()) {
              const TrainBenchResult r = run_train_bench(*opts);
              std::cout << format_train_bench(r) << std::flush;
            }
          }};
}

}  // namespace borealis::cli
