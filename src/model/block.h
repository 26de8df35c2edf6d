// The transformer block, defined once: pre-norm attention and MLP with
// their forward and backward passes, for GPT-2 (LayerNorm, GELU, biases,
// learned positions) and Llama (RMSNorm, SwiGLU, RoPE, grouped-query heads).
//
// Training (Model) and inference (Inference, BatchInference; the server and
// the evaluator on top of them) all run this code. They differ only in where
// the activations go and in how attention sees earlier positions, which the
// caller passes in:
//   - Buffers: training keeps every layer's activations for backward; inference
//     reuses one set of scratch rows and updates the residual stream in place
//     (res2 == res3 == x).
//   - Attend: the step from the projected qkv rows to the attention output.
//     Training attends within whole sequences (and keeps the log-sum-exp for
//     backward); inference attends over a key/value cache.
//   - Row groups: how the rows go through the matmuls. Training runs all rows
//     in one GEMM. Inference keeps a request's result independent of what
//     else is in the batch: all its rows, prompt chunks and decode steps,
//     go through Backend::matmul_forward_rowwise together, whose rows do not
//     depend on each other (and which is as fast as the GEMM at these row
//     counts: bench/rowwise_bench).
#pragma once

#include <cstdint>
#include <functional>
#include <span>

#include "kernels/backend.h"
#include "model/config.h"
#include "model/params.h"

namespace borealis {

// The shapes every block pass needs, from the config; under tensor
// parallelism those of this rank's part (heads and hidden units).
struct BlockDims {
  explicit BlockDims(const ModelConfig& config, TensorSplit split = {});
  int C;    // d_model
  int S;    // packed qkv width: (NH + 2 * NKV) * HD
  int F;    // MLP hidden width
  int FW;   // width of the MLP's first projection (2F for SwiGLU's gate and up)
  int NH;   // query heads
  int NKV;  // key/value heads
  int HD;   // head dimension
  int A;    // attention output width, NH * HD (C unless split)
  bool gpt2;
};

// The tensor-parallel group a model is cut across (params.h, TensorSplit):
// this rank's place, and the group's sum and maximum of a buffer in place,
// which must give the same bits on every rank (the Communicator's ordered
// allreduce does). The layers reduce over the group where Megatron-LM does:
// after each row-parallel projection in forward (attention output, MLP
// output: the residual stream is whole on every rank), after each
// column-parallel projection's input gradient in backward, and in the
// vocabulary-parallel embedding and cross-entropy.
//
// Sequence parallelism (Megatron-LM, arXiv 2205.05198), when set: the
// residual stream and the norms are cut along the rows too, rank r holding
// rows [r * N / size, (r + 1) * N / size) of the N = batch x sequence rows.
// Each allreduce above becomes a reduce-scatter (into this rank's rows)
// and an all-gather of the next norm's output (before the column-parallel
// projections): the same bytes, but residual and norm activations take
// 1/size of the memory. The norms' weight gradients then come from this
// rank's rows only and are summed over the group.
template <typename T>
struct TensorParallelGroup {
  TensorSplit split;
  bool sequence_parallel = false;
  std::function<void(T* data, std::int64_t count)> sum;
  std::function<void(T* data, std::int64_t count)> max;
  // in: size() blocks of `count`; out: the group's sum of block rank().
  std::function<void(const T* in, T* out, std::int64_t count)> reduce_scatter;
  // out: every rank's `count` elements of in, in rank order.
  std::function<void(const T* in, T* out, std::int64_t count)> all_gather;
  bool active() const { return split.size > 1; }
  bool sequence() const { return active() && sequence_parallel; }
};

// Where one block's activations live, N rows each. mean is unused by RMSNorm.
template <typename T>
struct BlockBuffers {
  T* ln1;
  T* ln1_mean;
  T* ln1_rstd;
  T* qkv;
  T* atty;
  T* res2;  // residual after attention; may equal the block's input x
  T* ln2;
  T* ln2_mean;
  T* ln2_rstd;
  T* fch;
  T* mlp;   // MLP activation (scratch: backward recomputes it)
  T* res3;  // the block's output; may equal res2
  // Sequence parallel only (N rows each, shared by all layers): a norm's
  // output gathered from the group, and the partial sums a row-parallel
  // projection reduce-scatters. ln1, ln2, res2, res3, the means and rstds
  // (and the block's input x) then hold this rank's rows only.
  T* gathered = nullptr;
  T* partial = nullptr;
  // bf16 matmul inputs (Bf16Inputs, backend.h), when the backend takes them
  // (training on one row group, no tensor parallelism): the norms' outputs
  // and the MLP's pre-activation and activation in bf16, N rows each, in
  // place of ln1, ln2, fch and mlp, which are then unused; and the
  // attention output in bf16 besides atty (written by the Attend step).
  std::uint16_t* ln1_bf16 = nullptr;
  std::uint16_t* ln2_bf16 = nullptr;
  std::uint16_t* fch_bf16 = nullptr;
  std::uint16_t* mlp_bf16 = nullptr;
  std::uint16_t* atty_bf16 = nullptr;
  // And qkv in bf16, where attention reads it so (Bf16Inputs::
  // attention_reads_bf16_qkv): attention's forward and backward read it in
  // place of qkv, and the attention output is then kept in atty_bf16 only
  // (atty null). GPT-2's qkv GEMM writes it, and qkv is then null; Llama's
  // writes qkv (scratch shared by the layers) and the Attend step's RoPE
  // writes qkv_bf16 from it.
  std::uint16_t* qkv_bf16 = nullptr;
};

// Rows [row0, row0 + rows) go through the matmuls together: as one GEMM, or
// row by row in arithmetic (matmul_forward_rowwise) when rowwise is set.
struct RowGroup {
  int row0 = 0;
  int rows = 0;
  bool rowwise = false;
};

// Attention from packed qkv rows (RoPE not yet applied) to the output rows
// (and to the buffers' atty_bf16 as well, where they have one).
template <typename T>
using Attend = std::function<void(T* qkv, T* atty)>;

template <typename T>
class Block {
 public:
  // The layout's split says which part of each layer this rank holds; a
  // split layout needs its group (which must outlive the block).
  Block(const ModelConfig& config, const ParamLayout& layout, Backend<T>& backend,
        const TensorParallelGroup<T>* group = nullptr);

