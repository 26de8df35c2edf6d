// borealis generate end to end: a tiny checkpoint written by the test (random
// GPT-2 weights, a byte-level BPE trained on a few sentences), greedy output
// checked byte for byte against the library, seeds, samples, run-directory
// resolution and the error paths.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>

#include "kernels/backend.h"
#include "model/checkpoint_load.h"
#include "model/inference.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "serve/sampling.h"
#include "test_util.h"
#include "tiny_checkpoint.h"
#include "tokenizer/hf_json.h"
#include "tokenizer/train.h"

namespace borealis {
namespace {

using test::run_borealis;

using test::tiny_tokenizer;
using test::write_checkpoint;

// The text of prompt ids followed by max_tokens generated ones, computed with
// the library (greedy by default).
std::string greedy_text(const std::filesystem::path& dir, const Tokenizer& tok,
                        std::vector<std::uint32_t> ids, int max_tokens,
                        SamplingParams params = {0.0f, 0, 1.0f}, std::uint64_t seed = 0) {
  const LoadedModel m = load_model_dir(dir);
  auto backend = make_cpu_backend<float>();
  Inference<float> run(m.config, m.params.data(), *backend);
  Sampler sampler(params, seed);
  std::span<const float> logits = run.prefill(std::vector<std::int32_t>(ids.begin(), ids.end()));
  for (int i = 0; i < max_tokens; ++i) {
    const std::int32_t next = sampler.sample(logits);
    ids.push_back(static_cast<std::uint32_t>(next));
    if (i + 1 < max_tokens) logits = run.decode(next);
  }
  return tok.decode(ids);
}

// What greedy generation must print for a text prompt.
std::string greedy_output(const std::filesystem::path& dir, const Tokenizer& tok,
                          const std::string& prompt, int max_tokens) {
  return greedy_text(dir, tok, tok.encode(prompt), max_tokens) + "\n";
}

class GenerateCli : public ::testing::Test {
 protected:
  void SetUp() override {
    tok_ = std::make_unique<Tokenizer>(tiny_tokenizer());
    write_checkpoint(ckpt(), *tok_, 1);
  }
  std::filesystem::path ckpt() const { return dir_ / "ckpt"; }
  std::vector<std::string> args(std::vector<std::string> extra) const {
    std::vector<std::string> a = {"generate", "--checkpoint", ckpt().string()};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  }

