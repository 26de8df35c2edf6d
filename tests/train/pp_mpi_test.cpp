// Pipeline parallelism against one process, run by ctest under `mpirun -np
// 2` (two stages) and `-np 4` (two stages of tensor groups of 2, two stages
// of two data replicas, four stages): every rank also computes the
// one-process reference itself, so each compares its own stage and part.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>
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
#include "train/pipeline.h"
#include "train/train_fixture.h"

namespace borealis {
namespace {

Communicator* g_comm = nullptr;

// A layout of this world: tensor x pipeline, the rest data parallel.
struct Case {
  const char* preset;
  int layers;  // the preset's with 0
  int tensor;
  int pipeline;
  bool sequence;
  int micro;
};

std::string name(const Case& c) {
  return fmt::format("{} L{} TP{}{} PP{} m{}", c.preset, c.layers, c.tensor,
                     c.sequence ? "+SP" : "", c.pipeline, c.micro);
}

ModelConfig config_of(const Case& c) {
  ModelConfig config = model_preset(c.preset);
  if (c.layers > 0) config.n_layer = c.layers;
  return config;
}

// The layouts each world size checks.
std::vector<Case> cases() {
  if (g_comm->size() == 2) {
    return {{"gpt2-tiny", 0, 1, 2, false, 3},
            {"llama-tiny", 0, 1, 2, false, 3},
            {"gpt2-tiny", 4, 1, 2, false, 1}};
  }
  return {{"gpt2-tiny", 0, 2, 2, false, 3}, {"llama-tiny", 0, 2, 2, true, 3},
          {"gpt2-tiny", 4, 1, 4, false, 6}, {"llama-tiny", 4, 1, 4, false, 2},
          {"gpt2-tiny", 0, 1, 2, false, 4}, {"llama-tiny", 0, 1, 2, false, 4}};
}

// In double precision: every micro-batch's loss and every gradient of the
// stage's part equal the one-process model's taking the same micro-batches
// with gradient accumulation (the reductions only reorder sums).
TEST(PipelineModels, ForwardAndBackwardMatchOneProcess) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(name(c));
    const ModelConfig config = config_of(c);
    ParallelLayout layout =
        parallel_layout(g_comm->size(), g_comm->rank(), c.tensor, c.pipeline, config, "test");
    layout.sequence = c.sequence;
    ParallelGroups groups(*g_comm, layout);
    TensorParallelGroup<double> group = tensor_parallel_group<double>(groups.tensor());
    group.sequence_parallel = c.sequence;
    auto backend = make_cpu_backend<double>();
    const int B = 2, T = 8, m = c.micro;
    const double scale = 1.0 / m;
    // Each data replica takes its own micro-batches.
    const unsigned seed = 100 + 10 * static_cast<unsigned>(layout.data_rank);
    const auto tokens = test::random_ids(m * B * T, config.vocab_size, seed);
    const auto targets = test::random_ids(m * B * T, config.vocab_size, seed + 1);

    Model<double> whole(config, *backend);
    whole.init(5);
    whole.zero_grad();
    std::vector<double> expected;
    for (int i = 0; i < m; ++i) {
      expected.push_back(
          whole.forward(tokens.data() + i * B * T, targets.data() + i * B * T, B, T, true, scale));
      whole.backward();
    }

    Model<double> part(config, *backend, &group, groups.stage());
    part.init(5);
    part.zero_grad();
    Pipeline<double> pipe(groups.pipeline(), part, m);
    const bool first = groups.stage().first(), last = groups.stage().last();
    const std::vector<double> losses =
        pipe.train(first ? tokens.data() : nullptr, last ? targets.data() : nullptr, B, T, scale);
    pipe.sync_tied_grads();
    ASSERT_EQ(losses.size(), expected.size());
    for (int i = 0; i < m; ++i) EXPECT_NEAR(losses[i], expected[i], 1e-12 * expected[i]) << i;
    for (const ParamView& v : part.layout().views()) {
      const ParamView& w = whole.layout().find(v.name);
      EXPECT_EQ(test::part_error(v, part.params(), w, whole.params()), 0.0) << v.name;
      EXPECT_LT(test::part_error(v, part.grads(), w, whole.grads()), 1e-11)
          << v.name << " on stage " << groups.stage().stage;
    }
    // Validation: forward only, the same losses.
    const std::vector<double> valid =
        pipe.evaluate(first ? tokens.data() : nullptr, last ? targets.data() : nullptr, B, T, m);
    for (int i = 0; i < m; ++i) EXPECT_NEAR(valid[i], expected[i], 1e-12 * expected[i]) << i;
  }
}

