// Sharded optimizer state in checkpoints, without MPI: the range planning
// against a plain copy, reading any range of a sharded or whole checkpoint
// against the moments it was written from, and damaged, missing or
// inconsistent shards being caught by verify_checkpoint.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "core/error.h"
#include "core/hash.h"
#include "model/safetensors.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/flat_ranges.h"

namespace borealis {
namespace {

namespace fs = std::filesystem;

// Contiguous ranges tiling [0, total), some of them empty.
std::vector<FlatRange> random_tiling(std::int64_t total, std::mt19937& rng) {
  std::vector<FlatRange> out;
  std::int64_t at = 0;
  while (at < total) {
    const std::int64_t len = static_cast<std::int64_t>(rng() % 9);  // 0 to 8
    out.push_back({at, std::min(total, at + len)});
    at = out.back().end;
  }
  if (rng() % 2 == 0) out.push_back({total, total});
  return out;
}

TEST(FlatRanges, PlanMatchesPlainCopy) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 2000; ++trial) {
    const std::int64_t total = static_cast<std::int64_t>(rng() % 60);
    std::vector<float> whole(static_cast<std::size_t>(total));
    for (std::int64_t i = 0; i < total; ++i) whole[static_cast<std::size_t>(i)] = 0.5f * i + 1;
    const auto stored = random_tiling(total, rng);
    std::vector<std::vector<float>> pieces;
    for (const auto& r : stored) {
      pieces.emplace_back(whole.begin() + r.begin, whole.begin() + r.end);
    }
    const std::int64_t b = static_cast<std::int64_t>(rng() % static_cast<unsigned>(total + 1));
    const std::int64_t e =
        b + static_cast<std::int64_t>(rng() % static_cast<unsigned>(total - b + 1));
    const auto copies = plan_range_copies(stored, {b, e});
    std::vector<float> out(static_cast<std::size_t>(e - b), -1.0f);
    std::int64_t next = 0;
    for (const RangeCopy& c : copies) {
      // Each element once, in order, and never an empty copy.
      ASSERT_EQ(c.dest_offset, next);
      ASSERT_GT(c.count, 0);
      const auto& piece = pieces[c.source];
      ASSERT_LE(c.source_offset + c.count, static_cast<std::int64_t>(piece.size()));
      std::copy_n(piece.begin() + c.source_offset, c.count, out.begin() + c.dest_offset);
      next += c.count;
    }
    EXPECT_EQ(next, e - b);
    EXPECT_EQ(out, std::vector<float>(whole.begin() + b, whole.begin() + e))
        << "trial " << trial << " [" << b << ", " << e << ") of " << total;
  }
}

TEST(FlatRanges, ExactPiecesAndErrors) {
  const std::vector<FlatRange> shards = {{0, 4}, {4, 8}, {8, 10}};
  EXPECT_EQ(plan_range_copies(shards, {3, 9}),
            (std::vector<RangeCopy>{{0, 3, 0, 1}, {1, 0, 1, 4}, {2, 0, 5, 1}}));
  EXPECT_EQ(plan_range_copies(shards, {4, 8}), (std::vector<RangeCopy>{{1, 0, 0, 4}}));
  EXPECT_TRUE(plan_range_copies(shards, {5, 5}).empty());
  // A gap, an overlap, a range past the end.
  const std::vector<FlatRange> gap = {{0, 4}, {5, 8}};
  EXPECT_THROW(plan_range_copies(gap, {3, 6}), std::invalid_argument);
  EXPECT_NO_THROW(plan_range_copies(gap, {5, 8}));
  const std::vector<FlatRange> overlap = {{0, 4}, {3, 8}};
  EXPECT_THROW(plan_range_copies(overlap, {0, 1}), std::invalid_argument);
  EXPECT_THROW(plan_range_copies(shards, {9, 11}), std::invalid_argument);
}

