// The op boundary between model code and the hardware.
//
// Every transformer op has one forward and one backward function (llm.c
// style, no autograd). Model code (src/model/) calls ops only through this
// interface, so the CPU backend (kernels/cpu/) and the CUDA backend
// (kernels/cuda/) run the same model code. Pointers point into the backend's
// memory (BackendMemory below); shapes are in
// elements; all tensors are row-major and contiguous unless a stride says
// otherwise. N is the number of token rows (batch * sequence).
//
// Gradient conventions (what the model relies on):
//  - parameter gradients (dw, db, dwte, ...) are always accumulated (+=), so
//    gradient accumulation over micro-batches needs no extra work;
//  - activation gradients are overwritten, except where noted "+=" (the
//    norms accumulate into the residual-stream gradient they feed).
//
// T is the scalar type: the CPU backend implements float (training) and
// double (finite-difference gradient checks in the tests); the CUDA backend
// float.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>

#include "core/error.h"

namespace borealis {

// Thrown by a backend's allocate() when its device has too little memory
// left: the message says how much was asked for and how much is free, and
// the code that knows what the memory was for (the model's activations,
// the optimizer's state) adds that. bytes() is the size asked for.
class OutOfDeviceMemory : public Error {
 public:
  OutOfDeviceMemory(std::string what, std::string where, std::size_t bytes)
      : Error(std::move(what), std::move(where)), bytes_(bytes) {}
  std::size_t bytes() const { return bytes_; }

 private:
  std::size_t bytes_;
};

// Runs allocate(); an OutOfDeviceMemory from it is thrown again as
// "<needs>: <its message>[; <hint>]", needs saying what the memory is for
// and how much it is in all ("the activations of 8 sequences of 1024 tokens
// need 21.3 GiB").
template <typename Allocate>
void allocate_for(const std::string& needs, const std::string& hint, Allocate&& allocate) {
  try {
    allocate();
  } catch (const OutOfDeviceMemory& e) {
    throw OutOfDeviceMemory(needs + ": " + e.message() + (hint.empty() ? "" : "; " + hint),
                            e.where(), e.bytes());
  }
}

// The memory a backend's ops work on: host memory for the CPU backend,
// device memory for a GPU's. Model code keeps its buffers in BackendArray
// and moves data between the host and the backend with upload/download, so
// it runs on either.
class BackendMemory {
 public:
  virtual ~BackendMemory() = default;
  // Zeroed memory of `bytes` bytes (aligned for any element type), freed by
  // release(). Throws OutOfDeviceMemory (a device's backend) or
  // std::bad_alloc (host memory) when none is left.
  virtual void* allocate(std::size_t bytes) = 0;
  virtual void release(void* ptr) noexcept = 0;
  // Whether the host may read and write the memory directly (the CPU
  // backend's: upload and download are then plain copies).
  virtual bool host_memory() const = 0;
  // Host -> backend and backend -> host copies of `bytes` bytes; both wait
  // for the ops queued before them.
  virtual void upload(void* dst, const void* host, std::size_t bytes) = 0;
  virtual void download(void* host, const void* src, std::size_t bytes) = 0;
  // Waits until the ops queued so far have finished (for timing them). The
  // CPU backend's ops finish before they return: nothing to wait for.
  virtual void synchronize() {}
};

// `count` elements of U in a backend's memory, zeroed, freed with the object.
template <typename U>
class BackendArray {
 public:
  BackendArray() = default;
  BackendArray(BackendMemory& memory, std::int64_t count)
      : memory_(&memory),
        data_(static_cast<U*>(memory.allocate(static_cast<std::size_t>(count) * sizeof(U)))),
        size_(count) {}
  ~BackendArray() {
    if (data_ != nullptr) memory_->release(data_);
  }
  BackendArray(BackendArray&& other) noexcept { swap(other); }
  BackendArray& operator=(BackendArray&& other) noexcept {
    BackendArray moved(std::move(other));
    swap(moved);
    return *this;
  }
  BackendArray(const BackendArray&) = delete;
  BackendArray& operator=(const BackendArray&) = delete;

  U* data() { return data_; }
  const U* data() const { return data_; }
  std::int64_t size() const { return size_; }