// Three AdamW steps with clipping in float, with data parallelism and
// ZeRO-1 over the replicas, against one process taking the whole global
// batch: the same losses and gradient norms, and parameters within float
// rounding of the one-process ones; tied copies stay identical.
TEST(PipelineTraining, ThreeStepsMatchOneProcess) {
  for (const Case& c : cases()) {
    for (const int zero : {0, 1}) {
      SCOPED_TRACE(name(c) + fmt::format(" ZeRO-{}", zero));
      const ModelConfig config = config_of(c);
      ParallelLayout layout =
          parallel_layout(g_comm->size(), g_comm->rank(), c.tensor, c.pipeline, config, "test");
      layout.sequence = c.sequence;
      ParallelGroups groups(*g_comm, layout);
      auto backend = make_cpu_backend<float>();
      const int B = 2, T = 16, m = c.micro, replicas = layout.data;
      AdamWConfig adamw;
      const float lr = 3e-3f;
      const double clip = 0.5;

      Model<float> whole(config, *backend);
      whole.init(11);
      SelfCommunicator self;
      DataParallel one(self, *backend, whole.layout(), adamw, {}, whole.params(), whole.grads());
      Model<float> part(config, *backend, &groups.model_group(), groups.stage());
      part.init(11);
      DataParallelOptions dpo;
      dpo.zero = zero;
      DataParallel dp(groups.data(), *backend, part.layout(), adamw, dpo, part.params(),
                      part.grads());
      dp.set_model_parallel(groups.tensor(), groups.pipeline(), part.layout());
      Pipeline<float> pipe(groups.pipeline(), part, m);
      const bool first = groups.stage().first(), last = groups.stage().last();
      for (int step = 0; step < 3; ++step) {
        const int global = m * replicas;
        const auto tokens = test::random_ids(global * B * T, config.vocab_size, 40 + step);
        const auto targets = test::random_ids(global * B * T, config.vocab_size, 50 + step);
        whole.zero_grad();
        double whole_loss = 0;
        for (int i = 0; i < global; ++i) {
          whole_loss += whole.forward(tokens.data() + i * B * T, targets.data() + i * B * T, B, T,
                                      true, 1.0f / static_cast<float>(global));
          whole.backward();
        }
        whole_loss /= global;
        const double whole_norm = one.grad_norm();
        const float whole_scale = whole_norm > clip ? static_cast<float>(clip / whole_norm) : 1.0f;
        one.step(lr, whole_scale);

        part.zero_grad();
        const std::size_t at = static_cast<std::size_t>(layout.data_rank) * m * B * T;
        const std::vector<double> losses =
            pipe.train(first ? tokens.data() + at : nullptr, last ? targets.data() + at : nullptr,
                       B, T, 1.0f / static_cast<float>(global));
        pipe.sync_tied_grads();
        dp.finish_reduction();
        double sum = 0;
        for (const double l : losses) sum += l;
        groups.data().allreduce(std::span<double>(&sum, 1), ReduceOp::Sum);
        EXPECT_NEAR(sum / global, whole_loss, 1e-6 * whole_loss) << "step " << step;
        const double norm = dp.grad_norm();
        EXPECT_NEAR(norm, whole_norm, 1e-6 * whole_norm) << "step " << step;
        dp.step(lr, norm > clip ? static_cast<float>(clip / norm) : 1.0f);
      }
      for (const ParamView& v : part.layout().views()) {
        const ParamView& w = whole.layout().find(v.name);
        std::vector<float> expected(static_cast<std::size_t>(v.size));
        take_part(v, whole.params() + w.offset, expected.data());
        double worst = 0;
        for (std::int64_t i = 0; i < v.size; ++i) {
          worst = std::max(
              worst, static_cast<double>(std::abs(part.params()[v.offset + i] - expected[i])));
        }
        EXPECT_LT(worst, 0.02 * lr) << v.name;
      }
      // The first and last stage's copies of tied embeddings stay equal.
      if (config.tied_embeddings && (first || last) && c.pipeline > 1) {
        const ParamView& wte = part.layout().find("wte");
        std::vector<float> other(static_cast<std::size_t>(wte.size));
        std::copy(part.params() + wte.offset, part.params() + wte.offset + wte.size, other.begin());
        const int peer = first ? c.pipeline - 1 : 0;
        if (first) {
          groups.pipeline().send(std::span<const float>(other), peer);
        } else {
          groups.pipeline().recv(std::span<float>(other), peer);
          for (std::int64_t i = 0; i < wte.size; ++i) {
            ASSERT_EQ(other[static_cast<std::size_t>(i)], part.params()[wte.offset + i]) << i;
          }
        }
      }
    }
  }
}