// The moments of a tiny model, every element distinct, and checkpoints of
// them whole (step 1) and in `ranks` ZeRO-1 shards (from step 2).
class ShardedCheckpoint : public ::testing::Test {
 protected:
  ShardedCheckpoint() : model_(model_preset("llama-tiny")), layout_(model_) {
    const auto n = static_cast<std::size_t>(layout_.total());
    params_.resize(n);
    m_.resize(n);
    v_.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
      params_[i] = 0.25f * static_cast<float>(i % 1000) - 3;
      m_[i] = static_cast<float>(i) * 1e-3f;
      v_[i] = static_cast<float>(i) + 0.5f;
    }
    test::write_file(dir_ / "tok.json", "{\"model\": {}}");
    TrainState state;
    state.step = 1;
    save_checkpoint(checkpoints(), state, model_, layout_, params_.data(),
                    OptimizerState{m_.data(), v_.data(), 1}, dir_ / "tok.json", "");
  }

  fs::path checkpoints() const { return dir_ / "checkpoints"; }

  fs::path write_sharded(std::int64_t step, int ranks) {
    const fs::path tmp = checkpoint_temp_dir(checkpoints(), step);
    const FileRecords files =
        write_replicated_files(tmp, model_, layout_, params_.data(), dir_ / "tok.json");
    const std::int64_t total = layout_.total();
    const std::int64_t shard = (total + ranks - 1) / ranks;
    std::vector<OptimizerShard> shards;
    for (int r = 0; r < ranks; ++r) {
      const FlatRange range{std::min(total, shard * r), std::min(total, shard * (r + 1))};
      shards.push_back(write_optimizer_shard(tmp, r, ranks, total, range, m_.data() + range.begin,
                                             v_.data() + range.begin));
    }
    TrainState state;
    state.step = step;
    return publish_checkpoint(checkpoints(), tmp, state, model_, step, "", files, shards);
  }

  // load_optimizer_range against the slices of the moments.
  void expect_range(const CheckpointInfo& info, FlatRange range) const {
    std::vector<float> m(static_cast<std::size_t>(range.size()), NAN);
    std::vector<float> v(m.size(), NAN);
    load_optimizer_range(info, layout_, range, m.data(), v.data());
    EXPECT_EQ(m, std::vector<float>(m_.begin() + range.begin, m_.begin() + range.end))
        << info.dir << " [" << range.begin << ", " << range.end << ")";
    EXPECT_EQ(v, std::vector<float>(v_.begin() + range.begin, v_.begin() + range.end))
        << info.dir << " [" << range.begin << ", " << range.end << ")";
  }

  test::TempDir dir_;
  ModelConfig model_;
  ParamLayout layout_;
  std::vector<float> params_, m_, v_;
};

TEST_F(ShardedCheckpoint, AnyRangeReadsFromShardsOrWholeMoments) {
  const fs::path sharded = write_sharded(2, 3);
  const std::int64_t total = layout_.total();
  // Rank 0 wrote no whole-moment file; each rank its shard.
  EXPECT_EQ(test::list_dir(sharded),
            (std::vector<std::string>{
                "model.safetensors", "optimizer-rank-00000-of-00003.safetensors",
                "optimizer-rank-00001-of-00003.safetensors",
                "optimizer-rank-00002-of-00003.safetensors", "state.json", "tokenizer.json"}));
  const CheckpointInfo info = verify_checkpoint(sharded);
  ASSERT_EQ(info.shards.size(), 3u);
  EXPECT_EQ(info.adamw_steps, 2);
  const std::int64_t s = (total + 2) / 3;
  EXPECT_EQ(info.shards[1].begin, s);
  EXPECT_EQ(info.shards[1].end, 2 * s);
  EXPECT_EQ(info.shards[2].end, total);
  // The shard file describes itself: tensor names and metadata.
  const SafetensorsFile shard1(sharded / "optimizer-rank-00001-of-00003.safetensors");
  EXPECT_EQ(shard1.metadata().at("world_size"), "3");
  EXPECT_EQ(shard1.metadata().at("begin"), std::to_string(s));
  EXPECT_EQ(shard1.metadata().at("end"), std::to_string(2 * s));
  EXPECT_TRUE(shard1.contains(fmt::format("m[{}:{}]", s, 2 * s)));
  EXPECT_TRUE(shard1.contains(fmt::format("v[{}:{}]", s, 2 * s)));
  // state.json lists the shards.
  const auto state = nlohmann::json::parse(test::read_file(sharded / "state.json"));
  EXPECT_EQ(state["format"], 2);
  EXPECT_EQ(state["manifest"]["world_size"], 3);
  EXPECT_EQ(state["manifest"]["shards"][2]["xxh3_128"],
            hash_file(sharded / "optimizer-rank-00002-of-00003.safetensors").hex());
  EXPECT_FALSE(state["files"].contains("optimizer.safetensors"));

  const CheckpointInfo whole = verify_checkpoint(checkpoints() / checkpoint_name(1));
  EXPECT_TRUE(whole.shards.empty());
  // Whole buffers, the shards of 1, 2, 4 and 7 ranks, ranges across shard
  // and tensor boundaries, and empty ones, from both layouts.
  std::vector<FlatRange> ranges = {{0, total}, {0, 0}, {total, total}, {s - 3, s + 5}};
  for (const int n : {1, 2, 4, 7}) {
    const std::int64_t shard = (total + n - 1) / n;
    for (int r = 0; r < n; ++r) {
      ranges.push_back({std::min(total, shard * r), std::min(total, shard * (r + 1))});
    }
  }
  std::mt19937 rng(5);
  for (int i = 0; i < 20; ++i) {
    const std::int64_t b = static_cast<std::int64_t>(rng() % static_cast<unsigned>(total));
    ranges.push_back({b, b + static_cast<std::int64_t>(rng() % static_cast<unsigned>(total - b))});
  }
  for (const FlatRange& r : ranges) {
    expect_range(info, r);
    expect_range(whole, r);
  }
  // The parameters and the whole moments as one process loads them.
  std::vector<float> p(params_.size()), m(m_.size()), v(v_.size());
  load_checkpoint(info, layout_, p.data(), m.data(), v.data());
  EXPECT_EQ(p, params_);
  EXPECT_EQ(m, m_);
  EXPECT_EQ(v, v_);
}

