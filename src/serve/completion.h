// One HTTP completion request in flight: its choices (prompts x n), the
// tokens the engine hands them, stop strings, and the OpenAI response or
// stream chunks built from them.
//
// The engine thread feeds tokens in (it decodes the text and applies the
// stop strings, so it can end a choice at once); the HTTP thread waits for
// the whole answer or pulls stream chunks. Streamed text holds back what
// could still become a stop string and any incomplete UTF-8 sequence, so
// the chunks concatenate to exactly the non-streamed text.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "serve/engine.h"
#include "serve/openai.h"
#include "tokenizer/tokenizer.h"

namespace borealis {

class CompletionGroup : public std::enable_shared_from_this<CompletionGroup> {
 public:
  // Tokenize and check (ApiError 400: ids outside the vocabulary, empty
  // prompts, prompt + max_tokens over the context).
  static std::shared_ptr<CompletionGroup> completion(const CompletionRequest& req,
                                                     const Tokenizer& tok, const Engine& engine);
  static std::shared_ptr<CompletionGroup> chat(const ChatRequest& req, const Tokenizer& tok,
                                               const Engine& engine, const ChatTemplate& chat);

  // Submits every choice; ApiError(429) when the queue is full (what was
  // submitted is cancelled).
  void start(Engine& engine);
  bool stream() const { return params_.stream; }
  void wait();
  bool cancelled() const;
  void cancel();

  nlohmann::json response(const std::string& id, std::int64_t created,
                          const std::string& model) const;
  // The next stream chunk, waiting for one; nullopt when everything was sent.
  std::optional<nlohmann::json> next_chunk(const std::string& id, std::int64_t created,
                                           const std::string& model);

 private:
  struct Entry {
    std::int32_t token;
    std::optional<double> logprob;
    std::vector<std::pair<std::int32_t, double>> top;
  };
  struct Choice {
    std::vector<std::int32_t> prompt;
    std::string prefix;  // echoed prompt text
    std::vector<std::uint32_t> generated;
    std::string text;  // generated text, cut at a stop string
    std::vector<Entry> entries;
    std::optional<FinishReason> finish;
    bool stop_hit = false;
    std::uint64_t seed = 0;
    std::shared_ptr<Engine::Ticket> ticket;
    // Streaming progress.
    bool opened = false;
    std::size_t sent = 0, entries_sent = 0;
    bool closed = false;
  };

  CompletionGroup(const Tokenizer& tok, SamplingRequest params, bool chat);
  void add_prompt(std::vector<std::int32_t> ids, const std::string& prefix, const Engine& engine);
  // Ids both the model and the tokenizer know.
  int vocab_limit(const Engine& engine) const;
  bool on_token(std::size_t i, const TokenEvent& ev);
  void on_finish(std::size_t i, FinishReason reason);
  std::size_t streamable(const Choice& c) const;
  nlohmann::json logprobs_json(const Choice& c, std::size_t from, std::size_t to) const;
  nlohmann::json usage() const;
  static const char* reason_name(const Choice& c);

  const Tokenizer& tok_;
  SamplingRequest params_;
  bool chat_;
  std::optional<int> logprobs_;  // alternatives per token (completions) or top_logprobs (chat)
  bool want_logprobs_ = false;
  bool echo_ = false;
  std::size_t max_stop_ = 0;
  std::int64_t prompt_tokens_ = 0;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Choice> choices_;
  int unfinished_ = 0;
  bool usage_sent_ = false;
};

}  // namespace borealis