// `borealis train` with dist.pipeline_parallel = 2 (on 4 ranks with tensor
// parallelism and sequence parallelism, or with two data replicas and
// ZeRO-1), tied and untied embeddings: the one-process loss curve and
// weights within float rounding, and checkpoints that resume in another
// layout: pipeline onto one process and back.
TEST(PipelineRuns, MatchOneProcessAndResumeInAnyLayout) {
  namespace fs = std::filesystem;
  const test::SharedCorpus corpus(*g_comm);
  for (const char* embeddings : {"untied", "tied"}) {
    SCOPED_TRACE(embeddings);
    const std::string tag = embeddings;
    const std::vector<std::string> run = {
        "train.steps=8",       "train.global_batch=8",
        "checkpoint.every=4",  "checkpoint.keep=5",
        "dist.bucket_mb=0.01", fmt::format("model.embeddings={}", embeddings)};
    std::vector<std::string> pp_run = run;
    pp_run.push_back("dist.pipeline_parallel=2");
    if (g_comm->size() == 4 && tag == "untied") {
      pp_run.insert(pp_run.end(), {"dist.tensor_parallel=2", "dist.sequence_parallel=true"});
    } else if (g_comm->size() == 4) {
      pp_run.push_back("dist.zero=1");
    }
    const fs::path one = corpus->dir() / (tag + "one"), pp = corpus->dir() / (tag + "pp"),
                   pp_one = corpus->dir() / (tag + "pp_one"),
                   one_pp = corpus->dir() / (tag + "one_pp"),
                   pp_dp = corpus->dir() / (tag + "pp_dp");
    const fs::path cfg_one = corpus.write_config(tag + "one.toml", one);
    const fs::path cfg_pp = corpus.write_config(tag + "pp.toml", pp);
    const fs::path cfg_pp_one = corpus.write_config(tag + "pp_one.toml", pp_one);
    const fs::path cfg_one_pp = corpus.write_config(tag + "one_pp.toml", one_pp);
    const fs::path cfg_pp_dp = corpus.write_config(tag + "pp_dp.toml", pp_dp);
    test::train_alone(*g_comm, cfg_one, run);
    const TrainRunResult r = test::train(cfg_pp, pp_run, *g_comm);
    EXPECT_EQ(r.steps, 8);
    EXPECT_GT(r.valid_loss, 0.0);
    EXPECT_TRUE(test::train(cfg_pp_one, pp_run, *g_comm, 4).stopped);
    test::train_alone(*g_comm, cfg_pp_one, run);
    test::train_alone(*g_comm, cfg_one_pp, run, 4);
    EXPECT_EQ(test::train(cfg_one_pp, pp_run, *g_comm).first_step, 4);
    // Stored in parts, resumed as plain data parallelism with ZeRO-1 on
    // every rank: each rank reads its range of the moments from the parts.
    std::vector<std::string> dp_run = run;
    dp_run.push_back("dist.zero=1");
    EXPECT_TRUE(test::train(cfg_pp_dp, pp_run, *g_comm, 4).stopped);
    EXPECT_EQ(test::train(cfg_pp_dp, dp_run, *g_comm).first_step, 4);
    if (g_comm->rank() != 0) continue;

    const bool tensor = g_comm->size() == 4 && tag == "untied";
    test::expect_parts(test::final_checkpoint(pp, 8), tensor ? 2 : 1, 2);
    test::expect_parts(test::final_checkpoint(pp_dp, 4), tensor ? 2 : 1, 2);
    test::expect_same_run(one, {pp, pp_one, one_pp, pp_dp}, 8);
    std::ifstream in(pp / "metrics.jsonl");
    std::string first, second;
    std::getline(in, first);
    std::getline(in, second);
    EXPECT_NE(first.find(R"("pipeline_parallel":2)"), std::string::npos) << first;
    EXPECT_NE(second.find(R"("bubble":)"), std::string::npos) << second;
  }
}

TEST(PipelineRuns, BadLayoutsStopEveryRank) {
  namespace fs = std::filesystem;
  const test::SharedCorpus corpus(*g_comm);
  const fs::path cfg = corpus.write_config("bad.toml", corpus->dir() / "bad");
  try {
    test::train(cfg, {"dist.pipeline_parallel=3"}, *g_comm);
    FAIL() << "3 stages";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fmt::format(
                  "dist.tensor_parallel x dist.pipeline_parallel = 1 x 3 does not divide the {} "
                  "ranks",
                  g_comm->size())),
              std::string::npos)
        << e.what();
  }
  if (g_comm->size() == 4) {
    try {
      test::train(cfg, {"dist.pipeline_parallel=4"}, *g_comm);
      FAIL() << "4 stages of 2 layers";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("n_layer = 2"), std::string::npos) << e.what();
    }
  }
}

