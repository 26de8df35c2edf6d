// Benchmark tasks during a training run ([eval] tasks): lm-evaluation-harness
// tasks (eval/evaluator.h) scored on the parameters being trained, at every
// validation point, by rank 0 alone.
//
// Whatever can fail before the model is scored fails at start-up, not hours
// into the run: the task names are resolved when the config is read, and
// TrainingTasks reads every task's evaluation (and few-shot) split once and
// builds its prompts, so a missing file, an empty split or a record that
// does not fit the task's schema stops the run before its first step.
//
// Each evaluation scores a copy of the parameters through the same in-process
// model as `borealis eval --checkpoint` (eval/local_model.h) with the same
// defaults, so its numbers equal what that command gives on the checkpoint
// of the same step.
//
// This is the one place where training depends on eval (downstream of it in
// the data path); nothing in eval depends on train.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "eval/task.h"
#include "model/config.h"
#include "tokenizer/tokenizer.h"
#include "train/train_config.h"

namespace borealis {

// The tasks of `settings`: its task files read, its names resolved. Throws
// Error naming a task file for a bad one, and with where "--tasks" for an
// unknown name (read_train_settings names the key instead).
TaskSet resolve_training_tasks(const TaskEvalSettings& settings);

// One task's (or group's) numbers from one evaluation.
struct TaskScore {
  std::string task;
  // lm-eval's metrics without the ",none" filter suffix: "acc", "acc_stderr",
  // "acc_norm", "perplexity", ... (numbers only; an "N/A" stderr is left out).
  std::vector<std::pair<std::string, double>> metrics;
  double seconds = -1;  // the task's scoring time (-1: a group)
};

class TrainingTasks {
 public:
  // Reads the tasks' data; Errors name the file, or eval.data_dir for a
  // split that is missing there. `tokenizer` must outlive this.
  TrainingTasks(const TaskEvalSettings& settings, const Tokenizer& tokenizer);
  ~TrainingTasks();
  TrainingTasks(const TrainingTasks&) = delete;
  TrainingTasks& operator=(const TrainingTasks&) = delete;

  // Scores every task on `params` (laid out by ParamLayout(config), copied),
  // tasks first, then groups. `progress` shows a bar per task.
  std::vector<TaskScore> evaluate(const ModelConfig& config, std::span<const float> params,
                                  bool progress);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace borealis
