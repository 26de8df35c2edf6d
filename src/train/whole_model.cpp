#include "train/whole_model.h"

#include <algorithm>
#include <span>

namespace borealis {

WholeModel::WholeModel(ParallelGroups& groups, const ModelConfig& config)
    : groups_(groups), config_(config), layout_(config) {}

void WholeModel::assemble(const ParamLayout& part, const float* local, std::vector<float>& whole) {
  Communicator& tensor = groups_.tensor();
  const ParallelLayout& l = groups_.layout();
  const PipelineStage stage = part.stage();
  const auto n = static_cast<std::size_t>(part.total());
  parts_.resize(n * static_cast<std::size_t>(tensor.size()));
  tensor.all_gather(std::span<const float>(local, n), std::span<float>(parts_));
  // Tensor rank 0 of data rank 0 puts its stage together; stage 0's (world
  // rank 0) receives the other stages' over the pipeline.
  if (l.tensor_rank != 0 || l.data_rank != 0) return;
  const ParamLayout of_stage(config_, {}, stage);
  std::vector<float>& mine = stage.first() ? whole : stage_;
  mine.resize(static_cast<std::size_t>(stage.first() ? layout_.total() : of_stage.total()));
  const ParamLayout& into = stage.first() ? layout_ : of_stage;
  for (int t = 0; t < tensor.size(); ++t) {
    const ParamLayout of_t(config_, TensorSplit{t, tensor.size()}, stage);
    const float* base = parts_.data() + n * static_cast<std::size_t>(t);
    for (const ParamView& v : of_t.views()) {
      if (!v.pipeline_copy) put_part(v, base + v.offset, mine.data() + into.find(v.name).offset);
    }
  }
  Communicator& pipe = groups_.pipeline();
  if (!stage.first()) {
    pipe.send(std::span<const float>(stage_), 0);
    return;
  }
  for (int s = 1; s < stage.stages; ++s) {
    const ParamLayout other(config_, {}, {s, stage.stages});
    stage_.resize(static_cast<std::size_t>(other.total()));
    pipe.recv(std::span<float>(stage_), s);
    for (const ParamView& v : other.views()) {
      if (v.pipeline_copy) continue;
      const float* from = stage_.data() + v.offset;
      std::copy(from, from + v.size, whole.data() + layout_.find(v.name).offset);
    }
  }
}

void WholeModel::gather(const ParamLayout& part, const float* params) {
  assemble(part, params, params_);
}

}  // namespace borealis
