// The whole model of a run split by tensor or pipeline parallelism, for the
// [eval] tasks that run during training on rank 0. (Checkpoints do not need
// it: every part is saved where it is, train/checkpoint.h.)
//
// gather() is a collective over the run's groups: the tensor group
// all-gathers the parts, each stage's first rank assembles the stage's
// whole tensors (put_part), and the stages send them to world rank 0 over
// the pipeline. Memory: the parts of the tensor group on every rank during
// the gather, and the whole model's parameters on rank 0, kept between
// gathers.
#pragma once

#include <vector>

#include "model/config.h"
#include "model/params.h"
#include "train/parallel_groups.h"

namespace borealis {

class WholeModel {
 public:
  WholeModel(ParallelGroups& groups, const ModelConfig& config);

  const ParamLayout& layout() const { return layout_; }
  // Every rank of the run: gathers the parameters `params` (laid out by
  // this rank's part layout). Afterwards rank 0 holds them whole.
  void gather(const ParamLayout& part, const float* params);
  const float* params() const { return params_.data(); }

 private:
  // The tensor group's parts of `local` (part.total() elements), put into
  // `whole` on world rank 0.
  void assemble(const ParamLayout& part, const float* local, std::vector<float>& whole);

  ParallelGroups& groups_;
  ModelConfig config_;
  ParamLayout layout_;
  std::vector<float> params_;
  std::vector<float> parts_;  // the tensor group's gather
  std::vector<float> stage_;  // a stage's tensors, whole (pipeline parallel)
};

}  // namespace borealis
