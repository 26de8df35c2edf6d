// borealis eval end to end: the binary on a checkpoint, and the same tasks
// through a real `borealis serve` on a loopback port (--server), which must
// give the same scores (to 1e-5; the two paths run the same arithmetic, so
// they are in fact equal). The prompts fit the tiny model's 64-token
// context: past it, the two paths truncate as lm-eval's two backends do
// (see docs/eval.md), and differ.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>

#include "data/indexed_dataset.h"
#include "serve/server_process.h"
#include "test_util.h"
#include "tiny_checkpoint.h"
#include "train/train_fixture.h"

namespace borealis {
namespace {

using nlohmann::json;

std::vector<json> read_jsonl(const std::filesystem::path& path) {
  std::vector<json> out;
  std::istringstream in(test::read_file(path));
  std::string line;
  while (std::getline(in, line)) out.push_back(json::parse(line));
  return out;
}

class EvalCli : public ::testing::Test {
 protected:
  void SetUp() override {
    const Tokenizer tok = test::tiny_tokenizer();
    test::write_checkpoint(dir_ / "ckpt", tok, 11);
    std::string mc, ll;
    for (int i = 0; i < 12; ++i) {
      mc += json{{"q", "sky " + std::to_string(i)},
                 {"opts", {"green", "violet", "the lake", "papers"}},
                 {"gold", i % 4}}
                .dump() +
            "\n";
      ll += json{{"a", "Scientists train models on"}, {"b", i % 2 ? "papers" : "lights"}}.dump() +
            "\n";
    }
    test::write_file(dir_ / "mc.jsonl", mc);
    test::write_file(dir_ / "ll.jsonl", ll);
    test::write_file(
        dir_ / "mc.toml",
        "name = \"mc\"\ntype = \"multiple_choice\"\ntest = \"mc.jsonl\"\nfewshot = \"mc.jsonl\"\n"
        "text = \"{q}. Answer:\"\nchoices_field = \"opts\"\ngold = \"{gold}\"\n");
    test::write_file(
        dir_ / "ll.toml",
        "name = \"ll\"\ntype = \"loglikelihood\"\ntest = \"ll.jsonl\"\ntext = \"{a}\"\n"
        "target = \" {b}\"\n");
  }
  std::vector<std::string> task_args() const {
    return {"--task-file",       (dir_ / "mc.toml").string(),
            "--task-file",       (dir_ / "ll.toml").string(),
            "--tasks",           "mc,ll",
            "--num-fewshot",     "1",
            "--bootstrap-iters", "100",
            "--log-samples"};
  }
  test::TempDir dir_;
};

TEST_F(EvalCli, ServerScoresEqualInProcessScores) {
  std::vector<std::string> local = {"--threads",
                                    "1",
                                    "eval",
                                    "--checkpoint",
                                    (dir_ / "ckpt").string(),
                                    "-o",
                                    (dir_ / "local.json").string()};
  for (const auto& a : task_args()) local.push_back(a);
  const test::RunResult l = test::run_borealis(local);
  ASSERT_EQ(l.exit_code, 0) << l.err;
  EXPECT_NE(l.out.find("| mc "), std::string::npos) << l.out;

  test::ServerProcess server(dir_ / "ckpt", {});
  const std::string url = "http://127.0.0.1:" + std::to_string(server.port()) + "/v1";
  for (const bool remote_tokenizer : {false, true}) {
    const std::string name = remote_tokenizer ? "remote" : "server";
    std::vector<std::string> args = {"eval", "--server", url, "-o",
                                     (dir_ / (name + ".json")).string()};
    if (!remote_tokenizer) {
      args.push_back("-t");
      args.push_back((dir_ / "ckpt/tokenizer.json").string());
    }
    for (const auto& a : task_args()) args.push_back(a);
    const test::RunResult s = test::run_borealis(args);
    ASSERT_EQ(s.exit_code, 0) << s.err;
    const json lr = json::parse(test::read_file(dir_ / "local.json"));
    const json sr = json::parse(test::read_file(dir_ / (name + ".json")));
    for (const char* task : {"mc", "ll"}) {
      for (const auto& [key, value] : lr["results"][task].items()) {
        if (value.is_number()) {
          EXPECT_NEAR(sr["results"][task][key].get<double>(), value.get<double>(), 1e-5)
              << task << key;
        }
      }
      const auto ls = read_jsonl(dir_ / fmt::format("local_samples_{}.jsonl", task));
      const auto ss = read_jsonl(dir_ / fmt::format("{}_samples_{}.jsonl", name, task));
      ASSERT_EQ(ls.size(), 12u);
      ASSERT_EQ(ss.size(), ls.size());
      for (std::size_t d = 0; d < ls.size(); ++d) {
        EXPECT_EQ(ss[d]["arguments"], ls[d]["arguments"]);
        for (std::size_t i = 0; i < ls[d]["resps"].size(); ++i) {
          const double a = std::stod(ls[d]["resps"][i][0][0].get<std::string>());
          const double b = std::stod(ss[d]["resps"][i][0][0].get<std::string>());
          EXPECT_NEAR(a, b, 1e-5) << task << " doc " << d << " request " << i;
          EXPECT_EQ(ls[d]["resps"][i][0][1], ss[d]["resps"][i][0][1]);
        }
      }
    }
  }
}

TEST_F(EvalCli, ErrorsAreOneLine) {
  const test::RunResult both =
      test::run_borealis({"eval", "--checkpoint", (dir_ / "ckpt").string(), "--server",
                          "http://127.0.0.1:1/v1", "--tasks", "x"});
  EXPECT_EQ(both.exit_code, 1);
  EXPECT_NE(both.err.find("error: give exactly one of --checkpoint and --server (eval)"),
            std::string::npos)
      << both.err;
  const test::RunResult data =
      test::run_borealis({"eval", "--checkpoint", (dir_ / "ckpt").string(), "--tasks", "piqa",
                          "--data-dir", dir_.path().string()});
  EXPECT_NE(data.err.find("error: no validation split for task piqa"), std::string::npos)
      << data.err;
  // A server that is not there: retried, then reported with the address.
  const test::RunResult gone =
      test::run_borealis({"eval", "--server", "http://127.0.0.1:9/v1", "--tasks", "piqa",
                          "--retries", "1", "--retry-wait", "0.1"});
  EXPECT_EQ(gone.exit_code, 1);
  EXPECT_NE(gone.err.find("http://127.0.0.1:9/v1/models"), std::string::npos) << gone.err;
}

// The contamination report flags the docs whose text is in the corpus, and
// eval --decontaminate scores the others apart.
TEST_F(EvalCli, ContaminationReportAndCleanScores) {
  const std::vector<std::string> questions = {
      "Quartz crystals grow slowly in caves under the desert floor",
      "The aurora borealis lights the northern sky in green and violet",
      "Bees dance to tell the hive where the flowers bloom",
      "Tides follow the moon across the wide gray ocean",
      "Scientists train language models on papers about the northern lights",
      "Volcanoes vent hot ash into the cold winter air"};
  std::string docs, corpus;
  for (std::size_t i = 0; i < questions.size(); ++i) {
    docs += json{{"q", questions[i]}, {"opts", {"green", "violet"}}, {"gold", i % 2}}.dump() + "\n";
  }
  corpus += json{{"text", "Unrelated text about bytes."}}.dump() + "\n";
  corpus += json{{"text", questions[1] + ". Answer:"}}.dump() + "\n";
  corpus += json{{"text", "More text. " + questions[4] + ". Answer: violet"}}.dump() + "\n";
  test::write_file(dir_ / "q.jsonl", docs);
  test::write_file(dir_ / "corpus.jsonl", corpus);
  test::write_file(dir_ / "q.toml",
                   "name = \"q\"\ntype = \"multiple_choice\"\ntest = \"q.jsonl\"\n"
                   "text = \"{q}. Answer:\"\nchoices_field = \"opts\"\ngold = \"{gold}\"\n");
  const std::string tok = (dir_ / "ckpt/tokenizer.json").string();
  const test::RunResult prep =
      test::run_borealis({"data", "prepare", "-i", (dir_ / "corpus.jsonl").string(), "-t", tok,
                          "-o", (dir_ / "corpus").string()});
  ASSERT_EQ(prep.exit_code, 0) << prep.err;
  const test::RunResult c =
      test::run_borealis({"data", "contamination", "--data", (dir_ / "corpus").string(),
                          "--task-file", (dir_ / "q.toml").string(), "--tasks", "q", "-t", tok,
                          "-o", (dir_ / "report.json").string()});
  ASSERT_EQ(c.exit_code, 0) << c.err;
  const json report = json::parse(test::read_file(dir_ / "report.json"));
  EXPECT_EQ(report["tasks"]["q"]["flagged_doc_ids"], json::array({1, 4})) << report.dump();
  EXPECT_EQ(report["tasks"]["q"]["docs"], 6);
  EXPECT_NE(c.out.find("| q | 6 | 2 | 33.33% |"), std::string::npos) << c.out;

  const test::RunResult e = test::run_borealis(
      {"eval", "--checkpoint", (dir_ / "ckpt").string(), "--task-file", (dir_ / "q.toml").string(),
       "--tasks", "q", "--decontaminate", (dir_ / "report.json").string(), "--log-samples", "-o",
       (dir_ / "q.json").string()});
  ASSERT_EQ(e.exit_code, 0) << e.err;
  const json r = json::parse(test::read_file(dir_ / "q.json"))["results"]["q"];
  const auto samples = read_jsonl(dir_ / "q_samples_q.jsonl");
  double clean = 0;
  for (std::size_t d = 0; d < samples.size(); ++d) {
    if (d != 1 && d != 4) clean += samples[d]["acc"].get<double>();
  }
  EXPECT_DOUBLE_EQ(r["acc_decontaminate,none"].get<double>(), clean / 4);
}

}  // namespace
}  // namespace borealis