 private:
  void swap(BackendArray& other) noexcept {
    std::swap(memory_, other.memory_);
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
  }
  BackendMemory* memory_ = nullptr;
  U* data_ = nullptr;
  std::int64_t size_ = 0;
};

// What a float backend's training matmuls (matmul_forward, matmul_backward)
// multiply: fp32 operands, or operands rounded to bf16 (round to nearest
// even) with fp32 accumulation and fp32 results, as PyTorch's autocast and
// Megatron's bf16 runs do on tensor cores. Everything else, the parameters
// (the master weights), gradients, optimizer state, norms, softmax and the
// loss, stays fp32 either way. Only the CUDA backend offers bf16.
enum class Precision { kFp32, kBf16 };
// "fp32" or "bf16", and back (std::invalid_argument naming both otherwise).
std::string precision_name(Precision precision);
Precision parse_precision(const std::string& name);

// Matmul inputs in bf16. With bf16 matmuls every matmul rounds its input to
// bf16, so an activation whose only readers are matmuls (the norms' outputs,
// the MLP activation) can be written in bf16 by the op that makes it: the
// same bits as rounding it later, in half the memory, and no rounding pass
// in each matmul that reads it. So can the lm head's output gradient (the
// logits' gradient), which has no bias gradient to sum, written over the
// logits, which are kept in bf16 too (the loss computed from them in
// fp32); the attention
// output, which attention's backward reads too, is written both ways.
// Beyond that rounding, the MLP's pre-activation (the up-projection's output,
// the largest activation) is kept in bf16, and with it the MLP's gradient
// at that point, as mixed-precision trainers keep them: the activation and
// its gradient are computed in fp32 from the rounded pre-activation, and
// GPT-2's up-projection bias gradient sums the rounded gradient. So does
// GPT-2's qkv bias gradient, where attention's backward writes the qkv
// gradient in bf16 for the qkv GEMMs. The residual stream's gradient stays
// fp32 (the norms' backward accumulate into it) and the norms' backward
// leave its bf16 form beside it for the GEMMs that read it next; and the
// weights are read from one bf16 copy a micro-batch. A backend
// that takes such inputs returns this interface from
// Backend::bf16_inputs(), and training then calls these ops in place of the
// Backend ops of the same names, which they equal but for that rounding of
// out (the producers) or of inp (the matmuls). A bf16 value is its 16 bits
// (core/half.h).
template <typename T>
class Bf16Inputs {
 public:
  virtual ~Bf16Inputs() = default;
  // The producers: out in bf16.
  virtual void layernorm_forward(std::uint16_t* out, T* mean, T* rstd, const T* inp, const T* w,
                                 const T* b, int N, int C, float eps) = 0;
  virtual void rmsnorm_forward(std::uint16_t* out, T* rstd, const T* inp, const T* w, int N, int C,
                               float eps) = 0;
  // The MLP's activation, from its pre-activation in bf16 (the up-projection's
  // output, below).
  virtual void gelu_forward(std::uint16_t* out, const std::uint16_t* inp, std::int64_t count) = 0;
  virtual void swiglu_forward(std::uint16_t* out, const std::uint16_t* inp, int N, int F) = 0;
  // attention_forward writing its output in bf16 to out_bf16 as well (the
  // output projection's input; attention's backward reads out in fp32).
  virtual void attention_forward(T* out, std::uint16_t* out_bf16, T* lse, const T* qkv, int B,
                                 int seq, int NH, int NKV, int HD) = 0;
  // The matmuls: inp in bf16. Backward's output gradient comes in fp32
  // (dout), in bf16 (dout16) or both (at least one; both hold the same
  // values, dout16 rounded): the GEMMs read dout16 where given (else dout
  // rounded), the bias gradient sums dout's values where given (else
  // dout16's), in fp32.
  virtual void matmul_forward(T* out, const std::uint16_t* inp, const T* w, const T* bias, int N,
                              int C, int OC, bool accumulate) = 0;
  virtual void matmul_residual_forward(T* out, const T* residual, const std::uint16_t* inp,
                                       const T* w, const T* bias, int N, int C, int OC) = 0;
  virtual void matmul_backward(T* dinp, T* dw, T* dbias, const T* dout, const std::uint16_t* dout16,
                               const std::uint16_t* inp, const T* w, int N, int C, int OC) = 0;
  // GPT-2's MLP down-projection: pre and dpre in bf16 (dpre is the
  // up-projection's output gradient, which its GEMMs read in bf16 and its
  // bias gradient sums in fp32).
  virtual void matmul_backward_gelu(std::uint16_t* dpre, T* dw, T* dbias, const T* dout,
                                    const std::uint16_t* dout16, const std::uint16_t* inp,
                                    const T* w, const std::uint16_t* pre, int N, int C, int OC) = 0;
  // The residual stream's gradient for the GEMMs that read it next: the
  // norms' backward as Backend's (dinp += ...), writing the resulting dinp
  // rounded to bf16 to dinp16 as well.
  virtual void layernorm_backward(T* dinp, std::uint16_t* dinp16, T* dw, T* db, const T* dout,
                                  const T* inp, const T* w, const T* mean, const T* rstd, int N,
                                  int C) = 0;
  virtual void rmsnorm_backward(T* dinp, std::uint16_t* dinp16, T* dw, const T* dout, const T* inp,
                                const T* w, const T* rstd, int N, int C) = 0;
  // The lm head in bf16, as mixed-precision trainers keep it: its GEMM
  // writes the logits in bf16 (matmul_forward with out in bf16, below), and
  // crossentropy_forward_backward computes the loss from them in fp32 and
  // writes the logits' gradient (when dloss != 0) in bf16 over them, for
  // matmul_backward with dout in bf16 only. On the rounded logits it is
  // Backend's op, the gradient rounded: the same losses' bits.
  virtual void crossentropy_forward_backward(std::uint16_t* logits, T* losses,
                                             const std::int32_t* targets, int N, int V, int Vp,
                                             T dloss) = 0;
  // Llama's MLP gradient in bf16 from its pre-activation in bf16:
  // swiglu_backward with inp and dinp in bf16. And Llama's qkv gradient for
  // its GEMMs: rope_backward writing its rotation of dqkv in bf16 to out
  // (whole rows, the v heads rounded as they are) and leaving dqkv as it
  // is.
  virtual void swiglu_backward(std::uint16_t* dinp, const std::uint16_t* inp, const T* dout, int N,
                               int F) = 0;
  virtual void rope_backward(std::uint16_t* out, const T* dqkv, int B, int seq, int NH, int NKV,
                             int HD, float theta) = 0;
  // qkv in bf16, where attention_reads_bf16_qkv says the shape allows it
  // (the CUDA backend: where its tensor-core kernels run, which round qkv
  // to bf16 as they read it anyway, so the results are the same bits).
  // Its producers: rope_forward writing qkv to out with the q and k heads
  // rotated (the v heads as they are), qkv left as it is (Llama), and
  // matmul_forward writing its output in bf16 (GPT-2, whose qkv is the GEMM's
  // output). attention_forward and attention_backward then read it. With
  // qkv in bf16 the attention output and its gradient are kept in bf16
  // only: attention_forward writes out_bf16 alone (out null), the output
  // projection's backward writes the gradient in bf16 (matmul_backward
  // with dinp in bf16), and attention_backward reads both so. Those
  // kernels read the gradient, and compute delta (the rows' dout . out)
  // from both, rounded to bf16 whichever form they are kept in, so these are
  // the same bits too.
  virtual bool attention_reads_bf16_qkv(int B, int NH, int NKV, int HD) const = 0;
  virtual void rope_forward(std::uint16_t* out, const T* qkv, int B, int seq, int NH, int NKV,
                            int HD, float theta) = 0;
  virtual void matmul_forward(std::uint16_t* out, const std::uint16_t* inp, const T* w,
                              const T* bias, int N, int C, int OC) = 0;
  // (out may be null: the output in bf16 only.)
  virtual void attention_forward(T* out, std::uint16_t* out_bf16, T* lse, const std::uint16_t* qkv,
                                 int B, int seq, int NH, int NKV, int HD) = 0;
  virtual void matmul_backward(std::uint16_t* dinp, T* dw, T* dbias, const T* dout,
                               const std::uint16_t* dout16, const std::uint16_t* inp, const T* w,
                               int N, int C, int OC) = 0;
  virtual void attention_backward(T* dqkv, const std::uint16_t* dout, const std::uint16_t* qkv,
                                  const std::uint16_t* out, const T* lse, int B, int seq, int NH,
                                  int NKV, int HD) = 0;
  // And writing dqkv in bf16 (GPT-2, whose qkv GEMMs read it as it is and
  // whose qkv bias gradient sums its rounded values in fp32).
  virtual void attention_backward(std::uint16_t* dqkv, const std::uint16_t* dout,
                                  const std::uint16_t* qkv, const std::uint16_t* out, const T* lse,
                                  int B, int seq, int NH, int NKV, int HD) = 0;
  // And Llama's, with RoPE's backward: dqkv in bf16 for the qkv GEMMs, its
  // q and k heads' gradients rotated back, the bits of rope_backward (into
  // bf16) of the fp32 gradient attention_backward gives.
  virtual void attention_rope_backward(std::uint16_t* dqkv, const std::uint16_t* dout,
                                       const std::uint16_t* qkv, const std::uint16_t* out,
                                       const T* lse, int B, int seq, int NH, int NKV, int HD,
                                       float theta) = 0;
  // The weights from one bf16 copy instead of a rounding per matmul: with
  // round, params[0, count) is rounded into copy[0, count) now; from then
  // on every fp32 matmul operand that lies inside params is read from copy
  // at the same offset (the same bits as rounding it in the matmul), until
  // a call with count 0 (params and copy null) stops it. params must not
  // change while its copy is in use: Model uses it from a forward through
  // that micro-batch's backward.
  virtual void use_weight_copy(const T* params, std::uint16_t* copy, std::int64_t count,
                               bool round) = 0;
};

template <typename T>
class Backend : public BackendMemory {
 public:
  virtual std::string name() const = 0;

