#include "model/inference.h"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

#include "core/error.h"

namespace borealis {

namespace {
void check_token_ids(std::span<const std::int32_t> tokens, int vocab_size) {
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab_size) {
      throw Error(fmt::format("token id {} at position {} is outside the vocabulary [0, {})",
                              tokens[i], i, vocab_size),
                  "tokens");
    }
  }
}
}  // namespace

template <typename T>
BatchInference<T>::BatchInference(const ModelConfig& config, const T* params, Backend<T>& backend)
    : config_(config),
      params_(params),
      backend_(backend),
      layout_((config.validate(), config)),
      block_(config, layout_, backend) {}

template <typename T>
void BatchInference<T>::reserve(int rows, int logit_rows) {
  if (rows > cap_rows_) {
    const auto n = static_cast<std::size_t>(rows);
    const auto C = static_cast<std::size_t>(config_.d_model);
    tokens_.resize(n);
    x_.resize(n * C);
    ln_.resize(n * C);
    mean_.resize(n);
    rstd_.resize(n);
    qkv_.resize(n * static_cast<std::size_t>(config_.qkv_width()));
    atty_.resize(n * C);
    fch_.resize(n * static_cast<std::size_t>(config_.fc_width()));
    act_.resize(n * static_cast<std::size_t>(config_.d_ff));
    cap_rows_ = rows;
  }
  if (logit_rows > cap_logit_rows_) {
    const auto n = static_cast<std::size_t>(logit_rows);
    head_.resize(n * static_cast<std::size_t>(config_.d_model));
    logits_.resize(n * static_cast<std::size_t>(config_.padded_vocab));
    cap_logit_rows_ = logit_rows;
  }
}

template <typename T>
void BatchInference<T>::check(const KvCache<T>& cache, const Segment& s) const {
  const auto n = static_cast<std::int64_t>(s.tokens.size());
  if (n == 0) throw Error("no tokens to run", "prefill");
  if (s.pos0 < 0 || s.pos0 + n > config_.max_seq) {
    throw Error(fmt::format("context of {} tokens ({} cached + {} new) exceeds the model's "
                            "context of {} tokens",
                            s.pos0 + n, s.pos0, n, config_.max_seq),
                "context");
  }
  if (static_cast<std::int64_t>(s.blocks.size()) * cache.block_size() < s.pos0 + n) {
    throw std::logic_error(
        fmt::format("BatchInference: {} cache blocks of {} cannot hold {} tokens", s.blocks.size(),
                    cache.block_size(), s.pos0 + n));
  }
  if (s.first_logit < 0 || s.first_logit >= n) {
    throw std::logic_error(
        fmt::format("BatchInference: first_logit {} outside a segment of {}", s.first_logit, n));
  }
  check_token_ids(s.tokens, config_.vocab_size);
}