namespace borealis {
namespace {

// Dataset perplexity: every token but each document's first is scored once
// whatever the stride; a document shorter than the context is then scored
// with its whole prefix in every window, so the stride cannot change its
// log-likelihood.
TEST_F(EvalCli, DatasetPerplexityWindows) {
  // Weights ten times the initial scale, so each token's score depends on
  // its context.
  test::write_checkpoint(dir_ / "big", test::tiny_tokenizer(), 12, true, [](Model<float>& m) {
    for (std::int64_t i = 0; i < m.num_params(); ++i) m.params()[i] *= 10.0f;
  });
  std::string corpus;
  for (const std::string& t : test::kTinyCorpus) corpus += json{{"text", t}}.dump() + "\n";
  test::write_file(dir_ / "corpus.jsonl", corpus);
  const test::RunResult prep = test::run_borealis(
      {"data", "prepare", "-i", (dir_ / "corpus.jsonl").string(), "-t",
       (dir_ / "big/tokenizer.json").string(), "-o", (dir_ / "corpus").string()});
  ASSERT_EQ(prep.exit_code, 0) << prep.err;
  const IndexedDataset data((dir_ / "corpus").string());
  // Every document has a token; each but its first is scored.
  const std::uint64_t scored = data.tokens() - data.documents();
  ASSERT_GT(data.tokens(), 4 * data.documents());  // documents span several windows of 3
  const auto run = [&](const std::string& stride) {
    const test::RunResult r =
        test::run_borealis({"--threads", "1", "eval", "--checkpoint", (dir_ / "big").string(),
                            "--data", (dir_ / "corpus").string(), "--stride", stride, "--json"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return json::parse(r.out)["perplexity"][(dir_ / "corpus").string()];
  };
  const json one = run("1");
  const json three = run("3");
  const json whole = run("0");
  EXPECT_EQ(one["documents"].get<std::size_t>(), data.documents());
  for (const json* r : {&one, &three, &whole}) {
    EXPECT_EQ((*r)["tokens"].get<std::uint64_t>(), scored);
  }
  EXPECT_NEAR(one["nll"].get<double>(), three["nll"].get<double>(),
              1e-5 * one["nll"].get<double>());
  EXPECT_NEAR(one["nll"].get<double>(), whole["nll"].get<double>(),
              1e-5 * one["nll"].get<double>());
  const test::RunResult bad =
      test::run_borealis({"eval", "--checkpoint", (dir_ / "ckpt").string(), "--data",
                          (dir_ / "corpus").string(), "--stride", "100000"});
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_TRUE(bad.err.starts_with("error: ")) << bad.err;
}

// A training run's validation part scored by eval gives the loss the run's
// own validation logged (the same tokens; the forward of the trainer and of
// inference differ only in the rounding of their matmuls).
TEST(EvalValidation, PerplexityOfARunsValidationPartIsItsLoss) {
  TrainFixture f;
  const std::filesystem::path run = f.dir() / "run";
  const std::filesystem::path cfg = f.write_config("c.toml", run);
  const test::RunResult t = test::run_borealis({"--threads", "1", "train", cfg.string()});
  ASSERT_EQ(t.exit_code, 0) << t.err;
  double last_loss = -1;
  std::istringstream in(test::read_file(run / "metrics.jsonl"));
  std::string line;
  while (std::getline(in, line)) {
    const json j = json::parse(line);
    if (j.value("kind", "") == "valid") last_loss = j["loss"].get<double>();
  }
  ASSERT_GT(last_loss, 0);
  const test::RunResult e =
      test::run_borealis({"--threads", "1", "eval", "--checkpoint", run.string(), "--valid-of",
                          run.string(), "--json"});
  ASSERT_EQ(e.exit_code, 0) << e.err;
  const json r = json::parse(e.out)["perplexity"]["validation"];
  EXPECT_EQ(r["samples"], 4);  // eval.batches 2 x micro_batch 2
  EXPECT_EQ(r["tokens"], 4 * 32);
  EXPECT_NEAR(r["loss"].get<double>(), last_loss, 1e-4 * last_loss);
}

}  // namespace
}  // namespace borealis
