// borealis bench train: time one training step of a model preset on this
// CPU or a GPU (forward, backward, optimizer), with tokens/s, GFLOP/s, MFU
// against a sgemm peak measured in the same run, and memory.
#include <fmt/format.h>

#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "model/config.h"
#include "train/train_bench.h"

namespace borealis::cli {

namespace {

nlohmann::json train_bench_json(const TrainBenchResult& r) {
  nlohmann::json steps = nlohmann::json::array();
  for (const StepTiming& st : r.steps) {
    steps.push_back({{"forward_s", st.forward_s},
                     {"backward_s", st.backward_s},
                     {"optimizer_s", st.optimizer_s},
                     {"loss", st.loss},
                     {"rss_bytes", st.rss_bytes}});
  }
  const double mean = r.mean_step_s(), best = r.best_step_s();
  return {{"model", r.config.name},
          {"model_config", nlohmann::json::parse(model_config_to_json(r.config))},
          {"device", r.device},
          {"precision", r.precision},
          {"hardware", r.hardware},
          {"batch", r.batch},
          {"seq_len", r.seq},
          {"threads", r.threads},
          {"params", r.params},
          {"flops_per_token", r.flops_per_token},
          {"peak_gflops", r.peak_gflops},
          {"bf16_peak_gflops", r.bf16_peak_gflops},
          {"mean_step_s", mean},
          {"best_step_s", best},
          {"tokens_per_s", {{"mean", r.tokens_per_s(mean)}, {"best", r.tokens_per_s(best)}}},
          {"mfu", {{"mean", r.mfu(mean)}, {"best", r.mfu(best)}}},
          {"op_seconds", r.op_seconds},
          {"ops_timed_apart", r.ops_timed_apart},
          {"memory",
           {{"parameters", r.param_bytes},
            {"gradients", r.grad_bytes},
            {"optimizer", r.optimizer_bytes},
            {"activations", r.activation_bytes},
            {"activations_after", r.activation_bytes_after}}},
          {"steps", steps}};
}

}  // namespace

Command add_bench(CLI::App& parent) {
  auto opts = std::make_shared<TrainBenchOptions>();
  CLI::App* app = parent.add_subcommand("bench", "Benchmarks that print figures");
  app->require_subcommand(1);
  CLI::App* train = app->add_subcommand(
      "train", "Time training steps of a model preset: forward, backward, optimizer, MFU, memory");
  train->add_option("--model", opts->model, "Model preset (gpt2-124m, gpt2-350m, llama-20m, ...)")
      ->capture_default_str();
  train->add_option("--batch", opts->batch, "Sequences per step")->capture_default_str();
  train->add_option("--seq-len", opts->seq, "Tokens per sequence")->capture_default_str();
  add_old_spelling(*train, "--seq", opts->seq, "--seq-len");
  train->add_option("--steps", opts->steps, "Measured steps (after one warm-up step)")
      ->capture_default_str();
  train->add_option("--seed", opts->seed, "Initialisation seed")->capture_default_str();
  train
      ->add_option("--device", opts->device,
                   "Where the steps run: cpu, or cuda (the first GPU, in builds with the CUDA "
                   "backend)")
      ->capture_default_str();
  train
      ->add_option("--precision", opts->precision,
                   "What the matmuls multiply: fp32, or bf16 (bf16 operands, fp32 accumulation; "
                   "--device cuda only). MFU is against the measured peak of the same precision")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  auto json = std::make_shared<bool>(false);
  train->add_flag("--json", *json, "Print the figures as one JSON object");
  return {app, [opts, train, json] {
            if (train->parsed()) {
              const TrainBenchResult r = run_train_bench(*opts);
              if (*json) {
                std::cout << train_bench_json(r).dump(2) << '\n' << std::flush;
              } else {
                std::cout << format_train_bench(r) << std::flush;
              }
            }
          }};
}

}  // namespace borealis::cli
