// Checkpoints of a data-parallel run: which rank writes what, and how the
// ranks agree that a checkpoint is complete.
//
// A checkpoint (CheckpointSaver below) is saved by every rank at the same step:
//   - one rank, or zero = 0: rank 0 writes the single-process format from
//     its whole optimizer state (parameters and moments are the same on
//     every rank);
//   - tensor or pipeline parallel (the layout is one part of the model):
//     as zero = 1 below, but data rank 0 of each part writes the part's
//     parameters (model_part_name) and, with zero = 0, its moments as one
//     shard; with zero = 1 every rank writes its shard of its part's
//     moments; rank 0 writes tokenizer.json and the manifest of the parts;
//   - zero = 1 on n > 1 ranks: rank 0 creates step-N.tmp-<pid> and
//     broadcasts its name; every rank writes its own moment shard into it
//     (optimizer-rank-R-of-N.safetensors) and computes the file's size and
//     checksum while writing; rank 0 also writes model.safetensors and
//     tokenizer.json. The ranks' outcomes (shard range, size, checksum, or
//     the error) are all-gathered; only when every rank succeeded does rank
//     0 write state.json with the manifest and rename the directory, and it
//     broadcasts whether that worked.
// Either way a failure on any rank throws the same borealis::Error on every
// rank, naming the rank, and no directory step-N claims to be complete.
// The ranks must share the file system holding the run directory.
//
// load_training_checkpoint() gives a rank the parameters and the moments of
// its own optimizer range, whatever the layout of the run that wrote them.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "dist/communicator.h"
#include "model/config.h"
#include "model/params.h"
#include "optim/data_parallel.h"
#include "train/checkpoint.h"

namespace borealis {

struct CheckpointTarget {
  std::filesystem::path checkpoints;  // the run's checkpoints directory
  int keep = 0;                       // checkpoints to keep (prune_checkpoints)
  std::filesystem::path tokenizer;    // the tokenizer file to copy
  std::string config_toml;            // the resolved config
  ModelConfig model;
};

// A checkpoint save in parts, so that the writing can go on while training
// does (checkpoint.async):
//   start()   every rank at the same step: (zero = 1) the temporary
//             directory is made and named to all; then this rank's part is
//             written: at once (synchronous), or from a copy in host memory
//             of the parameters and moments it writes, by a background
//             thread (asynchronous), and start() returns as soon as the copy
//             is made;
//   local_done()  whether this rank's part is written (no collective);
//   finish()  every rank at the same step, once all are done (or it waits
//             for this rank's part): the agreement above, the publication
//             (rename) and pruning; returns the directory or throws the
//             save's Error on every rank.
// A crash before finish() publishes leaves at most a step-N.tmp-<pid>
// directory, which resuming ignores and the next save removes: the previous
// checkpoint is untouched. The copies (parameters on rank 0, this rank's
// moments) are kept between saves.
class CheckpointSaver {
 public:
  CheckpointSaver(Communicator& comm, const CheckpointTarget& target, bool async);
  ~CheckpointSaver();  // waits for a write in flight
  CheckpointSaver(const CheckpointSaver&) = delete;
  CheckpointSaver& operator=(const CheckpointSaver&) = delete;

  // Allocates the copies an asynchronous save needs (none when synchronous).
  void prepare(const ParamLayout& layout, const DataParallel& dp);
  std::size_t copy_bytes() const;  // host memory the copies take
  // fail_here makes this rank's part fail (BOREALIS_TEST_FAULT=RANK:STEP:save).
  void start(const TrainState& state, const ParamLayout& layout, const float* params,
             DataParallel& dp, bool fail_here = false);
  bool pending() const { return job_ != nullptr; }
  std::int64_t pending_step() const;  // -1: none
  bool local_done() const;            // true when nothing is pending
  std::filesystem::path finish();
  // After a time-out: waits for this rank's write and drops the save, with
  // no collective (its temporary directory is removed or left to pruning).
  void abandon();

 private:
  struct Job;
  // What this rank writes of a save of `layout` (its part of the model).
  struct Roles {
    bool parts = false;    // the layout is a tensor or pipeline part: written in parts
    bool sharded = false;  // every rank takes part
    bool writes_model = false, writes_moments = false;
  };
  Roles roles(const ParamLayout& layout, const DataParallel& dp) const;
  // Makes `job` the save in flight; this rank writes its part (`writes`) at
  // once or in the background.
  void launch(std::unique_ptr<Job> job, bool writes);
  void write_local(Job& job);

  Communicator& comm_;
  const CheckpointTarget& target_;
  const bool async_;
  std::unique_ptr<Job> job_;
  std::vector<float> params_copy_, m_copy_, v_copy_;
};

// Loads the parameters and this rank's range of the moments (and the step
// count) of a verified checkpoint.
void load_training_checkpoint(const CheckpointInfo& info, const ParamLayout& layout, float* params,
                              DataParallel& dp);

}  // namespace borealis
