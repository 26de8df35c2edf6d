// Benchmark tasks during training ([eval] tasks): the config keys and their
// errors (at config load, or at start-up before any step for the tasks'
// data), and a real run of a tiny model whose eval records in metrics.jsonl
// equal what `borealis eval` gives on the checkpoint of the same step, and
// which `borealis plot` draws.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "core/config.h"
#include "test_util.h"
#include "train/metrics_reader.h"
#include "train/train_config.h"
#include "train/train_fixture.h"
#include "train/trainer.h"

namespace borealis {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

bool contains(const std::string& text, const std::string& what) {
  return text.find(what) != std::string::npos;
}

// The trainer's corpus, and three tasks on its words: a custom multiple-choice
// task, a custom loglikelihood task, and arc_easy from a data folder in the
// data set's own schema (allenai/ai2_arc).
class TrainTasks : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::vector<std::string> w = {"alpha", "beta",  "gamma", "delta", "epsilon", "zeta",
                                        "eta",   "theta", "iota",  "kappa", "lambda",  "mu"};
    std::string mc, ll, arc;
    for (std::size_t i = 0; i < 8; ++i) {
      mc += json{{"q", w[i] + " " + w[i + 1]},
                 {"opts", {w[(i + 2) % 12], w[(i + 5) % 12], w[(i + 7) % 12]}},
                 {"gold", i % 3}}
                .dump() +
            "\n";
      ll += json{{"a", w[i] + " " + w[(i + 1) % 12]}, {"b", w[(i + 2) % 12]}}.dump() + "\n";
      arc += json{{"id", fmt::format("Mercury_{}", i)},
                  {"question", w[i] + " " + w[(i + 2) % 12] + "?"},
                  {"choices",
                   {{"text", {w[(i + 4) % 12], w[(i + 3) % 12], w[(i + 9) % 12], w[(i + 1) % 12]}},
                    {"label", {"A", "B", "C", "D"}}}},
                  {"answerKey", std::string(1, static_cast<char>('A' + i % 4))}}
                 .dump() +
             "\n";
    }
    test::write_file(f_.dir() / "mc.jsonl", mc);
    test::write_file(f_.dir() / "ll.jsonl", ll);
    test::write_file(
        f_.dir() / "mc.toml",
        "name = \"mc\"\ntype = \"multiple_choice\"\ntest = \"mc.jsonl\"\nfewshot = \"mc.jsonl\"\n"
        "text = \"{q}\"\nchoices_field = \"opts\"\ngold = \"{gold}\"\n");
    test::write_file(f_.dir() / "ll.toml",
                     "name = \"ll\"\ntype = \"loglikelihood\"\ntest = \"ll.jsonl\"\ntext = "
                     "\"{a}\"\ntarget = \" {b}\"\n");
    fs::create_directories(data_ / "arc_easy");
    test::write_file(data_ / "arc_easy" / "test.jsonl", arc);
    test::write_file(data_ / "arc_easy" / "train.jsonl", arc);
  }

  // [eval] keys running the three tasks (appended to the fixture's [eval]).
  std::string task_keys() const {
    return fmt::format(
        "tasks = [\"mc\", \"ll\", \"arc_easy\"]\ntask_files = [\"{}\", \"{}\"]\n"
        "data_dir = \"{}\"\nlimit = 5\nnum_fewshot = 1\n",
        (f_.dir() / "mc.toml").string(), (f_.dir() / "ll.toml").string(), data_.string());
  }

  Config load(const fs::path& file, const std::vector<std::string>& overrides = {}) const {
    return load_config(train_config_schema(), file, overrides);
  }

  // The error line of a run of `file`, or "no error".
  std::string run_error(const fs::path& file, const std::vector<std::string>& overrides) const {
    return test::error_line([&] {
      TrainRunOptions o;
      o.progress = false;
      run_training(load(file, overrides), o);
    });
  }

  TrainFixture f_;
  fs::path data_ = f_.dir() / "eval-data";
};

