// borealis train end to end on a small synthetic corpus: learning, exact
// resume (twice, across epochs of the mixture's files), checkpoint damage,
// signals, skipped updates and config errors.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "core/config.h"
#include "core/error.h"
#include "data/indexed_dataset.h"
#include "kernels/cuda_emulator/emulated_cuda_backend.h"
#include "kernels/guarded_backend.h"
#include "test_util.h"
#include "tokenizer/hf_json.h"
#include "tokenizer/train.h"
#include "train/checkpoint.h"
#include "train/train_config.h"
#include "train/train_fixture.h"
#include "train/trainer.h"

namespace borealis {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

Config load(const fs::path& file, const std::vector<std::string>& overrides = {}) {
  return load_config(train_config_schema(), file, overrides);
}

TrainRunResult train(const fs::path& file, const std::vector<std::string>& overrides = {},
                     std::int64_t stop_at = 0, const std::string& resume = "auto") {
  TrainRunOptions o;
  o.progress = false;
  o.stop_at_step = stop_at;
  o.resume = resume;
  return run_training(load(file, overrides), o);
}

// Options of a quiet run that stops after `stop_at` (0: at the end), on
// `backend`'s memory (null: train.device's).
TrainRunOptions run_options(std::int64_t stop_at,
                            std::function<std::unique_ptr<Backend<float>>()> backend = {}) {
  TrainRunOptions o;
  o.progress = false;
  o.stop_at_step = stop_at;
  o.backend = std::move(backend);
  return o;
}

// The CUDA backend's kernels on the CUDA emulator, in `precision`.
std::function<std::unique_ptr<Backend<float>>()> emulated_gpu(Precision precision) {
  return [precision] { return emulated::make_cuda_backend(0, precision); };
}

std::string model_bytes(const fs::path& checkpoint) {
  return test::read_file(checkpoint / "model.safetensors");
}

TEST(Trainer, LearnsWellBelowTheUnigramBaseline) {
  TrainFixture f;
  const fs::path run = f.dir() / "run";
  const auto r = train(f.write_config("c.toml", run),
                       {"train.steps=60", "checkpoint.every=0", "optim.lr=1e-2", "eval.batches=4"});
  EXPECT_EQ(r.steps, 60);
  EXPECT_EQ(r.skipped_steps, 0);
  ASSERT_GT(r.unigram_entropy, 2.0);
  EXPECT_LT(r.valid_loss, r.unigram_entropy - 1.0);
  // The run directory: resolved config, metrics, the final checkpoint.
  EXPECT_TRUE(fs::exists(run / "config.toml"));
  EXPECT_EQ(train_losses(run).size(), 60u);
  EXPECT_EQ(r.last_checkpoint, run / "checkpoints" / "step-00000060");
  const CheckpointInfo info = verify_checkpoint(r.last_checkpoint);
  EXPECT_EQ(info.state.step, 60);
  EXPECT_EQ(info.state.tokens, 60u * 4 * 32);
  EXPECT_EQ(info.state.next_sample, 60u * 4);
  EXPECT_TRUE(fs::exists(r.last_checkpoint / "tokenizer.json"));
  // The run directory is enough to generate from: greedy decoding goes on
  // with words of the learned cycles in order.
  const auto g =
      test::run_borealis({"generate", "--checkpoint", run.string(), "--prompt", "alpha beta gamma",
                          "--max-tokens", "12", "--temperature", "0"});
  EXPECT_EQ(g.exit_code, 0) << g.err;
  EXPECT_EQ(g.out.rfind("alpha beta gamma ", 0), 0u) << g.out;
  EXPECT_NE(g.out.find("theta iota kappa"), std::string::npos) << g.out;
  // ... and to plot: the metrics log is what `borealis plot` reads.
  const auto p = test::run_borealis({"plot", run.string(), "--x", "steps"});
  EXPECT_EQ(p.exit_code, 0) << p.err;
  EXPECT_TRUE(fs::exists(run / "plots" / "loss_steps.png"));
}

TEST(Trainer, ResumeIsExactWhenStoppedTwice) {
  TrainFixture f;
  // 12 steps x 4 samples = 48 samples: every file (9 training documents of
  // about 30 tokens, a few samples per epoch) passes epoch boundaries.
  const fs::path whole = f.dir() / "whole", split = f.dir() / "split";
  const auto a = train(f.write_config("a.toml", whole));
  EXPECT_FALSE(a.stopped);
  const fs::path cfg = f.write_config("b.toml", split);
  const auto b1 = train(cfg, {}, 3);  // stops between checkpoints
  EXPECT_TRUE(b1.stopped);
  EXPECT_EQ(b1.steps, 3);
  {  // as if killed while writing a record: the resumed run drops it
    std::ofstream log(split / "metrics.jsonl", std::ios::app);
    log << R"({"kind":"train","step":4,"lo)";
  }
  const auto b2 = train(cfg, {}, 9);
  EXPECT_EQ(b2.first_step, 3);
  EXPECT_EQ(b2.steps, 9);
  const auto b3 = train(cfg);
  EXPECT_EQ(b3.first_step, 9);
  EXPECT_EQ(b3.steps, 12);

