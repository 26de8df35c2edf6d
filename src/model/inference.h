// Inference with a key/value cache: the forward pass of Model (same norms,
// RoPE, grouped-query attention, tied or untied head), one sequence at a
// time, keeping each layer's keys and values so a new token costs one row of
// work instead of a pass over the whole context.
//
//   Inference<float> run(config, params, backend);
//   std::span<const float> logits = run.prefill(prompt);   // the last token's
//   while (...) logits = run.decode(next_token);
//
// Logits cover the real vocabulary (vocab_size columns; the padding of
// padded_vocab is left out). The parameters are borrowed: the buffer (laid
// out by ParamLayout(config)) must outlive the Inference and not change under
// it. Context is limited to the model's max_seq (learned positions and the
// trained RoPE range end there); going beyond it is an Error, not a slide.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/backend.h"
#include "model/config.h"
#include "model/params.h"

namespace borealis {

template <typename T>
class Inference {
 public:
  // capacity: the most tokens the cache holds (0 = config.max_seq; at most max_seq).
  Inference(const ModelConfig& config, const T* params, Backend<T>& backend, int capacity = 0);

  const ModelConfig& config() const { return config_; }
  int position() const { return pos_; }  // tokens in the cache
  int capacity() const { return capacity_; }
  std::size_t cache_bytes() const { return cache_.size() * sizeof(T); }
  // Empties the cache: the next prefill starts a new sequence at position 0.
  void reset() { pos_ = 0; }
  // Forgets the tokens from position on (keeps the first `position`), e.g.
  // to sample again from the same prompt without running it again.
  void truncate(int position);

  // Runs tokens through the model after those already cached and appends
  // them to the cache. Returns the logits of the last token (vocab_size
  // values) or, with all_positions, of every token given ([n, vocab_size],
  // row-major). The span lives until the next call. Throws Error when the
  // tokens do not fit the context or an id is outside the vocabulary; the
  // cache is then unchanged.
  std::span<const T> prefill(std::span<const std::int32_t> tokens, bool all_positions = false);
  // prefill of one token.
  std::span<const T> decode(std::int32_t token);

 private:
  const T* p(std::int64_t offset) const { return offset < 0 ? nullptr : params_ + offset; }
  void norm(T* out, const T* inp, std::int64_t w, std::int64_t b, int rows);
  void run_chunk(const std::int32_t* tokens, int n, bool all_positions, T* logits_out);

  ModelConfig config_;
  const T* params_;
  Backend<T>& backend_;
  ParamLayout layout_;
  int capacity_ = 0;
  int chunk_ = 0;  // rows per pass; longer prompts go through in chunks
  int pos_ = 0;
  std::vector<T> cache_;  // per layer: keys [capacity, NKV*HD], then values
  // Scratch for one chunk of rows.
  std::vector<T> x_, ln_, mean_, rstd_, qkv_, atty_, fch_, act_, logits_;
  std::vector<T> out_;
};

extern template class Inference<float>;
extern template class Inference<double>;

}  // namespace borealis
