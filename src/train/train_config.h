// The configuration of a training run: the TOML schema of `borealis train`
// (sections [model] [data] [optim] [train] [checkpoint] [eval] [dist]) and the typed
// settings read from it.
//
// A run is fully described by its resolved configuration (written to
// RUN_DIR/config.toml): model shape, data list and tokenizer, optimizer and
// schedule, batch sizes, seed. Keys that change what the run computes are
// "trajectory" keys; resuming with a different value of one of those is an
// error, other differences (more steps, another logging interval) are allowed.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "core/config.h"
#include "data/mixture.h"
#include "kernels/backend.h"
#include "model/config.h"
#include "optim/adamw.h"
#include "optim/schedule.h"

namespace borealis {

ConfigSchema train_config_schema();

// [eval]'s benchmark tasks: lm-evaluation-harness tasks scored on the
// parameters at every validation point (train/task_eval.h).
struct TaskEvalSettings {
  std::vector<std::string> names;  // built-in tasks and groups, and names of task_files' tasks
  std::vector<std::filesystem::path> task_files;  // custom tasks (TOML)
  std::filesystem::path data_dir = ".";           // the built-in tasks' DIR/<task>/<split>.jsonl
  std::size_t limit = 0;                          // first docs of each task (0: all)
  int num_fewshot = 0;

  bool enabled() const { return !names.empty(); }
};

// Steps first..last, from 1, both included.
struct StepRange {
  std::int64_t first = 0, last = 0;
};

// "N" or "A-B" (train.skip_steps); throws Error naming `where`.
StepRange parse_step_range(std::string_view text, const std::string& where);

struct TrainSettings {
  // [model]: a preset, with any field overridden; vocab_size comes from the tokenizer.
  std::string preset;
  ModelConfig model;  // resolved by resolve_model()

  // [data]
  std::filesystem::path data_list;
  std::filesystem::path tokenizer;
  int seq_len = 256;
  std::array<double, 3> split{};
  std::string order = "fast";       // the mixture's sample order: fast or megatron
  std::filesystem::path cache_dir;  // empty: RUN_DIR/index-cache
  int prefetch = 4;

  // [optim]
  AdamWConfig adamw;
  LrSchedule schedule;
  double grad_clip = 1.0;

  // [train]
  std::filesystem::path run_dir;
  std::int64_t steps = 0;
  int micro_batch = 0;
  int global_batch = 0;  // sequences per optimizer step; a multiple of micro_batch
  std::uint64_t seed = 0;
  int log_every = 1;
  double max_minutes = 0;                  // 0: no limit
  double spike_zscore = 0;                 // 0: off
  int spike_window = 128;                  // losses the z-score looks back on
  double peak_gflops = 0;                  // 0: measured at start-up
  std::string device = "cpu";              // kernels/make_backend.h: "cpu" or "cuda"
  Precision precision = Precision::kFp32;  // the matmuls' (kernels/backend.h); bf16 on cuda only
  std::filesystem::path stop_file;         // empty: none; resolved against run_dir
  std::vector<StepRange> skip_steps;       // data read and dropped, no update

  // [checkpoint]
  std::int64_t checkpoint_every = 0;  // 0: only at the end
  int keep = 3;
  bool checkpoint_async = true;  // written by a background thread from a copy

  // [eval]
  std::int64_t eval_every = 0;  // 0: only at the end
  int eval_batches = 0;
  TaskEvalSettings tasks;  // benchmark tasks at the same points (train/task_eval.h)

  // [dist]: runs on more than one rank
  int tensor_parallel = 1;             // ranks per tensor-parallel group
  bool sequence_parallel = false;      // and the residual stream cut along the sequence
  int pipeline_parallel = 1;           // pipeline stages
  int zero = 0;                        // 0: replicated optimizer state, 1: ZeRO-1 sharded
  double bucket_mb = 25;               // MiB of gradients per collective
  double timeout_s = 300;              // every collective of the training loop
  std::string reduce = "ordered";      // ordered (bit-reproducible) or native
  std::int64_t straggler_every = 100;  // 0: no straggler reports
  double straggler_factor = 1.5;

  // Whether train.skip_steps names this step (from 1).
  bool skips(std::int64_t step) const;

  int accumulation() const { return global_batch / micro_batch; }
  std::filesystem::path checkpoint_dir() const { return run_dir / "checkpoints"; }
};

// Reads and checks the settings (errors name the key and where its value came
// from). The model is resolved later, once the tokenizer's vocabulary is known.
// [eval]'s task names are resolved here (reading the task files), so that an
// unknown task fails before any data is read.
TrainSettings read_train_settings(const Config& config);

// The preset with the [model] overrides applied and the vocabulary set.
ModelConfig resolve_model(const Config& config, int vocab_size);

// Keys whose values must not change on resume.
bool is_trajectory_key(const std::string& path);

// The run's mixture: its data list read, the train part sized for every
// step's samples. The validation mixture is the same with part 1.
MixOptions mixture_options(const TrainSettings& s);

}  // namespace borealis
