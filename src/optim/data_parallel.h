// Data-parallel gradient averaging and the AdamW update over a Communicator,
// with optional ZeRO-1 sharding of the optimizer state.
//
// Every rank computes gradients on its own share of the global batch, scaled
// so that their sum over the ranks is the gradient of the global mean loss.
//   zero = 0: the gradients are summed with allreduce in buckets of about
//     bucket_bytes, from the end of the flat buffer down; the backward pass
//     of the step's last micro-batch reports which elements are final
//     (grads_final, Model::backward's hook) and each bucket starts as soon as
//     it is complete, overlapping the rest of the pass. Every rank holds the
//     whole AdamW state and makes the same update.
//   zero = 1: the flat buffer is cut into world-size equal contiguous shards
//     (the last one padded with zeros). Gradients are reduce-scattered in
//     chunks (each chunk takes the same slice of every shard, so a rank
//     receives the sums of its own shard only), started as the backward pass
//     completes them; each rank keeps the AdamW moments of its shard, updates
//     its shard of the parameters, and all-gathers the parameters.
// The gradient norm for clipping is global in both modes: each rank sums the
// squares of one shard and the partial sums are gathered and added in rank
// order. With the ordered reduction every gradient element is the rank-order
// sum in both modes, so ZeRO-1 gives the same bits as zero = 0.
// World size 1 makes no collective call: the norm and the update are exactly
// those of a single process. On GPUs the gradients and parameters move over
// a communicator of their memory (NCCL, dist/nccl_communicator.h), the same
// schedule with the staging buffers in device memory; the sums are then
// NCCL's, not the rank-order ones.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "dist/communicator.h"
#include "model/params.h"
#include "optim/adamw.h"

namespace borealis {

struct DataParallelOptions {
  int zero = 0;                          // 0: replicated optimizer state, 1: ZeRO-1
  std::size_t bucket_bytes = 25u << 20;  // gradient bytes per collective
};

class DataParallel {
 public:
  // params and grads are the model's flat buffers (layout.total() elements)
  // in the backend's memory, which must stay where they are; the backend
  // does the optimizer's arithmetic and must outlive this. `buffers`, over
  // the same ranks as `comm`, moves the gradients and parameters when they
  // are not in host memory (NCCL between GPUs); `comm` carries the host's
  // numbers (the norm's partial sums). Null: `comm` moves them too, which
  // needs a backend with host memory (more than one rank only).
  DataParallel(Communicator& comm, Backend<float>& backend, const ParamLayout& layout,
               const AdamWConfig& config, const DataParallelOptions& options, float* params,
               float* grads, Communicator* buffers = nullptr);
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  // The hook for the backward pass of the step's last micro-batch: gradient
  // elements from `offset` on are final. Starts the buckets that are
  // complete and makes progress on the running ones.
  void grads_final(std::int64_t offset);
  // Starts the buckets not started yet and waits for all of them (with the
  // communicator's time-out). Afterwards this rank holds the summed
  // gradients: all of them (zero = 0) or those of its shard (zero = 1).
  void finish_reduction();
  // Tensor and pipeline parallelism: this rank holds a part of the model
  // (the layout's split and stage); `tensor` connects the parts of its
  // stage, `pipeline` the stages. The gradient norm then covers the whole
  // model: the squares are added over the tensor group and then over the
  // pipeline too; tensors every part holds whole (norms, positions,
  // row-parallel biases, the same on every rank of the group) count once,
  // on tensor rank 0, and the last stage's copy of tied embeddings not at
  // all. Either group may be of one rank; both must outlive this.
  void set_model_parallel(Communicator& tensor, Communicator& pipeline, const ParamLayout& layout);
  // The L2 norm of the summed gradients, identical on every rank.
  double grad_norm();
  // AdamW update with learning rate lr on the summed gradients times
  // grad_scale; afterwards every rank holds the same parameters.
  void step(float lr, float grad_scale);

  std::int64_t adamw_steps() const { return optimizer_.steps(); }
  // This rank's optimizer, over [shard_begin(), shard_end()): the whole
  // buffer with zero = 0 or one rank, else its shard. Checkpoints save and
  // restore its moments directly (train/dist_checkpoint.h), so that no rank
  // ever holds all shards.
  Backend<float>& backend() { return backend_; }
  AdamW& optimizer() { return optimizer_; }
  const AdamW& optimizer() const { return optimizer_; }

  int zero() const { return options_.zero; }
  // This rank's place in the data-parallel group.
  int data_rank() const { return comm_.rank(); }
  // Elements of the flat buffer this rank's optimizer owns: [begin, end).
  std::int64_t shard_begin() const { return begin_; }
  // The padded length every rank's shard has in the collectives (zero = 1).
  std::int64_t shard_length() const { return shard_; }
  std::int64_t shard_end() const { return end_; }
  std::size_t optimizer_bytes() const { return optimizer_.state_bytes(); }
  // Staging buffers for the collectives (zero = 1: packed chunks and the
  // shard's gradients).
  std::size_t buffer_bytes() const {
    return static_cast<std::size_t>(staging_.size() + shard_grads_.size()) * sizeof(float);
  }
  std::size_t buckets() const { return buckets_.size(); }

 private:
  struct Bucket {
    std::int64_t lo, hi;  // zero = 0: flat elements; zero = 1: offsets in every shard
  };
  void start(const Bucket& b);
  // dst[0, len) = src[0, have) and zeros after (backend memory; have <= len).
  void copy_padded(float* dst, const float* src, std::int64_t have, std::int64_t len);
  void wait_all();
  // zero = 1: every rank's shard [lo, hi) of `mine` (shard-local) into `full`.
  void gather_shards(const float* mine, float* full);
  // Sum of squares of grads[lo, lo + count) (at `data`), without the
  // elements the tensor group counts on another rank.
  double sum_of_squares(const float* data, std::int64_t lo, std::int64_t count);

  Communicator& comm_;
  Communicator& buffers_;  // moves the gradients and parameters
  Backend<float>& backend_;
  DataParallelOptions options_;
  float* params_;
  float* grads_;
  std::int64_t total_ = 0;
  std::int64_t shard_ = 0;  // padded shard length
  std::int64_t begin_ = 0, end_ = 0;
  AdamW optimizer_;
  std::vector<Bucket> buckets_;  // in the order they complete in backward
  std::size_t next_ = 0;         // the next bucket to start
  std::vector<RequestPtr> pending_;
  BackendArray<float> staging_;       // zero = 1: size() * shard_, in the backend's memory
  BackendArray<float> shard_grads_;   // zero = 1: shard_
  Communicator* tensor_ = nullptr;    // tensor-parallel group, if any
  Communicator* pipeline_ = nullptr;  // pipeline, if any
  // Ranges [lo, hi) of the flat buffer this rank leaves out of the norm.
  std::vector<std::pair<std::int64_t, std::int64_t>> not_counted_;
};

}  // namespace borealis
