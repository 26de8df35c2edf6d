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
Model<T>::Model(const ModelConfig& config, Backend<T>& backend)
    : config_(config), backend_(backend), layout_((config.validate(), config)) {
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
  const std::int64_t C = config_.d_model;
  const std::int64_t S = config_.qkv_width();
  const std::int64_t F = config_.d_ff;
  const std::int64_t FW = config_.fc_width();
  std::int64_t top = 0;
  auto take = [&top](std::int64_t elems) {
    const std::int64_t at = top;
    top += (elems + 15) / 16 * 16;  // 64-byte alignment of every buffer (in float)
    return at;
  };
  encoded_ = take(N * C);
  layer_acts_.clear();
  for (int l = 0; l < config_.n_layer; ++l) {
    LayerActs a{};
    a.ln1 = take(N * C);
    a.ln1_mean = take(N);
    a.ln1_rstd = take(N);
    a.qkv = take(N * S);
    a.atty = take(N * C);
    a.lse = take(static_cast<std::int64_t>(B) * config_.n_head * seq);
    a.res2 = take(N * C);
    a.ln2 = take(N * C);
    a.ln2_mean = take(N);
    a.ln2_rstd = take(N);
    a.fch = take(N * FW);
    a.res3 = take(N * C);
    layer_acts_.push_back(a);
  }
  lnf_ = take(N * C);
  lnf_mean_ = take(N);
  lnf_rstd_ = take(N);
  losses_ = take(N);
  if (chunk_rows_request_ > 0) {
    chunk_rows_ = std::min<std::int64_t>(chunk_rows_request_, N);
  } else {
    // Equal chunks (rounded up to 16 rows, the GEMM kernels' unroll): a
    // small remainder chunk runs its GEMMs far below the sgemm peak.
    const std::int64_t most =
        std::clamp<std::int64_t>(kLogitsChunkElems / config_.padded_vocab, 16, N);
    const std::int64_t chunks = (N + most - 1) / most;
    chunk_rows_ = std::min<std::int64_t>(N, ((N + chunks - 1) / chunks + 15) / 16 * 16);
  }
  logits_ = take(chunk_rows_ * config_.padded_vocab);
  // Scratch shared by all layers: the MLP activation (recomputed in backward
  // rather than stored per layer) and the gradients of one block.
  mlp_act_ = take(N * F);
  dlnf_ = take(N * C);
  dres_ = take(N * C);
  dln_ = take(N * C);
  datty_ = take(N * C);
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
const T* Model<T>::res_in(int l) const {
  return arena_.data() + (l == 0 ? encoded_ : layer_acts_[static_cast<std::size_t>(l - 1)].res3);
}

template <typename T>
void Model<T>::norm_forward(T* out, T* mean, T* rstd, const T* inp, std::int64_t w,
                            std::int64_t b) {
  const int N = B_ * T_;
  if (config_.family == ModelFamily::kGpt2) {
    backend_.layernorm_forward(out, mean, rstd, inp, p(w), p(b), N, config_.d_model,
                               config_.norm_eps);
  } else {
    backend_.rmsnorm_forward(out, rstd, inp, p(w), N, config_.d_model, config_.norm_eps);
  }
}

template <typename T>
void Model<T>::norm_backward(T* dinp, const T* dout, const T* inp, const T* mean, const T* rstd,
                             std::int64_t w, std::int64_t b) {
  const int N = B_ * T_;
  if (config_.family == ModelFamily::kGpt2) {
    backend_.layernorm_backward(dinp, g(w), g(b), dout, inp, p(w), mean, rstd, N, config_.d_model);
  } else {
    backend_.rmsnorm_backward(dinp, g(w), dout, inp, p(w), rstd, N, config_.d_model);
  }
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
  reserve(B, seq);
  B_ = B;
  T_ = seq;
  validate_tokens(tokens, "tokens");
  validate_tokens(targets, "targets");
  const int N = B * seq;
  const int C = config_.d_model;
  const int S = config_.qkv_width();
  const int F = config_.d_ff;
  const int FW = config_.fc_width();
  const int NH = config_.n_head;
  const int NKV = config_.n_kv_head;
  const int HD = config_.head_dim();
  const bool gpt2 = config_.family == ModelFamily::kGpt2;
  std::copy(tokens, tokens + N, tokens_.begin());

  backend_.embedding_forward(act(encoded_), tokens, p(layout_.wte()),
                             gpt2 ? p(layout_.wpe()) : nullptr, N, seq, C);
  for (int l = 0; l < config_.n_layer; ++l) {
    const LayerActs& a = layer_acts_[static_cast<std::size_t>(l)];
    const LayerOffsets& w = layout_.layer(l);
    const T* x = res_in(l);
    norm_forward(act(a.ln1), act(a.ln1_mean), act(a.ln1_rstd), x, w.ln1_w, w.ln1_b);
    backend_.matmul_forward(act(a.qkv), act(a.ln1), p(w.qkv_w), p(w.qkv_b), N, C, S, false);
    if (!gpt2) backend_.rope_forward(act(a.qkv), B, seq, NH, NKV, HD, config_.rope_theta);
    backend_.attention_forward(act(a.atty), act(a.lse), act(a.qkv), B, seq, NH, NKV, HD);
    // Residual adds are fused into the output projections: res = x + y * W^T.
    backend_.copy(act(a.res2), x, static_cast<std::int64_t>(N) * C);
    backend_.matmul_forward(act(a.res2), act(a.atty), p(w.proj_w), p(w.proj_b), N, C, C, true);
    norm_forward(act(a.ln2), act(a.ln2_mean), act(a.ln2_rstd), act(a.res2), w.ln2_w, w.ln2_b);
    backend_.matmul_forward(act(a.fch), act(a.ln2), p(w.fc_w), p(w.fc_b), N, C, FW, false);
    if (gpt2) {
      backend_.gelu_forward(act(mlp_act_), act(a.fch), static_cast<std::int64_t>(N) * F);
    } else {
      backend_.swiglu_forward(act(mlp_act_), act(a.fch), N, F);
    }
    backend_.copy(act(a.res3), act(a.res2), static_cast<std::int64_t>(N) * C);
    backend_.matmul_forward(act(a.res3), act(mlp_act_), p(w.fcproj_w), p(w.fcproj_b), N, F, C,
                            true);
  }
  norm_forward(act(lnf_), act(lnf_mean_), act(lnf_rstd_), res_in(config_.n_layer), layout_.lnf_w(),
               layout_.lnf_b());

  // Loss head in row chunks; with need_grad the chunk's logits turn into
  // their gradient in place and are consumed at once.
  const int Vp = config_.padded_vocab;
  const T dloss = need_grad ? grad_scale / T(N) : T(0);
  for (int r0 = 0; r0 < N; r0 += static_cast<int>(chunk_rows_)) {
    const int rows = std::min(static_cast<int>(chunk_rows_), N - r0);
    const T* x = act(lnf_) + static_cast<std::int64_t>(r0) * C;
    backend_.matmul_forward(act(logits_), x, p(layout_.lm_head()), nullptr, rows, C, Vp, false);
    backend_.crossentropy_forward_backward(act(logits_), act(losses_) + r0, targets + r0, rows,
                                           config_.vocab_size, Vp, dloss);
    if (need_grad) {
      backend_.matmul_backward(act(dlnf_) + static_cast<std::int64_t>(r0) * C, g(layout_.lm_head()),
                               nullptr, act(logits_), x, p(layout_.lm_head()), rows, C, Vp);
    }
  }
  have_grad_pass_ = need_grad;
  double sum = 0;
  for (int i = 0; i < N; ++i) sum += static_cast<double>(act(losses_)[i]);
  return static_cast<T>(sum / N);
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
  const int C = config_.d_model;
  const int S = config_.qkv_width();
  const int F = config_.d_ff;
  const int FW = config_.fc_width();
  const int NH = config_.n_head;
  const int NKV = config_.n_kv_head;
  const int HD = config_.head_dim();
  const bool gpt2 = config_.family == ModelFamily::kGpt2;
  const std::int64_t NC = static_cast<std::int64_t>(N) * C;

  // dres holds the gradient of the residual stream, flowing down the blocks.
  backend_.fill(act(dres_), T(0), NC);
  norm_backward(act(dres_), act(dlnf_), res_in(config_.n_layer), act(lnf_mean_), act(lnf_rstd_),
                layout_.lnf_w(), layout_.lnf_b());
  // Everything after the blocks in the layout (final norm, untied lm head,
  // whose gradient the loss head computed) is final now; so is each block
  // once its backward is done. Tied embeddings sit at offset 0.
  if (grads_final_from) grads_final_from(layout_.lnf_w());
  for (int l = config_.n_layer - 1; l >= 0; --l) {
    const LayerActs& a = layer_acts_[static_cast<std::size_t>(l)];
    const LayerOffsets& w = layout_.layer(l);
    // MLP: recompute its activation instead of keeping one per layer.
    if (gpt2) {
      backend_.gelu_forward(act(mlp_act_), act(a.fch), static_cast<std::int64_t>(N) * F);
    } else {
      backend_.swiglu_forward(act(mlp_act_), act(a.fch), N, F);
    }
    backend_.matmul_backward(act(dmlp_act_), g(w.fcproj_w), g(w.fcproj_b), act(dres_),
                             act(mlp_act_), p(w.fcproj_w), N, F, C);
    if (gpt2) {
      backend_.gelu_backward(act(dfch_), act(a.fch), act(dmlp_act_),
                             static_cast<std::int64_t>(N) * F);
    } else {
      backend_.swiglu_backward(act(dfch_), act(a.fch), act(dmlp_act_), N, F);
    }
    backend_.matmul_backward(act(dln_), g(w.fc_w), g(w.fc_b), act(dfch_), act(a.ln2), p(w.fc_w), N,
                             C, FW);
    norm_backward(act(dres_), act(dln_), act(a.res2), act(a.ln2_mean), act(a.ln2_rstd), w.ln2_w,
                  w.ln2_b);
    // Attention.
    backend_.matmul_backward(act(datty_), g(w.proj_w), g(w.proj_b), act(dres_), act(a.atty),
                             p(w.proj_w), N, C, C);
    backend_.attention_backward(act(dqkv_), act(datty_), act(a.qkv), act(a.atty), act(a.lse), B,
                                seq, NH, NKV, HD);
    if (!gpt2) backend_.rope_backward(act(dqkv_), B, seq, NH, NKV, HD, config_.rope_theta);
    backend_.matmul_backward(act(dln_), g(w.qkv_w), g(w.qkv_b), act(dqkv_), act(a.ln1), p(w.qkv_w),
                             N, C, S);
    norm_backward(act(dres_), act(dln_), res_in(l), act(a.ln1_mean), act(a.ln1_rstd), w.ln1_w,
                  w.ln1_b);
    if (grads_final_from) grads_final_from(w.ln1_w);
  }
  backend_.embedding_backward(g(layout_.wte()), gpt2 ? g(layout_.wpe()) : nullptr, act(dres_),
                              tokens_.data(), N, seq, C);
  if (grads_final_from) grads_final_from(0);
}

template <typename T>
std::span<const T> Model<T>::losses() const {
  return {arena_.data() + losses_, static_cast<std::size_t>(B_) * T_};
}

template class Model<float>;
template class Model<double>;

}  // namespace borealis