  // The ops that take matmul inputs in bf16 (Bf16Inputs above), where this
  // backend has them: the CUDA backend with bf16 matmuls. Null otherwise.
  virtual Bf16Inputs<T>* bf16_inputs() { return nullptr; }

  // How many logits (rows x vocabulary) the loss head computes at a time.
  // Each chunk's GEMMs read and write the whole lm-head weight gradient
  // (V x C) and read the lm-head weights, so the fewer chunks the better;
  // the bound is memory. The CPU backend takes 2^25
  // (128 MiB in float, hundreds of rows); the CUDA backend 2^29 (2 GiB: a
  // whole micro-batch of 8 x 1024 tokens over GPT-2's vocabulary in one
  // chunk). A fixed number, not one read from free memory, so that a run's
  // arithmetic, and so its bits, never depends on what else the device holds.
  virtual std::int64_t loss_chunk_elems() const = 0;

  // out[n, c] = wte[tokens[n], c] (+ wpe[n % seq, c] when wpe is not null).
  virtual void embedding_forward(T* out, const std::int32_t* tokens, const T* wte, const T* wpe,
                                 int N, int seq, int C) = 0;
  // dwte[tokens[n]] += dout[n]; dwpe[n % seq] += dout[n] (when dwpe is not null).
  virtual void embedding_backward(T* dwte, T* dwpe, const T* dout, const std::int32_t* tokens,
                                  int N, int seq, int C) = 0;

