// A decoder transformer (GPT-2 or Llama family) with hand-written forward and
// backward passes over flat parameter and gradient buffers.
//
// One training step:
//   model.zero_grad();
//   float loss = model.forward(tokens, targets, B, T, /*need_grad=*/true);
//   model.backward();
//   optimizer.step(model.params(), model.grads(), lr);
//
// The loss head (final norm -> logits -> softmax cross-entropy) runs in row
// chunks and, when need_grad is set, computes its own gradient immediately
// (fused linear + cross-entropy): the B*T*V logits are never stored, only a
// chunk of them. backward() then runs the blocks in reverse from there.
// Gradients accumulate across forward/backward pairs until zero_grad(); pass
// grad_scale = 1 / micro_batches for gradient accumulation.
//
// Parameters, gradients and activations live in the backend's memory
// (BackendArray): activations in one arena sized by reserve(B, T). The model
// calls ops only through Backend<T>, so it runs unchanged on the CPU and on
// a GPU; tokens and targets come from the host and are copied to the
// backend, and forward() returns the loss (and losses()) on the host. On a
// backend whose memory the host cannot read (CUDA), params(), grads(),
// param() and grad() are device pointers; tensor and pipeline parallelism
// need host memory.
//
// Tensor parallelism: given a TensorParallelGroup, the model holds this rank's part
// of every layer (ParamLayout with the group's split: heads, hidden units,
// vocabulary rows) and reduces over the group inside forward and backward,
// so that every rank of the group sees the same residual stream, loss and
// losses; the gradients are those of its part (and of the whole norms,
// positions and row-parallel biases, the same on every rank).
//
// Pipeline parallelism: given a PipelineStage, the model holds the layers
// of its stage (ParamLayout). The first stage embeds the tokens; the others
// take the previous stage's output in stage_input() before forward(). The
// last stage computes the loss; the others leave their output in
// stage_output() and, before backward(), take its gradient from the next
// stage in output_grad(); after backward() the first stage has the
// embedding's gradients, the others the gradient of their input in
// input_grad(). Several micro-batches can be in flight at once (the 1F1B
// schedule): reserve(B, seq, slots) keeps `slots` sets of activations and
// use_slot() picks the one that forward, backward and the stage buffers
// refer to.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string_view>
#include <vector>

#include "kernels/backend.h"
#include "model/block.h"
#include "model/config.h"
#include "model/params.h"

namespace borealis {

template <typename T>
class Model {
 public:
  // Parameters start at zero; call init() or load them. group (optional,
  // must outlive the model): the tensor-parallel group this rank belongs to.
  Model(const ModelConfig& config, Backend<T>& backend,
        const TensorParallelGroup<T>* group = nullptr, PipelineStage stage = {});

  const ModelConfig& config() const { return config_; }
  const ParamLayout& layout() const { return layout_; }
  std::int64_t num_params() const { return layout_.total(); }
  // The flat buffers, in the backend's memory.
  T* params() { return params_.data(); }
  const T* params() const { return params_.data(); }
  T* grads() { return grads_.data(); }
  const T* grads() const { return grads_.data(); }
  std::span<T> param(std::string_view name);
  std::span<T> grad(std::string_view name);

  void init(std::uint64_t seed);
  void zero_grad();

  // While the object hold_params() returns lives, the parameters do not
  // change (a training step's micro-batches, up to its update). With bf16
  // matmul inputs, the first forward in it rounds the weights' bf16 copy
  // and the later ones read that copy as it is, where each forward would
  // round it again otherwise (the same bits, one pass over the weights per
  // step instead of one per micro-batch). One at a time.
  class ParamsHeld {
   public:
    explicit ParamsHeld(Model& model);
    ~ParamsHeld();
    ParamsHeld(const ParamsHeld&) = delete;
    ParamsHeld& operator=(const ParamsHeld&) = delete;

   private:
    Model& model_;
  };
  [[nodiscard]] ParamsHeld hold_params() { return ParamsHeld(*this); }