  const BlockDims& dims() const { return dims_; }

  // The block's norm (LayerNorm or RMSNorm) over rows of d_model.
  void norm_forward(T* out, T* mean, T* rstd, const T* inp, const T* params, std::int64_t w,
                    std::int64_t b, int N) const;
  // (dinp16, when not null, gets the resulting dinp rounded to bf16 too,
  // through the backend's Bf16Inputs.)
  void norm_backward(T* dinp, const T* dout, const T* inp, const T* mean, const T* rstd,
                     const T* params, T* grads, std::int64_t w, std::int64_t b, int N,
                     std::uint16_t* dinp16 = nullptr) const;

  // Sequence parallel: the norm's backward over this rank's n rows, its
  // weight gradients summed over the group (through scratch dnorm, 2 C)
  // before they are added to grads.
  void norm_backward_rows(T* dinp, const T* dout, const T* inp, const T* mean, const T* rstd,
                          const T* params, T* grads, std::int64_t w, std::int64_t b, int n,
                          T* dnorm) const;

  // The norm into out, or into out_bf16 (a bf16 matmul input) when that is
  // not null.
  void norm_forward_to(T* out, std::uint16_t* out_bf16, T* mean, T* rstd, const T* inp,
                       const T* params, std::int64_t w, std::int64_t b, int N) const;
  // A matmul input: fp32 (f32), or bf16 (bf16 not null, read through the
  // backend's Bf16Inputs).
  struct Input {
    const T* f32 = nullptr;
    const std::uint16_t* bf16 = nullptr;
    // The input from row `row` on, of rows of `width` elements.
    Input from_row(std::int64_t row, int width) const {
      const std::int64_t at = row * width;
      return {f32 != nullptr ? f32 + at : nullptr, bf16 != nullptr ? bf16 + at : nullptr};
    }
  };
  // matmul_forward and matmul_backward (backend.h) on an Input, and
  // backward's output gradient too (in fp32 or, with bf16 matmul inputs,
  // in bf16 or both).
  void matmul_forward(T* out, Input inp, const T* w, const T* bias, int N, int C, int OC,
                      bool accumulate) const;
  void matmul_backward(T* dinp, T* dw, T* dbias, Input dout, Input inp, const T* w, int N, int C,
                       int OC) const;