  test::TempDir dir_;
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(GenerateCli, GreedyOutputIsExactlyTheLibrarys) {
  const std::string prompt = "The northern sky";
  const auto r = run_borealis(
      args({"--prompt", prompt, "--max-tokens", "30", "--temperature", "0", "--no-stop-at-eod"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, greedy_output(ckpt(), *tok_, prompt, 30));
  const auto n_prompt = tok_->encode(prompt).size();
  EXPECT_NE(r.err.find(fmt::format("prompt {} tokens, prefill", n_prompt)), std::string::npos)
      << r.err;
  EXPECT_NE(r.err.find("generated 30 tokens, decode"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("ms/token"), std::string::npos) << r.err;

  const auto bare = run_borealis(args({"--prompt", prompt, "--max-tokens", "30", "--temperature",
                                       "0", "--no-stop-at-eod", "--no-echo"}));
  ASSERT_EQ(bare.exit_code, 0) << bare.err;
  EXPECT_EQ(tok_->decode(tok_->encode(prompt)) + bare.out, r.out);
}

TEST_F(GenerateCli, SampledOutputIsExactlyTheLibrarys) {
  const auto r =
      run_borealis(args({"--prompt", "Caf", "--max-tokens", "60", "--temperature", "3", "--top-k",
                         "0", "--top-p", "1", "--seed", "11", "--no-stop-at-eod"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, greedy_text(ckpt(), *tok_, tok_->encode("Caf"), 60, {3.0f, 0, 1.0f}, 11) + "\n");
  // Hot sampling from random weights emits byte tokens that split UTF-8
  // characters (or never complete them): every byte must still arrive.
  EXPECT_TRUE(std::any_of(r.out.begin(), r.out.end(), [](char c) { return c & 0x80; })) << r.out;
}

TEST_F(GenerateCli, SeedsReproduceAndSamplesDiffer) {
  test::write_file(dir_ / "prompt.txt", "The aurora");
  const auto base =
      args({"--prompt-file", (dir_ / "prompt.txt").string(), "--max-tokens", "40", "--temperature",
            "1.5", "--top-k", "0", "--top-p", "1", "--no-stop-at-eod", "--seed"});
  auto with_seed = [&](const std::string& seed, std::vector<std::string> more = {}) {
    auto a = base;
    a.push_back(seed);
    a.insert(a.end(), more.begin(), more.end());
    const auto r = run_borealis(a);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return r.out;
  };
  const std::string a = with_seed("5");
  EXPECT_TRUE(a.starts_with("The aurora")) << a;
  EXPECT_EQ(with_seed("5"), a);
  EXPECT_NE(with_seed("6"), a);
  // Sample i of --num-samples uses seed + i.
  const std::string two = with_seed("5", {"--num-samples", "2"});
  EXPECT_EQ(two, "=== sample 1 of 2 ===\n" + a + "\n=== sample 2 of 2 ===\n" + with_seed("6"));
}

TEST_F(GenerateCli, RunDirectoryUsesTheNewestCompleteCheckpoint) {
  const auto run = dir_ / "run";
  write_checkpoint(run / "checkpoints" / "step-100", *tok_, 2);
  write_checkpoint(run / "checkpoints" / "step-200", *tok_, 3);
  write_checkpoint(run / "checkpoints" / "step-300", *tok_, 4);
  std::filesystem::remove(run / "checkpoints" / "step-300" / "state.json");  // being written
  const std::vector<std::string> flags = {"--prompt",      "The sky", "--max-tokens",    "10",
                                          "--temperature", "0",       "--no-stop-at-eod"};
  auto a = std::vector<std::string>{"generate", "--checkpoint", run.string()};
  a.insert(a.end(), flags.begin(), flags.end());
  const auto r = run_borealis(a);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("using checkpoint " + (run / "checkpoints" / "step-200").string()),
            std::string::npos)
      << r.err;
  EXPECT_EQ(r.out, greedy_output(run / "checkpoints" / "step-200", *tok_, "The sky", 10));
}

TEST_F(GenerateCli, NoPromptIsAnUnconditionalSampleAfterTheEndOfDocument) {
  // stdin is empty: --prompt-file - reads no prompt.
  const auto r = run_borealis(
      args({"--prompt-file", "-", "--max-tokens", "12", "--temperature", "0", "--no-stop-at-eod"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::uint32_t eod = *tok_->eod_id();
  const std::string eod_text = tok_->decode(std::vector<std::uint32_t>{eod});
  EXPECT_EQ(r.out, greedy_text(ckpt(), *tok_, {eod}, 12).substr(eod_text.size()) + "\n");
  EXPECT_NE(r.err.find("prompt 1 tokens"), std::string::npos) << r.err;
}

TEST_F(GenerateCli, StopsAtTheEndOfDocumentToken) {
  // Weights whose every prediction is the end-of-document token: the final
  // norm outputs its bias u whatever the input, and only that token's
  // embedding (the tied head) points along u.
  const std::uint32_t eod = *tok_->eod_id();
  write_checkpoint(ckpt(), *tok_, 1, true, [&](Model<float>& m) {
    std::fill(m.param("lnf.w").begin(), m.param("lnf.w").end(), 0.0f);
    auto u = m.param("lnf.b");
    for (std::size_t i = 0; i < u.size(); ++i) u[i] = (i % 3 == 0) ? 1.0f : -0.5f;
    auto wte = m.param("wte");
    for (std::size_t i = 0; i < u.size(); ++i) wte[eod * u.size() + i] = 10.0f * u[i];
  });
  const auto stop = run_borealis(args({"--prompt", "The sky", "--seed", "1"}));
  ASSERT_EQ(stop.exit_code, 0) << stop.err;
  EXPECT_EQ(stop.out, "The sky\n");
  EXPECT_NE(stop.err.find("generated 0 tokens"), std::string::npos) << stop.err;
  const auto go_on = run_borealis(
      args({"--prompt", "The sky", "--seed", "1", "--max-tokens", "3", "--no-stop-at-eod"}));
  ASSERT_EQ(go_on.exit_code, 0) << go_on.err;
  EXPECT_EQ(go_on.out, "The sky<|endoftext|><|endoftext|><|endoftext|>\n");
}

TEST_F(GenerateCli, StopsAtTheContext) {
  // gpt2-tiny has 64 positions: a long prompt leaves room for a few tokens only.
  std::string prompt;
  while (tok_->encode(prompt).size() < 60) prompt += "lights ";
  const auto n = tok_->encode(prompt).size();
  ASSERT_LE(n, 64u);
  const auto r = run_borealis(
      args({"--prompt", prompt, "--max-tokens", "50", "--temperature", "0", "--no-stop-at-eod"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find(fmt::format("generated {} tokens", 64 - n + 1)), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("stopped at the model's context of 64 tokens"), std::string::npos);
}

TEST_F(GenerateCli, Errors) {
  auto missing = run_borealis({"generate", "--checkpoint", (dir_ / "nope").string()});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("error: no such checkpoint or run directory (" +
                             (dir_ / "nope").string() + ")"),
            std::string::npos)
      << missing.err;

  write_checkpoint(dir_ / "bare", *tok_, 1, /*with_metadata=*/false);
  auto bare = run_borealis({"generate", "--checkpoint", (dir_ / "bare").string()});
  EXPECT_EQ(bare.exit_code, 1);
  EXPECT_NE(bare.err.find("no model config in the safetensors metadata"), std::string::npos)
      << bare.err;
  EXPECT_NE(bare.err.find((dir_ / "bare" / "model.safetensors").string()), std::string::npos);

  std::string prompt;
  for (int i = 0; i < 80; ++i) prompt += "aurora " + std::to_string(i) + " ";
  auto long_prompt = run_borealis(args({"--prompt", prompt}));
  EXPECT_EQ(long_prompt.exit_code, 1);
  EXPECT_NE(long_prompt.err.find("longer than the model's context of 64 tokens (--prompt)"),
            std::string::npos)
      << long_prompt.err;

  auto bad_p = run_borealis(args({"--top-p", "1.5"}));
  EXPECT_EQ(bad_p.exit_code, 1);
  EXPECT_NE(bad_p.err.find("(--top-p)"), std::string::npos) << bad_p.err;

  std::filesystem::remove(ckpt() / "tokenizer.json");
  auto no_tok = run_borealis(args({"--prompt", "x"}));
  EXPECT_EQ(no_tok.exit_code, 1);
  EXPECT_NE(no_tok.err.find("no tokenizer.json"), std::string::npos) << no_tok.err;

  auto usage = run_borealis({"generate"});
  EXPECT_EQ(usage.exit_code, 2);
}

}  // namespace
}  // namespace borealis
