// The parallel layout of a run: how its ranks divide into tensor-parallel
// and data-parallel groups, and the communicators of those groups.
//
// Ranks are ordered as Megatron-LM orders them, tensor-parallel innermost:
// world rank = data_rank * tensor + tensor_rank, so the T ranks of a tensor
// group are neighbours (one node, where the launcher places ranks in
// blocks) and a data group takes one rank of each tensor group. The
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
  int data = 1;           // data-parallel replicas: world / tensor
  bool sequence = false;  // sequence parallelism in the tensor groups
  int rank = 0;
  int tensor_rank = 0;
  int data_rank = 0;
};

// The layout of `world` ranks with tensor_parallel ranks per tensor group.
// Throws borealis::Error at `where` when tensor_parallel does not divide the
// ranks or (check_tensor_split) the model.
ParallelLayout parallel_layout(int world, int rank, int tensor_parallel, const ModelConfig& model,
                               const std::string& where);

// "2 ranks: tensor parallel 2 x data parallel 1; tensor groups {0,1}".
std::string describe_layout(const ParallelLayout& layout);

// The communicators of a layout. Every rank must make them at the same
// point (they are split from the world). With tensor = 1, data is the world
// itself and tensor a group of one.
class ParallelGroups {
 public:
  ParallelGroups(Communicator& world, const ParallelLayout& layout);
  const ParallelLayout& layout() const { return layout_; }
  Communicator& world() { return world_; }
  Communicator& tensor() { return *tensor_; }
  Communicator& data() { return data_ != nullptr ? *data_ : world_; }
  // For Model: the tensor group's sums over float buffers.
  const TensorParallelGroup<float>& model_group() const { return group_; }

 private:
  Communicator& world_;
  ParallelLayout layout_;
  std::unique_ptr<Communicator> tensor_, data_;
  TensorParallelGroup<float> group_;
};

// A TensorParallelGroup over `tensor` (blocking collectives), without
// sequence parallelism.
template <typename T>
TensorParallelGroup<T> tensor_parallel_group(Communicator& tensor);

}  // namespace borealis
