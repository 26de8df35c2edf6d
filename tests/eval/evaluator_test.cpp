// The evaluator: token requests as lm-eval makes them, metrics and their
// standard errors on scores a test model hands out, the score cache, and
// the in-process model's scores against the model's own forward pass.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "eval/custom_task.h"
#include "eval/evaluator.h"
#include "eval/local_model.h"
#include "eval/python_random.h"
#include "kernels/backend.h"
#include "model/inference.h"
#include "model/model.h"
#include "serve/sampling.h"
#include "test_util.h"
#include "tiny_checkpoint.h"

namespace borealis {
namespace {

using nlohmann::json;

// One token per byte; end of text is 0.
class ByteCodec : public TextCodec {
 public:
  std::vector<std::int32_t> encode(const std::string& text) const override {
    std::vector<std::int32_t> out;
    for (unsigned char c : text) out.push_back(c);
    return out;
  }
  std::int32_t end_of_text() const override { return 0; }
};

std::string decode(const std::vector<std::int32_t>& ids) {
  std::string s;
  for (std::int32_t i : ids) s += static_cast<char>(i);
  return s;
}

// Hands out the logprob set for each continuation's text.
class TableModel : public LanguageModel {
 public:
  explicit TableModel(std::map<std::string, Score> table) : table_(std::move(table)) {}
  int max_length() const override { return 1000; }
  std::string description() const override { return "table"; }
  std::vector<Score> score(const std::vector<ScoreRequest>& requests, const ProgressFn&) override {
    if (fail) throw Error("the model is gone", "test");
    std::vector<Score> out;
    for (const ScoreRequest& r : requests) out.push_back(table_.at(decode(r.continuation)));
    calls += requests.size();
    return out;
  }
  std::vector<std::string> generate(const std::vector<GenerationTask>& tasks,
                                    const ProgressFn&) override {
    std::vector<std::string> out;
    for (const GenerationTask& t : tasks)
      out.push_back(decode(t.context).back() == '1' ? " 4\nmore" : " 5");
    return out;
  }
  bool fail = false;
  std::size_t calls = 0;