TEST(PipelineLayout, BadLayoutsAndGroups) {
  const ModelConfig llama = model_preset("llama-tiny");  // 2 layers
  try {
    parallel_layout(4, 0, 1, 4, llama, "run.toml:4");
    FAIL() << "4 stages of 2 layers";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "dist.pipeline_parallel = 4 does not divide the model's n_layer = 2"),
              std::string::npos)
        << e.what();
    EXPECT_EQ(e.where(), "run.toml:4");
  }
  try {
    parallel_layout(6, 0, 2, 2, llama, "x");
    FAIL() << "2 x 2 does not divide 6";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(
                  "dist.tensor_parallel x dist.pipeline_parallel = 2 x 2 does not divide the 6 "
                  "ranks"),
              std::string::npos)
        << e.what();
  }
  // 8 ranks, TP2 x DP2 x PP2: world rank = (stage * 2 + data) * 2 + tensor.
  const ParallelLayout l = parallel_layout(8, 6, 2, 2, llama, "x");
  EXPECT_EQ(l.tensor_rank, 0);
  EXPECT_EQ(l.data_rank, 1);
  EXPECT_EQ(l.pipeline_rank, 1);
  EXPECT_EQ(describe_layout(l),
            "8 ranks: tensor parallel 2 x data parallel 2 x pipeline parallel 2; tensor groups "
            "{0,1} {2,3}; pipelines {0,4} {1,5} {2,6} {3,7}");
  // The groups of this world: every pipeline's stage s is world rank s *
  // (ranks / stages) + offset.
  const int P = 2, T = g_comm->size() == 4 ? 2 : 1;
  ParallelGroups groups(*g_comm, parallel_layout(g_comm->size(), g_comm->rank(), T, P, llama, "x"));
  std::vector<double> mine = {static_cast<double>(g_comm->rank())}, members(P);
  groups.pipeline().all_gather(std::span<const double>(mine), std::span<double>(members));
  for (int s = 0; s < P; ++s) {
    EXPECT_EQ(members[s], s * (g_comm->size() / P) + g_comm->rank() % (g_comm->size() / P));
  }
  EXPECT_EQ(groups.stage().stage, g_comm->rank() / (g_comm->size() / P));
}

// --timeout-check: a pipeline whose stage numbers run against the world's
// (the last world rank is stage 0) waits for a stage that sleeps; the
// receive's time-out must name the silent stage by its group rank, host and
// world rank.
int timeout_check(Communicator& world) {
  const int sleeper = world.size() - 1;  // world rank; stage 0
  std::unique_ptr<Communicator> pipe = world.split(0, world.size() - 1 - world.rank());
  pipe->set_timeout(std::chrono::milliseconds(1000));
  std::vector<float> v(1024, 1.0F);
  if (world.rank() == sleeper) {
    std::this_thread::sleep_for(std::chrono::seconds(8));
    pipe->send(std::span<const float>(v), 1);
    std::printf("timeout check FAILED: the sleeping stage was not stopped\n");
    return 1;
  }
  if (pipe->rank() != 1) return 0;  // the other stages wait for the job's end
  try {
    pipe->recv(std::span<float>(v), 0);
  } catch (const CommTimeout& e) {
    const std::string text = e.message();
    const std::string want =
        fmt::format("rank 0 ({}, world rank {})", world.host(sleeper), sleeper);
    const bool ok = text.rfind("receive #", 0) == 0 && text.find(want) != std::string::npos &&
                    text.find("no answer") != std::string::npos &&
                    e.silent() == std::vector<int>{0};
    std::printf("timeout check %s: %s\n", ok ? "passed" : "FAILED", text.c_str());
    std::fflush(stdout);
    return ok ? 0 : 1;
  }
  std::printf("timeout check FAILED: the receive completed\n");
  return 1;
}

}  // namespace
}  // namespace borealis

int main(int argc, char** argv) {
  // The time-out check's communicator fails and ends the job with MPI_Abort
  // when destroyed.
  return borealis::test::mpi_test_main(
      argc, argv, std::chrono::milliseconds(120'000), borealis::g_comm,
      borealis::test::RankRange{2, 4},
      [](borealis::Communicator& comm, int, char**) { return borealis::timeout_check(comm); });
}
