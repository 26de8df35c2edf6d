#include "optim/data_parallel.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <span>
#include <stdexcept>

#include "core/text.h"

namespace borealis {

namespace {

std::int64_t padded_shard(std::int64_t total, int ranks) {
  return (total + ranks - 1) / ranks;
}

}  // namespace

DataParallel::DataParallel(Communicator& comm, Backend<float>& backend, const ParamLayout& layout,
                           const AdamWConfig& config, const DataParallelOptions& options,
                           float* params, float* grads, Communicator* buffers)
    : comm_(comm),
      buffers_(buffers != nullptr ? *buffers : comm),
      backend_(backend),
      options_(options),
      params_(params),
      grads_(grads),
      total_(layout.total()),
      shard_(padded_shard(layout.total(), comm.size())),
      begin_(options.zero == 1 ? std::min(total_, shard_ * comm.rank()) : 0),
      end_(options.zero == 1 ? std::min(total_, shard_ * (comm.rank() + 1)) : total_),
      optimizer_(backend, layout, config, begin_, end_) {
  if (options.zero != 0 && options.zero != 1) {
    throw std::invalid_argument(fmt::format("ZeRO stage {} (0 or 1)", options.zero));
  }
  const int n = comm.size();
  if (n == 1) return;
  if (!backend.host_memory() && buffers == nullptr) {
    throw std::invalid_argument(
        fmt::format("data parallelism over {} ranks in the memory of '{}' needs a communicator "
                    "of that memory (NCCL for a GPU)",
                    n, backend.name()));
  }
  const auto bucket =
      std::max<std::int64_t>(1, static_cast<std::int64_t>(options.bucket_bytes / sizeof(float)));
  if (options.zero == 0) {
    // Buckets from the end of the buffer: the backward pass finishes the
    // last tensors first.
    for (std::int64_t hi = total_; hi > 0; hi -= bucket) {
      buckets_.push_back({std::max<std::int64_t>(0, hi - bucket), hi});
    }
  } else {
    // Chunks of each shard from its end; a chunk moves `size()` pieces, so
    // pieces of bucket / size() keep the messages near the bucket size.
    const std::int64_t piece = std::max<std::int64_t>(1, bucket / n);
    for (std::int64_t hi = shard_; hi > 0; hi -= piece) {
      buckets_.push_back({std::max<std::int64_t>(0, hi - piece), hi});
    }
    allocate_for(
        fmt::format("ZeRO-1's staging buffers ({} + {} floats) need {}", shard_ * n, shard_,
                    format_bytes(static_cast<std::uint64_t>(shard_) * (n + 1) * 4)),
        "", [&] {
          staging_ = BackendArray<float>(backend, shard_ * n);
          shard_grads_ = BackendArray<float>(backend, shard_);
        });
  }
}

void DataParallel::start(const Bucket& b) {
  if (options_.zero == 0) {
    pending_.push_back(buffers_.iallreduce(
        std::span<float>(grads_ + b.lo, static_cast<std::size_t>(b.hi - b.lo)), ReduceOp::Sum));
    return;
  }
  // Pack the slice [lo, hi) of every shard, one after another (zeros past
  // the end of the buffer), and reduce-scatter it: this rank receives the
  // sums of its own slice.
  const int n = comm_.size();
  const std::int64_t len = b.hi - b.lo;
  float* packed = staging_.data() + b.lo * n;
  for (int r = 0; r < n; ++r) {
    const std::int64_t from = shard_ * r + b.lo;
    const std::int64_t have = std::clamp<std::int64_t>(total_ - from, 0, len);
    float* dst = packed + len * r;
    copy_padded(dst, grads_ + from, have, len);
  }
  pending_.push_back(buffers_.ireduce_scatter(
      std::span<const float>(packed, static_cast<std::size_t>(len * n)),
      std::span<float>(shard_grads_.data() + b.lo, static_cast<std::size_t>(len)), ReduceOp::Sum));
}

void DataParallel::copy_padded(float* dst, const float* src, std::int64_t have, std::int64_t len) {
  if (have > 0) backend_.copy(dst, src, have);
  if (have < len) backend_.fill(dst + have, 0.0f, len - have);
}

void DataParallel::grads_final(std::int64_t offset) {
  if (comm_.size() == 1) return;
  // A zero = 1 chunk is complete when its lowest piece (in shard 0) is.
  while (next_ < buckets_.size() && buckets_[next_].lo >= offset) start(buckets_[next_++]);
  for (auto& r : pending_) r->test();
}

void DataParallel::wait_all() {
  for (auto& r : pending_) r->wait();
  pending_.clear();
}

void DataParallel::finish_reduction() {
  if (comm_.size() == 1) return;
  while (next_ < buckets_.size()) start(buckets_[next_++]);
  next_ = 0;
  wait_all();
}

void DataParallel::set_model_parallel(Communicator& tensor, Communicator& pipeline,
                                      const ParamLayout& layout) {
  if (layout.total() != total_) {
    throw std::invalid_argument("DataParallel::set_model_parallel: another layout");
  }
  tensor_ = tensor.size() > 1 ? &tensor : nullptr;
  pipeline_ = pipeline.size() > 1 ? &pipeline : nullptr;
  not_counted_.clear();
  for (const ParamView& v : layout.views()) {
    const bool counted = v.pipeline_copy ? false : v.is_split() || tensor.rank() == 0;
    if (counted) continue;
    if (!not_counted_.empty() && not_counted_.back().second == v.offset) {
      not_counted_.back().second = v.offset + v.size;
    } else {
      not_counted_.emplace_back(v.offset, v.offset + v.size);
    }
  }
}

double DataParallel::sum_of_squares(const float* data, std::int64_t lo, std::int64_t count) {
  double sum = 0.0;
  std::int64_t at = lo;
  const std::int64_t hi = lo + count;
  for (const auto& [skip_lo, skip_hi] : not_counted_) {
    if (skip_hi <= at) continue;
    if (skip_lo >= hi) break;
    if (skip_lo > at) sum += backend_.sum_of_squares(data + (at - lo), skip_lo - at);
    at = std::min(hi, skip_hi);
  }
  if (at < hi) sum += backend_.sum_of_squares(data + (at - lo), hi - at);
  return sum;
}

namespace {

// The sum of one double from every rank, added in rank order.
double sum_in_rank_order(Communicator& comm, double mine) {
  std::vector<double> all(static_cast<std::size_t>(comm.size()));
  comm.all_gather(std::span<const double>(&mine, 1), std::span<double>(all));
  double total = 0.0;
  for (const double s : all) total += s;
  return total;
}

}  // namespace

double DataParallel::grad_norm() {
  const int n = comm_.size();
  if (n == 1 && tensor_ == nullptr && pipeline_ == nullptr) {
    return global_norm(backend_, grads_, total_);
  }
  // Each rank sums the squares of one shard (the same elements in both
  // modes); the partial sums are added in rank order on every rank, then
  // over the tensor group.
  const std::int64_t lo = std::min(total_, shard_ * comm_.rank());
  const std::int64_t count = std::min(total_, shard_ * (comm_.rank() + 1)) - lo;
  const float* mine = options_.zero == 1 && n > 1 ? shard_grads_.data() : grads_ + lo;
  double total = sum_of_squares(mine, lo, count);
  if (n > 1) total = sum_in_rank_order(comm_, total);
  if (tensor_ != nullptr) total = sum_in_rank_order(*tensor_, total);
  if (pipeline_ != nullptr) total = sum_in_rank_order(*pipeline_, total);
  return std::sqrt(total);
}

void DataParallel::step(float lr, float grad_scale) {
  if (comm_.size() == 1 || options_.zero == 0) {
    optimizer_.step(params_, grads_, lr, grad_scale);
    return;
  }
  optimizer_.step(params_ + begin_, shard_grads_.data(), lr, grad_scale);
  gather_shards(params_ + begin_, params_);
}

void DataParallel::gather_shards(const float* mine, float* full) {
  const int n = comm_.size();
  const int me = comm_.rank();
  const std::int64_t own = end_ - begin_;
  for (const Bucket& b : buckets_) {
    const std::int64_t len = b.hi - b.lo;
    float* block = staging_.data() + b.lo * n;
    float* slot = block + len * me;
    const std::int64_t have = std::clamp<std::int64_t>(own - b.lo, 0, len);
    copy_padded(slot, mine + b.lo, have, len);
    pending_.push_back(
        buffers_.iall_gather(std::span<const float>(slot, static_cast<std::size_t>(len)),
                             std::span<float>(block, static_cast<std::size_t>(len * n))));
  }
  wait_all();
  for (const Bucket& b : buckets_) {
    const std::int64_t len = b.hi - b.lo;
    const float* block = staging_.data() + b.lo * n;
    for (int r = 0; r < n; ++r) {
      const std::int64_t to = shard_ * r + b.lo;
      const std::int64_t have = std::clamp<std::int64_t>(total_ - to, 0, len);
      if (have > 0) backend_.copy(full + to, block + len * r, have);
    }
  }
}

}  // namespace borealis