  // Sizes the activation arena for batches of B sequences of seq tokens, in
  // `slots` activation sets. Done once; forward() grows it only if asked for
  // a larger batch (and never while another slot waits for its backward).
  // Throws borealis::Error for sizes the model cannot take.
  void reserve(int B, int seq, int slots = 1);
  // The activation set the next forward, backward, losses() and stage
  // buffers use: 0 <= slot < the reserved slots.
  void use_slot(int slot);
  const PipelineStage& stage() const { return layout_.stage(); }
  // Pipeline stages other than the first: the slot's input rows (this
  // rank's rows of the residual stream), written before forward().
  T* stage_input();
  // Stages other than the last: the slot's output after forward().
  const T* stage_output();
  // Stages other than the last: the gradient of stage_output(), written
  // before backward(). Shared by all slots.
  T* output_grad();
  // Stages other than the first: after backward(), the gradient of
  // stage_input(). Shared by all slots.
  const T* input_grad();
  // Elements of stage_input() and the other stage buffers of a batch of B
  // sequences of seq tokens: rows (this rank's, with sequence parallelism)
  // times d_model.
  std::int64_t stage_elems(int B, int seq) const;
  std::size_t activation_bytes() const {
    return static_cast<std::size_t>(arena_.size()) * sizeof(T) +
           static_cast<std::size_t>(arena16_.size()) * sizeof(std::uint16_t);
  }
  // Rows per logits chunk of the loss head (default: equal chunks of at most
  // the backend's loss_chunk_elems() logits). Smaller chunks save memory; the
  // tests use it to cover several chunks.
  void set_loss_chunk_rows(int rows);
  int loss_chunk_rows() const { return static_cast<int>(chunk_rows_); }

  // Runs the model on tokens[B*seq] and returns the mean cross-entropy against
  // targets[B*seq] (ids in [0, vocab_size)). With need_grad, also prepares
  // backward(); the loss gradient is grad_scale * d(mean loss). Pipeline
  // stages: only the first reads tokens and only the last targets (others
  // may pass null); stages other than the last return 0.
  T forward(const std::int32_t* tokens, const std::int32_t* targets, int B, int seq, bool need_grad,
            T grad_scale = T(1));
  // Accumulates d(loss)/d(params) into grads(). Needs a forward(need_grad) of
  // the slot first, and the parameters as they were then (with bf16 matmul
  // inputs backward reads the copy of the weights that forward rounded); on
  // the last stage, with no other forward in between.
  // grads_final_from, when given, is called as the pass goes down the blocks
  // with an offset from which on no gradient element changes any more in
  // this pass (after the loss head and each block, and 0 at the end), so a
  // data-parallel run can start reducing those gradients while the rest of
  // the pass runs.
  void backward(const std::function<void(std::int64_t)>& grads_final_from = nullptr);

  // Per-token losses of the slot's last forward, B*T of them (last stage).
  std::span<const T> losses() const;

 private:
  struct LayerActs {
    std::int64_t ln1, ln1_mean, ln1_rstd, qkv, atty, lse, res2, ln2, ln2_mean, ln2_rstd, fch, res3;
    std::int64_t ln1_bf16, ln2_bf16, atty_bf16;  // in arena16_; -1 without bf16 matmul inputs
    // qkv in bf16 (arena16_) where attention reads it so; qkv is then -1.
    std::int64_t qkv_bf16;
    std::int64_t fch_bf16;  // with bf16 matmul inputs (fch is then -1)
  };
  // The current slot's activations, and scratch shared by all slots (the
  // set after the slots'), in arena_ and arena16_; null for offset -1: a
  // buffer not planned.
  template <typename U>
  static U* in_set(U* arena, std::int64_t set_elems, int set, std::int64_t offset) {
    return offset < 0 ? nullptr : arena + set * set_elems + offset;
  }
  T* act(std::int64_t offset) { return in_set(arena_.data(), slot_elems_, slot_, offset); }
  const T* act(std::int64_t offset) const {
    return in_set(arena_.data(), slot_elems_, slot_, offset);
  }
  T* tmp(std::int64_t offset) { return in_set(arena_.data(), slot_elems_, slots_, offset); }
  std::uint16_t* act16(std::int64_t offset) {
    return in_set(arena16_.data(), slot16_elems_, slot_, offset);
  }
  std::uint16_t* tmp16(std::int64_t offset) {
    return in_set(arena16_.data(), slot16_elems_, slots_, offset);
  }
  T* res_in(int l);
  BlockBuffers<T> buffers(int l);
  T* p(std::int64_t offset) { return offset < 0 ? nullptr : params_.data() + offset; }
  T* g(std::int64_t offset) { return offset < 0 ? nullptr : grads_.data() + offset; }
  void validate_tokens(const std::int32_t* ids, const char* what) const;
  void require_stage(bool ok, const char* what) const;
  // Rows of the last forward's residual stream this rank holds.
  std::int64_t local_rows() const { return rows_of(B_, T_); }
  std::int64_t rows_of(int B, int seq) const {
    const std::int64_t N = static_cast<std::int64_t>(B) * seq;
    return sequence_ ? N / group_->split.size : N;
  }
  // The loss head's cross-entropy on one chunk of logits, whole or (tensor
  // parallel) over the group's vocabulary parts.
  void chunk_crossentropy(T* logits, T* losses, const std::int32_t* targets, int rows, T dloss);