  const auto la = train_losses(whole), lb = train_losses(split);
  ASSERT_EQ(la.size(), 12u);
  ASSERT_EQ(lb.size(), 12u);
  for (const auto& [step, loss] : la) EXPECT_EQ(loss, lb.at(step)) << "step " << step;
  EXPECT_EQ(a.valid_loss, b3.valid_loss);
  EXPECT_EQ(model_bytes(a.last_checkpoint), model_bytes(b3.last_checkpoint));
  EXPECT_EQ(test::read_file(a.last_checkpoint / "optimizer.safetensors"),
            test::read_file(b3.last_checkpoint / "optimizer.safetensors"));
  // keep = 2: only the two newest checkpoints remain.
  EXPECT_EQ(test::list_dir(split / "checkpoints"),
            (std::vector<std::string>{"step-00000009", "step-00000012"}));
}

// A run whose backend memory the host cannot touch (as a GPU's: the CPU's
// ops behind closed memory) computes what a CPU run computes, and its
// checkpoints resume on the CPU and the other way round, bit for bit.
TEST(Trainer, RunsOnDeviceMemoryAndResumesAcrossDevices) {
  TrainFixture f;
  const fs::path cpu_run = f.dir() / "cpu", mixed = f.dir() / "mixed";
  const auto a = train(f.write_config("a.toml", cpu_run));
  const fs::path cfg = f.write_config("b.toml", mixed);
  const auto run = [&](std::int64_t stop_at, bool guarded) {
    if (!guarded) return run_training(load(cfg), run_options(stop_at));
    return run_training(
        load(cfg), run_options(stop_at, [] { return std::make_unique<test::GuardedBackend>(); }));
  };
  const auto b1 = run(5, true);  // device memory, stopped between checkpoints
  EXPECT_EQ(b1.steps, 5);
  const auto b2 = run(9, false);  // resumed on the CPU
  EXPECT_EQ(b2.first_step, 5);
  const auto b3 = run(0, true);  // and back on device memory to the end
  EXPECT_EQ(b3.first_step, 9);
  EXPECT_EQ(b3.steps, 12);
  EXPECT_EQ(train_losses(cpu_run), train_losses(mixed));
  EXPECT_EQ(a.valid_loss, b3.valid_loss);
  EXPECT_EQ(model_bytes(a.last_checkpoint), model_bytes(b3.last_checkpoint));
  EXPECT_EQ(test::read_file(a.last_checkpoint / "optimizer.safetensors"),
            test::read_file(b3.last_checkpoint / "optimizer.safetensors"));
}

// The trainer on the CUDA backend's kernels (run by the CUDA emulator): a run
// stopped on the "GPU" resumes on the CPU, then finishes on the GPU with bf16
// matmuls. Its losses track an all-CPU run's: within 1e-4 relative in fp32,
// 1e-2 once bf16 starts (the same checkpoints carry the run across all
// three).
TEST(Trainer, RunsOnTheCudaKernelsAndResumesAcrossDevicesAndPrecisions) {
  TrainFixture f;
  const fs::path cpu_run = f.dir() / "cpu", mixed = f.dir() / "mixed";
  const auto a = train(f.write_config("a.toml", cpu_run));
  const fs::path cfg = f.write_config("b.toml", mixed);
  EXPECT_EQ(run_training(load(cfg), run_options(5, emulated_gpu(Precision::kFp32))).steps, 5);
  EXPECT_EQ(run_training(load(cfg), run_options(9)).first_step, 5);  // on the CPU
  const auto last = run_training(load(cfg), run_options(0, emulated_gpu(Precision::kBf16)));
  EXPECT_EQ(last.first_step, 9);
  EXPECT_EQ(last.steps, 12);
  const auto want = train_losses(cpu_run), got = train_losses(mixed);
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [step, loss] : want) {
    EXPECT_NEAR(got.at(step), loss, (step <= 9 ? 1e-4 : 1e-2) * loss) << "step " << step;
  }
  EXPECT_NEAR(last.valid_loss, a.valid_loss, 1e-2 * a.valid_loss);
}

