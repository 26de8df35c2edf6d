// Scoring and generation through any OpenAI-compatible server (borealis
// serve, vLLM, llama.cpp's server): POST /v1/completions with token-id
// prompts, as lm-evaluation-harness's local-completions model sends them —
// loglikelihood as {temperature 0, max_tokens 1, logprobs 1, echo true,
// seed 1234} summing the echoed token_logprobs of the continuation,
// is_greedy from each position's top logprob; generation as {temperature 0,
// max_tokens, stop}. Prompts go several to a request, requests several at a
// time. A failed request (connection dropped, 5xx, 429) is retried with
// exponential back-off; one that still fails is an Error naming the server
// and its last answer (the scores already received are in the evaluator's
// cache).
#pragma once

#include <memory>
#include <string>

#include "eval/evaluator.h"
#include "eval/language_model.h"

namespace borealis {

struct ServerModelOptions {
  std::string url;       // base URL ending in /v1, e.g. http://127.0.0.1:8000/v1
  std::string api_key;   // sent as a Bearer token when set
  std::string model;     // "" = the first model /v1/models lists
  int max_length = 0;    // 0 = the server's max_model_len, else 2048
  int batch = 8;         // prompts per request
  int concurrency = 4;   // requests in flight
  int retries = 5;       // attempts after the first
  double backoff_s = 1;  // first wait between attempts; doubles each time
  double timeout_s = 600;
};

class ServerModel : public LanguageModel {
 public:
  // Asks the server for its models (and context length); Error if it does not answer.
  explicit ServerModel(const ServerModelOptions& options);
  ~ServerModel() override;

  int max_length() const override;
  std::string description() const override;
  std::vector<Score> score(const std::vector<ScoreRequest>& requests,
                           const ProgressFn& progress) override;
  std::vector<std::string> generate(const std::vector<GenerationTask>& tasks,
                                    const ProgressFn& progress) override;

  // The server's own tokenizer (POST /tokenize, GET /tokenizer_info): the
  // codec to use when no local tokenizer is given.
  std::unique_ptr<TextCodec> remote_codec() const;

 private:
  struct Impl;
  class RemoteCodec;
  std::unique_ptr<Impl> impl_;
};

}  // namespace borealis
