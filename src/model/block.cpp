#include "model/block.h"

#include <stdexcept>

namespace borealis {

namespace {

// Whether the N rows are one plain group (as in training: no row-wise
// matmuls), which the backend's fused GEMMs take whole.
bool one_group(std::span<const RowGroup> groups, int N) {
  return groups.size() == 1 && !groups[0].rowwise && groups[0].rows == N;
}

}  // namespace

BlockDims::BlockDims(const ModelConfig& config, TensorSplit split)
    : C(config.d_model),
      S(config.qkv_width() / split.size),
      F(config.d_ff / split.size),
      FW(config.fc_width() / split.size),
      NH(config.n_head / split.size),
      NKV(config.n_kv_head / split.size),
      HD(config.head_dim()),
      A(config.n_head / split.size * config.head_dim()),
      gpt2(config.family == ModelFamily::kGpt2) {}

template <typename T>
Block<T>::Block(const ModelConfig& config, const ParamLayout& layout, Backend<T>& backend,
                const TensorParallelGroup<T>* group)
    : config_(config),
      layout_(layout),
      backend_(backend),
      dims_(config, layout.split()),
      group_(group != nullptr && group->active() ? group : nullptr) {
  if (layout.split().size > 1 && group_ == nullptr) {
    throw std::invalid_argument("Block: a tensor-parallel layout needs its group");
  }
}

template <typename T>
void Block<T>::project_residual(T* out, const T* x, const T* inp, const T* params, std::int64_t w,
                                std::int64_t b, int C_in, int N,
                                std::span<const RowGroup> groups) const {
  const std::int64_t NC = static_cast<std::int64_t>(N) * dims_.C;
  if (group_ != nullptr && group_->split.rank != 0) {
    // The residual and the bias are added once, on tensor rank 0.
    matmul(out, inp, at(params, w), nullptr, C_in, dims_.C, false, groups);
  } else if (one_group(groups, N)) {
    // Residual adds are fused into the output projections: out = x + y * W^T
    // (+ b), in one GEMM where the backend can.
    backend_.matmul_residual_forward(out, x, inp, at(params, w), at(params, b), N, C_in, dims_.C);
  } else {
    if (out != x) backend_.copy(out, x, NC);
    matmul(out, inp, at(params, w), at(params, b), C_in, dims_.C, true, groups);
  }
  if (group_ != nullptr) group_->sum(out, NC);
}

template <typename T>
void Block<T>::sum_over_group(T* data, std::int64_t count) const {
  if (group_ != nullptr) group_->sum(data, count);
}

template <typename T>
void Block<T>::norm_forward(T* out, T* mean, T* rstd, const T* inp, const T* params, std::int64_t w,
                            std::int64_t b, int N) const {
  if (dims_.gpt2) {
    backend_.layernorm_forward(out, mean, rstd, inp, at(params, w), at(params, b), N, dims_.C,
                               config_.norm_eps);
  } else {
    backend_.rmsnorm_forward(out, rstd, inp, at(params, w), N, dims_.C, config_.norm_eps);
  }
}

template <typename T>
void Block<T>::norm_backward(T* dinp, const T* dout, const T* inp, const T* mean, const T* rstd,
                             const T* params, T* grads, std::int64_t w, std::int64_t b, int N,
                             std::uint16_t* dinp16) const {
  norm_backward_into(dinp, dout, inp, mean, rstd, at(params, w), at(grads, w), at(grads, b), N,
                     dinp16);
}

template <typename T>
void Block<T>::norm_backward_into(T* dinp, const T* dout, const T* inp, const T* mean,
                                  const T* rstd, const T* weight, T* dw, T* db, int N,
                                  std::uint16_t* dinp16) const {
  if (dinp16 != nullptr && dims_.gpt2) {
    backend_.bf16_inputs()->layernorm_backward(dinp, dinp16, dw, db, dout, inp, weight, mean, rstd,
                                               N, dims_.C);
  } else if (dinp16 != nullptr) {
    backend_.bf16_inputs()->rmsnorm_backward(dinp, dinp16, dw, dout, inp, weight, rstd, N, dims_.C);
  } else if (dims_.gpt2) {
    backend_.layernorm_backward(dinp, dw, db, dout, inp, weight, mean, rstd, N, dims_.C);
  } else {
    backend_.rmsnorm_backward(dinp, dw, dout, inp, weight, rstd, N, dims_.C);
  }
}

template <typename T>
void Block<T>::mlp_activation(T* out, const T* fch, int N) const {
  if (dims_.gpt2) {
    backend_.gelu_forward(out, fch, static_cast<std::int64_t>(N) * dims_.F);
  } else {
    backend_.swiglu_forward(out, fch, N, dims_.F);
  }
}

template <typename T>
Bf16Inputs<T>* Block<T>::bf16_inputs(const BlockBuffers<T>& buf, int N,
                                     std::span<const RowGroup> groups) const {
  if (buf.ln1_bf16 == nullptr) return nullptr;
  Bf16Inputs<T>* h = backend_.bf16_inputs();
  if (h == nullptr || group_ != nullptr || !one_group(groups, N)) {
    throw std::invalid_argument(
        "Block: bf16 matmul inputs need a backend that takes them, one row group and no tensor "
        "parallelism");
  }
  if (buf.ln2_bf16 == nullptr || buf.fch_bf16 == nullptr || buf.mlp_bf16 == nullptr ||
      buf.atty_bf16 == nullptr) {
    throw std::invalid_argument("Block: bf16 matmul inputs need all of the block's bf16 buffers");
  }
  return h;
}

template <typename T>
void Block<T>::norm_forward_to(T* out, std::uint16_t* out_bf16, T* mean, T* rstd, const T* inp,
                               const T* params, std::int64_t w, std::int64_t b, int N) const {
  if (out_bf16 == nullptr) {
    norm_forward(out, mean, rstd, inp, params, w, b, N);
  } else if (dims_.gpt2) {
    backend_.bf16_inputs()->layernorm_forward(out_bf16, mean, rstd, inp, at(params, w),
                                              at(params, b), N, dims_.C, config_.norm_eps);
  } else {
    backend_.bf16_inputs()->rmsnorm_forward(out_bf16, rstd, inp, at(params, w), N, dims_.C,
                                            config_.norm_eps);
  }
}

template <typename T>
void Block<T>::mlp_activation_to(T* out, const BlockBuffers<T>& buf, int N) const {
  if (buf.mlp_bf16 == nullptr) {
    mlp_activation(out, buf.fch, N);
  } else if (dims_.gpt2) {
    backend_.bf16_inputs()->gelu_forward(buf.mlp_bf16, buf.fch_bf16,
                                         static_cast<std::int64_t>(N) * dims_.F);
  } else {
    backend_.bf16_inputs()->swiglu_forward(buf.mlp_bf16, buf.fch_bf16, N, dims_.F);
  }
}

template <typename T>
void Block<T>::matmul_forward(T* out, Input inp, const T* w, const T* bias, int N, int C, int OC,
                              bool accumulate) const {
  if (inp.bf16 != nullptr) {
    backend_.bf16_inputs()->matmul_forward(out, inp.bf16, w, bias, N, C, OC, accumulate);
  } else {
    backend_.matmul_forward(out, inp.f32, w, bias, N, C, OC, accumulate);
  }
}

template <typename T>
void Block<T>::matmul_backward(T* dinp, T* dw, T* dbias, Input dout, Input inp, const T* w, int N,
                               int C, int OC) const {
  if (inp.bf16 != nullptr) {
    backend_.bf16_inputs()->matmul_backward(dinp, dw, dbias, dout.f32, dout.bf16, inp.bf16, w, N, C,
                                            OC);
  } else {
    backend_.matmul_backward(dinp, dw, dbias, dout.f32, inp.f32, w, N, C, OC);
  }
}

template <typename T>
void Block<T>::matmul(T* out, const T* inp, const T* w, const T* bias, int C, int OC,
                      bool accumulate, std::span<const RowGroup> groups) const {
  for (const RowGroup& g : groups) {
    T* o = out + static_cast<std::size_t>(g.row0) * OC;
    const T* i = inp + static_cast<std::size_t>(g.row0) * C;
    if (g.rowwise) {
      backend_.matmul_forward_rowwise(o, i, w, bias, g.rows, C, OC, accumulate);
    } else {
      backend_.matmul_forward(o, i, w, bias, g.rows, C, OC, accumulate);
    }
  }
}

template <typename T>
void Block<T>::forward(int layer, const T* params, const T* x, const BlockBuffers<T>& buf, int N,
                       const Attend<T>& attend, std::span<const RowGroup> groups) const {
  const LayerOffsets& w = layout_.layer(layer);
  const BlockDims& d = dims_;
  const auto mm = [&](T* out, const T* inp, std::int64_t wo, std::int64_t bo, int C, int OC,
                      bool accumulate) {
    matmul(out, inp, at(params, wo), at(params, bo), C, OC, accumulate, groups);
  };
  if (group_ != nullptr && group_->sequence()) {
    forward_sequence(layer, params, x, buf, N, attend, groups);
    return;
  }
  if (group_ != nullptr && (buf.res2 == x || buf.res3 == buf.res2)) {
    throw std::invalid_argument("Block: tensor parallelism needs separate residual buffers");
  }
  Bf16Inputs<T>* h = bf16_inputs(buf, N, groups);
  norm_forward_to(buf.ln1, buf.ln1_bf16, buf.ln1_mean, buf.ln1_rstd, x, params, w.ln1_w, w.ln1_b,
                  N);
  if (h != nullptr && buf.qkv == nullptr) {
    h->matmul_forward(buf.qkv_bf16, buf.ln1_bf16, at(params, w.qkv_w), at(params, w.qkv_b), N, d.C,
                      d.S);
  } else if (h != nullptr) {
    matmul_forward(buf.qkv, {nullptr, buf.ln1_bf16}, at(params, w.qkv_w), at(params, w.qkv_b), N,
                   d.C, d.S, false);
  } else {
    mm(buf.qkv, buf.ln1, w.qkv_w, w.qkv_b, d.C, d.S, false);
  }
  attend(buf.qkv, buf.atty);
  if (h != nullptr) {
    h->matmul_residual_forward(buf.res2, x, buf.atty_bf16, at(params, w.proj_w),
                               at(params, w.proj_b), N, d.A, d.C);
  } else {
    project_residual(buf.res2, x, buf.atty, params, w.proj_w, w.proj_b, d.A, N, groups);
  }
  norm_forward_to(buf.ln2, buf.ln2_bf16, buf.ln2_mean, buf.ln2_rstd, buf.res2, params, w.ln2_w,
                  w.ln2_b, N);
  if (h != nullptr) {
    // The MLP from and to bf16: its GEMMs' inputs, written so by the norm and
    // the activation, and its pre-activation.
    h->matmul_forward(buf.fch_bf16, buf.ln2_bf16, at(params, w.fc_w), at(params, w.fc_b), N, d.C,
                      d.FW);
    mlp_activation_to(nullptr, buf, N);
    h->matmul_residual_forward(buf.res3, buf.res2, buf.mlp_bf16, at(params, w.fcproj_w),
                               at(params, w.fcproj_b), N, d.F, d.C);
    return;
  }
  if (d.gpt2 && one_group(groups, N)) {
    // One GEMM with a GELU epilogue where the backend has one.
    backend_.matmul_gelu_forward(buf.mlp, buf.fch, buf.ln2, at(params, w.fc_w), at(params, w.fc_b),
                                 N, d.C, d.FW);
  } else {
    mm(buf.fch, buf.ln2, w.fc_w, w.fc_b, d.C, d.FW, false);
    mlp_activation(buf.mlp, buf.fch, N);
  }
  project_residual(buf.res3, buf.res2, buf.mlp, params, w.fcproj_w, w.fcproj_b, d.F, N, groups);
}

template <typename T>
void Block<T>::backward(int layer, const T* params, T* grads, const T* x,
                        const BlockBuffers<T>& buf, const T* lse, const Grads& g, int B,
                        int seq) const {
  if (group_ != nullptr && group_->sequence()) {
    backward_sequence(layer, params, grads, x, buf, lse, g, B, seq);
    return;
  }
  const LayerOffsets& w = layout_.layer(layer);
  const BlockDims& d = dims_;
  const int N = B * seq;
  const RowGroup all{0, N, false};
  Bf16Inputs<T>* h = bf16_inputs(buf, N, std::span(&all, 1));
  const Input mlp{buf.mlp, buf.mlp_bf16}, ln1{buf.ln1, buf.ln1_bf16}, ln2{buf.ln2, buf.ln2_bf16},
      atty{buf.atty, buf.atty_bf16};
  if ((h != nullptr) != (g.dfch_bf16 != nullptr) || (h != nullptr) != (g.dres_bf16 != nullptr) ||
      (buf.qkv_bf16 != nullptr) != (g.datty_bf16 != nullptr) ||
      (g.dqkv_bf16 != nullptr && (h == nullptr || (d.gpt2 && buf.qkv_bf16 == nullptr))) ||
      (buf.qkv_bf16 != nullptr && g.dqkv_bf16 == nullptr)) {
    throw std::invalid_argument(
        "Block: dfch and dres in bf16 go with bf16 matmul inputs, datty in bf16 with qkv in bf16, "
        "and dqkv in bf16 with qkv in bf16 or (Llama) bf16 inputs");
  }
  // MLP: recompute its activation instead of keeping one per layer.
  mlp_activation_to(buf.mlp, buf, N);
  if (d.gpt2 && h != nullptr) {
    h->matmul_backward_gelu(g.dfch_bf16, at(grads, w.fcproj_w), at(grads, w.fcproj_b), g.dres,
                            g.dres_bf16, buf.mlp_bf16, at(params, w.fcproj_w), buf.fch_bf16, N, d.F,
                            d.C);
  } else if (d.gpt2) {
    // The GELU's gradient in the GEMM's epilogue where the backend has one.
    backend_.matmul_backward_gelu(g.dfch, at(grads, w.fcproj_w), at(grads, w.fcproj_b), g.dres,
                                  buf.mlp, at(params, w.fcproj_w), buf.fch, N, d.F, d.C);
  } else {
    matmul_backward(g.dmlp, at(grads, w.fcproj_w), at(grads, w.fcproj_b), {g.dres, g.dres_bf16},
                    mlp, at(params, w.fcproj_w), N, d.F, d.C);
    if (h != nullptr) {
      h->swiglu_backward(g.dfch_bf16, buf.fch_bf16, g.dmlp, N, d.F);
    } else {
      backend_.swiglu_backward(g.dfch, buf.fch, g.dmlp, N, d.F);
    }
  }
  if (h != nullptr) {
    h->matmul_backward(g.dln, at(grads, w.fc_w), at(grads, w.fc_b), nullptr, g.dfch_bf16, ln2.bf16,
                       at(params, w.fc_w), N, d.C, d.FW);
  } else {
    matmul_backward(g.dln, at(grads, w.fc_w), at(grads, w.fc_b), {g.dfch}, ln2, at(params, w.fc_w),
                    N, d.C, d.FW);
  }
  sum_over_group(g.dln, static_cast<std::int64_t>(N) * d.C);
  norm_backward(g.dres, g.dln, buf.res2, buf.ln2_mean, buf.ln2_rstd, params, grads, w.ln2_w,
                w.ln2_b, N, g.dres_bf16);
  // Attention: with qkv in bf16, its output and that output's gradient in
  // bf16 too.
  if (buf.qkv_bf16 != nullptr) {
    h->matmul_backward(g.datty_bf16, at(grads, w.proj_w), at(grads, w.proj_b), g.dres, g.dres_bf16,
                       buf.atty_bf16, at(params, w.proj_w), N, d.A, d.C);
  } else {
    matmul_backward(g.datty, at(grads, w.proj_w), at(grads, w.proj_b), {g.dres, g.dres_bf16}, atty,
                    at(params, w.proj_w), N, d.A, d.C);
  }
  // With qkv in bf16, the qkv gradient straight into bf16 (Llama's with
  // RoPE's backward).
  if (buf.qkv_bf16 != nullptr && d.gpt2) {
    h->attention_backward(g.dqkv_bf16, g.datty_bf16, buf.qkv_bf16, buf.atty_bf16, lse, B, seq, d.NH,
                          d.NKV, d.HD);
  } else if (buf.qkv_bf16 != nullptr) {
    h->attention_rope_backward(g.dqkv_bf16, g.datty_bf16, buf.qkv_bf16, buf.atty_bf16, lse, B, seq,
                               d.NH, d.NKV, d.HD, config_.rope_theta);
  } else {
    backend_.attention_backward(g.dqkv, g.datty, buf.qkv, buf.atty, lse, B, seq, d.NH, d.NKV, d.HD);
  }
  if (g.dqkv_bf16 != nullptr) {
    if (!d.gpt2 && buf.qkv_bf16 == nullptr) {
      h->rope_backward(g.dqkv_bf16, g.dqkv, B, seq, d.NH, d.NKV, d.HD, config_.rope_theta);
    }
    h->matmul_backward(g.dln, at(grads, w.qkv_w), at(grads, w.qkv_b), nullptr, g.dqkv_bf16,
                       ln1.bf16, at(params, w.qkv_w), N, d.C, d.S);
  } else {
    if (!d.gpt2) backend_.rope_backward(g.dqkv, B, seq, d.NH, d.NKV, d.HD, config_.rope_theta);
    matmul_backward(g.dln, at(grads, w.qkv_w), at(grads, w.qkv_b), {g.dqkv}, ln1,
                    at(params, w.qkv_w), N, d.C, d.S);
  }
  sum_over_group(g.dln, static_cast<std::int64_t>(N) * d.C);
  norm_backward(g.dres, g.dln, x, buf.ln1_mean, buf.ln1_rstd, params, grads, w.ln1_w, w.ln1_b, N,
                g.dres_bf16);
}

template <typename T>
void Block<T>::norm_backward_rows(T* dinp, const T* dout, const T* inp, const T* mean,
                                  const T* rstd, const T* params, T* grads, std::int64_t w,
                                  std::int64_t b, int n, T* dnorm) const {
  const std::int64_t C = dims_.C;
  const std::int64_t count = b >= 0 ? 2 * C : C;
  backend_.fill(dnorm, T(0), count);
  // dnorm holds [w | b].
  norm_backward_into(dinp, dout, inp, mean, rstd, at(params, w), dnorm,
                     b >= 0 ? dnorm + C : nullptr, n);
  group_->sum(dnorm, count);
  backend_.add(grads + w, dnorm, C);
  if (b >= 0) backend_.add(grads + b, dnorm + C, C);
}

template <typename T>
void Block<T>::forward_sequence(int layer, const T* params, const T* x, const BlockBuffers<T>& buf,
                                int N, const Attend<T>& attend,
                                std::span<const RowGroup> groups) const {
  const LayerOffsets& w = layout_.layer(layer);
  const BlockDims& d = dims_;
  const int n = N / group_->split.size;
  const std::int64_t nC = static_cast<std::int64_t>(n) * d.C;
  const bool first = group_->split.rank == 0;
  // Attention: this rank's rows normed, gathered, projected to its heads.
  norm_forward(buf.ln1, buf.ln1_mean, buf.ln1_rstd, x, params, w.ln1_w, w.ln1_b, n);
  group_->all_gather(buf.ln1, buf.gathered, nC);
  matmul(buf.qkv, buf.gathered, at(params, w.qkv_w), at(params, w.qkv_b), d.C, d.S, false, groups);
  attend(buf.qkv, buf.atty);
  // Row-parallel output: every rank's product (rank 0's with the bias),
  // reduce-scattered into this rank's rows, plus the residual.
  matmul(buf.partial, buf.atty, at(params, w.proj_w), first ? at(params, w.proj_b) : nullptr, d.A,
         d.C, false, groups);
  group_->reduce_scatter(buf.partial, buf.res2, nC);
  backend_.add(buf.res2, x, nC);
  // MLP, the same way.
  norm_forward(buf.ln2, buf.ln2_mean, buf.ln2_rstd, buf.res2, params, w.ln2_w, w.ln2_b, n);
  group_->all_gather(buf.ln2, buf.gathered, nC);
  matmul(buf.fch, buf.gathered, at(params, w.fc_w), at(params, w.fc_b), d.C, d.FW, false, groups);
  mlp_activation(buf.mlp, buf.fch, N);
  matmul(buf.partial, buf.mlp, at(params, w.fcproj_w), first ? at(params, w.fcproj_b) : nullptr,
         d.F, d.C, false, groups);
  group_->reduce_scatter(buf.partial, buf.res3, nC);
  backend_.add(buf.res3, buf.res2, nC);
}

template <typename T>
void Block<T>::backward_sequence(int layer, const T* params, T* grads, const T* x,
                                 const BlockBuffers<T>& buf, const T* lse, const Grads& g, int B,
                                 int seq) const {
  const LayerOffsets& w = layout_.layer(layer);
  const BlockDims& d = dims_;
  const int N = B * seq;
  const int n = N / group_->split.size;
  const std::int64_t nC = static_cast<std::int64_t>(n) * d.C;
  // MLP: the output gradient of all rows, through this rank's units; the
  // norm's input (this rank's rows) is gathered again rather than kept.
  mlp_activation(buf.mlp, buf.fch, N);
  group_->all_gather(g.dres, g.dgathered, nC);
  backend_.matmul_backward(g.dmlp, at(grads, w.fcproj_w), at(grads, w.fcproj_b), g.dgathered,
                           buf.mlp, at(params, w.fcproj_w), N, d.F, d.C);
  if (d.gpt2) {
    backend_.gelu_backward(g.dfch, buf.fch, g.dmlp, static_cast<std::int64_t>(N) * d.F);
  } else {
    backend_.swiglu_backward(g.dfch, buf.fch, g.dmlp, N, d.F);
  }
  group_->all_gather(buf.ln2, buf.gathered, nC);
  backend_.matmul_backward(g.dln, at(grads, w.fc_w), at(grads, w.fc_b), g.dfch, buf.gathered,
                           at(params, w.fc_w), N, d.C, d.FW);
  group_->reduce_scatter(g.dln, g.dlocal, nC);
  norm_backward_rows(g.dres, g.dlocal, buf.res2, buf.ln2_mean, buf.ln2_rstd, params, grads, w.ln2_w,
                     w.ln2_b, n, g.dnorm);
  // Attention.
  group_->all_gather(g.dres, g.dgathered, nC);
  backend_.matmul_backward(g.datty, at(grads, w.proj_w), at(grads, w.proj_b), g.dgathered, buf.atty,
                           at(params, w.proj_w), N, d.A, d.C);
  backend_.attention_backward(g.dqkv, g.datty, buf.qkv, buf.atty, lse, B, seq, d.NH, d.NKV, d.HD);
  if (!d.gpt2) backend_.rope_backward(g.dqkv, B, seq, d.NH, d.NKV, d.HD, config_.rope_theta);
  group_->all_gather(buf.ln1, buf.gathered, nC);
  backend_.matmul_backward(g.dln, at(grads, w.qkv_w), at(grads, w.qkv_b), g.dqkv, buf.gathered,
                           at(params, w.qkv_w), N, d.C, d.S);
  group_->reduce_scatter(g.dln, g.dlocal, nC);
  norm_backward_rows(g.dres, g.dlocal, x, buf.ln1_mean, buf.ln1_rstd, params, grads, w.ln1_w,
                     w.ln1_b, n, g.dnorm);
}

template class Block<float>;
template class Block<double>;

}  // namespace borealis