// On the CUDA kernels (emulated), a run stopped and resumed ends bit for bit
// where an uninterrupted one does: the checkpoint's round trip through the
// host loses nothing.
TEST(Trainer, ResumeOnTheCudaKernelsIsExact) {
  TrainFixture f;
  const fs::path whole = f.dir() / "whole", split = f.dir() / "split";
  const auto on_gpu = [](std::int64_t stop_at) {
    return run_options(stop_at, emulated_gpu(Precision::kBf16));
  };
  // Six steps (checkpoints and evaluations every three): the emulator is slow.
  const std::vector<std::string> shorter = {"train.steps=6", "checkpoint.every=3", "eval.every=3"};
  const auto a = run_training(load(f.write_config("a.toml", whole), shorter), on_gpu(0));
  const fs::path cfg = f.write_config("b.toml", split);
  EXPECT_EQ(run_training(load(cfg, shorter), on_gpu(4)).steps, 4);
  const auto b = run_training(load(cfg, shorter), on_gpu(0));
  EXPECT_EQ(b.first_step, 4);
  EXPECT_EQ(train_losses(whole), train_losses(split));
  EXPECT_EQ(a.valid_loss, b.valid_loss);
  EXPECT_EQ(model_bytes(a.last_checkpoint), model_bytes(b.last_checkpoint));
  EXPECT_EQ(test::read_file(a.last_checkpoint / "optimizer.safetensors"),
            test::read_file(b.last_checkpoint / "optimizer.safetensors"));
}

TEST(Trainer, DamagedCheckpointsAreSkipped) {
  TrainFixture f;
  const fs::path run = f.dir() / "run";
  const fs::path cfg = f.write_config("c.toml", run);
  train(cfg, {"checkpoint.keep=5"});
  const fs::path ck = run / "checkpoints";
  // Flip one byte of the newest model, remove a file of the next, and add a
  // partial (temporary) directory and one without state.json.
  test::flip_bits(ck / "step-00000012" / "model.safetensors", 200, 0x10);
  fs::remove(ck / "step-00000008" / "optimizer.safetensors");
  fs::create_directory(ck / "step-00000013.tmp-99999");
  fs::create_directory(ck / "step-00000020");
  std::vector<std::pair<fs::path, std::string>> skipped;
  const auto found = latest_checkpoint(ck, skipped);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->state.step, 4);
  ASSERT_EQ(skipped.size(), 3u);
  EXPECT_EQ(skipped[0].first.filename(), "step-00000020");
  EXPECT_EQ(skipped[0].second, "state.json is missing");
  EXPECT_EQ(skipped[1].second, "model.safetensors does not match its checksum");
  EXPECT_EQ(skipped[2].second, "optimizer.safetensors is missing");
  // A truncated state.json and a file of another size are caught too.
  const std::string state = test::read_file(ck / "step-00000004" / "state.json");
  test::write_file(ck / "step-00000020" / "state.json", state.substr(0, state.size() / 2));
  EXPECT_NE(test::error_line([&] {
              verify_checkpoint(ck / "step-00000020");
            }).find("state.json is not a JSON object"),
            std::string::npos);
  // Resuming continues from step 4 and ends where an uninterrupted run does.
  const auto r = train(cfg, {"checkpoint.keep=5"});
  EXPECT_EQ(r.first_step, 4);
  EXPECT_EQ(r.steps, 12);
  const fs::path whole = f.dir() / "whole";
  const auto w = train(f.write_config("w.toml", whole));
  EXPECT_EQ(model_bytes(w.last_checkpoint), model_bytes(r.last_checkpoint));
}

TEST(Trainer, ResumeRefusesAChangedTrajectory) {
  TrainFixture f;
  const fs::path run = f.dir() / "run";
  const fs::path cfg = f.write_config("c.toml", run);
  train(cfg, {}, 4);
  EXPECT_NE(test::error_line([&] {
              train(cfg, {"optim.lr=1e-3"});
            }).find("optim.lr is 0.001 here but was 0.003 in the run being resumed"),
            std::string::npos);
  // Other keys may change (here: logging and the number of checkpoints kept).
  const auto r = train(cfg, {"train.log_every=5", "checkpoint.keep=1"});
  EXPECT_EQ(r.first_step, 4);
  EXPECT_EQ(test::error_line([&] { train(cfg, {}, 0, "never"); }).rfind("error: the run", 0), 0u);
}

TEST(Trainer, SkipsNonFiniteAndSpikingUpdates) {
  TrainFixture f;
  // A learning rate this large sends the weights to infinity after the
  // first update: every later step has a non-finite loss and is skipped.
  const auto r = train(f.write_config("c.toml", f.dir() / "inf"),
                       {"optim.lr=1e38", "optim.lr_min=0", "optim.warmup_steps=0",
                        "optim.grad_clip=0", "eval.batches=0"});
  EXPECT_EQ(r.steps, 12);
  EXPECT_GE(r.skipped_steps, 10);
  // With a z-score threshold of zero... almost: any loss above the mean of
  // the last two is a spike.
  const auto s = train(f.write_config("s.toml", f.dir() / "spike"),
                       {"train.spike_zscore=1e-9", "train.spike_window=2", "optim.lr=1"});
  EXPECT_GT(s.skipped_steps, 0);
  EXPECT_LT(s.skipped_steps, 12);
  std::int64_t flagged = 0;
  std::ifstream in(f.dir() / "spike" / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j["kind"] == "train" && j["skipped"].get<bool>()) ++flagged;
  }
  EXPECT_EQ(flagged, s.skipped_steps);
}

