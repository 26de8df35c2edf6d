// borealis bench train, run as a user would: figures on success, one error
// line for bad input.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "kernels/cuda_emulator/emulated_cuda_backend.h"
#include "model/config.h"
#include "test_util.h"
#include "train/train_bench.h"

namespace borealis::test {
namespace {

TEST(BenchCli, TrainPrintsFigures) {
  const RunResult r = run_borealis({"--threads", "1", "bench", "train", "--model", "llama-tiny",
                                    "--batch", "2", "--seq-len", "8", "--steps", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (const char* want : {"tokens/s", "mean step", "best step", "MFU", "sgemm peak", "FLOPs/token",
                           "optimizer", "activations", "arena unchanged", "no growth"}) {
    EXPECT_NE(r.out.find(want), std::string::npos) << want << "\n" << r.out;
  }
}

// --json: one object with the figures and the model's config in the form
// checkpoints keep (what bench/torch_train_step.py builds its model from).
TEST(BenchCli, TrainPrintsJson) {
  const RunResult r = run_borealis({"--threads", "1", "bench", "train", "--model", "llama-tiny",
                                    "--batch", "2", "--seq-len", "8", "--steps", "1", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const nlohmann::json j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j.at("model"), "llama-tiny");
  EXPECT_EQ(j.at("model_config"),
            nlohmann::json::parse(model_config_to_json(model_preset("llama-tiny"))));
  EXPECT_EQ(j.at("model_config").at("family"), "llama");
  EXPECT_GT(j.at("tokens_per_s").at("mean").get<double>(), 0.0);
  EXPECT_EQ(j.at("steps").size(), 1u);
}

TEST(BenchCli, TrainRejectsBadInput) {
  RunResult r = run_borealis({"bench", "train", "--model", "gpt5"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("error: unknown model preset 'gpt5'"), std::string::npos) << r.err;
  r = run_borealis({"bench", "train", "--model", "gpt2-tiny", "--seq-len", "65"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("seq must be in 1..64"), std::string::npos) << r.err;
  r = run_borealis({"bench", "train", "--batch", "0", "--model", "gpt2-tiny"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("(--batch)"), std::string::npos) << r.err;
}

TEST(BenchCli, TrainDevice) {
  RunResult r =
      run_borealis({"bench", "train", "--model", "gpt2-tiny", "--seq-len", "8", "--device", "tpu"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("error: unknown device 'tpu' (this build has: cpu"), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("(--device)"), std::string::npos) << r.err;
  // bf16 matmuls are the CUDA backend's.
  r = run_borealis(
      {"bench", "train", "--model", "gpt2-tiny", "--seq-len", "8", "--precision", "bf16"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("error: precision 'bf16' runs on the CUDA backend (device 'cuda'); the CPU "
                       "backend computes in fp32 (--precision)"),
            std::string::npos)
      << r.err;
  // On the GPU where there is one; otherwise one line saying why not (no
  // CUDA backend in this build, or no device).
  r = run_borealis({"bench", "train", "--model", "llama-tiny", "--batch", "2", "--seq-len", "8",
                    "--steps", "1", "--device", "cuda"});
  if (r.exit_code == 0) {
    EXPECT_NE(r.out.find("cuda backend, fp32"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("GPU memory"), std::string::npos) << r.out;
  } else {
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("error: device 'cuda': "), std::string::npos) << r.err;
  }
}

// On a GPU's memory (the CUDA backend's kernels, emulated), the measured
// steps run without per-op timing and one more step is timed op by op; the
// report says so. In bf16 the sgemm table is still timed in fp32.
TEST(TrainBench, GpuStepsRunUntimedAndOneMoreStepIsTimedOpByOp) {
  for (const std::string precision : {"fp32", "bf16"}) {
    TrainBenchOptions o;
    o.model = "llama-tiny";
    o.device = "cuda";
    o.precision = precision;
    o.batch = 2;
    o.seq = 16;
    o.steps = 2;
    o.backend = [](Precision p) { return emulated::make_cuda_backend(0, p); };
    const TrainBenchResult r = run_train_bench(o);
    EXPECT_TRUE(r.ops_timed_apart);
    EXPECT_EQ(r.steps.size(), 2u);
    EXPECT_GT(r.profiled.total_s(), 0.0);
    EXPECT_GT(r.op_seconds.at("attention"), 0.0);
    EXPECT_GT(r.op_seconds.at("matmul"), 0.0);
    EXPECT_GT(r.peak_gflops, 0.0);
    EXPECT_EQ(r.precision, precision);
    const std::string text = format_train_bench(r);
    EXPECT_NE(text.find("one more step"), std::string::npos) << text;
    EXPECT_NE(text.find("(cuda backend, " + precision + " matmuls"), std::string::npos) << text;
  }
  // On the CPU, the measured steps themselves are timed op by op.
  TrainBenchOptions o;
  o.model = "llama-tiny";
  o.batch = 2;
  o.seq = 16;
  o.steps = 2;
  const TrainBenchResult r = run_train_bench(o);
  EXPECT_FALSE(r.ops_timed_apart);
  EXPECT_GT(r.op_seconds.at("matmul"), 0.0);
}

}  // namespace
}  // namespace borealis::test
