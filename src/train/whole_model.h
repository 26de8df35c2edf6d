// The whole model of a run split by tensor or pipeline parallelism, for what needs it whole:
// checkpoints (written in the single-process format, so that any layout can
// resume them) and the [eval] tasks. And the way back: a checkpoint into
// one rank's part.
//
// gather() is a collective over the run's groups: with ZeRO-1 the data
// group first all-gathers each rank's moment shard, then the tensor group
// all-gathers the parts, each stage's first rank assembles the stage's
// whole tensors (put_part), and the stages send them to world rank 0 over
// the pipeline. Memory: the parts of the tensor group on every rank during
// the gather, and the whole model (parameters, and moments when asked) on
// rank 0, kept between gathers. Costly for models far larger than one
// rank's memory; the per-rank sharded format is what such runs need.
#pragma once

#include <vector>

#include "model/config.h"
#include "model/params.h"
#include "optim/data_parallel.h"
#include "train/checkpoint.h"
#include "train/parallel_groups.h"

namespace borealis {

class WholeModel {
 public:
  WholeModel(ParallelGroups& groups, const ModelConfig& config);

  const ParamLayout& layout() const { return layout_; }
  // Every rank of the run: gathers the parameters `params` (laid out by
  // this rank's part layout) and, when dp is given, the moments of its
  // optimizer. Afterwards rank 0 holds them whole.
  void gather(const ParamLayout& part, const float* params, const DataParallel* dp);
  const float* params() const { return params_.data(); }
  const float* m() const { return m_.data(); }
  const float* v() const { return v_.data(); }

 private:
  // The tensor group's parts of `local` (part.total() elements), put into
  // `whole` on world rank 0.
  void assemble(const ParamLayout& part, const float* local, std::vector<float>& whole);

  ParallelGroups& groups_;
  ModelConfig config_;
  ParamLayout layout_;
  std::vector<float> params_, m_, v_;
  std::vector<float> parts_;  // the tensor group's gather
  std::vector<float> stage_;  // a stage's tensors, whole (pipeline parallel)
};

// Loads a checkpoint (written in any layout) into this rank's part: its
// parameters and its optimizer's range of the moments, and the step count.
// Reads the whole model on every rank.
void load_checkpoint_part(const CheckpointInfo& info, const ModelConfig& config,
                          const ParamLayout& part, float* params, DataParallel& dp);

}  // namespace borealis
