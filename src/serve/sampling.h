// Choosing the next token from a model's logits: temperature, top-k and
// top-p (nucleus) sampling with a seeded random generator, or greedy argmax.
//
//   Sampler sampler({.temperature = 0.8f, .top_k = 40, .top_p = 0.95f}, seed);
//   std::int32_t next = sampler.sample(logits);   // logits over the vocabulary
//
// The order of the steps: logits / temperature -> keep the top_k largest ->
// softmax -> keep the smallest set of most likely tokens whose probability
// adds up to at least top_p -> renormalise -> draw. Temperature 0 (or top_k
// 1) is greedy: the largest logit, the lowest id among ties. A Sampler is
// one stream of draws (one generation or one request); the same seed, params
// and logits give the same tokens on every platform.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace borealis {

struct SamplingParams {
  float temperature = 0.8f;  // 0 = greedy
  int top_k = 40;            // 0 = no limit
  float top_p = 0.95f;       // 1 = no limit

  // Throws borealis::Error naming the field ("temperature", "top_k",
  // "top_p") for a value outside its range (temperature >= 0, top_k >= 0,
  // 0 < top_p <= 1).
  void validate() const;
};

struct TokenProb {
  std::int32_t id;
  double prob;
};

// The id of the largest logit (lowest id among ties). Throws borealis::Error
// for empty or non-finite logits.
std::int32_t argmax(std::span<const float> logits);

// The distribution a Sampler draws from: the surviving tokens, most likely
// first (ties by lower id), with probabilities that sum to 1. Greedy params
// give the argmax with probability 1.
std::vector<TokenProb> sampling_distribution(std::span<const float> logits,
                                             const SamplingParams& params);

// log p of tokens under one logits row (log-softmax, in double), as the
// server's logprobs and the evaluator's scores both compute it, so the two
// agree to the last bit.
struct LogSoftmax {
  double lse;  // log of the sum of exp(logits)
  explicit LogSoftmax(std::span<const float> row);
  double of(std::span<const float> row, std::int32_t id) const {
    return static_cast<double>(row[static_cast<std::size_t>(id)]) - lse;
  }
};

// The n most likely tokens of a row with their logprobs, most likely first
// (ties: lower id first).
std::vector<std::pair<std::int32_t, double>> top_logprobs(std::span<const float> row,
                                                          const LogSoftmax& ls, int n);

class Sampler {
 public:
  Sampler(const SamplingParams& params, std::uint64_t seed);

  const SamplingParams& params() const { return params_; }
  std::int32_t sample(std::span<const float> logits);

 private:
  // Uniform in [0, 1) from the next 53 bits of the generator.
  double uniform();

  SamplingParams params_;
  std::uint64_t state_;  // splitmix64: tiny, fast and the same everywhere
};

}  // namespace borealis