TEST_F(TrainTasks, ConfigKeys) {
  const fs::path cfg = f_.write_config("c.toml", f_.dir() / "run", task_keys());
  TrainSettings s = read_train_settings(load(cfg));
  EXPECT_TRUE(s.tasks.enabled());
  EXPECT_EQ(s.tasks.names, (std::vector<std::string>{"mc", "ll", "arc_easy"}));
  EXPECT_EQ(s.tasks.task_files,
            (std::vector<fs::path>{f_.dir() / "mc.toml", f_.dir() / "ll.toml"}));
  EXPECT_EQ(s.tasks.data_dir, data_);
  EXPECT_EQ(s.tasks.limit, 5u);
  EXPECT_EQ(s.tasks.num_fewshot, 1);

  // Off by default; --set takes a comma-separated list.
  const fs::path plain = f_.write_config("p.toml", f_.dir() / "run");
  s = read_train_settings(load(plain));
  EXPECT_FALSE(s.tasks.enabled());
  EXPECT_EQ(s.tasks.data_dir, fs::path("."));
  EXPECT_EQ(s.tasks.limit, 0u);
  EXPECT_EQ(s.tasks.num_fewshot, 0);
  s = read_train_settings(
      load(plain, {"eval.tasks=arc_easy,arc_challenge", "eval.data_dir=" + data_.string()}));
  EXPECT_EQ(s.tasks.names, (std::vector<std::string>{"arc_easy", "arc_challenge"}));
  // The task keys do not change what the run computes: resuming with others is allowed.
  for (const char* key :
       {"eval.tasks", "eval.task_files", "eval.data_dir", "eval.limit", "eval.num_fewshot"}) {
    EXPECT_FALSE(is_trajectory_key(key)) << key;
  }
}

TEST_F(TrainTasks, ConfigErrorsNameTheKey) {
  const fs::path cfg = f_.write_config("c.toml", f_.dir() / "run", task_keys());
  const auto err = [&](const std::vector<std::string>& overrides) {
    return test::error_line([&] { read_train_settings(load(cfg, overrides)); });
  };
  EXPECT_EQ(err({}), "no error");
  EXPECT_EQ(err({"eval.tasks=mc,arc_esay"}),
            "error: eval.tasks: unknown task \"arc_esay\" (did you mean \"arc_easy\"?) (--set "
            "eval.tasks=mc,arc_esay)");
  // A task file's tasks must be asked for by name.
  EXPECT_TRUE(contains(err({"eval.tasks="}),
                       "error: eval.task_files is set but eval.tasks names no task to run ("))
      << err({"eval.tasks="});
  // A task file that is not there is named.
  const std::string missing = err({"eval.task_files=" + (f_.dir() / "nope.toml").string()});
  EXPECT_TRUE(contains(missing, (f_.dir() / "nope.toml").string())) << missing;
  EXPECT_EQ(err({"eval.data_dir=" + (f_.dir() / "nowhere").string()}),
            fmt::format("error: eval.data_dir {} is not a directory (the built-in tasks read "
                        "DIR/<task>/<split>.jsonl) (--set eval.data_dir={})",
                        (f_.dir() / "nowhere").string(), (f_.dir() / "nowhere").string()));
  // Custom tasks alone need no data folder.
  EXPECT_EQ(err({"eval.tasks=mc", "eval.data_dir=" + (f_.dir() / "nowhere").string()}), "no error");
  EXPECT_TRUE(contains(err({"eval.limit=-1"}), "error: eval.limit must be in [0, "));
  EXPECT_TRUE(contains(err({"eval.num_fewshot=-2"}), "error: eval.num_fewshot must be in [0, "));
}