TEST(Trainer, ConfigErrors) {
  TrainFixture f;
  const fs::path cfg = f.write_config("c.toml", f.dir() / "run");
  auto err = [&](const std::vector<std::string>& overrides) {
    return test::error_line([&] { train(cfg, overrides); });
  };
  EXPECT_NE(err({"train.global_batch=5"}).find("not a multiple of train.micro_batch"),
            std::string::npos);
  EXPECT_NE(err({"data.seq_len=64"}).find("longer than the model's max_seq 32"), std::string::npos);
  EXPECT_NE(err({"data.data_list="}).find("data.data_list is required"), std::string::npos);
  EXPECT_NE(err({"data.split=0,1,1"}).find("nothing to train on"), std::string::npos);
  EXPECT_NE(err({"model.n_head=3"}).find("not a multiple of n_head"), std::string::npos);
  EXPECT_NE(err({"train.device=tpu"}).find("unknown device 'tpu' (this build has: cpu"),
            std::string::npos);
  EXPECT_NE(err({"train.device=tpu"}).find("(train.device)"), std::string::npos);
  EXPECT_NE(err({"train.precision=fp16"}).find("unknown precision 'fp16' (fp32 or bf16)"),
            std::string::npos);
  EXPECT_NE(err({"train.precision=bf16"})
                .find("precision 'bf16' runs on the CUDA backend (device 'cuda'); the CPU backend "
                      "computes in fp32 (train.precision)"),
            std::string::npos);
  test::write_file(f.dir() / "bad.toml", "[train]\nsetps = 3\n");
  EXPECT_EQ(test::error_line([&] { load(f.dir() / "bad.toml"); }),
            "error: unknown key 'train.setps'; did you mean 'train.steps'? (" +
                (f.dir() / "bad.toml").string() + ":2:9)");
}

// The configs shipped in configs/ (the demo's among them) load, pass the
// settings checks and resolve to a valid model.
TEST(Trainer, ShippedConfigsAreValid) {
  int seen = 0;
  for (const auto& entry : fs::directory_iterator(fs::path(BOREALIS_SOURCE_DIR) / "configs")) {
    if (entry.path().extension() != ".toml") continue;
    SCOPED_TRACE(entry.path().string());
    const Config c = load(entry.path());
    EXPECT_NO_THROW(read_train_settings(c));
    const ModelConfig m = resolve_model(c, 8000);
    EXPECT_NO_THROW(m.validate());
    EXPECT_GE(m.max_seq, c.get<std::int64_t>("data.seq_len"));
    ++seen;
  }
  EXPECT_GE(seen, 2);
}

// SIGTERM: the run finishes its step, writes a checkpoint and exits 0; the
// same command then resumes it to the end.
TEST(Trainer, SigtermCheckpointsAndExitsCleanly) {
  TrainFixture f;
  const fs::path run = f.dir() / "run";
  const fs::path cfg = f.write_config("c.toml", run);
  const std::vector<std::string> args = {
      "--threads",          "1",     "train",          cfg.string(), "--set",
      "train.steps=100000", "--set", "eval.batches=0", "-q"};
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::vector<char*> argv;
    std::string bin = BOREALIS_BIN;
    argv.push_back(bin.data());
    std::vector<std::string> copy = args;
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(bin.c_str(), argv.data());
    _exit(127);
  }
  // Wait until it has logged a few steps.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline && train_losses(run).size() < 3) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_GE(train_losses(run).size(), 3u);
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  std::vector<std::pair<fs::path, std::string>> skipped;
  const auto ck = latest_checkpoint(run / "checkpoints", skipped);
  ASSERT_TRUE(ck.has_value());
  EXPECT_TRUE(skipped.empty());
  const std::int64_t stopped_at = ck->state.step;
  EXPECT_GE(stopped_at, 3);
  EXPECT_EQ(train_losses(run).rbegin()->first, stopped_at);
  // Resume for two more steps.
  const auto r =
      test::run_borealis({"train", cfg.string(), "--set", "train.steps=100000", "--set",
                          "eval.batches=0", "--stop-at-step", std::to_string(stopped_at + 2)});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("stopped by --stop-at-step"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("resuming from"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace borealis