  // Layer `layer` over N rows of the residual stream x, into buf; groups
  // cover rows 0..N-1 in order.
  void forward(int layer, const T* params, const T* x, const BlockBuffers<T>& buf, int N,
               const Attend<T>& attend, std::span<const RowGroup> groups) const;

  // matmul_forward over rows of inp in the given groups.
  void matmul(T* out, const T* inp, const T* w, const T* bias, int C, int OC, bool accumulate,
              std::span<const RowGroup> groups) const;

  // Scratch for backward, N rows each, shared by all layers.
  struct Grads {
    T* dres;  // in: gradient of the block output; out: of its input x
    T* dln;
    T* datty;
    T* dqkv;
    T* dmlp;
    T* dfch;
    // With bf16 matmul inputs: dfch in bf16 (dfch is then unused), and dqkv
    // as the GEMMs read it, in bf16: where qkv is in bf16 attention's
    // backward writes it (dqkv is unused), else Llama's dqkv holds
    // attention's gradient before RoPE's. With qkv in bf16, the attention
    // output's gradient in bf16 (datty is then unused).
    std::uint16_t* datty_bf16 = nullptr;
    std::uint16_t* dfch_bf16 = nullptr;
    std::uint16_t* dqkv_bf16 = nullptr;
    // With bf16 matmul inputs, dres rounded to bf16 for the GEMMs that read
    // it: on entry it holds dres's values (the final norm's backward leaves
    // them, as each block's first norm's backward does for the block
    // below), and the norms' backward here keep it so.
    std::uint16_t* dres_bf16 = nullptr;
    // Sequence parallel only: dres and the norms' input gradients hold this
    // rank's rows; dgathered (N rows) is dres gathered, dlocal (this rank's
    // rows) a norm's reduce-scattered input gradient, dnorm (2 C) a norm's
    // weight gradients before the group's sum.
    T* dgathered = nullptr;
    T* dlocal = nullptr;
    T* dnorm = nullptr;
  };
  // Backward of forward(layer, ...) with training's attention over B
  // sequences of seq tokens; accumulates the parameter gradients into grads.
  void backward(int layer, const T* params, T* grads, const T* x, const BlockBuffers<T>& buf,
                const T* lse, const Grads& d, int B, int seq) const;

 private:
  static const T* at(const T* base, std::int64_t offset) {
    return offset < 0 ? nullptr : base + offset;
  }
  static T* at(T* base, std::int64_t offset) { return offset < 0 ? nullptr : base + offset; }
  void mlp_activation(T* out, const T* fch, int N) const;
  // The buffers' bf16 matmul inputs' ops (null where they have none),
  // checked against the backend and the row groups.
  Bf16Inputs<T>* bf16_inputs(const BlockBuffers<T>& buf, int N,
                             std::span<const RowGroup> groups) const;
  // The MLP activation into out from fch, or (with bf16 matmul inputs) into
  // the buffers' mlp_bf16 from their fch_bf16.
  void mlp_activation_to(T* out, const BlockBuffers<T>& buf, int N) const;
  // norm_backward with the weight and its gradients as pointers (db null
  // for RMSNorm).
  void norm_backward_into(T* dinp, const T* dout, const T* inp, const T* mean, const T* rstd,
                          const T* weight, T* dw, T* db, int N,
                          std::uint16_t* dinp16 = nullptr) const;
  // out = x + inp * W^T + b over the group: a row-parallel projection with
  // its residual add (rank 0 adds x and the bias, then the group sums).
  void project_residual(T* out, const T* x, const T* inp, const T* params, std::int64_t w,
                        std::int64_t b, int C_in, int N, std::span<const RowGroup> groups) const;
  // The group's sum of a column-parallel projection's input gradient.
  void sum_over_group(T* data, std::int64_t count) const;
  // The sequence-parallel forms of forward and backward (N: all rows).
  void forward_sequence(int layer, const T* params, const T* x, const BlockBuffers<T>& buf, int N,
                        const Attend<T>& attend, std::span<const RowGroup> groups) const;
  void backward_sequence(int layer, const T* params, T* grads, const T* x,
                         const BlockBuffers<T>& buf, const T* lse, const Grads& d, int B,
                         int seq) const;

  ModelConfig config_;
  ParamLayout layout_;
  Backend<T>& backend_;
  BlockDims dims_;
  const TensorParallelGroup<T>* group_;
};

extern template class Block<float>;
extern template class Block<double>;

}  // namespace borealis