// Missing or bad task data stops the run at start-up: no step is trained.
TEST_F(TrainTasks, BadDataFailsBeforeTheFirstStep) {
  const fs::path run = f_.dir() / "run";
  const fs::path cfg = f_.write_config("c.toml", run, task_keys());
  const fs::path empty = f_.dir() / "empty-data";
  fs::create_directories(empty);
  EXPECT_EQ(run_error(cfg, {"eval.data_dir=" + empty.string()}),
            fmt::format("error: no test split for task arc_easy (looked for {}, {}, {}, ...) "
                        "(eval.data_dir {})",
                        (empty / "arc_easy" / "test.jsonl").string(),
                        (empty / "arc_easy" / "test.json").string(),
                        (empty / "arc_easy" / "test.ndjson").string(), empty.string()));
  EXPECT_FALSE(fs::exists(run / "metrics.jsonl"));

  fs::create_directories(empty / "arc_easy");
  test::write_file(empty / "arc_easy" / "test.jsonl", "\n");
  EXPECT_EQ(run_error(cfg, {"eval.data_dir=" + empty.string(), "eval.num_fewshot=0"}),
            "error: task arc_easy has no records in its test split (eval.tasks)");

  // A record that does not fit the schema, named by file and line.
  test::write_file(
      empty / "arc_easy" / "test.jsonl",
      test::read_file(data_ / "arc_easy" / "test.jsonl") + R"({"question":"x"})" + "\n");
  const std::string bad =
      run_error(cfg, {"eval.data_dir=" + empty.string(), "eval.num_fewshot=0", "eval.limit=0"});
  EXPECT_EQ(bad, "error: missing field \"choices\" (" +
                     (empty / "arc_easy" / "test.jsonl").string() + ":9)");

  // More few-shot examples than the split holds.
  EXPECT_EQ(run_error(cfg, {"eval.tasks=mc", "eval.num_fewshot=20"}),
            "error: task mc: 20 few-shot examples asked for, its fewshot split has 8 "
            "(eval.num_fewshot)");
  EXPECT_FALSE(fs::exists(run / "metrics.jsonl"));
}

std::vector<json> eval_records(const fs::path& run) {
  std::vector<json> out;
  std::istringstream in(test::read_file(run / "metrics.jsonl"));
  for (std::string line; std::getline(in, line);) {
    json j = json::parse(line);
    if (j["kind"] == "eval") out.push_back(std::move(j));
  }
  return out;
}