  ModelConfig config_;
  Backend<T>& backend_;
  const TensorParallelGroup<T>* group_;  // null unless tensor parallel
  const bool sequence_;                  // sequence parallel too
  int vocab_part_ = 0;                   // padded vocabulary rows this rank holds
  int vocab_first_ = 0;                  // the first of them
  ParamLayout layout_;
  Block<T> block_;
  BackendArray<T> params_;
  BackendArray<T> grads_;
  // With bf16 matmul inputs: the weights rounded to bf16 by a forward (each
  // one, or the first while held), which the matmuls and backward's read
  // (Bf16Inputs::use_weight_copy).
  BackendArray<std::uint16_t> params16_;
  bool params_held_ = false;   // a ParamsHeld lives
  bool copy_current_ = false;  // params16_ rounded from the held parameters

  // Arena and its layout for the reserved (B, T): slots_ activation sets of
  // slot_elems_ each (offsets below from the set's start), then the scratch
  // (offsets from its start).
  BackendArray<T> arena_;
  int cap_B_ = 0, cap_T_ = 0, slots_ = 1, slot_ = 0;
  std::int64_t slot_elems_ = 0;
  // The bf16 matmul inputs where the backend takes them (Bf16Inputs): the
  // norms' outputs, the MLP's pre-activation and activation, the attention
  // output's bf16 form, qkv where attention reads it in bf16, and the
  // logits', dfch's, dqkv's, the residual stream's and (with qkv in bf16)
  // the attention output's gradients, in a second arena of the same plan (slot16_elems_ per set,
  // then scratch).
  BackendArray<std::uint16_t> arena16_;
  std::int64_t slot16_elems_ = 0, lnf_bf16_ = -1, mlp_bf16_ = -1, logits_bf16_ = -1,
               dqkv_bf16_ = -1, dfch_bf16_ = -1, datty_bf16_ = -1, dres_bf16_ = -1;
  int B_ = 0, T_ = 0;                  // sizes of the last forward
  std::vector<char> grad_pending_;     // per slot: a forward(need_grad) awaits backward
  int head_slot_ = -1;                 // last stage: the slot whose loss gradient the head holds
  std::vector<LayerActs> layer_acts_;  // of this stage's layers
  std::int64_t encoded_ = 0, lnf_ = 0, lnf_mean_ = 0, lnf_rstd_ = 0, losses_ = 0;
  std::int64_t logits_ = 0, chunk_rows_ = 0, chunk_rows_request_ = 0, row_max_ = 0, row_sums_ = 0;
  std::int64_t gathered_ = 0, partial_ = 0, dgathered_ = 0, dlocal_ = 0, dnorm_ = 0;
  std::int64_t dlnf_ = 0, dres_ = 0, dln_ = 0, datty_ = 0, dqkv_ = 0, mlp_act_ = 0, dmlp_act_ = 0,
               dfch_ = 0;
  // With qkv kept in bf16: Llama's qkv GEMM output before RoPE (shared by
  // the layers; -1 otherwise).
  std::int64_t qkv_f32_ = -1;
  BackendArray<std::int32_t> tokens_;   // per slot, of the first stage's forward
  BackendArray<std::int32_t> targets_;  // the last forward's, where the host cannot read memory
  std::vector<T> losses_host_;          // the last forward's losses, likewise
};

extern template class Model<float>;
extern template class Model<double>;

}  // namespace borealis
