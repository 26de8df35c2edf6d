// Tensor parallelism against one process, run by ctest under `mpirun -np 2`
// and `-np 4`: every rank also computes the one-process reference itself,
// so each compares its own part. Tensor groups have 2 ranks; with 4 ranks
// there are two data-parallel replicas of them.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "core/error.h"
#include "dist/communicator.h"
#include "dist/mpi_gtest.h"
#include "kernels/backend.h"
#include "model/model.h"
#include "optim/adamw.h"
#include "optim/data_parallel.h"
#include "train/mpi_train_util.h"
#include "train/parallel_groups.h"
#include "train/train_fixture.h"

namespace borealis {
namespace {

Communicator* g_comm = nullptr;

constexpr int kTensor = 2;

ParallelLayout layout_of(const ModelConfig& config) {
  return parallel_layout(g_comm->size(), g_comm->rank(), kTensor, 1, config, "test");
}

// (preset, sequence parallel)
class TensorParallelModels : public ::testing::TestWithParam<std::tuple<const char*, bool>> {};

// In double precision: the part's loss, per-token losses and gradients
// equal the one-process model's (the reductions only reorder sums), with
// and without sequence parallelism.
TEST_P(TensorParallelModels, ForwardAndBackwardMatchOneProcess) {
  const ModelConfig config = model_preset(std::get<0>(GetParam()));
  ParallelGroups groups(*g_comm, layout_of(config));
  TensorParallelGroup<double> group = tensor_parallel_group<double>(groups.tensor());
  group.sequence_parallel = std::get<1>(GetParam());
  auto backend = make_cpu_backend<double>();
  const int B = 2, T = 9;
  const auto tokens = test::random_ids(B * T, config.vocab_size, 7);
  const auto targets = test::random_ids(B * T, config.vocab_size, 8);

  Model<double> whole(config, *backend);
  whole.init(3);
  whole.set_loss_chunk_rows(5);
  whole.zero_grad();
  const double loss = whole.forward(tokens.data(), targets.data(), B, T, true, 0.5);
  whole.backward();

  Model<double> part(config, *backend, &group);
  part.init(3);
  part.set_loss_chunk_rows(5);
  ASSERT_LT(part.num_params(), whole.num_params());
  for (const ParamView& v : part.layout().views()) {
    // Initialisation gives each part its share of the whole model, exactly.
    EXPECT_EQ(test::part_error(v, part.params(), whole.layout().find(v.name), whole.params()), 0.0)
        << v.name;
  }
  part.zero_grad();
  const double part_loss = part.forward(tokens.data(), targets.data(), B, T, true, 0.5);
  EXPECT_NEAR(part_loss, loss, 1e-12 * std::abs(loss));
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    EXPECT_NEAR(part.losses()[i], whole.losses()[i], 1e-12) << i;
  }
  part.backward();
  for (const ParamView& v : part.layout().views()) {
    EXPECT_LT(test::part_error(v, part.grads(), whole.layout().find(v.name), whole.grads()), 1e-11)
        << v.name << " on tensor rank " << groups.tensor().rank();
  }
}

INSTANTIATE_TEST_SUITE_P(Presets, TensorParallelModels,
                         ::testing::Combine(::testing::Values("gpt2-tiny", "llama-tiny"),
                                            ::testing::Bool()));

// Three AdamW steps with clipping in float, tensor parallel x data parallel
// with and without ZeRO-1 and sequence parallelism, against one process
// taking the whole global batch: the same losses and gradient norms, and
// parameters that stay within float rounding of the one-process ones.
// (zero, sequence parallel)
class TensorParallelTraining : public ::testing::TestWithParam<std::tuple<int, bool>> {};

TEST_P(TensorParallelTraining, ThreeStepsMatchOneProcess) {
  const int zero = std::get<0>(GetParam());
  for (const char* preset : {"gpt2-tiny", "llama-tiny"}) {
    SCOPED_TRACE(preset);
    const ModelConfig config = model_preset(preset);
    ParallelLayout layout = layout_of(config);
    layout.sequence = std::get<1>(GetParam());
    ParallelGroups groups(*g_comm, layout);
    auto backend = make_cpu_backend<float>();
    const int B = 2, T = 16, replicas = layout.data;
    AdamWConfig adamw;
    const float lr = 3e-3f;
    const double clip = 0.5;  // the first steps' norms are above it: clipping is exercised

    Model<float> whole(config, *backend);
    whole.init(11);
    SelfCommunicator self;
    DataParallel one(self, *backend, whole.layout(), adamw, {}, whole.params(), whole.grads());
    Model<float> part(config, *backend, &groups.model_group());
    part.init(11);
    DataParallelOptions dpo;
    dpo.zero = zero;
    dpo.bucket_bytes = 4096;  // several buckets
    DataParallel dp(groups.data(), *backend, part.layout(), adamw, dpo, part.params(),
                    part.grads());
    dp.set_model_parallel(groups.tensor(), groups.pipeline(), part.layout());

    for (int step = 0; step < 3; ++step) {
      // The global batch: replicas x B sequences; replica r trains on rows
      // [r * B * T, (r + 1) * B * T).
      const auto tokens = test::random_ids(replicas * B * T, config.vocab_size, 100 + step);
      const auto targets = test::random_ids(replicas * B * T, config.vocab_size, 200 + step);
      whole.zero_grad();
      const float loss = whole.forward(tokens.data(), targets.data(), replicas * B, T, true);
      whole.backward();
      const double norm = one.grad_norm();
      one.step(lr, clip_scale(norm, clip));

      const std::size_t at = static_cast<std::size_t>(layout.data_rank) * B * T;
      part.zero_grad();
      float part_loss = part.forward(tokens.data() + at, targets.data() + at, B, T, true,
                                     1.0f / static_cast<float>(replicas));
      part.backward([&](std::int64_t offset) { dp.grads_final(offset); });
      dp.finish_reduction();
      const double part_norm = dp.grad_norm();
      dp.step(lr, clip_scale(part_norm, clip));
      groups.data().allreduce(std::span<float>(&part_loss, 1), ReduceOp::Avg);

      EXPECT_NEAR(part_loss, loss, 2e-6 * loss) << "step " << step;
      EXPECT_NEAR(part_norm, norm, 1e-5 * norm) << "step " << step;
      double worst = 0;
      std::string worst_name;
      for (const ParamView& v : part.layout().views()) {
        const double e =
            test::part_error(v, part.params(), whole.layout().find(v.name), whole.params(), true);
        if (e > worst) worst = e, worst_name = v.name;
      }
      // Adam moves every parameter by about lr whatever the size of its
      // gradient, so where a gradient is rounding noise in both runs (the
      // key bias: softmax ignores it) the runs differ by a share of lr.
      EXPECT_LT(worst, 0.02 * lr) << worst_name << " after step " << step;
      if (g_comm->rank() == 0) {
        std::printf(
            "[ tp2%s x dp%d zero %d %s ] step %d: loss %.7f vs %.7f, norm %.7g vs %.7g, "
            "largest parameter difference %.2e (lr %.0e) (%s)\n",
            layout.sequence ? "+sp" : "", replicas, zero, preset, step + 1, part_loss, loss,
            part_norm, norm, worst, lr, worst_name.c_str());
      }
    }
    // What every rank of a tensor group holds whole stays the same bits on
    // each of them (their gradients come from the same ordered sums).
    for (const ParamView& v : part.layout().views()) {
      if (v.is_split()) continue;
      std::vector<float> mine(part.params() + v.offset, part.params() + v.offset + v.size);
      std::vector<float> lo = mine, hi = mine;
      groups.tensor().allreduce(std::span<float>(lo), ReduceOp::Min);
      groups.tensor().allreduce(std::span<float>(hi), ReduceOp::Max);
      EXPECT_EQ(lo, mine) << v.name;
      EXPECT_EQ(hi, mine) << v.name;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Zero, TensorParallelTraining,
                         ::testing::Combine(::testing::Values(0, 1), ::testing::Bool()));

// The layout's errors name the setting and the dimension that does not
// divide.
TEST(TensorParallelLayout, BadLayoutsAreErrors) {
  const ModelConfig llama = model_preset("llama-tiny");  // 4 heads, 2 kv heads, d_ff 48
  try {
    parallel_layout(4, 0, 3, 1, llama, "run.toml:3");
    FAIL() << "3 does not divide 4 ranks";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("dist.tensor_parallel = 3 does not divide the 4 ranks"),
              std::string::npos)
        << e.what();
    EXPECT_EQ(e.where(), "run.toml:3");
  }
  try {
    parallel_layout(4, 0, 4, 1, llama, "run.toml:3");
    FAIL() << "4 does not divide 2 kv heads";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not divide the model's n_kv_head = 2"),
              std::string::npos)
        << e.what();
  }
  ModelConfig wide = llama;
  wide.n_kv_head = 4;
  wide.d_ff = 49;
  EXPECT_THROW(parallel_layout(2, 0, 2, 1, wide, "x"), Error);
  wide.d_ff = 48;
  wide.padded_vocab = 96 + 32;
  EXPECT_NO_THROW(parallel_layout(4, 0, 4, 1, wide, "x"));
  const ParallelLayout l = parallel_layout(4, 3, 2, 1, llama, "x");
  EXPECT_EQ(l.tensor_rank, 1);
  EXPECT_EQ(l.data_rank, 1);
  EXPECT_EQ(describe_layout(l),
            "4 ranks: tensor parallel 2 x data parallel 2; tensor groups {0,1} {2,3}");
}

// The groups split as the layout says: the tensor group of world rank r
// holds ranks r - r % 2 and the next; the data group one rank of each.
TEST(TensorParallelLayout, GroupsFollowTheLayout) {
  const ModelConfig config = model_preset("gpt2-tiny");
  ParallelGroups groups(*g_comm, layout_of(config));
  const int me = g_comm->rank();
  EXPECT_EQ(groups.tensor().size(), kTensor);
  EXPECT_EQ(groups.tensor().rank(), me % kTensor);
  EXPECT_EQ(groups.data().size(), g_comm->size() / kTensor);
  EXPECT_EQ(groups.data().rank(), me / kTensor);
  std::vector<double> mine = {static_cast<double>(me)};
  std::vector<double> tensor_members(kTensor);
  groups.tensor().all_gather(std::span<const double>(mine), std::span<double>(tensor_members));
  for (int t = 0; t < kTensor; ++t) EXPECT_EQ(tensor_members[t], me - me % kTensor + t);
  // The model's group collectives: rank t of the tensor group gets block t.
  const TensorParallelGroup<double> group = tensor_parallel_group<double>(groups.tensor());
  std::vector<double> blocks(2 * kTensor), mine2(2), gathered(2 * kTensor);
  for (int i = 0; i < 2 * kTensor; ++i) blocks[i] = 10.0 * i + groups.tensor().rank();
  group.reduce_scatter(blocks.data(), mine2.data(), 2);
  const int t = groups.tensor().rank();
  EXPECT_EQ(mine2[0], 2 * (10.0 * (2 * t)) + 1);
  EXPECT_EQ(mine2[1], 2 * (10.0 * (2 * t + 1)) + 1);
  group.all_gather(mine2.data(), gathered.data(), 2);
  for (int i = 0; i < 2 * kTensor; ++i) EXPECT_EQ(gathered[i], 20.0 * i + 1) << i;
  std::vector<double> data_members(static_cast<std::size_t>(groups.data().size()));
  groups.data().all_gather(std::span<const double>(mine), std::span<double>(data_members));
  for (std::size_t d = 0; d < data_members.size(); ++d) {
    EXPECT_EQ(data_members[d], static_cast<double>(d) * kTensor + me % kTensor);
  }
}

// `borealis train` with dist.tensor_parallel = 2 (and ZeRO-1 over the two
// replicas on 4 ranks): the one-process loss curve and weights within float
// rounding, the same bits from run to run, and checkpoints that resume in
// another layout: tensor parallel onto one process and back.
TEST(TensorParallelRuns, MatchOneProcessAndResumeInAnyLayout) {
  namespace fs = std::filesystem;
  const test::SharedCorpus corpus(*g_comm);
  const std::vector<std::string> run = {"train.steps=8", "train.global_batch=8",
                                        "checkpoint.every=4", "checkpoint.keep=5",
                                        "dist.bucket_mb=0.01"};
  std::vector<std::string> tp_run = run;
  tp_run.push_back("dist.tensor_parallel=2");
  if (g_comm->size() == 4) tp_run.push_back("dist.zero=1");
  std::vector<std::string> sp_run = tp_run;
  sp_run.push_back("dist.sequence_parallel=true");
  const fs::path one = corpus->dir() / "one", tp = corpus->dir() / "tp",
                 again = corpus->dir() / "again", tp_one = corpus->dir() / "tp_one",
                 one_tp = corpus->dir() / "one_tp", sp = corpus->dir() / "sp";
  const fs::path cfg_one = corpus.write_config("one.toml", one);
  const fs::path cfg_tp = corpus.write_config("tp.toml", tp);
  const fs::path cfg_again = corpus.write_config("again.toml", again);
  const fs::path cfg_tp_one = corpus.write_config("tp_one.toml", tp_one);
  const fs::path cfg_one_tp = corpus.write_config("one_tp.toml", one_tp);
  const fs::path cfg_sp = corpus.write_config("sp.toml", sp);
  test::train_alone(*g_comm, cfg_one, run);
  const TrainRunResult r = test::train(cfg_tp, tp_run, *g_comm);
  EXPECT_EQ(r.steps, 8);
  EXPECT_GT(r.valid_loss, 0.0);
  test::train(cfg_again, tp_run, *g_comm);
  test::train(cfg_sp, sp_run, *g_comm);
  // Trained tensor parallel to step 4, then one process to the end; and the
  // other way round.
  EXPECT_TRUE(test::train(cfg_tp_one, tp_run, *g_comm, 4).stopped);
  test::train_alone(*g_comm, cfg_tp_one, run);
  test::train_alone(*g_comm, cfg_one_tp, run, 4);
  EXPECT_EQ(test::train(cfg_one_tp, tp_run, *g_comm).first_step, 4);
  if (g_comm->rank() != 0) return;

  test::expect_same_run(one, {tp, tp_one, one_tp, sp}, 8);
  EXPECT_EQ(train_losses(tp), train_losses(again));
  // Saved in parts, where they are, and the same bits again.
  test::expect_parts(test::final_checkpoint(tp, 8), 2, 1);
  test::expect_same_files(test::final_checkpoint(tp, 8), test::final_checkpoint(again, 8));
  std::ifstream in(tp / "metrics.jsonl");
  std::string first;
  std::getline(in, first);
  EXPECT_NE(first.find(R"("tensor_parallel":2)"), std::string::npos) << first;
}

TEST(TensorParallelRuns, BadLayoutsStopEveryRank) {
  namespace fs = std::filesystem;
  const test::SharedCorpus corpus(*g_comm);
  const fs::path cfg = corpus.write_config("bad.toml", corpus->dir() / "bad");
  const auto message = [&](const std::vector<std::string>& settings) {
    try {
      test::train(cfg, settings, *g_comm);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message({"dist.tensor_parallel=3"})
                .find(fmt::format("dist.tensor_parallel = 3 does not divide the {} ranks",
                                  g_comm->size())),
            std::string::npos);
  EXPECT_NE(message({"dist.sequence_parallel=true", "dist.tensor_parallel=2", "data.seq_len=31"})
                .find("data.seq_len 31 does not divide by dist.tensor_parallel = 2"),
            std::string::npos);
  if (g_comm->size() == 4) {
    // llama-tiny has 2 key/value heads.
    EXPECT_NE(message({"dist.tensor_parallel=4"}).find("n_kv_head = 2"), std::string::npos);
  }
}

}  // namespace
}  // namespace borealis

int main(int argc, char** argv) {
  return borealis::test::mpi_test_main(argc, argv, std::chrono::milliseconds(120'000),
                                       borealis::g_comm, borealis::test::RankRange{2, 64},
                                       [](borealis::Communicator&, int, char**) { return 2; });
}
