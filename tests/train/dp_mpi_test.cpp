// Data-parallel training on 2 ranks, run by ctest under `mpirun -np 2`
// (mpi.train_dp): equal to one process at the same global batch, bit-identical
// from run to run, ZeRO-1 bit-identical to plain data parallelism, resume
// from 2 ranks onto 1 and from 1 onto 2, and ZeRO-1's sharded checkpoints:
// exact resume on 2 ZeRO or plain ranks, each rank loading only its range,
// damaged or missing shards skipped, and a failed write on one rank failing
// the save on all. Rank 0 builds the corpus and the
// ranks share its directory. Reference runs of one process run on rank 0
// alone (a Self communicator) while the other ranks wait.
//
// `--timeout-check hang|exit [ZERO [gpu]]` (mpi.train_timeout,
// mpi.train_rank_exit, mpi.train_timeout_zero1, mpi.train_timeout_3ranks,
// mpi.train_timeout_nccl: the ranks on emulated GPUs, waiting in NCCL's
// allreduce of the gradients): rank 1 hangs or exits
// through BOREALIS_TEST_FAULT; rank 0 must fail within the 2 s time-out
// naming rank 1 and its host, with the checkpoint that can still be written
// (timeout_check), then the job ends non-zero (run_timeout_check.sh).
#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/error.h"
#include "dist/communicator.h"
#include "dist/mpi_gtest.h"
#include "kernels/cuda_emulator/emulated_cuda_backend.h"
#include "kernels/cuda_emulator/emulated_nccl.h"
#include "model/safetensors.h"
#include "optim/data_parallel.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/dist_checkpoint.h"
#include "train/mpi_train_util.h"
#include "train/train_config.h"
#include "train/train_fixture.h"
#include "train/trainer.h"

