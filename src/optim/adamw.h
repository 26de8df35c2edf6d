// AdamW with decoupled weight decay over the flat parameter buffer, and
// global-norm gradient clipping.
//
// The moments m and v are flat buffers in the parameter layout (so ZeRO can
// shard and checkpoints can save them like the parameters). Weight decay is
// applied per tensor kind: by default matrices only; norms, biases and
// embeddings can be opted in. The update is, per element,
//   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= lr * (m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps) + wd * p)
// (decoupled decay as in torch.optim.AdamW).
//
// An optimizer may own only a contiguous range [begin, end) of the flat
// buffer (a ZeRO-1 shard): its moments then hold that range alone, and the
// per-tensor weight-decay rule is applied element by element, so a tensor
// split across two shards decays exactly as when one optimizer owns it.
//
// The arithmetic is the backend's (Backend::adamw_update, sum_of_squares,
// scale): this file decides what to update with which hyper-parameters, the
// backend how, so the CPU and a GPU backend share one AdamW. Parameters,
// gradients and the moments are in the backend's memory (the moments are
// BackendArrays of the optimizer's backend).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/backend.h"
#include "model/params.h"

namespace borealis {

struct AdamWConfig {
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.1f;
  bool decay_norms = false;
  bool decay_biases = false;
  bool decay_embeddings = false;
};

class AdamW {
 public:
  // The whole flat buffer. The backend must outlive the optimizer.
  AdamW(Backend<float>& backend, const ParamLayout& layout, const AdamWConfig& config);
  // Elements [begin, end) of the flat buffer only (0 <= begin <= end <= total).
  AdamW(Backend<float>& backend, const ParamLayout& layout, const AdamWConfig& config,
        std::int64_t begin, std::int64_t end);

  // One update with learning rate lr on grads * grad_scale (pass the clipping
  // factor here to save a pass over the gradients); advances the step count.
  // params and grads hold the optimizer's range: params[0] is flat element
  // begin() (the whole buffers for an optimizer of the whole buffer).
  void step(float* params, const float* grads, float lr, float grad_scale = 1.0f);

  std::int64_t begin() const { return begin_; }
  std::int64_t end() const { return end_; }

  std::int64_t steps() const { return steps_; }
  // The moments of the optimizer's range, in the backend's memory.
  std::span<const float> m() const { return {m_.data(), static_cast<std::size_t>(m_.size())}; }
  std::span<const float> v() const { return {v_.data(), static_cast<std::size_t>(v_.size())}; }
  // Restoring from a checkpoint: write the moments in place, then set the
  // step count they belong to.
  float* m_data() { return m_.data(); }
  float* v_data() { return v_.data(); }
  void set_steps(std::int64_t steps) { steps_ = steps; }
  std::size_t state_bytes() const {
    return static_cast<std::size_t>(m_.size() + v_.size()) * sizeof(float);
  }
  // Whether the tensor view gets weight decay under this config.
  bool decays(const ParamView& view) const;

 private:
  struct Range {
    std::int64_t offset, size;
    bool decay;
  };
  Backend<float>* backend_;
  AdamWConfig config_;
  std::int64_t begin_ = 0, end_ = 0;
  // Runs of adjacent tensors that decay alike, relative to begin_, clipped
  // to the range.
  std::vector<Range> ranges_;
  BackendArray<float> m_, v_;
  std::int64_t steps_ = 0;
};

// L2 norm of the whole gradient buffer: sqrt of the backend's sum_of_squares
// (deterministic for any thread count).
double global_norm(Backend<float>& backend, const float* grads, std::int64_t count);

// The factor that brings a gradient of global norm `norm` to at most
// max_norm: max_norm / (norm + 1e-6) when norm > max_norm > 0, else 1 (the
// same factor as torch.nn.utils.clip_grad_norm_).
float clip_scale(double norm, double max_norm);

// Scales grads in place by clip_scale(global_norm(grads), max_norm).
// Returns the norm before clipping.
double clip_grad_norm(Backend<float>& backend, float* grads, std::int64_t count, double max_norm);

}  // namespace borealis