  // out[N, OC] = inp[N, C] * w[OC, C]^T + bias[OC] (bias may be null).
  // With accumulate, the product is added to what out holds (a fused residual add).
  virtual void matmul_forward(T* out, const T* inp, const T* w, const T* bias, int N, int C, int OC,
                              bool accumulate) = 0;
  // dinp = dout * w (overwritten; skipped when dinp is null); dw += dout^T * inp;
  // dbias += column sums of dout (when dbias is not null).
  virtual void matmul_backward(T* dinp, T* dw, T* dbias, const T* dout, const T* inp, const T* w,
                               int N, int C, int OC) = 0;
  // An output projection with the residual add: out[N, OC] = residual +
  // inp w^T + bias (bias may be null; residual may be out). In one GEMM
  // where the backend can give it the residual as an input (CUDA:
  // cuBLASLt); else a copy into out and an accumulating matmul_forward.
  virtual void matmul_residual_forward(T* out, const T* residual, const T* inp, const T* w,
                                       const T* bias, int N, int C, int OC) {
    if (out != residual) copy(out, residual, static_cast<std::int64_t>(N) * OC);
    matmul_forward(out, inp, w, bias, N, C, OC, true);
  }
  // GPT-2's MLP up-projection and its GELU (tanh form): pre[N, OC] = inp w^T
  // + bias (bias may be null), out[N, OC] = gelu(pre). A backend with a GELU
  // epilogue on its GEMMs does both in one (CUDA: cuBLASLt); the others run
  // matmul_forward and gelu_forward, which it equals within rounding.
  virtual void matmul_gelu_forward(T* out, T* pre, const T* inp, const T* w, const T* bias, int N,
                                   int C, int OC) {
    matmul_forward(pre, inp, w, bias, N, C, OC, false);
    gelu_forward(out, pre, static_cast<std::int64_t>(N) * OC);
  }
  // matmul_backward of a layer whose input was gelu(pre): dpre[N, C] =
  // gelu'(pre) * (dout w) (overwritten), dw += dout^T inp, dbias += column
  // sums of dout. In one GEMM with a GELU-gradient epilogue where the
  // backend has one; else matmul_backward, then gelu_backward in place.
  virtual void matmul_backward_gelu(T* dpre, T* dw, T* dbias, const T* dout, const T* inp,
                                    const T* w, const T* pre, int N, int C, int OC) {
    matmul_backward(dpre, dw, dbias, dout, inp, w, N, C, OC);
    gelu_backward(dpre, pre, dpre, static_cast<std::int64_t>(N) * C);
  }

