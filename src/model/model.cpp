#include "model/model.h"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

#include "core/error.h"

namespace borealis {

namespace {
// Logits chunk of the loss head: about 32M elements (128 MiB in float). Each
// chunk reads and writes the whole lm-head gradient (V x C) once, so chunks
// must hold hundreds of rows; yet the buffer stays far below B*T*V.
constexpr std::int64_t kLogitsChunkElems = std::int64_t{1} << 25;
}  // namespace

template <typename T>
Model<T>::Model(const ModelConfig& config, Backend<T>& backend, const TensorParallelGroup<T>* group)
    : config_(config),
      backend_(backend),
      group_(group != nullptr && group->active() ? group : nullptr),
      sequence_(group_ != nullptr && group_->sequence()),
      vocab_part_(config.padded_vocab / (group_ ? group_->split.size : 1)),
      vocab_first_(group_ ? group_->split.rank * vocab_part_ : 0),
      layout_((config.validate(), config), group_ ? group_->split : TensorSplit{}),
      block_(config, layout_, backend, group_) {
  params_.assign(static_cast<std::size_t>(layout_.total()), T(0));
  grads_.assign(static_cast<std::size_t>(layout_.total()), T(0));
}

template <typename T>
std::span<T> Model<T>::param(std::string_view name) {
  const ParamView& v = layout_.find(name);
  return {params_.data() + v.offset, static_cast<std::size_t>(v.size)};
}

template <typename T>
std::span<T> Model<T>::grad(std::string_view name) {
  const ParamView& v = layout_.find(name);
  return {grads_.data() + v.offset, static_cast<std::size_t>(v.size)};
}

template <typename T>
void Model<T>::init(std::uint64_t seed) {
  init_params(config_, layout_, params_.data(), seed);
}

template <typename T>
void Model<T>::zero_grad() {
  backend_.fill(grads_.data(), T(0), static_cast<std::int64_t>(grads_.size()));
}

template <typename T>
void Model<T>::reserve(int B, int seq) {
  if (B <= 0) throw Error(fmt::format("batch size must be positive, got {}", B), "batch");
  if (seq <= 0 || seq > config_.max_seq) {
    throw Error(fmt::format("sequence length {} is outside 1..{} (the model's max_seq)", seq,
                            config_.max_seq),
                "sequence");
  }
  if (B <= cap_B_ && seq <= cap_T_) return;
  B = std::max(B, cap_B_);
  seq = std::max(seq, cap_T_);
  const std::int64_t N = static_cast<std::int64_t>(B) * seq;
  const BlockDims& d = block_.dims();
  const std::int64_t C = d.C;
  const std::int64_t S = d.S;
  const std::int64_t F = d.F;
  const std::int64_t FW = d.FW;
  // Rows of the residual stream and the norms this rank holds: all, or its
  // share under sequence parallelism.
  const std::int64_t n = sequence_ ? (N + group_->split.size - 1) / group_->split.size : N;
  std::int64_t top = 0;
  auto take = [&top](std::int64_t elems) {
    const std::int64_t at = top;
    top += (elems + 15) / 16 * 16;  // 64-byte alignment of every buffer (in float)
    return at;
  };
  encoded_ = take(n * C);
  layer_acts_.clear();
  for (int l = 0; l < config_.n_layer; ++l) {
    LayerActs a{};
    a.ln1 = take(n * C);
    a.ln1_mean = take(n);
    a.ln1_rstd = take(n);
    a.qkv = take(N * S);
    a.atty = take(N * d.A);
    a.lse = take(static_cast<std::int64_t>(B) * d.NH * seq);
    a.res2 = take(n * C);
    a.ln2 = take(n * C);
    a.ln2_mean = take(n);
    a.ln2_rstd = take(n);
    a.fch = take(N * FW);
    a.res3 = take(n * C);
    layer_acts_.push_back(a);
  }
  lnf_ = take(n * C);
  lnf_mean_ = take(n);
  lnf_rstd_ = take(n);
  losses_ = take(N);
  if (sequence_) {
    // Gathered norm outputs (the final norm's too, for the loss head), the
    // partial sums of row-parallel projections, and the gradients' forms.
    gathered_ = take(N * C);
    partial_ = take(N * C);
    dgathered_ = take(N * C);
    dlocal_ = take(n * C);
    dnorm_ = take(2 * C);
  }
  if (chunk_rows_request_ > 0) {
    chunk_rows_ = std::min<std::int64_t>(chunk_rows_request_, N);
  } else {
    // Equal chunks (rounded up to 16 rows, the GEMM kernels' unroll): a
    // small remainder chunk runs its GEMMs far below the sgemm peak.
    const std::int64_t most = std::clamp<std::int64_t>(kLogitsChunkElems / vocab_part_, 16, N);
    const std::int64_t chunks = (N + most - 1) / most;
    chunk_rows_ = std::min<std::int64_t>(N, ((N + chunks - 1) / chunks + 15) / 16 * 16);
  }
  logits_ = take(chunk_rows_ * vocab_part_);
  row_max_ = take(chunk_rows_);
  row_sums_ = take(2 * chunk_rows_);
  // Scratch shared by all layers: the MLP activation (recomputed in backward
  // rather than stored per layer) and the gradients of one block.
  mlp_act_ = take(N * F);
  dlnf_ = take(N * C);
  dres_ = take(n * C);
  dln_ = take(N * C);
  datty_ = take(N * d.A);
  dqkv_ = take(N * S);
  dmlp_act_ = take(N * F);
  dfch_ = take(N * FW);
  arena_.assign(static_cast<std::size_t>(top), T(0));
  tokens_.assign(static_cast<std::size_t>(N), 0);
  cap_B_ = B;
  cap_T_ = seq;
  have_grad_pass_ = false;
}

template <typename T>
void Model<T>::set_loss_chunk_rows(int rows) {
  if (rows <= 0) throw Error("loss chunk rows must be positive", "loss head");
  chunk_rows_request_ = rows;
  cap_B_ = cap_T_ = 0;  // re-plan the arena on the next reserve()
}

template <typename T>
T* Model<T>::res_in(int l) {
  return act(l == 0 ? encoded_ : layer_acts_[static_cast<std::size_t>(l - 1)].res3);
}

template <typename T>
BlockBuffers<T> Model<T>::buffers(int l) {
  const LayerActs& a = layer_acts_[static_cast<std::size_t>(l)];
  BlockBuffers<T> b{act(a.ln1),      act(a.ln1_mean), act(a.ln1_rstd), act(a.qkv),
                    act(a.atty),     act(a.res2),     act(a.ln2),      act(a.ln2_mean),
                    act(a.ln2_rstd), act(a.fch),      act(mlp_act_),   act(a.res3)};
  if (sequence_) {
    b.gathered = act(gathered_);
    b.partial = act(partial_);
  }
  return b;
}

template <typename T>
void Model<T>::validate_tokens(const std::int32_t* ids, const char* what) const {
  const int N = B_ * T_;
  for (int i = 0; i < N; ++i) {
    if (ids[i] < 0 || ids[i] >= config_.vocab_size) {
      throw Error(fmt::format("token id {} at position {} is outside the vocabulary [0, {})",
                              ids[i], i, config_.vocab_size),
                  what);
    }
  }
}

template <typename T>
T Model<T>::forward(const std::int32_t* tokens, const std::int32_t* targets, int B, int seq,
                    bool need_grad, T grad_scale) {
  if (tokens == nullptr || targets == nullptr) {
    throw std::invalid_argument("Model::forward needs tokens and targets");
  }
  if (sequence_ && (static_cast<std::int64_t>(B) * seq) % group_->split.size != 0) {
    throw Error(fmt::format("sequence parallelism needs the batch's {} x {} rows to divide into "
                            "the {} ranks of the tensor group",
                            B, seq, group_->split.size),
                "sequence");
  }
  reserve(B, seq);
  B_ = B;
  T_ = seq;
  validate_tokens(tokens, "tokens");
  validate_tokens(targets, "targets");
  const int N = B * seq;
  const BlockDims& d = block_.dims();
  const int C = d.C;
  std::copy(tokens, tokens + N, tokens_.begin());

  if (group_ == nullptr) {
    backend_.embedding_forward(act(encoded_), tokens, p(layout_.wte()),
                               d.gpt2 ? p(layout_.wpe()) : nullptr, N, seq, C);
  } else {
    // Each rank embeds the tokens of its vocabulary rows (rank 0 adds the
    // positions); the group's sum is the whole embedding (of this rank's
    // rows under sequence parallelism).
    T* out = sequence_ ? act(partial_) : act(encoded_);
    backend_.embedding_forward_part(out, tokens, p(layout_.wte()), vocab_first_, vocab_part_,
                                    d.gpt2 && group_->split.rank == 0 ? p(layout_.wpe()) : nullptr,
                                    N, seq, C);
    if (sequence_) {
      group_->reduce_scatter(out, act(encoded_), local_rows() * C);
    } else {
      group_->sum(out, static_cast<std::int64_t>(N) * C);
    }
  }
  for (int l = 0; l < config_.n_layer; ++l) {
    T* lse = act(layer_acts_[static_cast<std::size_t>(l)].lse);
    const Attend<T> attend = [&](T* qkv, T* atty) {
      if (!d.gpt2) backend_.rope_forward(qkv, B, seq, d.NH, d.NKV, d.HD, config_.rope_theta);
      backend_.attention_forward(atty, lse, qkv, B, seq, d.NH, d.NKV, d.HD);
    };
    const RowGroup all{0, N, false};
    block_.forward(l, params_.data(), res_in(l), buffers(l), N, attend, std::span(&all, 1));
  }
  block_.norm_forward(act(lnf_), act(lnf_mean_), act(lnf_rstd_), res_in(config_.n_layer),
                      params_.data(), layout_.lnf_w(), layout_.lnf_b(), local_rows());
  // The loss head sees every row: gathered under sequence parallelism.
  const T* lnf = act(lnf_);
  if (sequence_) {
    group_->all_gather(act(lnf_), act(gathered_), local_rows() * C);
    lnf = act(gathered_);
  }

  // Loss head in row chunks; with need_grad the chunk's logits turn into
  // their gradient in place and are consumed at once.
  const int Vp = vocab_part_;
  const T dloss = need_grad ? grad_scale / T(N) : T(0);
  for (int r0 = 0; r0 < N; r0 += static_cast<int>(chunk_rows_)) {
    const int rows = std::min(static_cast<int>(chunk_rows_), N - r0);
    const T* x = lnf + static_cast<std::int64_t>(r0) * C;
    backend_.matmul_forward(act(logits_), x, p(layout_.lm_head()), nullptr, rows, C, Vp, false);
    chunk_crossentropy(act(logits_), act(losses_) + r0, targets + r0, rows, dloss);
    if (need_grad) {
      backend_.matmul_backward(act(dlnf_) + static_cast<std::int64_t>(r0) * C, g(layout_.lm_head()),
                               nullptr, act(logits_), x, p(layout_.lm_head()), rows, C, Vp);
    }
  }
  // Each rank's lm-head part contributes to the gradient of every row.
  if (need_grad && sequence_) {
    group_->reduce_scatter(act(dlnf_), act(dlocal_), local_rows() * C);
  } else if (need_grad && group_ != nullptr) {
    group_->sum(act(dlnf_), static_cast<std::int64_t>(N) * C);
  }
  have_grad_pass_ = need_grad;
  double sum = 0;
  for (int i = 0; i < N; ++i) sum += static_cast<double>(act(losses_)[i]);
  return static_cast<T>(sum / N);
}

template <typename T>
void Model<T>::chunk_crossentropy(T* logits, T* losses, const std::int32_t* targets, int rows,
                                  T dloss) {
  if (group_ == nullptr) {
    backend_.crossentropy_forward_backward(logits, losses, targets, rows, config_.vocab_size,
                                           vocab_part_, dloss);
    return;
  }
  // Vocabulary-parallel (Megatron-LM): the row maxima, then the sums of
  // exponentials and the target logits, are reduced over the group; no rank
  // holds a whole row of logits.
  const int real = std::clamp(config_.vocab_size - vocab_first_, 0, vocab_part_);
  backend_.crossentropy_part_max(act(row_max_), logits, rows, real, vocab_part_);
  group_->max(act(row_max_), rows);
  backend_.crossentropy_part_sums(logits, act(row_sums_), act(row_max_), targets, vocab_first_,
                                  rows, real, vocab_part_, dloss != T(0));
  group_->sum(act(row_sums_), 2 * static_cast<std::int64_t>(rows));
  backend_.crossentropy_part_finish(logits, losses, act(row_max_), act(row_sums_), targets,
                                    vocab_first_, rows, real, vocab_part_, dloss);
}

template <typename T>
void Model<T>::backward(const std::function<void(std::int64_t)>& grads_final_from) {
  if (!have_grad_pass_) {
    throw std::logic_error("Model::backward needs a preceding forward with need_grad");
  }
  have_grad_pass_ = false;
  const int B = B_;
  const int seq = T_;
  const int N = B * seq;
  const std::int64_t nC = local_rows() * config_.d_model;

  // dres holds the gradient of the residual stream (of this rank's rows
  // under sequence parallelism), flowing down the blocks.
  backend_.fill(act(dres_), T(0), nC);
  if (sequence_) {
    block_.norm_backward_rows(act(dres_), act(dlocal_), res_in(config_.n_layer), act(lnf_mean_),
                              act(lnf_rstd_), params_.data(), grads_.data(), layout_.lnf_w(),
                              layout_.lnf_b(), static_cast<int>(local_rows()), act(dnorm_));
  } else {
    block_.norm_backward(act(dres_), act(dlnf_), res_in(config_.n_layer), act(lnf_mean_),
                         act(lnf_rstd_), params_.data(), grads_.data(), layout_.lnf_w(),
                         layout_.lnf_b(), N);
  }
  // Everything after the blocks in the layout (final norm, untied lm head,
  // whose gradient the loss head computed) is final now; so is each block
  // once its backward is done. Tied embeddings sit at offset 0.
  if (grads_final_from) grads_final_from(layout_.lnf_w());
  typename Block<T>::Grads d{act(dres_), act(dln_),      act(datty_),
                             act(dqkv_), act(dmlp_act_), act(dfch_)};
  if (sequence_) {
    d.dgathered = act(dgathered_);
    d.dlocal = act(dlocal_);
    d.dnorm = act(dnorm_);
  }
  for (int l = config_.n_layer - 1; l >= 0; --l) {
    block_.backward(l, params_.data(), grads_.data(), res_in(l), buffers(l),
                    act(layer_acts_[static_cast<std::size_t>(l)].lse), d, B, seq);
    if (grads_final_from) grads_final_from(layout_.layer(l).ln1_w);
  }
  T* dwpe = block_.dims().gpt2 ? g(layout_.wpe()) : nullptr;
  if (group_ == nullptr) {
    backend_.embedding_backward(g(layout_.wte()), dwpe, act(dres_), tokens_.data(), N, seq,
                                config_.d_model);
  } else {
    // Every row's gradient meets this rank's vocabulary rows.
    const T* dout = act(dres_);
    if (sequence_) {
      group_->all_gather(act(dres_), act(dgathered_), nC);
      dout = act(dgathered_);
    }
    backend_.embedding_backward_part(g(layout_.wte()), dwpe, dout, tokens_.data(), vocab_first_,
                                     vocab_part_, N, seq, config_.d_model);
  }
  if (grads_final_from) grads_final_from(0);
}

template <typename T>
std::span<const T> Model<T>::losses() const {
  return {arena_.data() + losses_, static_cast<std::size_t>(B_) * T_};
}

template class Model<float>;
template class Model<double>;

}  // namespace borealis
