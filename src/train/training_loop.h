// The steps of a training run (train/trainer.h). run_training sets up the
// parts (communicator, data, model, optimizer, the state to start from) and
// hands them to a TrainingLoop, whose run() repeats, until train.steps or a
// stop:
//   train_step()        forward and backward over this rank's micro-batches,
//                       the gradient reduction, then the update, or its skip
//                       on a non-finite value or a loss spike; a step of
//                       train.skip_steps reads its data and drops it;
//   report_step()       a metrics line, and a console line every log_every;
//   validation_due(),   the decisions after each step: validate (loss and
//                       [eval] tasks), checkpoint,
//   checkpoint_due(),   or stop (a signal, the time limit, --stop-at-step or
//   stop_reason()       the stop file, on any rank, stops every rank at the
//                       same step);
// then the final validation and checkpoint. save_after_timeout() is what a
// rank does when a collective of the loop times out.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "data/mixture.h"
#include "dist/communicator.h"
#include "model/model.h"
#include "optim/data_parallel.h"
#include "train/checkpoint.h"
#include "train/dist_checkpoint.h"
#include "train/loader.h"
#include "train/metrics_writer.h"
#include "train/parallel_groups.h"
#include "train/pipeline.h"
#include "train/rank_failure.h"
#include "train/straggler.h"
#include "train/task_eval.h"
#include "train/train_config.h"
#include "train/trainer.h"
#include "train/whole_model.h"

namespace borealis {

// What run_training sets up for the loop; everything must outlive it.
struct RunParts {
  const TrainSettings& settings;
  const TrainRunOptions& options;
  Communicator& comm;         // the world
  ParallelGroups& groups;     // its tensor and data groups
  Model<float>& model;        // this rank's part with tensor and pipeline parallelism
  Pipeline<float>* pipeline;  // its stages with pipeline parallelism; null otherwise
  DataParallel& dp;
  const Mixture& train;
  const std::vector<Batch>& valid_batches;  // empty: no validation
  MetricsWriter* metrics;                   // rank 0's; null on the other ranks
  TrainingTasks* tasks;                     // rank 0's with [eval] tasks; null otherwise
  const CheckpointTarget& checkpoint;
  const InjectedFault& fault;
  double peak_gflops = 0;  // per rank, for MFU
  double flops_per_token = 0;
  std::chrono::steady_clock::time_point wall_start;  // for train.max_minutes
};

class TrainingLoop {
 public:
  // `state` is where the run starts (fresh, or a checkpoint's, then
  // `resumed`); the loop advances it and fills in `result`.
  TrainingLoop(const RunParts& parts, TrainState& state, TrainRunResult& result, bool resumed);
  ~TrainingLoop();
  TrainingLoop(const TrainingLoop&) = delete;
  TrainingLoop& operator=(const TrainingLoop&) = delete;

  // Steps until train.steps or a stop, then the final validation (unless
  // stopped) and a checkpoint of the last step (unless it has one). A
  // CommTimeout goes on to the caller, which calls save_after_timeout().
  void run();
  // After a CommTimeout from run(): the checkpoint that can still be written
  // (train/rank_failure.h).
  void save_after_timeout(const CommTimeout& timeout);

  // Training time of the run, earlier jobs of it included.
  double elapsed_s() const;

 private:
  struct StepOutcome {
    double loss = 0, grad_norm = 0, lr = 0;
    double seconds = 0;       // of the whole step
    double bubble = -1;       // pipeline: this stage's idle time / compute time
    std::string skip_reason;  // empty: the update was made
  };

  StepOutcome train_step();
  // A step of train.skip_steps: its batches read and dropped, no update.
  StepOutcome skip_data_step();
  // The step, token and sample counts after a step, trained or skipped.
  void advance_step();
  void report_step(const StepOutcome& step);
  bool validation_due() const;
  bool checkpoint_due() const;
  // Why the run stops after this step ("" to go on), the same on every rank.
  std::string stop_reason();
  // The validation loss, then the benchmark tasks (rank 0).
  void validate();
  void evaluate_tasks();
  // The model's parameters in host memory (a copy where the backend's memory
  // is a GPU's).
  std::span<const float> host_params();
  // Starts the checkpoint of this step (after finishing one in flight);
  // synchronous saves finish at once.
  void save_checkpoint();
  // The agreement and publication of the save in flight (every rank).
  void finish_checkpoint();
  // The state's loss window and training time, as a checkpoint stores them.
  void update_state();

  const RunParts& p_;
  const TrainSettings& s_;
  TrainState& state_;
  TrainRunResult& result_;
  const int ranks_, rank_;             // in the world
  const int data_ranks_, data_rank_;   // in the data group (the world without tensor parallelism)
  const bool model_parallel_;          // tensor or pipeline parallel
  std::unique_ptr<WholeModel> whole_;  // model parallel: the gathered model
  const bool progress_;
  const int local_micro_;  // micro-batches of this rank per step
  class SpikeDetector;
  std::unique_ptr<SpikeDetector> spikes_;
  std::unique_ptr<BatchLoader> loader_;
  CheckpointSaver saver_;
  std::int64_t checkpointed_step_;  // of the last published checkpoint
  // Whether parameters, moments and state all belong to state.step, for the
  // checkpoint after a time-out.
  TrainPhase phase_ = TrainPhase::Consistent;
  const double elapsed_before_;
  std::chrono::steady_clock::time_point loop_start_;
  std::int64_t steps_this_run_ = 0;
  // This rank's micro-batch losses; then every rank's, in rank order.
  std::vector<double> micro_losses_, all_losses_;
  std::vector<float> host_params_;  // host_params()'s copy
  // Pipeline parallel: the step's micro-batches, one after another.
  std::vector<std::int32_t> step_tokens_, step_targets_;
  StragglerMonitor stragglers_;
  bool stopped_by_file_ = false;
};

}  // namespace borealis
