// Checkpoints stored in parts (tensor x pipeline parallel runs), without
// MPI: the parts of a whole model and its moments written as the ranks of
// a grid write them, then read back into every part of every other layout
// (and the whole model) and compared bit for bit with the same part taken
// from the whole tensors; the manifest's and the files' checks.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "core/error.h"
#include "model/checkpoint_load.h"
#include "model/model_parts.h"
#include "model/safetensors.h"
#include "test_util.h"
#include "train/checkpoint.h"

namespace borealis {
namespace {

namespace fs = std::filesystem;

struct Grid {
  int tensor = 1, pipeline = 1, data = 1;
  bool zero = false;  // with ZeRO-1 every data rank writes a shard of its part's moments
};

class StoredInParts : public ::testing::TestWithParam<const char*> {
 protected:
  StoredInParts() : model_(model_preset(GetParam())), whole_(model_) {
    const auto n = static_cast<std::size_t>(whole_.total());
    params_.resize(n);
    m_.resize(n);
    v_.resize(n);
    for (std::size_t i = 0; i < n; ++i) {  // every element distinct
      params_[i] = 0.001f * static_cast<float>(i) - 7;
      m_[i] = static_cast<float>(i) * 1e-3f + 0.5f;
      v_[i] = static_cast<float>(i) + 0.25f;
    }
    test::write_file(dir_ / "tok.json", "{\"model\": {}}");
  }

  fs::path checkpoints() const { return dir_ / "checkpoints"; }

  // A part of the whole buffer `whole` (laid out by whole_).
  std::vector<float> part_of(const ParamLayout& part, const std::vector<float>& whole) const {
    std::vector<float> out(static_cast<std::size_t>(part.total()));
    for (const ParamView& v : part.views()) {
      take_part(v, whole.data() + whole_.find(v.name).offset, out.data() + v.offset);
    }
    return out;
  }

  // The checkpoint the ranks of `grid` write (rank = (p * D + d) * T + t).
  fs::path write(std::int64_t step, const Grid& g) {
    const fs::path tmp = checkpoint_temp_dir(checkpoints(), step);
    const int world = g.tensor * g.pipeline * g.data;
    CheckpointParts parts;
    parts.tensor_parallel = g.tensor;
    parts.pipeline_parallel = g.pipeline;
    parts.world_size = world;
    for (int p = 0; p < g.pipeline; ++p) {
      for (int t = 0; t < g.tensor; ++t) {
        const ParamLayout layout(model_, TensorSplit{t, g.tensor}, PipelineStage{p, g.pipeline});
        const auto params = part_of(layout, params_), m = part_of(layout, m_),
                   v = part_of(layout, v_);
        CheckpointPart part;
        part.tensor_rank = t;
        part.stage = p;
        part.file = model_part_name(t, g.tensor, p, g.pipeline);
        part.total = layout.total();
        const FileDigest d = write_model_part(tmp, model_, layout, params.data());
        part.bytes = d.bytes;
        part.xxh3_128 = d.xxh3_128.hex();
        const int shards = g.zero ? g.data : 1;
        const std::int64_t len = (layout.total() + shards - 1) / shards;
        for (int d_rank = 0; d_rank < shards; ++d_rank) {
          const FlatRange range{std::min(layout.total(), len * d_rank),
                                std::min(layout.total(), len * (d_rank + 1))};
          const int rank = (p * g.data + d_rank) * g.tensor + t;
          part.shards.push_back(write_optimizer_shard(
              tmp, rank, world, layout.total(), range, m.data() + range.begin,
              v.data() + range.begin,
              {{"tensor_rank", std::to_string(t)}, {"stage", std::to_string(p)}}));
        }
        parts.parts.push_back(std::move(part));
      }
    }
    TrainState state;
    state.step = step;
    return publish_checkpoint(checkpoints(), tmp, state, model_, step, "",
                              write_tokenizer_file(tmp, dir_ / "tok.json"), parts);
  }