  // LayerNorm over the last dimension; saves mean and rstd (N each) for backward.
  virtual void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* w, const T* b,
                                 int N, int C, float eps) = 0;
  // dinp += ..., dw += ..., db += ...
  virtual void layernorm_backward(T* dinp, T* dw, T* db, const T* dout, const T* inp, const T* w,
                                  const T* mean, const T* rstd, int N, int C) = 0;

  // RMSNorm: out = inp / rms(inp) * w; saves rstd (N).
  virtual void rmsnorm_forward(T* out, T* rstd, const T* inp, const T* w, int N, int C,
                               float eps) = 0;
  // dinp += ..., dw += ...
  virtual void rmsnorm_backward(T* dinp, T* dw, const T* dout, const T* inp, const T* w,
                                const T* rstd, int N, int C) = 0;

  // GELU, tanh approximation (GPT-2). count elements; dinp may alias dout.
  virtual void gelu_forward(T* out, const T* inp, std::int64_t count) = 0;
  virtual void gelu_backward(T* dinp, const T* inp, const T* dout, std::int64_t count) = 0;

  // SwiGLU: inp rows are [gate (F) | up (F)]; out[N, F] = silu(gate) * up.
  virtual void swiglu_forward(T* out, const T* inp, int N, int F) = 0;
  // dinp[N, 2F] overwritten.
  virtual void swiglu_backward(T* dinp, const T* inp, const T* dout, int N, int F) = 0;

  // Rotary embeddings, in place, on the q and k heads of a packed qkv buffer
  // (rows of [q: NH*HD | k: NKV*HD | v: NKV*HD], B*seq rows). Position of
  // row n is n % seq. Pairs (i, i + HD/2) are rotated (the "rotate half"
  // convention of Hugging Face Llama).
  virtual void rope_forward(T* qkv, int B, int seq, int NH, int NKV, int HD, float theta) = 0;
  // Backward of the rotation (rotation by the opposite angle), in place on dqkv.
  virtual void rope_backward(T* dqkv, int B, int seq, int NH, int NKV, int HD, float theta) = 0;

