// A run that looks after itself (single process): the stop file, skipped
// data steps (train.skip_steps) and the straggler analysis. The multi-rank
// side (restarts, faults, stragglers on real ranks) is tests/dist/soak_test.py.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/error.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/straggler.h"
#include "train/train_config.h"
#include "train/train_fixture.h"
#include "train/trainer.h"

namespace borealis {
namespace {

namespace fs = std::filesystem;

TrainRunResult train(const fs::path& file, const std::vector<std::string>& overrides = {}) {
  TrainRunOptions o;
  o.progress = false;
  return run_training(load_config(train_config_schema(), file, overrides), o);
}

std::vector<nlohmann::json> records(const fs::path& run_dir, const std::string& kind) {
  std::vector<nlohmann::json> out;
  std::ifstream in(run_dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    if (j["kind"] == kind) out.push_back(std::move(j));
  }
  return out;
}

TEST(RobustRun, StopFileStopsWithACheckpointAndIsRemoved) {
  TrainFixture f;
  const fs::path run = f.dir() / "run";
  const fs::path cfg = f.write_config("c.toml", run);
  fs::create_directories(run);
  test::write_file(run / "STOP", "");
  const auto r = train(cfg, {"train.stop_file=STOP", "eval.batches=0"});
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(r.steps, 1);
  EXPECT_NE(r.stop_reason.find("stop file"), std::string::npos) << r.stop_reason;
  EXPECT_FALSE(fs::exists(run / "STOP")) << "the stop file must be consumed";
  std::vector<std::pair<fs::path, std::string>> skipped;
  const auto ck = latest_checkpoint(run / "checkpoints", skipped);
  ASSERT_TRUE(ck.has_value());
  EXPECT_EQ(ck->state.step, 1);
  // The resumed run is not stopped again by the same file.
  const auto rest = train(cfg, {"train.stop_file=STOP", "eval.batches=0"});
  EXPECT_FALSE(rest.stopped);
  EXPECT_EQ(rest.first_step, 1);
  EXPECT_EQ(rest.steps, 12);
}

TEST(RobustRun, SkipStepsReadTheirDataAndMakeNoUpdate) {
  TrainFixture f;
  // Every step skipped: the weights stay the initial ones, and the data of
  // all steps is consumed.
  const fs::path all = f.dir() / "all";
  const auto a = train(f.write_config("a.toml", all),
                       {"train.steps=4", "train.skip_steps=[\"1-3\", \"4\"]", "eval.batches=0"});
  EXPECT_EQ(a.steps, 4);
  EXPECT_EQ(a.skipped_steps, 4);
  const fs::path none = f.dir() / "none";
  // An update of 1e-30 leaves every f32 weight as it was.
  train(f.write_config("n.toml", none),
        {"train.steps=1", "optim.warmup_steps=0", "optim.lr=1e-30", "optim.lr_min=0",
         "optim.weight_decay=0", "eval.batches=0"});
  std::vector<std::pair<fs::path, std::string>> skipped;
  const auto ck_all = latest_checkpoint(all / "checkpoints", skipped);
  const auto ck_none = latest_checkpoint(none / "checkpoints", skipped);
  ASSERT_TRUE(ck_all && ck_none);
  EXPECT_EQ(test::read_file(ck_all->dir / "model.safetensors"),
            test::read_file(ck_none->dir / "model.safetensors"));
  EXPECT_EQ(ck_all->state.next_sample, 4u * 4u);
  EXPECT_EQ(ck_all->state.tokens, 4u * 4u * 32u);

  // Steps 2-3 skipped: step 1 as in a plain run, steps 2 and 3 logged as
  // skipped with no loss, and step 4 trains on step 4's data.
  const fs::path some = f.dir() / "some";
  train(f.write_config("s.toml", some),
        {"train.steps=4", "train.skip_steps=[\"2-3\"]", "eval.batches=0"});
  const fs::path plain = f.dir() / "plain";
  train(f.write_config("p.toml", plain), {"train.steps=4", "eval.batches=0"});
  const auto s = records(some, "train"), p = records(plain, "train");
  ASSERT_EQ(s.size(), 4u);
  EXPECT_EQ(s[0]["loss"], p[0]["loss"]);
  for (int i : {1, 2}) {
    EXPECT_TRUE(s[i]["loss"].is_null());
    EXPECT_TRUE(s[i]["skipped"].get<bool>());
    EXPECT_EQ(s[i]["skip_reason"], "train.skip_steps");
  }
  EXPECT_FALSE(s[3]["skipped"].get<bool>());
  EXPECT_TRUE(s[3]["loss"].is_number());
  EXPECT_EQ(s[3]["tokens"], p[3]["tokens"]);
}

TEST(RobustRun, AsynchronousCheckpointsEqualSynchronousOnes) {
  TrainFixture f;
  const fs::path async = f.dir() / "async", sync = f.dir() / "sync";
  const auto a = train(f.write_config("a.toml", async),
                       {"checkpoint.every=2", "checkpoint.keep=10", "checkpoint.async=true"});
  const auto b = train(f.write_config("b.toml", sync),
                       {"checkpoint.every=2", "checkpoint.keep=10", "checkpoint.async=false"});
  EXPECT_EQ(a.last_checkpoint.filename(), b.last_checkpoint.filename());
  // Every checkpoint is published, none is left half-written, and each
  // holds the same bytes as the synchronous run's.
  const std::vector<std::string> names = test::list_dir(async / "checkpoints");
  EXPECT_EQ(names, test::list_dir(sync / "checkpoints"));
  ASSERT_EQ(names.size(), 6u);
  for (const std::string& name : names) {
    for (const char* file : {"model.safetensors", "optimizer.safetensors"}) {
      EXPECT_EQ(test::read_file(async / "checkpoints" / name / file),
                test::read_file(sync / "checkpoints" / name / file))
          << name << "/" << file;
    }
    EXPECT_EQ(verify_checkpoint(async / "checkpoints" / name).state.next_sample,
              verify_checkpoint(sync / "checkpoints" / name).state.next_sample);
  }
  // A resume from an asynchronous checkpoint continues exactly.
  const fs::path resumed = f.dir() / "resumed";
  const fs::path cfg = f.write_config("r.toml", resumed);
  TrainRunOptions o;
  o.progress = false;
  o.stop_at_step = 5;
  run_training(load_config(train_config_schema(), cfg, {"checkpoint.every=2"}), o);
  o.stop_at_step = 0;
  const auto rest =
      run_training(load_config(train_config_schema(), cfg, {"checkpoint.every=2"}), o);
  EXPECT_EQ(rest.first_step, 5);
  EXPECT_EQ(test::read_file(rest.last_checkpoint / "model.safetensors"),
            test::read_file(a.last_checkpoint / "model.safetensors"));
}

TEST(RobustRun, SkipStepRanges) {
  EXPECT_EQ(parse_step_range("7", "k").first, 7);
  EXPECT_EQ(parse_step_range("7", "k").last, 7);
  EXPECT_EQ(parse_step_range("3-9", "k").last, 9);
  for (const char* bad : {"", "0", "-3", "4-2", "1-", "a", "2-x", "1-2-3"}) {
    EXPECT_THROW(parse_step_range(bad, "k"), Error) << bad;
  }
  TrainFixture f;
  const fs::path cfg = f.write_config("c.toml", f.dir() / "run");
  try {
    train(cfg, {"train.skip_steps=[\"5-2\"]"});
    ADD_FAILURE() << "a backwards range was accepted";
  } catch (const Error& e) {
    EXPECT_NE(e.message().find("train.skip_steps"), std::string::npos) << e.message();
  }
}

// Pipeline stages do different work: a rank compares with its own stage.
TEST(Stragglers, RanksCompareWithinTheirRole) {
  const std::vector<PhaseTimes> ranks = {{0.10, 0, 0.2}, {0.10, 0, 0.2}, {0.10, 0, 0.2},
                                         {0.40, 0, 0.0}, {0.40, 0, 0.0}, {0.80, 0, 0.0}};
  // One role: the whole second stage looks slow.
  const StragglerReport flat = analyze_stragglers(ranks, {}, 1.5);
  EXPECT_EQ(flat.stragglers.size(), 3u);
  // By stage: only rank 5, twice its stage's median.
  const StragglerReport staged = analyze_stragglers(ranks, {}, 1.5, 3, {0, 0, 0, 1, 1, 1});
  ASSERT_EQ(staged.stragglers.size(), 1u);
  EXPECT_EQ(staged.stragglers[0].rank, 5);
  EXPECT_EQ(staged.stragglers[0].role, 1);
  EXPECT_NEAR(staged.stragglers[0].ratio, 2.0, 1e-12);
  EXPECT_EQ(staged.stragglers[0].slow_phase, "compute");
}

TEST(Stragglers, TheSlowRankIsNamedWithItsSlowPhase) {
  // Rank 2 computes 3x longer; the others wait for it in communication.
  std::vector<PhaseTimes> ranks = {
      {0.10, 0.01, 0.20}, {0.11, 0.01, 0.19}, {0.30, 0.01, 0.01}, {0.10, 0.01, 0.20}};
  const StragglerReport r = analyze_stragglers(ranks, {"a", "b", "c", "d"}, 1.5);
  ASSERT_EQ(r.slowest.size(), 3u);
  EXPECT_EQ(r.slowest[0].rank, 2);
  EXPECT_EQ(r.slowest[0].host, "c");
  EXPECT_EQ(r.slowest[0].slow_phase, "compute");
  EXPECT_NEAR(r.slowest[0].ratio, 0.31 / 0.115, 1e-9);
  EXPECT_GT(r.slowest[0].zscore, 3);
  ASSERT_EQ(r.stragglers.size(), 1u);
  EXPECT_EQ(r.stragglers[0].rank, 2);
  EXPECT_NEAR(r.median_busy, 0.115, 1e-12);

  // A rank waiting on its data loader.
  ranks[1] = {0.10, 0.15, 0.02};
  const StragglerReport d = analyze_stragglers(ranks, {}, 1.3);
  EXPECT_EQ(d.slowest[0].rank, 2);
  EXPECT_EQ(d.slowest[1].rank, 1);
  EXPECT_EQ(d.slowest[1].slow_phase, "data loader");
  EXPECT_EQ(d.stragglers.size(), 2u);

  // Ranks alike: no stragglers, z-scores 0 when nothing spreads.
  const StragglerReport even = analyze_stragglers({{1, 0, 0}, {1, 0, 0}}, {}, 1.1);
  EXPECT_TRUE(even.stragglers.empty());
  EXPECT_EQ(even.slowest[0].zscore, 0);
  const auto rec = nlohmann::json::parse(straggler_record(r));
  EXPECT_EQ(rec["kind"], "straggler");
  EXPECT_EQ(rec["stragglers"][0]["rank"], 2);
  EXPECT_EQ(rec["slowest"].size(), 3u);
}

}  // namespace
}  // namespace borealis