  // Every part of a tensor x pipeline layout, and several ranges of its
  // moments, read from the checkpoint: the same bits as taken from the
  // whole tensors.
  void expect_layout(const CheckpointInfo& info, int tensor, int pipeline) const {
    std::mt19937 rng(static_cast<unsigned>(tensor * 10 + pipeline));
    for (int p = 0; p < pipeline; ++p) {
      for (int t = 0; t < tensor; ++t) {
        SCOPED_TRACE(
            fmt::format("into tensor rank {} of {}, stage {} of {}", t, tensor, p, pipeline));
        const ParamLayout layout(model_, TensorSplit{t, tensor}, PipelineStage{p, pipeline});
        const auto n = static_cast<std::size_t>(layout.total());
        const auto want_p = part_of(layout, params_), want_m = part_of(layout, m_),
                   want_v = part_of(layout, v_);
        std::vector<FlatRange> ranges = {{0, layout.total()}, {0, 0}};
        for (int i = 0; i < 3; ++i) {
          const auto b = static_cast<std::int64_t>(rng() % n);
          ranges.push_back(
              {b, b + static_cast<std::int64_t>(rng() % (n - static_cast<std::size_t>(b) + 1))});
        }
        for (const FlatRange r : ranges) {
          std::vector<float> params(n, NAN), m(static_cast<std::size_t>(r.size()), NAN),
              v(m.size(), NAN);
          load_checkpoint(info, layout, params.data(), r, m.data(), v.data());
          EXPECT_EQ(params, want_p);
          EXPECT_EQ(m, std::vector<float>(want_m.begin() + r.begin, want_m.begin() + r.end))
              << "[" << r.begin << ", " << r.end << ")";
          EXPECT_EQ(v, std::vector<float>(want_v.begin() + r.begin, want_v.begin() + r.end))
              << "[" << r.begin << ", " << r.end << ")";
        }
      }
    }
  }

