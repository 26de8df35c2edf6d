// Perplexity of a model on token datasets (Megatron .bin/.idx), document by
// document, with a sliding window for documents longer than the context.
//
// Every token of a document but its first is scored once. Tokens are scored
// in steps of `stride`; each step's tokens are predicted from up to the
// model's context length of tokens before them, so a smaller stride gives
// each prediction more context at the cost of more compute (stride = context
// length is lm-eval's loglikelihood_rolling: disjoint windows, each after the
// last token of the one before).
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "data/indexed_dataset.h"
#include "data/mixture.h"
#include "eval/language_model.h"

namespace borealis {

struct PerplexityOptions {
  int stride = 0;                // 0 = half the context length
  std::uint64_t max_tokens = 0;  // stop after scoring this many (whole documents; 0 = all)
  int requests_per_call = 256;   // windows handed to the model at once
};

struct PerplexityResult {
  std::uint64_t documents = 0;
  std::uint64_t tokens = 0;  // scored
  double nll = 0;            // sum of -log p over the scored tokens (nats)
  double seconds = 0;
  double perplexity() const;      // exp(nll / tokens)
  double bits_per_token() const;  // nll / tokens / ln 2
};

// Throws Error for a stride outside 1..context length.
PerplexityResult dataset_perplexity(LanguageModel& model, const IndexedDataset& data,
                                    const PerplexityOptions& options,
                                    const std::function<void(const PerplexityResult&)>& progress);

// The first `samples` samples of a blended mixture (a training run's
// validation part): each is seq_len + 1 tokens, every one but the first
// scored after the ones before it — the loss the training validation
// reports, so exp(that loss) is what this gives.
PerplexityResult mixture_perplexity(LanguageModel& model, const Mixture& mixture,
                                    std::uint64_t samples,
                                    const std::function<void(const PerplexityResult&)>& progress);

}  // namespace borealis