TEST_F(TrainTasks, ScoresAtEveryValidationEqualTheCheckpoints) {
  const fs::path run = f_.dir() / "run", plain = f_.dir() / "plain";
  // Validation (and a checkpoint) at steps 4, 8 and 12.
  const fs::path cfg = f_.write_config("c.toml", run, task_keys());
  const auto r = test::run_borealis({"train", cfg.string(), "--set", "checkpoint.keep=3"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.err,
                       "benchmark tasks at every validation: mc, ll, arc_easy (1-shot, "
                       "the first 5 docs of each)"))
      << r.err;
  for (const int step : {4, 8, 12}) {
    EXPECT_TRUE(contains(r.out, fmt::format("eval at step {}: mc acc ", step))) << r.out;
    EXPECT_TRUE(contains(r.out, fmt::format("eval at step {}: mc acc_norm ", step))) << r.out;
    EXPECT_TRUE(contains(r.out, fmt::format("eval at step {}: ll perplexity ", step))) << r.out;
    EXPECT_TRUE(contains(r.out, fmt::format("eval at step {}: arc_easy acc ", step))) << r.out;
  }

  // One record per task and validation point, in the tasks' order.
  const std::vector<json> records = eval_records(run);
  ASSERT_EQ(records.size(), 9u);
  std::map<int, std::map<std::string, json>> by_step;
  for (std::size_t i = 0; i < records.size(); ++i) {
    const json& e = records[i];
    EXPECT_EQ(e["step"].get<int>(), 4 * (1 + static_cast<int>(i) / 3));
    EXPECT_EQ(e["tokens"].get<int>(), e["step"].get<int>() * 4 * 32);
    EXPECT_EQ(e["task"], (std::vector<std::string>{"mc", "ll", "arc_easy"})[i % 3]);
    EXPECT_TRUE(e.contains("elapsed_s") && e.contains("eval_s")) << e.dump();
    by_step[e["step"].get<int>()][e["task"].get<std::string>()] = e;
  }
  EXPECT_TRUE(by_step[4]["mc"].contains("acc_norm"));
  EXPECT_TRUE(by_step[4]["mc"].contains("acc_stderr"));
  EXPECT_TRUE(by_step[4]["ll"].contains("perplexity"));

  // What `borealis eval` gives on each step's checkpoint, metric by metric.
  for (const auto& [step, tasks] : by_step) {
    SCOPED_TRACE(fmt::format("step {}", step));
    const auto e = test::run_borealis(
        {"eval", "--checkpoint", (run / "checkpoints" / fmt::format("step-{:08}", step)).string(),
         "--task-file", (f_.dir() / "mc.toml").string(), "--task-file",
         (f_.dir() / "ll.toml").string(), "--tasks", "mc,ll,arc_easy", "--data-dir", data_.string(),
         "--limit", "5", "--num-fewshot", "1", "--json"});
    ASSERT_EQ(e.exit_code, 0) << e.err;
    const json results = json::parse(e.out)["results"];
    for (const auto& [task, record] : tasks) {
      std::set<std::string> compared;
      for (const auto& [key, value] : results[task].items()) {
        if (!key.ends_with(",none") || !value.is_number()) continue;
        const std::string metric = key.substr(0, key.size() - 5);
        ASSERT_TRUE(record.contains(metric)) << task << " " << metric;
        EXPECT_EQ(record[metric].get<double>(), value.get<double>()) << task << " " << metric;
        compared.insert(metric);
      }
      EXPECT_TRUE(compared.contains(task == "ll" ? "perplexity" : "acc")) << task;
    }
  }

  // Evaluating does not change the training: the same run without tasks
  // ends with the same weights.
  const fs::path plain_cfg = f_.write_config("p.toml", plain);
  const auto p = test::run_borealis({"train", plain_cfg.string(), "-q"});
  ASSERT_EQ(p.exit_code, 0) << p.err;
  EXPECT_EQ(test::read_file(run / "checkpoints" / "step-00000012" / "model.safetensors"),
            test::read_file(plain / "checkpoints" / "step-00000012" / "model.safetensors"));
  EXPECT_TRUE(eval_records(plain).empty());

  // The metrics reader returns them, by step and then task name.
  const MetricsLog log = read_metrics(run / "metrics.jsonl");
  ASSERT_EQ(log.eval.size(), 9u);
  EXPECT_EQ(log.eval[0].step, 4);
  EXPECT_EQ(log.eval[0].task, "arc_easy");
  EXPECT_EQ(log.eval[1].task, "ll");
  EXPECT_EQ(log.eval[2].task, "mc");
  EXPECT_EQ(log.eval[8].step, 12);
  EXPECT_EQ(log.eval[8].tokens, 12 * 4 * 32);
  EXPECT_EQ(log.eval[8].metrics.at("acc"), by_step[12]["mc"]["acc"].get<double>());
  EXPECT_EQ(log.eval[7].metrics.at("perplexity"), by_step[12]["ll"]["perplexity"].get<double>());
  EXPECT_FALSE(log.eval[8].metrics.contains("elapsed_s"));
  EXPECT_EQ(log.lines,
            log.train.size() + log.valid.size() + log.eval.size() + log.replaced + log.other);

  // ... and `borealis plot` draws them, with each task's last scores in the summary.
  const auto plot = test::run_borealis({"plot", run.string(), "--x", "steps", "--no-terminal"});
  ASSERT_EQ(plot.exit_code, 0) << plot.err;
  EXPECT_TRUE(fs::exists(run / "plots" / "eval_steps.png"));
  EXPECT_TRUE(contains(
      plot.out, fmt::format("eval mc: acc {:.4f} ± ", by_step[12]["mc"]["acc"].get<double>())))
      << plot.out;
  EXPECT_TRUE(contains(plot.out, "eval ll: acc ")) << plot.out;
  EXPECT_TRUE(contains(plot.out, "(step 12)\n")) << plot.out;
  EXPECT_TRUE(contains(plot.out, ", 9 eval, ")) << plot.out;
  EXPECT_TRUE(contains(plot.out, "wrote 5 PNG files")) << plot.out;
}

}  // namespace
}  // namespace borealis
