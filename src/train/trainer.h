// `borealis train`: one training run from a resolved configuration.
//
// The run directory holds config.toml (the resolved configuration),
// metrics.jsonl (a line per step and per validation) and checkpoints/. A run
// resumes from its newest checkpoint that verifies and continues exactly:
// N steps, stop, M more give bit-identical losses and weights to N + M steps
// in one go (same thread count).
//
// SIGINT and SIGTERM (and train.max_minutes) end the run after the current
// step with a checkpoint and a clean exit; a second signal exits at once.
// A non-finite loss or gradient norm, or a loss spike (train.spike_zscore),
// skips the update; skipped steps are counted and logged.
//
// Data parallel: with a communicator of more than one rank (launched by
// mpirun / `borealis launch`), every rank trains on its own contiguous slice
// of each global batch and the gradients are summed over the ranks
// (optim/data_parallel.h, [dist] keys); the run computes the same as one
// process at the same global batch, up to the rounding of the sums. Rank 0
// alone prints, writes metrics.jsonl and checkpoints (whole, in the
// single-process format, so a run resumes on any number of ranks).
// A collective that waits past dist.timeout_s fails the run with the
// CommTimeout naming the ranks that do not answer, after a checkpoint of the
// last completed step when one can still be written (train/rank_failure.h).
//
// train.device = "cuda" runs the steps on the GPU (one rank): the model, its
// gradients and the optimizer's moments live in device memory, and the run
// moves them to the host only to write a checkpoint or score tasks.
// Checkpoints do not depend on the device: a run resumes on the CPU or the
// GPU from either's checkpoints.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "core/config.h"
#include "kernels/backend.h"

namespace borealis {

class Communicator;

struct TrainRunOptions {
  // "auto": resume from the newest good checkpoint if any; "never": fail if
  // the run directory has checkpoints; otherwise a checkpoint directory.
  std::string resume = "auto";
  bool progress = true;  // console lines and progress bars
  // Stop as on a signal once this step is done (0: never); for splitting a
  // run into jobs of a fixed number of steps.
  std::int64_t stop_at_step = 0;
  // The ranks of a data-parallel run; null: one made from the launch
  // environment (make_communicator). Its time-out and reduction algorithm
  // are set from [dist].
  Communicator* comm = nullptr;
  // The backend to train on instead of train.device's (null: that one); the
  // tests pass one whose memory the host cannot touch, as a GPU's.
  std::function<std::unique_ptr<Backend<float>>()> backend;
  // Data parallelism on a backend whose memory the host cannot touch: the
  // communicator that moves the gradients and parameters, made over the
  // data-parallel group on GPU `gpu` (null: NCCL's, dist/nccl_communicator.h;
  // the tests pass the emulated NCCL's).
  std::function<std::unique_ptr<Communicator>(Communicator& data, int gpu)> device_comm;
};

struct TrainRunResult {
  std::int64_t first_step = 0;  // the step the run started (or resumed) from
  std::int64_t steps = 0;       // completed steps at the end
  std::int64_t skipped_steps = 0;
  double last_loss = 0;         // of the last step
  double valid_loss = -1;       // the last validation (-1: none)
  double unigram_entropy = -1;  // of the validation targets, in nats (-1: no validation)
  bool stopped = false;         // by a signal or the time limit
  std::string stop_reason;
  std::filesystem::path last_checkpoint;
};

TrainRunResult run_training(const Config& config, const TrainRunOptions& options);

}  // namespace borealis
