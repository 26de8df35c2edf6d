// Checkpoints of a data-parallel run: which rank writes what, and how the
// ranks agree that a checkpoint is complete.
//
// save_training_checkpoint() is called by every rank at the same step:
//   - one rank, or zero = 0: rank 0 writes the single-process format from
//     its whole optimizer state (parameters and moments are the same on
//     every rank);
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
#include <string>

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

// Writes the checkpoint of state.step (every rank calls it) and returns its
// path. fail_here makes this rank's part fail, for the tests
// (BOREALIS_TEST_FAULT=RANK:STEP:save).
std::filesystem::path save_training_checkpoint(Communicator& comm, const CheckpointTarget& target,
                                               const TrainState& state, const ParamLayout& layout,
                                               const float* params, DataParallel& dp,
                                               bool fail_here = false);

// Loads the parameters and this rank's range of the moments (and the step
// count) of a verified checkpoint.
void load_training_checkpoint(const CheckpointInfo& info, const ParamLayout& layout, float* params,
                              DataParallel& dp);

}  // namespace borealis
