#include "model/inference.h"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

#include "core/error.h"

namespace borealis {

namespace {
// Prompt rows per pass: large enough for efficient GEMMs, small enough that
// the scratch (and the logits of all_positions) stays modest.
constexpr int kChunkRows = 256;
}  // namespace

template <typename T>
Inference<T>::Inference(const ModelConfig& config, const T* params, Backend<T>& backend,
                        int capacity)
    : config_(config), params_(params), backend_(backend), layout_((config.validate(), config)) {
  if (capacity < 0 || capacity > config.max_seq) {
    throw Error(fmt::format("context capacity {} is outside 0..{} (the model's max_seq)", capacity,
                            config.max_seq),
                "context");
  }
  capacity_ = capacity == 0 ? config.max_seq : capacity;
  chunk_ = std::min(capacity_, kChunkRows);
  const std::size_t kv = static_cast<std::size_t>(config.n_kv_head) * config.head_dim();
  cache_.assign(2 * static_cast<std::size_t>(config.n_layer) * capacity_ * kv, T(0));
  const auto rows = static_cast<std::size_t>(chunk_);
  const auto C = static_cast<std::size_t>(config.d_model);
  x_.resize(rows * C);
  ln_.resize(rows * C);
  mean_.resize(rows);
  rstd_.resize(rows);
  qkv_.resize(rows * static_cast<std::size_t>(config.qkv_width()));
  atty_.resize(rows * C);
  fch_.resize(rows * static_cast<std::size_t>(config.fc_width()));
  act_.resize(rows * static_cast<std::size_t>(config.d_ff));
  logits_.resize(static_cast<std::size_t>(config.padded_vocab));
}

template <typename T>
void Inference<T>::norm(T* out, const T* inp, std::int64_t w, std::int64_t b, int rows) {
  if (config_.family == ModelFamily::kGpt2) {
    backend_.layernorm_forward(out, mean_.data(), rstd_.data(), inp, p(w), p(b), rows,
                               config_.d_model, config_.norm_eps);
  } else {
    backend_.rmsnorm_forward(out, rstd_.data(), inp, p(w), rows, config_.d_model, config_.norm_eps);
  }
}

template <typename T>
std::span<const T> Inference<T>::prefill(std::span<const std::int32_t> tokens, bool all_positions) {
  const auto n = static_cast<std::int64_t>(tokens.size());
  if (n == 0) throw Error("no tokens to run", "prefill");
  if (pos_ + n > capacity_) {
    throw Error(fmt::format("context of {} tokens ({} cached + {} new) exceeds the model's "
                            "context of {} tokens",
                            pos_ + n, pos_, n, capacity_),
                "context");
  }
  for (std::int64_t i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= config_.vocab_size) {
      throw Error(fmt::format("token id {} at position {} is outside the vocabulary [0, {})",
                              tokens[i], i, config_.vocab_size),
                  "tokens");
    }
  }
  const auto V = static_cast<std::size_t>(config_.vocab_size);
  out_.resize((all_positions ? static_cast<std::size_t>(n) : 1) * V);
  for (std::int64_t r0 = 0; r0 < n; r0 += chunk_) {
    const int rows = static_cast<int>(std::min<std::int64_t>(chunk_, n - r0));
    const bool last = r0 + rows == n;
    T* dest = all_positions ? out_.data() + static_cast<std::size_t>(r0) * V
                            : (last ? out_.data() : nullptr);
    run_chunk(tokens.data() + r0, rows, all_positions, dest);
  }
  return {out_.data(), out_.size()};
}

template <typename T>
void Inference<T>::truncate(int position) {
  if (position < 0 || position > pos_) {
    throw std::out_of_range(
        fmt::format("Inference::truncate({}) with {} tokens cached", position, pos_));
  }
  pos_ = position;
}

template <typename T>
std::span<const T> Inference<T>::decode(std::int32_t token) {
  return prefill(std::span<const std::int32_t>(&token, 1));
}

// One pass over n <= chunk_ tokens at positions pos_ .. pos_+n-1, in the
// order of Model::forward. logits_out (when not null) gets the logits of
// every row (all_positions) or of the last row.
template <typename T>
void Inference<T>::run_chunk(const std::int32_t* tokens, int n, bool all_positions, T* logits_out) {
  const int C = config_.d_model;
  const int S = config_.qkv_width();
  const int F = config_.d_ff;
  const int FW = config_.fc_width();
  const int NH = config_.n_head;
  const int NKV = config_.n_kv_head;
  const int HD = config_.head_dim();
  const bool gpt2 = config_.family == ModelFamily::kGpt2;
  const std::size_t layer_cache = static_cast<std::size_t>(capacity_) * NKV * HD;

  // Learned positions: wpe rows from pos_ on (row i of the chunk is position pos_ + i).
  const T* wpe = gpt2 ? p(layout_.wpe()) + static_cast<std::size_t>(pos_) * C : nullptr;
  backend_.embedding_forward(x_.data(), tokens, p(layout_.wte()), wpe, n, n, C);
  for (int l = 0; l < config_.n_layer; ++l) {
    const LayerOffsets& w = layout_.layer(l);
    T* kcache = cache_.data() + 2 * static_cast<std::size_t>(l) * layer_cache;
    T* vcache = kcache + layer_cache;
    norm(ln_.data(), x_.data(), w.ln1_w, w.ln1_b, n);
    backend_.matmul_forward(qkv_.data(), ln_.data(), p(w.qkv_w), p(w.qkv_b), n, C, S, false);
    if (!gpt2) backend_.rope_forward_at(qkv_.data(), n, pos_, NH, NKV, HD, config_.rope_theta);
    backend_.attention_kv_forward(atty_.data(), kcache, vcache, qkv_.data(), n, pos_, NH, NKV, HD);
    // The residual stream x takes each block's output in place (x + y * W^T).
    backend_.matmul_forward(x_.data(), atty_.data(), p(w.proj_w), p(w.proj_b), n, C, C, true);
    norm(ln_.data(), x_.data(), w.ln2_w, w.ln2_b, n);
    backend_.matmul_forward(fch_.data(), ln_.data(), p(w.fc_w), p(w.fc_b), n, C, FW, false);
    if (gpt2) {
      backend_.gelu_forward(act_.data(), fch_.data(), static_cast<std::int64_t>(n) * F);
    } else {
      backend_.swiglu_forward(act_.data(), fch_.data(), n, F);
    }
    backend_.matmul_forward(x_.data(), act_.data(), p(w.fcproj_w), p(w.fcproj_b), n, F, C, true);
  }
  pos_ += n;
  if (logits_out == nullptr) return;

  // Only the rows whose logits are wanted go through the final norm and head.
  const int rows = all_positions ? n : 1;
  const T* last = x_.data() + static_cast<std::size_t>(n - rows) * C;
  norm(ln_.data(), last, layout_.lnf_w(), layout_.lnf_b(), rows);
  const int Vp = config_.padded_vocab;
  const auto V = static_cast<std::size_t>(config_.vocab_size);
  logits_.resize(static_cast<std::size_t>(rows) * Vp);
  backend_.matmul_forward(logits_.data(), ln_.data(), p(layout_.lm_head()), nullptr, rows, C, Vp,
                          false);
  for (int r = 0; r < rows; ++r) {
    const T* src = logits_.data() + static_cast<std::size_t>(r) * Vp;
    std::copy(src, src + V, logits_out + static_cast<std::size_t>(r) * V);
  }
}

template class Inference<float>;
template class Inference<double>;

}  // namespace borealis
