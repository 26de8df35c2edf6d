// What the evaluator asks of a model, in tokens: lm-evaluation-harness's
// loglikelihood (the log-probability of a continuation after a context,
// and whether greedy decoding would produce it) and generate_until. Two
// implementations: the model in this process (eval/local_model.h) and any
// OpenAI-compatible server (eval/server_model.h).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace borealis {

struct ScoreRequest {
  std::vector<std::int32_t> context;       // at least one token
  std::vector<std::int32_t> continuation;  // at least one token
};

struct Score {
  double logprob = 0;      // sum of log p(continuation token | everything before it)
  bool is_greedy = false;  // every continuation token is the most likely one
};

struct GenerationTask {
  std::vector<std::int32_t> context;
  std::vector<std::string> until;  // stop strings (the text is cut before the first)
  int max_gen_toks = 256;
};

// Called with the number of requests done so far.
using ProgressFn = std::function<void(std::size_t done)>;

class LanguageModel {
 public:
  virtual ~LanguageModel() = default;
  // The longest context + continuation (in tokens) scored in one piece;
  // longer requests lose their first tokens, as lm-eval truncates them.
  virtual int max_length() const = 0;
  // A line for the results' config: the checkpoint or the server and model.
  virtual std::string description() const = 0;
  virtual std::vector<Score> score(const std::vector<ScoreRequest>& requests,
                                   const ProgressFn& progress) = 0;
  // Greedy continuations, cut at the first stop string.
  virtual std::vector<std::string> generate(const std::vector<GenerationTask>& tasks,
                                            const ProgressFn& progress) = 0;
};

}  // namespace borealis
