// Inference with a key/value cache: the transformer block of model/block.h
// run over a paged cache (model/kv_cache.h), so a new token costs one row of
// work instead of a pass over the whole context.
//
// BatchInference runs the rows of many sequences in one pass: each sequence
// contributes a segment (a prompt chunk, or the one token of a decode step)
// at its own positions and with its own cache blocks. The matmuls of all
// rows are batched; attention runs per segment over its sequence's cache.
// A row's result does not depend on the other segments of the pass
// (rowwise matmuls, per-segment attention), so a request gives the same
// logits alone or batched — what a server needs to be deterministic.
//
// Inference is one sequence over a cache of its own:
//   Inference<float> run(config, params, backend);
//   std::span<const float> logits = run.prefill(prompt);   // the last token's
//   while (...) logits = run.decode(next_token);
//
// Logits cover the real vocabulary (vocab_size columns; the padding of
// padded_vocab is left out). The parameters are borrowed: the buffer (laid
// out by ParamLayout(config)) must outlive the object and not change under
// it. Context is limited to the model's max_seq (learned positions and the
// trained RoPE range end there); going beyond it is an Error, not a slide.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "kernels/backend.h"
#include "model/block.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/params.h"

namespace borealis {

// Prompt rows per pass of Inference::prefill, and the chunk a server should
// split long prompts into: large enough for efficient matmuls, small enough
// that the scratch stays modest. Chunks at fixed positions keep a prompt's
// arithmetic the same however it is scheduled.
inline constexpr int kPrefillChunk = 256;

template <typename T>
class BatchInference {
 public:
  BatchInference(const ModelConfig& config, const T* params, Backend<T>& backend);

  const ModelConfig& config() const { return config_; }

  // Tokens at positions pos0 .. pos0+n-1 of one sequence, whose cache blocks
  // (at least enough for pos0+n positions) are `blocks` in `cache`.
  struct Segment {
    std::span<const std::int32_t> tokens;
    int pos0 = 0;
    std::span<const std::int32_t> blocks;
    bool all_logits = false;  // logits of every token (scoring); else of the last only
    int first_logit = 0;      // with all_logits: only the rows from this one on (a scorer
                              // needs the rows that predict its continuation, not the context's)
  };

  // Runs every segment's tokens through the model, storing their keys and
  // values in the cache. Returns the logits rows, vocab_size each: per
  // segment in order, n - first_logit rows with all_logits, else one. The span lives until
  // the next call. Throws Error for an empty segment, an id outside the
  // vocabulary or positions past the context (nothing is run then).
  std::span<const T> forward(KvCache<T>& cache, std::span<const Segment> segments);

 private:
  void reserve(int rows, int logit_rows);
  void check(const KvCache<T>& cache, const Segment& s) const;

  ModelConfig config_;
  const T* params_;
  Backend<T>& backend_;
  ParamLayout layout_;
  Block<T> block_;
  int cap_rows_ = 0, cap_logit_rows_ = 0;
  std::vector<std::int32_t> tokens_;
  std::vector<T> x_, ln_, mean_, rstd_, qkv_, atty_, fch_, act_, head_, logits_, out_;
  std::vector<std::size_t> seg_rows_;  // each segment's first row in this pass
};

template <typename T>
class Inference {
 public:
  // capacity: the most tokens the cache holds (0 = config.max_seq; at most max_seq).
  Inference(const ModelConfig& config, const T* params, Backend<T>& backend, int capacity = 0);

  const ModelConfig& config() const { return run_.config(); }
  int position() const { return pos_; }  // tokens in the cache
  int capacity() const { return capacity_; }
  std::size_t cache_bytes() const { return cache_.bytes(); }
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
  BatchInference<T> run_;
  int capacity_;
  KvCache<T> cache_;  // one block as long as the context
  std::int32_t block_ = 0;
  int pos_ = 0;
  std::vector<T> out_;
};

extern template class BatchInference<float>;
extern template class BatchInference<double>;
extern template class Inference<float>;
extern template class Inference<double>;

}  // namespace borealis