TEST_F(ShardedCheckpoint, DamagedOrMissingShardsAreSkipped) {
  write_sharded(2, 2);
  write_sharded(3, 2);
  const fs::path newest = write_sharded(4, 2);
  // Flip one byte of rank 1's moments in step 4.
  test::flip_bits(newest / "optimizer-rank-00001-of-00002.safetensors", 300, 0x04);
  fs::remove(checkpoints() / checkpoint_name(3) / "optimizer-rank-00000-of-00002.safetensors");
  std::vector<std::pair<fs::path, std::string>> skipped;
  const auto found = latest_checkpoint(checkpoints(), skipped);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->state.step, 2);
  ASSERT_EQ(skipped.size(), 2u);
  EXPECT_EQ(skipped[0].second,
            "optimizer-rank-00001-of-00002.safetensors does not match its checksum");
  EXPECT_EQ(skipped[1].second, "optimizer-rank-00000-of-00002.safetensors is missing");

  // A manifest whose ranges do not tile the parameters, or that names
  // another file, is refused before any file is read.
  const fs::path good = checkpoints() / checkpoint_name(2);
  const std::string text = test::read_file(good / "state.json");
  auto j = nlohmann::json::parse(text);
  j["manifest"]["shards"][1]["begin"] = j["manifest"]["shards"][1]["begin"].get<int>() + 1;
  test::write_file(good / "state.json", j.dump());
  EXPECT_NE(test::error_line([&] { verify_checkpoint(good); }).find("shard 1 covers"),
            std::string::npos);
  j = nlohmann::json::parse(text);
  j["manifest"]["shards"][0]["file"] = "../model.safetensors";
  test::write_file(good / "state.json", j.dump());
  EXPECT_NE(test::error_line([&] {
              verify_checkpoint(good);
            }).find("manifest entry 0 is rank 0 in ../model.safetensors"),
            std::string::npos);
  // A shard file that verifies but describes another range than the
  // manifest (its metadata) is refused when read.
  j = nlohmann::json::parse(text);
  test::write_file(good / "state.json", text);
  const fs::path other = write_sharded(5, 3);
  fs::copy_file(other / "optimizer-rank-00001-of-00003.safetensors",
                good / "optimizer-rank-00001-of-00002.safetensors",
                fs::copy_options::overwrite_existing);
  j["manifest"]["shards"][1]["bytes"] =
      fs::file_size(good / "optimizer-rank-00001-of-00002.safetensors");
  j["manifest"]["shards"][1]["xxh3_128"] =
      hash_file(good / "optimizer-rank-00001-of-00002.safetensors").hex();
  test::write_file(good / "state.json", j.dump());
  const CheckpointInfo info = verify_checkpoint(good);
  std::vector<float> m(m_.size()), v(v_.size());
  EXPECT_NE(test::error_line([&] {
              load_optimizer_range(info, layout_, {0, layout_.total()}, m.data(), v.data());
            }).find("the shard's metadata does not match the manifest in state.json"),
            std::string::npos);
}

}  // namespace
}  // namespace borealis
