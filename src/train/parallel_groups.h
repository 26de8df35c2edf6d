// The parallel layout of a run: how its ranks divide into tensor-parallel,
// data-parallel and pipeline-parallel groups, and the communicators of
// those groups.
//
// Ranks are ordered as Megatron-LM orders them, tensor-parallel innermost,
// then data, then pipeline:
//   world rank = (pipeline_rank * data + data_rank) * tensor + tensor_rank,
// so the T ranks of a tensor group are neighbours (one node, where the
// launcher places ranks in blocks), a data group takes one rank of each
// tensor group of its stage, and a pipeline (one rank per stage) spans the
// farthest ranks: its point-to-point messages are the smallest traffic. The
// tensor group's sums (TensorParallelGroup) use the world's reduction
// algorithm; with the ordered one every rank of a group gets the same bits,
// which keeps the parts that every rank holds whole (norms, biases)
// identical without further exchange.
#pragma once

#include <memory>
#include <string>

#include "dist/communicator.h"
#include "model/block.h"
#include "model/config.h"

namespace borealis {

struct ParallelLayout {
  int world = 1;
  int tensor = 1;         // ranks per tensor-parallel group
  int pipeline = 1;       // pipeline stages
  int data = 1;           // data-parallel replicas: world / (tensor * pipeline)
  bool sequence = false;  // sequence parallelism in the tensor groups
  int rank = 0;
  int tensor_rank = 0;
  int data_rank = 0;
  int pipeline_rank = 0;  // this rank's stage
  // The world rank of tensor rank t, data rank d, stage p.
  int world_rank(int t, int d, int p) const { return (p * data + d) * tensor + t; }
};

// The ranks' places in a layout of `world` ranks, tensor_parallel per
// tensor group and pipeline_parallel stages, whatever the model. Throws
// borealis::Error at `where` when tensor_parallel x pipeline_parallel does
// not divide the ranks.
ParallelLayout rank_layout(int world, int rank, int tensor_parallel, int pipeline_parallel,
                           const std::string& where);

// The layout of `world` ranks with tensor_parallel ranks per tensor group
// and pipeline_parallel stages. Throws borealis::Error at `where` when
// tensor_parallel x pipeline_parallel does not divide the ranks or the
// model cannot be cut so (check_tensor_split, check_pipeline_split).
ParallelLayout parallel_layout(int world, int rank, int tensor_parallel, int pipeline_parallel,
                               const ModelConfig& model, const std::string& where);

// "8 ranks: tensor parallel 2 x data parallel 2 x pipeline parallel 2;
// tensor groups {0,1} {2,3} ...; pipelines {0,4} {1,5} ...".
std::string describe_layout(const ParallelLayout& layout);

// The communicators of a layout. Every rank must make them at the same
// point (they are split from the world). With tensor = pipeline = 1, data
// is the world itself and tensor and pipeline groups of one.
class ParallelGroups {
 public:
  ParallelGroups(Communicator& world, const ParallelLayout& layout);
  const ParallelLayout& layout() const { return layout_; }
  Communicator& world() { return world_; }
  Communicator& tensor() { return *tensor_; }
  Communicator& data() { return data_ != nullptr ? *data_ : world_; }
  // This rank's pipeline: rank s of it is stage s.
  Communicator& pipeline() { return *pipeline_; }
  // The model stage this rank holds.
  PipelineStage stage() const { return {layout_.pipeline_rank, layout_.pipeline}; }
  // For Model: the tensor group's sums over float buffers.
  const TensorParallelGroup<float>& model_group() const { return group_; }

 private:
  Communicator& world_;
  ParallelLayout layout_;
  std::unique_ptr<Communicator> tensor_, data_, pipeline_;
  TensorParallelGroup<float> group_;
};

// A TensorParallelGroup over `tensor` (blocking collectives), without
// sequence parallelism.
template <typename T>
TensorParallelGroup<T> tensor_parallel_group(Communicator& tensor);

}  // namespace borealis