template <typename T>
std::span<const T> BatchInference<T>::forward(KvCache<T>& cache,
                                              std::span<const Segment> segments) {
  int rows = 0, logit_rows = 0;
  for (const Segment& s : segments) {
    check(cache, s);
    rows += static_cast<int>(s.tokens.size());
    logit_rows += s.all_logits ? static_cast<int>(s.tokens.size()) - s.first_logit : 1;
  }
  if (rows == 0) return {};
  reserve(rows, logit_rows);
  const BlockDims& d = block_.dims();
  const auto C = static_cast<std::size_t>(d.C);

  // Embeddings, with each segment's learned positions from its pos0 on.
  std::size_t r0 = 0;
  seg_rows_.clear();
  for (const Segment& s : segments) {
    seg_rows_.push_back(r0);
    const int n = static_cast<int>(s.tokens.size());
    std::copy(s.tokens.begin(), s.tokens.end(), tokens_.begin() + static_cast<std::ptrdiff_t>(r0));
    const T* wpe =
        d.gpt2 ? params_ + layout_.wpe() + static_cast<std::size_t>(s.pos0) * C : nullptr;
    backend_.embedding_forward(x_.data() + r0 * C, s.tokens.data(), params_ + layout_.wte(), wpe, n,
                               n, d.C);
    r0 += static_cast<std::size_t>(n);
  }
  // Every row (prompt chunks and decode steps alike) goes through the
  // rowwise matmul, in one pass over the weights: a row's result depends on
  // that row alone, whoever shares the batch (see model/block.h).
  const std::vector<RowGroup> groups = {{0, static_cast<int>(r0), true}};
  // The residual stream x_ takes each block's output in place.
  const BlockBuffers<T> buf{ln_.data(),   mean_.data(), rstd_.data(), qkv_.data(),
                            atty_.data(), x_.data(),    ln_.data(),   mean_.data(),
                            rstd_.data(), fch_.data(),  act_.data(),  x_.data()};
  for (int l = 0; l < config_.n_layer; ++l) {
    const Attend<T> attend = [&](T* qkv, T* atty) {
      // RoPE segment by segment, then attention, each segment over its own
      // cache blocks. Decode rows run side by side, one sequence per thread
      // (their attention is plain dot products, the same on any thread);
      // prompt chunks one after the other, each splitting its heads over the
      // threads as when it runs alone.
      const auto count = static_cast<std::ptrdiff_t>(segments.size());
      std::ptrdiff_t single = 0;
      for (std::ptrdiff_t i = 0; i < count; ++i) {
        const Segment& s = segments[static_cast<std::size_t>(i)];
        T* q = qkv + seg_rows_[static_cast<std::size_t>(i)] * static_cast<std::size_t>(d.S);
        if (!d.gpt2) {
          backend_.rope_forward_at(q, static_cast<int>(s.tokens.size()), s.pos0, d.NH, d.NKV, d.HD,
                                   config_.rope_theta);
        }
        if (s.tokens.size() == 1) ++single;
      }
      const auto run = [&](std::ptrdiff_t i) {
        const Segment& s = segments[static_cast<std::size_t>(i)];
        const std::size_t row = seg_rows_[static_cast<std::size_t>(i)];
        backend_.attention_kv_forward(atty + row * C, cache.keys(l), cache.values(l),
                                      s.blocks.data(), cache.block_size(),
                                      qkv + row * static_cast<std::size_t>(d.S),
                                      static_cast<int>(s.tokens.size()), s.pos0, d.NH, d.NKV, d.HD);
      };
#pragma omp parallel for schedule(dynamic, 4) if (single > 1 && backend_.concurrent_attention())
      for (std::ptrdiff_t i = 0; i < count; ++i) {
        if (segments[static_cast<std::size_t>(i)].tokens.size() == 1) run(i);
      }
      for (std::ptrdiff_t i = 0; i < count; ++i) {
        if (segments[static_cast<std::size_t>(i)].tokens.size() != 1) run(i);
      }
    };
    block_.forward(l, params_, x_.data(), buf, rows, attend, groups);
  }

  // Only the rows whose logits are wanted go through the final norm and head.
  r0 = 0;
  std::size_t h = 0;
  for (const Segment& s : segments) {
    const std::size_t n = s.tokens.size();
    const std::size_t take = s.all_logits ? n - static_cast<std::size_t>(s.first_logit) : 1;
    const T* from = x_.data() + (r0 + n - take) * C;
    std::copy(from, from + take * C, head_.data() + h * C);
    h += take;
    r0 += n;
  }
  block_.norm_forward(ln_.data(), mean_.data(), rstd_.data(), head_.data(), params_,
                      layout_.lnf_w(), layout_.lnf_b(), logit_rows);
  const int Vp = config_.padded_vocab;
  const auto V = static_cast<std::size_t>(config_.vocab_size);
  backend_.matmul_forward_rowwise(logits_.data(), ln_.data(), params_ + layout_.lm_head(), nullptr,
                                  logit_rows, d.C, Vp, false);
  out_.resize(static_cast<std::size_t>(logit_rows) * V);
  for (int r = 0; r < logit_rows; ++r) {
    const T* src = logits_.data() + static_cast<std::size_t>(r) * Vp;
    std::copy(src, src + V, out_.data() + static_cast<std::size_t>(r) * V);
  }
  return {out_.data(), out_.size()};
}

namespace {
int checked_capacity(const ModelConfig& config, int capacity) {
  if (capacity < 0 || capacity > config.max_seq) {
    throw Error(fmt::format("context capacity {} is outside 0..{} (the model's max_seq)", capacity,
                            config.max_seq),
                "context");
  }
  return capacity == 0 ? config.max_seq : capacity;
}
}  // namespace

template <typename T>
Inference<T>::Inference(const ModelConfig& config, const T* params, Backend<T>& backend,
                        int capacity)
    : run_(config, params, backend),
      capacity_(checked_capacity(config, capacity)),
      cache_(config, 1, capacity_) {
  block_ = cache_.allocate();
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
  check_token_ids(tokens, run_.config().vocab_size);
  const auto V = static_cast<std::size_t>(run_.config().vocab_size);
  out_.resize((all_positions ? static_cast<std::size_t>(n) : 1) * V);
  // Chunks at fixed positions from the start of the call.
  for (std::int64_t c0 = 0; c0 < n; c0 += kPrefillChunk) {
    const auto rows = std::min<std::int64_t>(kPrefillChunk, n - c0);
    const typename BatchInference<T>::Segment seg{
        tokens.subspan(static_cast<std::size_t>(c0), static_cast<std::size_t>(rows)), pos_,
        std::span<const std::int32_t>(&block_, 1), all_positions};
    const std::span<const T> logits = run_.forward(cache_, std::span(&seg, 1));
    pos_ += static_cast<int>(rows);
    if (all_positions) {
      std::copy(logits.begin(), logits.end(), out_.begin() + static_cast<std::ptrdiff_t>(c0 * V));
    } else if (c0 + rows == n) {
      std::copy(logits.begin(), logits.end(), out_.begin());
    }
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

template class BatchInference<float>;
template class BatchInference<double>;
template class Inference<float>;
template class Inference<double>;

}  // namespace borealis
