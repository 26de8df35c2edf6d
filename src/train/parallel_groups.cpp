#include "train/parallel_groups.h"

#include <fmt/format.h>

#include <span>

#include "core/error.h"
#include "model/params.h"

namespace borealis {

ParallelLayout parallel_layout(int world, int rank, int tensor_parallel, const ModelConfig& model,
                               const std::string& where) {
  if (tensor_parallel < 1) {
    throw Error(fmt::format("dist.tensor_parallel must be at least 1, got {}", tensor_parallel),
                where);
  }
  if (world % tensor_parallel != 0) {
    throw Error(fmt::format("dist.tensor_parallel = {} does not divide the {} ranks of the run: "
                            "the ranks form tensor groups of that size",
                            tensor_parallel, world),
                where);
  }
  check_tensor_split(model, tensor_parallel, where);
  ParallelLayout l;
  l.world = world;
  l.tensor = tensor_parallel;
  l.data = world / tensor_parallel;
  l.rank = rank;
  l.tensor_rank = rank % tensor_parallel;
  l.data_rank = rank / tensor_parallel;
  return l;
}

std::string describe_layout(const ParallelLayout& l) {
  std::string groups;
  for (int g = 0; g < l.data && g < 4; ++g) {
    groups += g ? " " : "";
    groups += "{";
    for (int t = 0; t < l.tensor; ++t)
      groups += fmt::format("{}{}", t ? "," : "", g * l.tensor + t);
    groups += "}";
  }
  if (l.data > 4) groups += " ...";
  return fmt::format("{} ranks: tensor parallel {}{} x data parallel {}; tensor groups {}", l.world,
                     l.tensor, l.sequence ? " (sequence parallel)" : "", l.data, groups);
}

template <typename T>
TensorParallelGroup<T> tensor_parallel_group(Communicator& tensor) {
  TensorParallelGroup<T> g;
  g.split = {tensor.rank(), tensor.size()};
  Communicator* c = &tensor;
  g.sum = [c](T* data, std::int64_t count) {
    c->allreduce(std::span<T>(data, static_cast<std::size_t>(count)), ReduceOp::Sum);
  };
  g.max = [c](T* data, std::int64_t count) {
    c->allreduce(std::span<T>(data, static_cast<std::size_t>(count)), ReduceOp::Max);
  };
  g.reduce_scatter = [c](const T* in, T* out, std::int64_t count) {
    const auto n = static_cast<std::size_t>(count);
    c->reduce_scatter(std::span<const T>(in, n * static_cast<std::size_t>(c->size())),
                      std::span<T>(out, n), ReduceOp::Sum);
  };
  g.all_gather = [c](const T* in, T* out, std::int64_t count) {
    const auto n = static_cast<std::size_t>(count);
    c->all_gather(std::span<const T>(in, n),
                  std::span<T>(out, n * static_cast<std::size_t>(c->size())));
  };
  return g;
}

template TensorParallelGroup<float> tensor_parallel_group<float>(Communicator&);
template TensorParallelGroup<double> tensor_parallel_group<double>(Communicator&);

ParallelGroups::ParallelGroups(Communicator& world, const ParallelLayout& layout)
    : world_(world), layout_(layout) {
  if (layout.tensor > 1) {
    tensor_ = world.split(layout.data_rank, layout.tensor_rank);
    data_ = world.split(layout.tensor_rank, layout.data_rank);
  } else {
    tensor_ = std::make_unique<SelfCommunicator>();
    tensor_->set_timeout(world.timeout());
  }
  group_ = tensor_parallel_group<float>(*tensor_);
  group_.sequence_parallel = layout.sequence;
}

}  // namespace borealis
