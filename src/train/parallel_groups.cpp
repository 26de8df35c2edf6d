#include "train/parallel_groups.h"

#include <fmt/format.h>

#include <span>

#include "core/error.h"
#include "model/params.h"

namespace borealis {

ParallelLayout rank_layout(int world, int rank, int tensor_parallel, int pipeline_parallel,
                           const std::string& where) {
  if (tensor_parallel < 1) {
    throw Error(fmt::format("dist.tensor_parallel must be at least 1, got {}", tensor_parallel),
                where);
  }
  if (pipeline_parallel < 1) {
    throw Error(fmt::format("dist.pipeline_parallel must be at least 1, got {}", pipeline_parallel),
                where);
  }
  if (pipeline_parallel == 1 && world % tensor_parallel != 0) {
    throw Error(fmt::format("dist.tensor_parallel = {} does not divide the {} ranks of the run: "
                            "the ranks form tensor groups of that size",
                            tensor_parallel, world),
                where);
  }
  if (world % (tensor_parallel * pipeline_parallel) != 0) {
    throw Error(fmt::format("dist.tensor_parallel x dist.pipeline_parallel = {} x {} does not "
                            "divide the {} ranks of the run: the ranks form tensor groups and "
                            "pipeline stages of those sizes",
                            tensor_parallel, pipeline_parallel, world),
                where);
  }
  ParallelLayout l;
  l.world = world;
  l.tensor = tensor_parallel;
  l.pipeline = pipeline_parallel;
  l.data = world / (tensor_parallel * pipeline_parallel);
  l.rank = rank;
  l.tensor_rank = rank % tensor_parallel;
  l.data_rank = rank / tensor_parallel % l.data;
  l.pipeline_rank = rank / (tensor_parallel * l.data);
  return l;
}

ParallelLayout parallel_layout(int world, int rank, int tensor_parallel, int pipeline_parallel,
                               const ModelConfig& model, const std::string& where) {
  const ParallelLayout l = rank_layout(world, rank, tensor_parallel, pipeline_parallel, where);
  check_tensor_split(model, tensor_parallel, where);
  check_pipeline_split(model, pipeline_parallel, where);
  return l;
}

namespace {

// "{0,1} {2,3} ...": the first groups of `count`, each of `size` ranks.
template <class Rank>
std::string list_groups(int count, int size, Rank&& rank) {
  std::string groups;
  for (int g = 0; g < count && g < 4; ++g) {
    groups += g ? " {" : "{";
    for (int i = 0; i < size; ++i) groups += fmt::format("{}{}", i ? "," : "", rank(g, i));
    groups += "}";
  }
  if (count > 4) groups += " ...";
  return groups;
}

}  // namespace

std::string describe_layout(const ParallelLayout& l) {
  std::string out = fmt::format("{} ranks: tensor parallel {}{} x data parallel {}", l.world,
                                l.tensor, l.sequence ? " (sequence parallel)" : "", l.data);
  if (l.pipeline > 1) out += fmt::format(" x pipeline parallel {}", l.pipeline);
  // Tensor groups of the first stage, then the pipelines (one rank a stage).
  out += "; tensor groups " +
         list_groups(l.data, l.tensor, [&](int g, int t) { return l.world_rank(t, g, 0); });
  if (l.pipeline > 1) {
    out += "; pipelines " + list_groups(l.tensor * l.data, l.pipeline, [&](int g, int s) {
             return l.world_rank(g % l.tensor, g / l.tensor, s);
           });
  }
  return out;
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
  const auto one = [&world] {
    std::unique_ptr<Communicator> c = std::make_unique<SelfCommunicator>();
    c->set_timeout(world.timeout());
    c->set_reduce_algorithm(world.reduce_algorithm());
    return c;
  };
  const int t = layout.tensor_rank, d = layout.data_rank, p = layout.pipeline_rank;
  // Colors: the place in the other two dimensions; keys: the place in this one.
  tensor_ = layout.tensor > 1 ? world.split(p * layout.data + d, t) : one();
  if (layout.tensor > 1 || layout.pipeline > 1) {
    data_ = world.split(p * layout.tensor + t, d);
  }
  pipeline_ = layout.pipeline > 1 ? world.split(d * layout.tensor + t, p) : one();
  group_ = tensor_parallel_group<float>(*tensor_);
  group_.sequence_parallel = layout.sequence;
}

}  // namespace borealis