 private:
  std::map<std::string, Score> table_;
};

TEST(EvalRequests, TrailingSpaceMovesToTheContinuation) {
  const ByteCodec codec;
  const auto [ctx, cont] = encode_pair(codec, "Answer: ", "Paris");
  EXPECT_EQ(decode(ctx), "Answer:");
  EXPECT_EQ(decode(cont), " Paris");
  const auto [ectx, econt] = encode_pair(codec, "", "Paris");
  EXPECT_EQ(ectx, (std::vector<std::int32_t>{0}));
  EXPECT_EQ(decode(econt), "Paris");
}

// The example in lm-eval's LM.loglikelihood_rolling docstring: tokens 0..9,
// context 4, end-of-text prefix.
TEST(EvalRequests, RollingWindowsAsLmEval) {
  const std::vector<std::int32_t> tokens = {10, 11, 12, 13, 14, 15, 16, 17, 18, 19};
  const std::vector<ScoreRequest> w = rolling_windows(tokens, 99, 4);
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(w[0].context, (std::vector<std::int32_t>{99}));
  EXPECT_EQ(w[0].continuation, (std::vector<std::int32_t>{10, 11, 12, 13}));
  EXPECT_EQ(w[1].context, (std::vector<std::int32_t>{13}));
  EXPECT_EQ(w[1].continuation, (std::vector<std::int32_t>{14, 15, 16, 17}));
  EXPECT_EQ(w[2].context, (std::vector<std::int32_t>{15, 16, 17}));
  EXPECT_EQ(w[2].continuation, (std::vector<std::int32_t>{18, 19}));
}

TaskSet custom_set(const test::TempDir& dir, const std::string& toml,
                   const std::vector<std::string>& lines) {
  std::string text;
  for (const std::string& l : lines) text += l + "\n";
  test::write_file(dir / "data.jsonl", text);
  test::write_file(dir / "task.toml", toml);
  return resolve_tasks({"t"}, {load_custom_task(dir / "task.toml")});
}

// acc takes the largest sum; acc_norm divides by the choice's length in
// characters first, and here picks the other answer. Standard error: sample
// standard deviation / sqrt(n).
TEST(EvalMetrics, AccAndAccNormFromScores) {
  test::TempDir dir;
  const TaskSet set = custom_set(
      dir,
      "name = \"t\"\ntype = \"multiple_choice\"\ntest = \"data.jsonl\"\ntext = \"{q}\"\n"
      "choices_field = \"c\"\ngold = \"{g}\"\n",
      {R"({"q": "Q1", "c": ["a", "bbbbbbbbbb"], "g": 1})",
       R"({"q": "Q2", "c": ["cc", "dd"], "g": 0})", R"({"q": "Q3", "c": ["ee", "ff"], "g": 1})"});
  TableModel model({{" a", {-2.0, true}},
                    {" bbbbbbbbbb", {-5.0, false}},
                    {" cc", {-1.0, true}},
                    {" dd", {-3.0, false}},
                    {" ee", {-1.0, true}},
                    {" ff", {-1.5, false}}});
  EvalOptions o;
  o.progress = false;
  const ByteCodec codec;
  const EvalResult r = evaluate(model, codec, set, o);
  const json& t = r.results["results"]["t"];
  // acc: doc1 picks "a" (wrong), doc2 "cc" (right), doc3 "ee" (wrong) -> 1/3.
  EXPECT_DOUBLE_EQ(t["acc,none"].get<double>(), 1.0 / 3);
  // acc_norm: doc1 -2/1 vs -5/10 -> "bbbbbbbbbb" (right); doc2 right; doc3 wrong -> 2/3.
  EXPECT_DOUBLE_EQ(t["acc_norm,none"].get<double>(), 2.0 / 3);
  const std::vector<double> acc = {0, 1, 0};
  EXPECT_DOUBLE_EQ(t["acc_stderr,none"].get<double>(),
                   std::sqrt((2 * (1.0 / 9) + 4.0 / 9) / 2) / std::sqrt(3.0));
  EXPECT_DOUBLE_EQ(t["acc_stderr,none"].get<double>(), mean_stderr(acc));
  EXPECT_EQ(r.results["n-samples"]["t"]["effective"], 3);
}

// lambada's metrics: perplexity = exp(-mean ll) with lm-eval's bootstrap
// error, acc = is_greedy.
TEST(EvalMetrics, PerplexityAndGreedy) {
  test::TempDir dir;
  const TaskSet set = custom_set(
      dir,
      "name = \"t\"\ntype = \"loglikelihood\"\ntest = \"data.jsonl\"\ntext = \"{a}\"\ntarget = \" "
      "{b}\"\n",
      {R"({"a": "one", "b": "x"})", R"({"a": "two", "b": "y"})", R"({"a": "three", "b": "z"})"});
  TableModel model({{" x", {-1.0, true}}, {" y", {-2.0, false}}, {" z", {-4.5, true}}});
  EvalOptions o;
  o.progress = false;
  o.bootstrap_iters = 1000;
  const ByteCodec codec;
  const json t = evaluate(model, codec, set, o).results["results"]["t"];
  EXPECT_DOUBLE_EQ(t["perplexity,none"].get<double>(), std::exp(7.5 / 3));
  EXPECT_DOUBLE_EQ(t["acc,none"].get<double>(), 2.0 / 3);
  const std::vector<double> lls = {-1.0, -2.0, -4.5};
  EXPECT_DOUBLE_EQ(t["perplexity_stderr,none"].get<double>(),
                   bootstrap_perplexity_stderr(lls, 1000));
}

TEST(EvalMetrics, GenerationExactMatch) {
  test::TempDir dir;
  const TaskSet set =
      custom_set(dir,
                 "name = \"t\"\ntype = \"generate_until\"\ntest = \"data.jsonl\"\n"
                 "text = \"{q}\"\ntarget = \"{a}\"\nuntil = [\"\\n\"]\nstrip = true\n",
                 {R"({"q": "2+2? 1", "a": "4"})", R"({"q": "2+3? 2", "a": "6"})"});
  TableModel model({});
  EvalOptions o;
  o.progress = false;
  const ByteCodec codec;
  const json t = evaluate(model, codec, set, o).results["results"]["t"];
  EXPECT_DOUBLE_EQ(t["exact_match,none"].get<double>(), 0.5);
}

// A rerun reads the scores already computed from the cache and asks the
// model for nothing.
TEST(EvalCache, RerunResumesFromDisk) {
  test::TempDir dir;
  const TaskSet set =
      custom_set(dir,
                 "name = \"t\"\ntype = \"multiple_choice\"\ntest = \"data.jsonl\"\ntext = \"{q}\"\n"
                 "choices = [\"yes\", \"no\"]\ngold = \"{g}\"\n",
                 {R"({"q": "Q1", "g": 1})", R"({"q": "Q2", "g": 0})"});
  TableModel model({{" yes", {-0.25, true}}, {" no", {-0.75, false}}});
  EvalOptions o;
  o.progress = false;
  o.cache = dir / "cache.jsonl";
  const ByteCodec codec;
  const json first = evaluate(model, codec, set, o).results["results"];
  EXPECT_EQ(model.calls, 4u);
  model.fail = true;
  const json again = evaluate(model, codec, set, o).results["results"];
  EXPECT_EQ(again, first);
  // A line cut short by a crash is computed again, not fatal.
  test::write_file(dir / "cache.jsonl", test::read_file(dir / "cache.jsonl") + "{\"key\": \"ab");
  EXPECT_EQ(evaluate(model, codec, set, o).results["results"], first);
}

// The in-process scores against the model's forward pass: the sum of the
// log-softmax at the continuation's positions, and whether each was the
// argmax. Contexts longer than a prompt chunk share their prefix; the
// scores must not change for it, nor with the batch size.
TEST(EvalLocalModel, ScoresAreTheForwardLogSoftmax) {
  const Tokenizer tok = test::tiny_tokenizer();
  ModelConfig config = test::tiny_config(tok.vocab_size());
  config.max_seq = 640;
  auto backend = make_cpu_backend<float>();
  Model<float> m(config, *backend);
  m.init(5);
  LoadedModel loaded{"mem", config,
                     std::vector<float>(m.params(), m.params() + m.layout().total())};

  std::vector<ScoreRequest> reqs;
  std::vector<std::int32_t> long_ctx;
  for (int i = 0; i < 300; ++i) long_ctx.push_back((i * 7 + 3) % config.vocab_size);
  for (int k = 0; k < 3; ++k)
    reqs.push_back({long_ctx, {static_cast<std::int32_t>(10 + k), 11, 12}});
  reqs.push_back({{5, 6, 7}, {8}});
  reqs.push_back({{1}, {2, 3, 4, 5}});
  std::vector<std::int32_t> too_long(700, 9);  // truncated on the left to the context
  reqs.push_back({too_long, {4, 4}});

  const auto forward_score = [&](const ScoreRequest& r) {
    std::vector<std::int32_t> all = r.context;
    all.insert(all.end(), r.continuation.begin(), r.continuation.end());
    std::size_t ctxlen = r.context.size();
    if (all.size() > static_cast<std::size_t>(config.max_seq)) {
      const std::size_t cut = all.size() - config.max_seq - 1;
      all.erase(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(cut));
      ctxlen -= cut;
      all.pop_back();  // the last token is only predicted
      all.push_back(r.continuation.back());
    }
    Inference<float> inf(config, loaded.params.data(), *backend);
    const std::size_t run = std::min(all.size(), static_cast<std::size_t>(config.max_seq));
    const std::span<const float> logits = inf.prefill(std::span(all).first(run), true);
    const auto V = static_cast<std::size_t>(config.vocab_size);
    Score s{0.0, true};
    for (std::size_t t = ctxlen; t < ctxlen + r.continuation.size(); ++t) {
      const auto row = logits.subspan((t - 1) * V, V);
      double mx = -INFINITY;
      for (float v : row) mx = std::max(mx, static_cast<double>(v));
      double sum = 0;
      for (float v : row) sum += std::exp(static_cast<double>(v) - mx);
      s.logprob +=
          static_cast<double>(row[static_cast<std::size_t>(all[t])]) - (mx + std::log(sum));
      if (argmax(row) != all[t]) s.is_greedy = false;
    }
    return s;
  };
  LocalModel model(loaded, &tok, "test");
  const std::vector<Score> got = model.score(reqs, nullptr);
  LocalModelOptions one;
  one.batch_size = 1;
  LocalModel alone(loaded, &tok, "test", one);
  for (std::size_t i = 0; i < reqs.size(); ++i) {
    const Score want = forward_score(reqs[i]);
    EXPECT_NEAR(got[i].logprob, want.logprob, 1e-4 * std::max(1.0, std::abs(want.logprob))) << i;
    EXPECT_EQ(got[i].is_greedy, want.is_greedy) << i;
    // Batched or alone, shared prefix or not: the same bits.
    const Score solo = alone.score({reqs[i]}, nullptr)[0];
    EXPECT_EQ(solo.logprob, got[i].logprob) << i;
  }
  // A greedy continuation is recognised as one.
  ScoreRequest g{{3, 4, 5}, {}};
  {
    Inference<float> inf(config, loaded.params.data(), *backend);
    g.continuation.push_back(argmax(inf.prefill(g.context)));
  }
  EXPECT_TRUE(model.score({g}, nullptr)[0].is_greedy);
}

}  // namespace
}  // namespace borealis