  test::TempDir dir_;
  ModelConfig model_;
  ParamLayout whole_;
  std::vector<float> params_, m_, v_;
};

// Written in each grid, read into each layout: exact.
TEST_P(StoredInParts, EveryLayoutReadsEveryOtherExactly) {
  const std::vector<Grid> grids = {
      {2, 1, 1, false}, {1, 2, 2, true}, {2, 2, 2, true}, {2, 2, 2, false}, {4, 1, 1, false}};
  std::int64_t step = 0;
  for (const Grid& g : grids) {
    if (model_.n_kv_head % g.tensor != 0) continue;  // llama-tiny has 2 key/value heads
    SCOPED_TRACE(fmt::format("written by TP{} x PP{} x DP{}{}", g.tensor, g.pipeline, g.data,
                             g.zero ? " ZeRO-1" : ""));
    const CheckpointInfo info = verify_checkpoint(write(++step, g));
    ASSERT_EQ(info.parts.parts.size(), static_cast<std::size_t>(g.tensor * g.pipeline));
    EXPECT_FALSE(fs::exists(info.dir / "model.safetensors"));
    for (const auto& [t, p] : {std::pair{1, 1}, {2, 1}, {1, 2}, {2, 2}}) expect_layout(info, t, p);
    // generate, serve, eval and the exports read the whole model.
    EXPECT_EQ(load_model_dir(info.dir).params, params_);
    EXPECT_EQ(resolve_checkpoint_dir(dir_.path()), info.dir);
    EXPECT_EQ(resolve_checkpoint_dir(info.dir), info.dir);
  }
  // And a checkpoint stored whole (ZeRO-1 shards) into parts.
  TrainState state;
  state.step = ++step;
  const fs::path tmp = checkpoint_temp_dir(checkpoints(), step);
  const FileRecords files =
      write_replicated_files(tmp, model_, whole_, params_.data(), dir_ / "tok.json");
  const std::int64_t half = whole_.total() / 2;
  const std::vector<OptimizerShard> shards = {
      write_optimizer_shard(tmp, 0, 2, whole_.total(), {0, half}, m_.data(), v_.data()),
      write_optimizer_shard(tmp, 1, 2, whole_.total(), {half, whole_.total()}, m_.data() + half,
                            v_.data() + half)};
  const CheckpointInfo info = verify_checkpoint(
      publish_checkpoint(checkpoints(), tmp, state, model_, step, "", files, shards));
  expect_layout(info, 2, 2);
}

TEST_P(StoredInParts, DamagedOrInconsistentPartsAreCaught) {
  const fs::path dir = write(1, {2, 2, 2, true});
  const std::string part0 = model_part_name(0, 2, 0, 2), part1 = model_part_name(1, 2, 0, 2);
  const auto edit_state = [&](const std::function<void(nlohmann::json&)>& edit) {
    auto j = nlohmann::json::parse(test::read_file(dir / "state.json"));
    edit(j);
    test::write_file(dir / "state.json", j.dump(2));
  };
  const auto error_of = [&](const std::function<void()>& f) -> std::string {
    try {
      f();
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  const std::string state = test::read_file(dir / "state.json");

  // Tensor ranks 0 and 1 swapped, checksums made to agree: the files'
  // metadata gives them away.
  const std::string a = test::read_file(dir / part0), b = test::read_file(dir / part1);
  test::write_file(dir / part0, b);
  test::write_file(dir / part1, a);
  edit_state([&](nlohmann::json& j) {
    std::swap(j["manifest"]["parts"][0]["bytes"], j["manifest"]["parts"][1]["bytes"]);
    std::swap(j["manifest"]["parts"][0]["xxh3_128"], j["manifest"]["parts"][1]["xxh3_128"]);
  });
  const CheckpointInfo info = verify_checkpoint(dir);
  const ParamLayout whole(model_);
  std::vector<float> p(static_cast<std::size_t>(whole.total())), m(p.size()), v(p.size());
  EXPECT_NE(error_of([&] {
              load_checkpoint(info, whole, p.data(), m.data(), v.data());
            }).find("does not match the manifest"),
            std::string::npos);
  EXPECT_NE(error_of([&] { load_model_dir(dir); }).find("the file's tensor_rank is 1"),
            std::string::npos);
  test::write_file(dir / part0, a);
  test::write_file(dir / part1, b);
  test::write_file(dir / "state.json", state);
  EXPECT_NO_THROW(verify_checkpoint(dir));

  // A damaged or missing part, a shard missing from the manifest, a part
  // of the wrong size, a grid with a part missing.
  test::flip_bits(dir / part1, 100, 0x10);
  EXPECT_NE(error_of([&] { verify_checkpoint(dir); }).find(part1 + " does not match its checksum"),
            std::string::npos);
  test::write_file(dir / part1, b);
  edit_state([](nlohmann::json& j) { j["manifest"]["parts"][3]["optimizer"].erase(1); });
  EXPECT_NE(error_of([&] { verify_checkpoint(dir); }).find("its shards cover [0, "),
            std::string::npos);
  test::write_file(dir / "state.json", state);
  edit_state([](nlohmann::json& j) { j["manifest"]["parts"][2]["total"] = 5; });
  EXPECT_NE(error_of([&] { verify_checkpoint(dir); }).find("has 5 elements, the model's part has"),
            std::string::npos);
  test::write_file(dir / "state.json", state);
  edit_state([](nlohmann::json& j) { j["manifest"]["parts"].erase(3); });
  EXPECT_NE(error_of([&] {
              verify_checkpoint(dir);
            }).find("lists 3 model parts for tensor_parallel 2 x pipeline_parallel 2"),
            std::string::npos);
  test::write_file(dir / "state.json", state);
  fs::remove(dir / part0);
  EXPECT_NE(error_of([&] { verify_checkpoint(dir); }).find(part0 + " is missing"),
            std::string::npos);
  std::vector<std::pair<fs::path, std::string>> skipped;
  EXPECT_FALSE(latest_checkpoint(checkpoints(), skipped).has_value());
  ASSERT_EQ(skipped.size(), 1u);
}

INSTANTIATE_TEST_SUITE_P(Models, StoredInParts, ::testing::Values("gpt2-tiny", "llama-tiny"));

}  // namespace
}  // namespace borealis
