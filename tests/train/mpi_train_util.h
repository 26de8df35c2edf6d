// Helpers of the MPI training tests: a corpus rank 0 builds and every rank
// reads, runs of the trainer on a given communicator, and what they wrote.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/config.h"
#include "dist/communicator.h"
#include "model/checkpoint_load.h"
#include "model/model_parts.h"
#include "model/params.h"
#include "model/safetensors.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/train_config.h"
#include "train/train_fixture.h"
#include "train/trainer.h"

namespace borealis::test {

namespace fs = std::filesystem;

// The corpus directory of rank 0, known to every rank.
class SharedCorpus {
 public:
  explicit SharedCorpus(Communicator& comm) : comm_(comm) {
    Communicator& c = comm_;
    std::vector<char> path(4096, '\0');
    if (c.rank() == 0) {
      built_ = std::make_unique<TrainFixture>();
      const std::string p = built_->dir().string();
      std::copy(p.begin(), p.end(), path.begin());
    }
    c.broadcast(std::span<char>(path), 0);
    fixture_ = std::make_unique<TrainFixture>(fs::path(path.data()));
  }
  ~SharedCorpus() {
    if (!abandoned_) comm_.barrier();  // nobody reads it any more
  }
  // Rank 0 writes the config file, the others wait for it.
  fs::path write_config(const std::string& name, const fs::path& run_dir) const {
    const fs::path path = fixture_->dir() / name;
    if (comm_.rank() == 0) fixture_->write_config(name, run_dir);
    comm_.barrier();
    return path;
  }
  // After a failed collective: no barrier before removing it.
  void abandon() { abandoned_ = true; }
  const TrainFixture& operator*() const { return *fixture_; }
  const TrainFixture* operator->() const { return fixture_.get(); }

 private:
  Communicator& comm_;
  std::unique_ptr<TrainFixture> built_;
  std::unique_ptr<TrainFixture> fixture_;
  bool abandoned_ = false;
};

inline TrainRunResult train(const fs::path& config, const std::vector<std::string>& overrides,
                            Communicator& comm, std::int64_t stop_at = 0) {
  TrainRunOptions o;
  o.progress = false;
  o.stop_at_step = stop_at;
  o.comm = &comm;
  return run_training(load_config(train_config_schema(), config, overrides), o);
}

// The run on rank 0 alone; the other ranks wait for it.
inline void train_alone(Communicator& comm, const fs::path& config,
                        const std::vector<std::string>& overrides, std::int64_t stop_at = 0) {
  if (comm.rank() == 0) {
    SelfCommunicator self;
    train(config, overrides, self, stop_at);
  }
  comm.barrier();
}

// Token ids drawn uniformly from [0, vocab), reproducibly.
inline std::vector<std::int32_t> random_ids(int n, int vocab, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> id(0, vocab - 1);
  std::vector<std::int32_t> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = id(rng);
  return v;
}

// The largest |a - b| over a part and the one-process tensor's share of it,
// relative to the largest |b| (absolute: not divided).
template <typename T>
inline double part_error(const ParamView& part, const T* part_data, const ParamView& whole,
                         const T* whole_data, bool absolute = false) {
  std::vector<T> expected(static_cast<std::size_t>(part.size));
  take_part(part, whole_data + whole.offset, expected.data());
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(part_data[part.offset + i] - expected[i])));
    scale = std::max(scale, std::abs(static_cast<double>(expected[i])));
  }
  return scale > 0 && !absolute ? diff / scale : diff;
}

// The whole model of a checkpoint, stored whole or in parts (as
// generate and the exports read it).
inline std::vector<float> weights(const fs::path& checkpoint) {
  verify_checkpoint(checkpoint);
  return load_model_dir(checkpoint).params;
}

// A checkpoint of a tensor_parallel x pipeline_parallel run: stored in
// parts, one model file per part, no whole model.
inline void expect_parts(const fs::path& checkpoint, int tensor_parallel, int pipeline_parallel) {
  const CheckpointInfo info = verify_checkpoint(checkpoint);
  EXPECT_EQ(info.parts.tensor_parallel, tensor_parallel);
  EXPECT_EQ(info.parts.pipeline_parallel, pipeline_parallel);
  EXPECT_EQ(info.parts.parts.size(), static_cast<std::size_t>(tensor_parallel) *
                                         static_cast<std::size_t>(pipeline_parallel));
  EXPECT_FALSE(fs::exists(checkpoint / "model.safetensors"));
  for (int p = 0; p < pipeline_parallel; ++p) {
    for (int t = 0; t < tensor_parallel; ++t) {
      EXPECT_TRUE(
          fs::exists(checkpoint / model_part_name(t, tensor_parallel, p, pipeline_parallel)))
          << t << " " << p;
    }
  }
}

// Every file of two checkpoints but state.json (which holds times) holds
// the same bytes.
inline void expect_same_files(const fs::path& a, const fs::path& b) {
  std::vector<std::string> names_a, names_b;
  for (const auto& e : fs::directory_iterator(a)) names_a.push_back(e.path().filename().string());
  for (const auto& e : fs::directory_iterator(b)) names_b.push_back(e.path().filename().string());
  std::sort(names_a.begin(), names_a.end());
  std::sort(names_b.begin(), names_b.end());
  ASSERT_EQ(names_a, names_b);
  for (const std::string& name : names_a) {
    if (name == "state.json") continue;
    EXPECT_EQ(read_file(a / name), read_file(b / name)) << name;
  }
}

inline fs::path final_checkpoint(const fs::path& run_dir, std::int64_t step) {
  return run_dir / "checkpoints" / checkpoint_name(step);
}

// Expects each of `runs` to give the loss curve of the `reference` run
// (`steps` steps) within 2e-5 relative, and final weights within 3e-5 (a
// small share of one AdamW step at lr 3e-3: float rounding of reordered
// sums); prints the largest weight difference of each.
inline void expect_same_run(const fs::path& reference, const std::vector<fs::path>& runs,
                            std::int64_t steps) {
  const auto losses_of_reference = train_losses(reference);
  ASSERT_EQ(losses_of_reference.size(), static_cast<std::size_t>(steps));
  const auto ref_weights = weights(final_checkpoint(reference, steps));
  for (const fs::path& dir : runs) {
    SCOPED_TRACE(dir.filename().string());
    const auto losses = train_losses(dir);
    ASSERT_EQ(losses.size(), static_cast<std::size_t>(steps));
    for (const auto& [step, loss] : losses_of_reference) {
      EXPECT_NEAR(losses.at(step), loss, 2e-5 * loss) << "step " << step;
    }
    const auto w = weights(final_checkpoint(dir, steps));
    ASSERT_EQ(w.size(), ref_weights.size());
    double worst = 0;
    for (std::size_t i = 0; i < w.size(); ++i) {
      worst = std::max(worst, static_cast<double>(std::abs(w[i] - ref_weights[i])));
    }
    EXPECT_LT(worst, 3e-5);
    std::printf("[ %s ] largest weight difference to one process after %lld steps: %.3g\n",
                dir.filename().c_str(), static_cast<long long>(steps), worst);
  }
}

}  // namespace borealis::test