  // Causal self-attention with grouped-query heads (NH query heads share
  // NKV key/value heads) over a packed qkv buffer. out is [B*seq, NH*HD].
  // Saves only the log-sum-exp of each score row (lse: B*NH*seq); scores are
  // recomputed tile by tile in backward, so memory does not grow with seq^2.
  virtual void attention_forward(T* out, T* lse, const T* qkv, int B, int seq, int NH, int NKV,
                                 int HD) = 0;
  // dqkv overwritten (all of q, k and v parts).
  virtual void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const T* lse,
                                  int B, int seq, int NH, int NKV, int HD) = 0;

  // matmul_forward's contract, with each output row computed by the same
  // arithmetic whatever N is: a row's result does not depend on the rows
  // beside it. Inference uses it so that a request gives the same logits,
  // bit for bit, alone or batched with others.
  virtual void matmul_forward_rowwise(T* out, const T* inp, const T* w, const T* bias, int N, int C,
                                      int OC, bool accumulate) = 0;

  // Inference with a key/value cache, one sequence's rows at a time.
  // rope_forward_at rotates the q and k heads of N packed qkv rows whose
  // positions are pos0 .. pos0+N-1 (rope_forward's math, at an offset).
  virtual void rope_forward_at(T* qkv, int N, int pos0, int NH, int NKV, int HD, float theta) = 0;
  // Whether attention_kv_forward may run for several sequences at once,
  // from the threads of an OpenMP loop (each on its own blocks and rows):
  // true for the CPU backend; a wrapper that records what it is called with
  // says no.
  virtual bool concurrent_attention() const { return false; }
  // The cache is paged: kpool and vpool are [blocks * block_size, NKV*HD]
  // (one row per position) and position p of the sequence is row
  // blocks[p / block_size] * block_size + p % block_size. Stores the k and v
  // heads of N packed qkv rows (positions pos0 .. pos0+N-1) there, then
  // writes to out [N, NH*HD] the causal attention of each query row over
  // positions 0 .. pos0+i (attention_forward's math; no lse).
  virtual void attention_kv_forward(T* out, T* kpool, T* vpool, const std::int32_t* blocks,
                                    int block_size, const T* qkv, int N, int pos0, int NH, int NKV,
                                    int HD) = 0;

  // Softmax cross-entropy over the first V of Vp logits per row (columns
  // V..Vp-1 are vocabulary padding and are masked out). Writes losses[N]
  // and, when dloss != 0, overwrites logits with d(dloss * sum of losses)/dlogits
  // (zero in padded columns). Targets must be in [0, V).
  virtual void crossentropy_forward_backward(T* logits, T* losses, const std::int32_t* targets,
                                             int N, int V, int Vp, T dloss) = 0;

  // Vocabulary-parallel forms for tensor parallelism (Megatron-LM): this
  // rank holds rows [v0, v0 + rows) of the padded vocabulary.
  // embedding_forward over wte's part: tokens outside it read zeros (wpe is
  // added when not null); the group's sum is the whole embedding.
  virtual void embedding_forward_part(T* out, const std::int32_t* tokens, const T* wte, int v0,
                                      int rows, const T* wpe, int N, int seq, int C) = 0;
  // dwte[tokens[n] - v0] += dout[n] for tokens in the part; dwpe as in
  // embedding_backward.
  virtual void embedding_backward_part(T* dwte, T* dwpe, const T* dout, const std::int32_t* tokens,
                                       int v0, int rows, int N, int seq, int C) = 0;
  // Cross-entropy over logits [N, Vp] of vocabulary columns [v0, v0 + Vp),
  // of which the first V are real (V may be 0), in three steps with
  // reductions over the group between them; no rank holds whole rows:
  //   part_max:    row_max[n] = max of the real logits (-inf for none);
  //                then the group's maximum;
  //   part_sums:   sums[2n] = sum of exp(x - row_max[n]) over the real
  //                logits, sums[2n+1] = the target's logit if in this part,
  //                else 0 (keep_exp: x = exp(x - row_max) in place); then
  //                the group's sums;
  //   part_finish: losses[n] = log(sums[2n]) + row_max[n] - sums[2n+1]; when
  //                dloss != 0 (after keep_exp), the logits become
  //                crossentropy_forward_backward's gradient for this part.
  virtual void crossentropy_part_max(T* row_max, const T* logits, int N, int V, int Vp) = 0;
  virtual void crossentropy_part_sums(T* logits, T* sums, const T* row_max,
                                      const std::int32_t* targets, int v0, int N, int V, int Vp,
                                      bool keep_exp) = 0;
  virtual void crossentropy_part_finish(T* logits, T* losses, const T* row_max, const T* sums,
                                        const std::int32_t* targets, int v0, int N, int V, int Vp,
                                        T dloss) = 0;

  virtual void copy(T* out, const T* in, std::int64_t count) = 0;
  virtual void fill(T* out, T value, std::int64_t count) = 0;

  // The optimizer's arithmetic, defined once for every backend so that CPU and
  // GPU runs update parameters alike (optim/adamw.h keeps the moments, the
  // step count and the per-tensor decay rule, and calls these). Over count
  // elements, with g = grads * grad_scale:
  //   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g^2
  //   params -= lr * (m * c1 / (sqrt(v * c2) + eps) + weight_decay * params)
  // where c1 = 1 / (1 - beta1^t) and c2 = 1 / (1 - beta2^t) at step t.
  struct AdamWUpdate {
    float lr, beta1, beta2, eps, weight_decay, grad_scale, c1, c2;
  };
  virtual void adamw_update(T* params, const T* grads, T* m, T* v, std::int64_t count,
                            const AdamWUpdate& u) = 0;
  // Sum of x^2 in double, over fixed blocks of 2^16 elements added in block
  // order: the same bits for any thread count (gradient norms, clipping).
  virtual double sum_of_squares(const T* x, std::int64_t count) = 0;
  // x *= factor, in place.
  virtual void scale(T* x, T factor, std::int64_t count) = 0;
  // out += in, elementwise (sequence parallelism's residual adds).
  virtual void add(T* out, const T* in, std::int64_t count) = 0;
};

// The CPU backend: OpenBLAS GEMMs and OpenMP loops (src/kernels/cpu/).
template <typename T>
std::unique_ptr<Backend<T>> make_cpu_backend();

}  // namespace borealis
