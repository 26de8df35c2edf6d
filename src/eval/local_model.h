// Scoring and generation with the model in this process, through the same
// transformer block and paged key/value cache as the server (BatchInference).
//
// Scoring sorts the requests longest first and runs them in waves that fill
// a token budget. Requests with the same context share its cache: the part
// of the context before the last prompt chunk boundary (multiples of
// kPrefillChunk from position 0) is run once and every continuation reads
// it. Chunks sit at the same fixed positions as in the server, and only the
// rows that predict continuation tokens go through the vocabulary head, so
// a score here equals the one `borealis serve` returns for the same tokens
// (echo logprobs), bit for bit.
#pragma once

#include <memory>
#include <string>

#include "eval/evaluator.h"
#include "eval/language_model.h"
#include "model/checkpoint_load.h"
#include "tokenizer/tokenizer.h"

namespace borealis {

struct LocalModelOptions {
  int batch_size = 32;     // requests per wave
  int wave_tokens = 4096;  // tokens per wave (the cache holds one wave, or two contexts)
};

// Text to tokens with a local tokenizer (no special tokens parsed; the
// end-of-text token is the tokenizer's, an Error when it has none).
class TokenizerCodec : public TextCodec {
 public:
  explicit TokenizerCodec(const Tokenizer& tok) : tok_(tok) {}
  std::vector<std::int32_t> encode(const std::string& text) const override;
  std::int32_t end_of_text() const override;

 private:
  const Tokenizer& tok_;
};

class LocalModel : public LanguageModel {
 public:
  // tokenizer: for generation (decoding and stop strings); may be null when
  // only scoring.
  LocalModel(LoadedModel model, const Tokenizer* tokenizer, std::string description,
             const LocalModelOptions& options = {});
  ~LocalModel() override;

  int max_length() const override;
  std::string description() const override { return description_; }
  std::vector<Score> score(const std::vector<ScoreRequest>& requests,
                           const ProgressFn& progress) override;
  std::vector<std::string> generate(const std::vector<GenerationTask>& tasks,
                                    const ProgressFn& progress) override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string description_;
};

}  // namespace borealis