namespace borealis {
namespace {

namespace fs = std::filesystem;

Communicator* g_comm = nullptr;

using test::final_checkpoint;
using test::train;
using test::weights;

// Helpers over the world communicator.
using SharedCorpus = test::SharedCorpus;
void train_alone(const fs::path& config, const std::vector<std::string>& overrides,
                 std::int64_t stop_at = 0) {
  test::train_alone(*g_comm, config, overrides, stop_at);
}

// The whole moments m and v of a checkpoint, sharded or not.
std::pair<std::vector<float>, std::vector<float>> moments(const fs::path& checkpoint) {
  const CheckpointInfo info = verify_checkpoint(checkpoint);
  const ParamLayout layout(info.model);
  const auto n = static_cast<std::size_t>(layout.total());
  std::vector<float> params(n), m(n), v(n);
  load_checkpoint(info, layout, params.data(), m.data(), v.data());
  return {std::move(m), std::move(v)};
}

std::size_t info_shards(const fs::path& checkpoint) {
  return verify_checkpoint(checkpoint).shards.size();
}

// Losses within fp32 rounding: one process and n ranks add the same
// per-sample gradients in a different order (partial sums per rank), so
// the weights drift apart by a few float ulps per step.
void expect_close_losses(const fs::path& a, const fs::path& b, std::int64_t from = 1) {
  const auto la = train_losses(a), lb = train_losses(b);
  ASSERT_EQ(la.size(), lb.size());
  for (const auto& [step, loss] : la) {
    if (step < from) continue;
    EXPECT_NEAR(loss, lb.at(step), 2e-5 * std::abs(loss)) << "step " << step;
  }
}

void expect_close_weights(const fs::path& a, const fs::path& b) {
  const auto wa = weights(a), wb = weights(b);
  ASSERT_EQ(wa.size(), wb.size());
  double worst = 0;
  for (std::size_t i = 0; i < wa.size(); ++i) {
    worst = std::max(worst, static_cast<double>(std::abs(wa[i] - wb[i])));
  }
  // lr 3e-3: an AdamW step moves a weight by up to about 3e-3; rounding
  // differences in the gradients change the steps by far less.
  EXPECT_LT(worst, 1e-6) << a << " vs " << b;
  std::printf("largest weight difference %s vs %s: %.3g\n",
              a.parent_path().parent_path().filename().c_str(),
              b.parent_path().parent_path().filename().c_str(), worst);
}

// Three runs of 8 steps: one process, and two data-parallel ones.
const std::vector<std::string> kRun = {"train.steps=8", "train.global_batch=8",
                                       "checkpoint.every=4", "checkpoint.keep=5",
                                       "dist.bucket_mb=0.01"};

TEST(DataParallel, TwoRanksMatchOneProcessAndRepeatBitForBit) {
  const SharedCorpus corpus(*g_comm);
  const fs::path cfg_one = corpus.write_config("one.toml", corpus->dir() / "one");
  const fs::path cfg_a = corpus.write_config("a.toml", corpus->dir() / "dp_a");
  const fs::path cfg_b = corpus.write_config("b.toml", corpus->dir() / "dp_b");
  const fs::path cfg_z = corpus.write_config("z.toml", corpus->dir() / "zero");
  train_alone(cfg_one, kRun);
  const auto a = train(cfg_a, kRun, *g_comm);
  const auto b = train(cfg_b, kRun, *g_comm);
  auto zero_run = kRun;
  zero_run.push_back("dist.zero=1");
  const auto z = train(cfg_z, zero_run, *g_comm);
  EXPECT_EQ(a.steps, 8);
  EXPECT_EQ(a.last_checkpoint, final_checkpoint(corpus->dir() / "dp_a", 8));
  EXPECT_EQ(a.last_loss, b.last_loss);
  // Every rank knows the global loss and validation loss.
  const std::vector<double> mine = {a.last_loss, a.valid_loss};
  std::vector<double> all(2 * static_cast<std::size_t>(g_comm->size()));
  g_comm->all_gather(std::span<const double>(mine), std::span<double>(all));
  EXPECT_EQ(all[0], all[2]);
  EXPECT_EQ(all[1], all[3]);
  EXPECT_GT(a.valid_loss, 0.0);
  if (g_comm->rank() != 0) return;  // only rank 0 writes the run directories

  const fs::path one = corpus->dir() / "one", dp_a = corpus->dir() / "dp_a",
                 dp_b = corpus->dir() / "dp_b", zero = corpus->dir() / "zero";
  ASSERT_EQ(train_losses(dp_a).size(), 8u);
  // n ranks = one process, up to fp32 rounding.
  expect_close_losses(one, dp_a);
  expect_close_weights(final_checkpoint(one, 8), final_checkpoint(dp_a, 8));
  // Two data-parallel runs: the same bits (ordered reductions).
  EXPECT_EQ(train_losses(dp_a), train_losses(dp_b));
  for (const char* f : {"model.safetensors", "optimizer.safetensors"}) {
    EXPECT_EQ(test::read_file(final_checkpoint(dp_a, 8) / f),
              test::read_file(final_checkpoint(dp_b, 8) / f))
        << f;
  }
  // ZeRO-1 makes the same update element by element on the same summed
  // gradients, and the same norm: bit-identical to plain data parallelism
  // (its moments are stored in shards).
  EXPECT_EQ(test::read_file(final_checkpoint(dp_a, 8) / "model.safetensors"),
            test::read_file(final_checkpoint(zero, 8) / "model.safetensors"));
  EXPECT_EQ(moments(final_checkpoint(dp_a, 8)), moments(final_checkpoint(zero, 8)));
  EXPECT_EQ(train_losses(dp_a), train_losses(zero));
  // Only rank 0 wrote the run directory.
  EXPECT_TRUE(fs::exists(dp_a / "config.toml"));
  std::ifstream in(dp_a / "metrics.jsonl");
  std::string first;
  std::getline(in, first);
  EXPECT_NE(first.find(R"("ranks":2)"), std::string::npos) << first;
}

// Data parallelism between GPUs: the CUDA backend's kernels and the NCCL
// communicator, both on the CUDA emulator (its NCCL over MPI).
TrainRunResult train_on_emulated_gpus(const fs::path& config,
                                      const std::vector<std::string>& overrides, Communicator& comm,
                                      std::int64_t stop_at = 0) {
  TrainRunOptions o;
  o.progress = false;
  o.stop_at_step = stop_at;
  o.comm = &comm;
  o.backend = [] { return emulated::make_cuda_backend(); };
  o.device_comm = [](Communicator& data, int gpu) {
    return emulated::make_nccl_communicator(data, gpu);
  };
  return run_training(load_config(train_config_schema(), config, overrides), o);
}

// Two GPU ranks (emulated) track two CPU ranks within the kernels' fp32
// rounding; ZeRO-1 over NCCL gives plain data parallelism's bits (two ranks
// add the same two numbers either way), and a ZeRO-1 run stopped on the
// GPUs, its optimizer shards saved from device memory, resumes on them bit
// for bit.
TEST(DataParallel, GpuRanksOverNcclTrackCpuRanksAndResumeExactly) {
  const SharedCorpus corpus(*g_comm);
  const fs::path cpu = corpus->dir() / "cpu", gpu = corpus->dir() / "gpu",
                 zero = corpus->dir() / "gpu_zero", split = corpus->dir() / "gpu_split";
  const fs::path cfg_cpu = corpus.write_config("cpu.toml", cpu);
  const fs::path cfg_gpu = corpus.write_config("gpu.toml", gpu);
  const fs::path cfg_zero = corpus.write_config("zero.toml", zero);
  const fs::path cfg_split = corpus.write_config("split.toml", split);
  const std::vector<std::string> run = {"train.steps=6", "train.global_batch=8",
                                        "checkpoint.every=3", "eval.every=3",
                                        "dist.bucket_mb=0.01"};
  auto zero_run = run;
  zero_run.push_back("dist.zero=1");
  train(cfg_cpu, run, *g_comm);
  const auto g = train_on_emulated_gpus(cfg_gpu, run, *g_comm);
  EXPECT_EQ(g.steps, 6);
  train_on_emulated_gpus(cfg_zero, zero_run, *g_comm);
  EXPECT_EQ(train_on_emulated_gpus(cfg_split, zero_run, *g_comm, 4).steps, 4);
  const auto resumed = train_on_emulated_gpus(cfg_split, zero_run, *g_comm);
  EXPECT_EQ(resumed.first_step, 4);
  if (g_comm->rank() != 0) return;
  const auto want = train_losses(cpu), got = train_losses(gpu);
  ASSERT_EQ(got.size(), 6u);
  ASSERT_EQ(want.size(), got.size());
  for (const auto& [step, loss] : want) {
    EXPECT_NEAR(got.at(step), loss, 1e-4 * loss) << "step " << step;
  }
  const auto wc = weights(final_checkpoint(cpu, 6)), wg = weights(final_checkpoint(gpu, 6));
  ASSERT_EQ(wc.size(), wg.size());
  double worst = 0;
  for (std::size_t i = 0; i < wc.size(); ++i) {
    worst = std::max(worst, static_cast<double>(std::abs(wc[i] - wg[i])));
  }
  EXPECT_LT(worst, 1e-4);
  std::printf("[ measured ] 2 GPU ranks vs 2 CPU ranks: largest weight difference %.3g\n", worst);
  EXPECT_EQ(train_losses(gpu), train_losses(zero));
  for (const fs::path& other : {zero, split}) {
    EXPECT_EQ(test::read_file(final_checkpoint(gpu, 6) / "model.safetensors"),
              test::read_file(final_checkpoint(other, 6) / "model.safetensors"))
        << other;
  }
  EXPECT_EQ(moments(final_checkpoint(gpu, 6)), moments(final_checkpoint(zero, 6)));
  EXPECT_EQ(moments(final_checkpoint(zero, 6)), moments(final_checkpoint(split, 6)));
  EXPECT_EQ(train_losses(zero), train_losses(split));
  EXPECT_EQ(info_shards(final_checkpoint(zero, 6)), 2u);
}

TEST(DataParallel, ResumeOnAnotherNumberOfRanks) {
  const SharedCorpus corpus(*g_comm);
  const fs::path whole = corpus->dir() / "whole", two_one = corpus->dir() / "two_one",
                 one_two = corpus->dir() / "one_two";
  const fs::path cfg_whole = corpus.write_config("w.toml", whole);
  const fs::path cfg_21 = corpus.write_config("21.toml", two_one);
  const fs::path cfg_12 = corpus.write_config("12.toml", one_two);
  train(cfg_whole, kRun, *g_comm);
  // 2 ranks (ZeRO-1) for 3 steps, then 1 process to the end.
  auto zero_run = kRun;
  zero_run.push_back("dist.zero=1");
  const auto first = train(cfg_21, zero_run, *g_comm, 3);
  EXPECT_TRUE(first.stopped);
  train_alone(cfg_21, kRun);
  // 1 process for 5 steps, then 2 ranks (ZeRO-1) to the end.
  train_alone(cfg_12, kRun, 5);
  const auto second = train(cfg_12, zero_run, *g_comm);
  EXPECT_EQ(second.first_step, 5);
  EXPECT_EQ(second.steps, 8);
  if (g_comm->rank() != 0) return;
  ASSERT_EQ(train_losses(two_one).size(), 8u);
  ASSERT_EQ(train_losses(one_two).size(), 8u);
  // The data-parallel steps are bit-identical to the uninterrupted run's;
  // the others agree within fp32 rounding.
  const auto lw = train_losses(whole), l21 = train_losses(two_one);
  for (std::int64_t step = 1; step <= 3; ++step) EXPECT_EQ(lw.at(step), l21.at(step)) << step;
  expect_close_losses(whole, two_one);
  expect_close_losses(whole, one_two);
  expect_close_weights(final_checkpoint(whole, 8), final_checkpoint(two_one, 8));
  expect_close_weights(final_checkpoint(whole, 8), final_checkpoint(one_two, 8));
}

// ZeRO-1 on 2 ranks writes a shard per rank; stopped at step 3, it resumes
// on 2 ZeRO ranks or 2 plain ranks with the same bits as the uninterrupted
// run, and a damaged or missing shard makes --resume auto take an older
// checkpoint.
TEST(DataParallel, ShardedCheckpointsResumeExactly) {
  const SharedCorpus corpus(*g_comm);
  const fs::path zero = corpus->dir() / "zero", zz = corpus->dir() / "zz",
                 zd = corpus->dir() / "zd", bad = corpus->dir() / "bad";
  const fs::path cfg_zero = corpus.write_config("zero.toml", zero);
  const fs::path cfg_zz = corpus.write_config("zz.toml", zz);
  const fs::path cfg_zd = corpus.write_config("zd.toml", zd);
  const fs::path cfg_bad = corpus.write_config("bad.toml", bad);
  auto zero_run = kRun;
  zero_run.push_back("dist.zero=1");
  train(cfg_zero, zero_run, *g_comm);
  EXPECT_TRUE(train(cfg_zz, zero_run, *g_comm, 3).stopped);
  EXPECT_EQ(train(cfg_zz, zero_run, *g_comm).first_step, 3);
  train(cfg_zd, zero_run, *g_comm, 3);
  EXPECT_EQ(train(cfg_zd, kRun, *g_comm).first_step, 3);  // zero = 0

  // Checkpoints every 2 steps up to step 7; then rank 1's shard of step 7
  // is damaged and rank 0's of step 6 removed: the run resumes from step 4.
  auto every2 = zero_run;
  every2.push_back("checkpoint.every=2");
  train(cfg_bad, every2, *g_comm, 7);
  const fs::path ck = bad / "checkpoints";
  if (g_comm->rank() == 0) {
    test::flip_bits(ck / checkpoint_name(7) / "optimizer-rank-00001-of-00002.safetensors", 400,
                    0x20);
    fs::remove(ck / checkpoint_name(6) / "optimizer-rank-00000-of-00002.safetensors");
  }
  g_comm->barrier();
  std::vector<std::pair<fs::path, std::string>> skipped;
  const auto found = latest_checkpoint(ck, skipped);
  ASSERT_TRUE(found.has_value());
  EXPECT_EQ(found->state.step, 4);
  ASSERT_EQ(skipped.size(), 2u);
  EXPECT_EQ(skipped[0].second,
            "optimizer-rank-00001-of-00002.safetensors does not match its checksum");
  EXPECT_EQ(skipped[1].second, "optimizer-rank-00000-of-00002.safetensors is missing");
  const auto resumed = train(cfg_bad, every2, *g_comm);
  EXPECT_EQ(resumed.first_step, 4);
  EXPECT_EQ(resumed.steps, 8);
  if (g_comm->rank() != 0) return;

  // Each rank wrote its shard; rank 0 no file of whole moments.
  EXPECT_EQ(test::list_dir(final_checkpoint(zero, 8)),
            (std::vector<std::string>{
                "model.safetensors", "optimizer-rank-00000-of-00002.safetensors",
                "optimizer-rank-00001-of-00002.safetensors", "state.json", "tokenizer.json"}));
  const auto info = verify_checkpoint(final_checkpoint(zero, 8));
  ASSERT_EQ(info.shards.size(), 2u);
  EXPECT_EQ(info.shards[0].begin, 0);
  EXPECT_EQ(info.shards[1].end, ParamLayout(info.model).total());
  const auto lz = train_losses(zero);
  ASSERT_EQ(lz.size(), 8u);
  EXPECT_EQ(train_losses(zz), lz);
  EXPECT_EQ(train_losses(zd), lz);
  EXPECT_EQ(train_losses(bad), lz);
  for (const fs::path& run : {zz, zd, bad}) {
    EXPECT_EQ(test::read_file(final_checkpoint(run, 8) / "model.safetensors"),
              test::read_file(final_checkpoint(zero, 8) / "model.safetensors"))
        << run;
    EXPECT_EQ(moments(final_checkpoint(run, 8)), moments(final_checkpoint(zero, 8))) << run;
  }
  // The plain run wrote the single-process format.
  EXPECT_TRUE(fs::exists(final_checkpoint(zd, 8) / "optimizer.safetensors"));
}

// Across rank counts the runs differ by rounding only, so exactness is
// checked against the same resume from plain data parallelism: 2 ZeRO
// ranks stopped at step 3 and finished in one process give the same bits
// as 2 plain ranks stopped there and finished the same way (the loaded
// state is the same), and one process stopped at step 5 continues on 2
// ZeRO ranks exactly as on 2 plain ranks.
TEST(DataParallel, ShardedResumeOnAnotherRankCountIsExact) {
  const SharedCorpus corpus(*g_comm);
  const fs::path z1 = corpus->dir() / "z1", d1 = corpus->dir() / "d1", one_z = corpus->dir() / "1z",
                 one_d = corpus->dir() / "1d";
  const fs::path cfg_z1 = corpus.write_config("z1.toml", z1);
  const fs::path cfg_d1 = corpus.write_config("d1.toml", d1);
  const fs::path cfg_1z = corpus.write_config("1z.toml", one_z);
  const fs::path cfg_1d = corpus.write_config("1d.toml", one_d);
  auto zero_run = kRun;
  zero_run.push_back("dist.zero=1");
  train(cfg_z1, zero_run, *g_comm, 3);
  train_alone(cfg_z1, kRun);
  train(cfg_d1, kRun, *g_comm, 3);
  train_alone(cfg_d1, kRun);
  train_alone(cfg_1z, kRun, 5);
  train(cfg_1z, zero_run, *g_comm);
  train_alone(cfg_1d, kRun, 5);
  train(cfg_1d, kRun, *g_comm);
  if (g_comm->rank() != 0) return;
  EXPECT_EQ(info_shards(final_checkpoint(z1, 3)), 2u);
  EXPECT_EQ(info_shards(final_checkpoint(one_z, 8)), 2u);
  for (const auto& [a, b] : {std::pair{z1, d1}, std::pair{one_z, one_d}}) {
    ASSERT_EQ(train_losses(a).size(), 8u);
    EXPECT_EQ(train_losses(a), train_losses(b)) << a;
    EXPECT_EQ(test::read_file(final_checkpoint(a, 8) / "model.safetensors"),
              test::read_file(final_checkpoint(b, 8) / "model.safetensors"))
        << a;
    EXPECT_EQ(moments(final_checkpoint(a, 8)), moments(final_checkpoint(b, 8))) << a;
  }
}

// A rank's optimizer takes exactly its range of the moments from a
// checkpoint of one process (whole moments) or of 2 ZeRO ranks (shards).
TEST(DataParallel, EachRankLoadsItsRange) {
  const SharedCorpus corpus(*g_comm);
  const fs::path one = corpus->dir() / "one", two = corpus->dir() / "two";
  const fs::path cfg_one = corpus.write_config("one.toml", one);
  const fs::path cfg_two = corpus.write_config("two.toml", two);
  const std::vector<std::string> run = {"train.steps=4", "train.global_batch=8", "eval.batches=0"};
  train_alone(cfg_one, run);
  auto zero_run = run;
  zero_run.push_back("dist.zero=1");
  train(cfg_two, zero_run, *g_comm);
  for (const fs::path& dir : {one, two}) {
    const CheckpointInfo info = verify_checkpoint(final_checkpoint(dir, 4));
    EXPECT_EQ(info.shards.size(), dir == one ? 0u : 2u);
    const ParamLayout layout(info.model);
    const auto [m, v] = moments(info.dir);
    const auto backend = make_cpu_backend<float>();
    for (const int zero : {0, 1}) {
      std::vector<float> params(m.size()), grads(m.size());
      DataParallelOptions options;
      options.zero = zero;
      DataParallel dp(*g_comm, *backend, layout, AdamWConfig{}, options, params.data(),
                      grads.data());
      load_training_checkpoint(info, layout, params.data(), dp);
      const auto b = static_cast<std::size_t>(dp.shard_begin());
      const auto e = static_cast<std::size_t>(dp.shard_end());
      EXPECT_EQ(e - b, zero == 1 ? (m.size() + 1) / 2 - (g_comm->rank() == 1 ? m.size() % 2 : 0)
                                 : m.size());
      const auto om = dp.optimizer().m(), ov = dp.optimizer().v();
      EXPECT_EQ(std::vector<float>(om.begin(), om.end()),
                std::vector<float>(m.begin() + b, m.begin() + e))
          << dir;
      EXPECT_EQ(std::vector<float>(ov.begin(), ov.end()),
                std::vector<float>(v.begin() + b, v.begin() + e))
          << dir;
      EXPECT_EQ(dp.adamw_steps(), 4);
      EXPECT_EQ(params, weights(info.dir));
    }
  }
  g_comm->barrier();
}

// A rank that cannot write its part fails the save on every rank, and no
// checkpoint directory (complete or temporary) is left.
TEST(DataParallel, AFailedWriteFailsTheSaveOnEveryRank) {
  const SharedCorpus corpus(*g_comm);
  const fs::path zero = corpus->dir() / "fail_zero", plain = corpus->dir() / "fail_plain";
  const fs::path cfg_zero = corpus.write_config("fz.toml", zero);
  const fs::path cfg_plain = corpus.write_config("fp.toml", plain);
  auto zero_run = kRun;
  zero_run.push_back("dist.zero=1");
  setenv("BOREALIS_TEST_FAULT", "1:4:save", 1);
  const std::string zero_error = test::error_line([&] { train(cfg_zero, zero_run, *g_comm); });
  setenv("BOREALIS_TEST_FAULT", "0:4:save", 1);
  const std::string plain_error = test::error_line([&] { train(cfg_plain, kRun, *g_comm); });
  unsetenv("BOREALIS_TEST_FAULT");
  EXPECT_NE(zero_error.find("the checkpoint of step 4 was not written: rank 1 (" + g_comm->host(1) +
                            "): injected failure at step 4 (BOREALIS_TEST_FAULT)"),
            std::string::npos)
      << zero_error;
  EXPECT_NE(plain_error.find("the checkpoint of step 4 was not written: rank 0 (" +
                             g_comm->host(0) + "): injected failure at step 4"),
            std::string::npos)
      << plain_error;
  g_comm->barrier();
  if (g_comm->rank() != 0) return;
  EXPECT_EQ(test::list_dir(zero / "checkpoints"), std::vector<std::string>{});
  EXPECT_FALSE(fs::exists(plain / "checkpoints" / checkpoint_name(4)));
}

TEST(DataParallel, ConfigErrors) {
  const SharedCorpus corpus(*g_comm);
  const fs::path cfg = corpus.write_config("c.toml", corpus->dir() / "bad");
  // 2 sequences per step cannot feed 2 ranks micro-batches of 2.
  const std::string line = test::error_line([&] {
    train(cfg, {"train.global_batch=2", "train.micro_batch=2"}, *g_comm);
  });
  EXPECT_NE(line.find("train.global_batch 2 is not divisible by train.micro_batch 2 x 2 "
                      "data-parallel replicas"),
            std::string::npos)
      << line;
  // Every rank must run the same configuration.
  const std::string other = test::error_line(
      [&] { train(cfg, {g_comm->rank() == 1 ? "optim.lr=1e-3" : "optim.lr=3e-3"}, *g_comm); });
  EXPECT_NE(other.find("rank 1 (" + g_comm->host(1) + ") runs another configuration than rank 0"),
            std::string::npos)
      << other;
  // GPU ranks run data parallelism only.
  const std::string tensor = test::error_line([&] {
    train_on_emulated_gpus(cfg, {"dist.tensor_parallel=2", "train.global_batch=4"}, *g_comm);
  });
  EXPECT_NE(tensor.find("runs data parallelism only: tensor and pipeline parallelism exchange "
                        "host memory over MPI (dist.tensor_parallel = 2"),
            std::string::npos)
      << tensor;
  g_comm->barrier();
}

// The time-out scenario (see the top of the file). zero = 0: the ranks
// first run to step 2 and stop (the reference); then the faulty run, with
// no periodic checkpoint, must leave a checkpoint of step 2 written by rank
// 0 alone after the time-out, equal to the reference's, from which one
// process continues with exactly the reference's losses (2 ranks; with more
// ranks the files and state are compared only, since the waiting ranks end
// the job after dist.timeout_s). zero = 1: the fault comes at step 4 after
// a checkpoint of step 2; no checkpoint of step 3 may appear and the log
// must say why and name step 2.
int timeout_check(Communicator& c, const std::string& fault, int zero, bool gpu) {
  SharedCorpus corpus(*g_comm);
  const fs::path ref = corpus->dir() / "ref", hang = corpus->dir() / "hang";
  const fs::path cfg_ref = corpus.write_config("r.toml", ref);
  const fs::path cfg = corpus.write_config("t.toml", hang);
  const std::vector<std::string> run = {"dist.timeout_s=2", "eval.batches=0", "train.steps=6",
                                        "train.global_batch=" + std::to_string(2 * c.size()),
                                        "dist.zero=" + std::to_string(zero),
                                        zero == 0 ? "checkpoint.every=0" : "checkpoint.every=2",
                                        // The checkpoint of step 2 is published before step
                                        // 3 (an asynchronous one could still be in flight at
                                        // the hang, and be dropped).
                                        "checkpoint.async=false"};
  // With `gpu`: every run on emulated GPUs, the ranks' gradients over NCCL.
  const auto run_on = [&](const fs::path& config, Communicator& comm, std::int64_t stop_at = 0) {
    return gpu ? train_on_emulated_gpus(config, run, comm, stop_at)
               : train(config, run, comm, stop_at);
  };
  if (zero == 0) run_on(cfg_ref, c, 2);
  const int fault_step = zero == 0 ? 3 : 4;
  setenv("BOREALIS_TEST_FAULT", ("1:" + std::to_string(fault_step) + ":" + fault).c_str(), 1);
  // What the run logs, for the messages after the time-out.
  std::ostringstream log;
  const test::LogCapture capture(log);
  const auto start = std::chrono::steady_clock::now();
  try {
    run_on(cfg, c);
  } catch (const CommTimeout& e) {
    corpus.abandon();
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    unsetenv("BOREALIS_TEST_FAULT");
    const std::string text = e.message();
    const std::string want = "rank 1 (" + c.host(1) + ")";
    // Time-out 2 s plus the grace period for probes (0.5 s), after a few
    // steps of a tiny model, and the checkpoint.
    std::vector<std::string> failures;
    const auto expect = [&](bool ok, const std::string& what) {
      if (!ok) failures.push_back(what);
    };
    expect(text.find("timed out") != std::string::npos &&
               text.find("no answer") != std::string::npos && text.find(want) != std::string::npos,
           "the message names rank 1");
    expect(e.silent() == std::vector<int>{1}, "CommTimeout::silent() is {1}");
    expect(s < 10.0, "within 10 s");
    if (c.rank() != 0) {
      // Rank 0 writes and then ends the job, so another rank gets here only
      // when it stopped waiting for rank 0 (dist.timeout_s after its own
      // time-out): earlier, it would have ended the job under the writer.
      const bool waited = s > 2.0 + 2.0;
      std::printf("rank %d left train() after %.2f s%s\n", c.rank(), s,
                  waited ? "" : ": train timeout check FAILED: it did not wait for the writer");
      std::fflush(stdout);
      return waited ? 0 : 1;
    }
    {
      const std::string said = log.str();
      try {
        const fs::path ck = hang / "checkpoints";
        if (zero == 0) {
          expect(said.find("after the time-out, rank 0 wrote the checkpoint of step 2 alone") !=
                     std::string::npos,
                 "the log says where the checkpoint is");
          expect(test::list_dir(ck) == std::vector<std::string>{checkpoint_name(2)},
                 "a checkpoint of step 2 and nothing else");
          const CheckpointInfo got = verify_checkpoint(ck / checkpoint_name(2));
          const CheckpointInfo want_info = verify_checkpoint(final_checkpoint(ref, 2));
          expect(got.state.step == 2 && got.state.next_sample == want_info.state.next_sample &&
                     got.state.tokens == want_info.state.tokens &&
                     got.state.recent_losses == want_info.state.recent_losses &&
                     got.adamw_steps == want_info.adamw_steps,
                 "the state of step 2");
          for (const char* f : {"model.safetensors", "optimizer.safetensors"}) {
            expect(test::read_file(ck / checkpoint_name(2) / f) ==
                       test::read_file(final_checkpoint(ref, 2) / f),
                   std::string(f) + " equal to the reference's");
          }
          if (c.size() == 2) {
            SelfCommunicator self;
            const auto resumed = run_on(cfg, self);
            run_on(cfg_ref, self);
            expect(resumed.first_step == 2 && resumed.steps == 6, "one process resumes at step 2");
            expect(train_losses(hang).size() == 6 && train_losses(hang) == train_losses(ref),
                   "the resumed losses equal the reference's");
          }
        } else {
          expect(test::list_dir(ck) == std::vector<std::string>{checkpoint_name(2)},
                 "no checkpoint after step 2");
          expect(said.find("no checkpoint after the time-out: with dist.zero = 1 the optimizer "
                           "moments are sharded") != std::string::npos &&
                     said.find("the last checkpoint is step 2 (") != std::string::npos,
                 "the log says why and names step 2");
        }
      } catch (const std::exception& x) {
        expect(false, x.what());
      }
      std::string why;
      for (const auto& f : failures) why += "\n  failed: " + f;
      std::printf("train timeout check %s after %.2f s: %s%s\n",
                  failures.empty() ? "passed" : "FAILED", s, text.c_str(), why.c_str());
      if (!failures.empty()) std::printf("log:\n%s\n", said.c_str());
      std::fflush(stdout);
    }
    return failures.empty() ? 0 : 1;
  } catch (const Error& e) {
    std::printf("train timeout check FAILED: not a time-out: %s\n", e.line().c_str());
    return 1;
  }
  std::printf("train timeout check FAILED: the run completed\n");
  return 1;
}

}  // namespace
}  // namespace borealis

int main(int argc, char** argv) {
  return borealis::test::mpi_test_main(
      argc, argv, std::chrono::milliseconds(120'000), borealis::g_comm,
      borealis::test::RankRange{2, 2},  // the tests compare shards and batches of two ranks
      [](borealis::Communicator& comm, int args, char** arg) {
        return borealis::timeout_check(comm, args > 2 ? arg[2] : "hang",
                                       args > 3 ? std::atoi(arg[3]) : 0,
                                       args > 4 && std::string(arg[4]) == "gpu");
      });
}
