// The serving engine: continuous batching of generation requests over one
// model and a paged key/value cache.
//
// One thread runs the decode loop. Each step it admits waiting requests
// while the cache has blocks for them (a request reserves blocks for its
// prompt plus max_tokens when it is admitted, so a running request never
// runs out of cache), runs one batched pass (BatchInference) over every
// running sequence — one token for each decoding sequence and at most one
// prompt chunk (kPrefillChunk tokens at fixed positions) for the sequences
// still reading their prompt, so a long prompt does not stall the others —
// samples, and hands each token to its request's callback. Finished and
// cancelled sequences leave between steps and give their blocks back.
//
// Determinism: a request's logits do not depend on what else runs (see
// model/inference.h), and its sampler is seeded per request, so a request
// with a fixed seed (or temperature 0) gives the same tokens and logprobs
// alone or in a batch.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "kernels/backend.h"
#include "model/checkpoint_load.h"
#include "model/inference.h"
#include "model/kv_cache.h"
#include "serve/metrics.h"
#include "serve/sampling.h"

namespace borealis {

// One token handed to a request: a prompt token (with echo) or a generated one.
struct TokenEvent {
  std::int32_t token = 0;
  // log p(token | tokens before it) under the model's own distribution (the
  // raw logits, before temperature or top-k/top-p); nullopt for the first
  // prompt token, which has no context.
  std::optional<double> logprob;
  // The most likely tokens at this position with their logprobs, most
  // likely first (ties: lower id first); empty unless asked for.
  std::vector<std::pair<std::int32_t, double>> top;
  bool prompt = false;
};

enum class FinishReason { kLength, kStop, kCancelled };

struct GenerationRequest {
  std::vector<std::int32_t> prompt;  // at least one token
  int max_tokens = 16;
  SamplingParams sampling{1.0f, 0, 1.0f};
  std::uint64_t seed = 0;
  bool logprobs = false;            // fill TokenEvent::logprob of generated tokens
  int top_logprobs = 0;             // alternatives per token in TokenEvent::top
  bool prompt_logprobs = false;     // also hand out the prompt tokens with logprobs (echo)
  std::optional<std::int32_t> eos;  // stop after generating this token
  int sample_vocab = 0;  // sample only ids below this (the tokenizer's vocabulary); 0 = all

  // Both run on the engine thread. on_token returns false to end the request
  // there (a stop string was seen, or the client went away): finish reason
  // kStop. on_finish runs exactly once.
  std::function<bool(const TokenEvent&)> on_token;
  std::function<void(FinishReason)> on_finish;
};

struct EngineOptions {
  int max_batch = 32;     // sequences in one pass
  int max_queue = 256;    // waiting requests beyond which submit() refuses
  int kv_cache_mb = 512;  // size of the key/value cache
  int kv_block = 16;      // tokens per cache block
  int max_context = 0;    // prompt + generated tokens per sequence (0 = the model's max_seq)
};

class Engine {
 public:
  // Sizes the cache and starts the loop thread. Throws Error naming the
  // option for sizes that cannot work (a cache smaller than one full context).
  Engine(LoadedModel model, const EngineOptions& options);
  ~Engine();  // cancels what runs and stops the thread

  const ModelConfig& config() const { return model_.config; }
  int max_context() const { return max_context_; }
  const EngineOptions& options() const { return options_; }
  ServeMetrics& metrics() { return metrics_; }

  // A handle to cancel a submitted request (safe from any thread, any time).
  class Ticket {
   public:
    void cancel() { cancelled_ = true; }
    bool cancelled() const { return cancelled_; }

   private:
    std::atomic<bool> cancelled_{false};
  };
  // Queues a request; nullptr when the queue is full. The prompt plus
  // max_tokens must fit max_context() (the caller checks, to answer 400).
  std::shared_ptr<Ticket> submit(GenerationRequest request);

  // Stops admitting (submit returns nullptr) and waits up to `seconds` for
  // the running and queued requests to finish; cancels what is left.
  void drain(double seconds);

  struct Load {
    int waiting = 0, running = 0, used_blocks = 0, total_blocks = 0;
  };
  Load load() const;

 private:
  struct Sequence;
  void loop();
  void admit();
  void step();
  void emit_sampled(Sequence& s, std::span<const float> logits);
  void finish(Sequence& s, FinishReason reason);

  LoadedModel model_;
  EngineOptions options_;
  int max_context_ = 0;
  std::unique_ptr<Backend<float>> backend_;
  BatchInference<float> run_;
  KvCache<float> cache_;
  ServeMetrics metrics_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Sequence>> waiting_;  // guarded by mu_
  bool stopping_ = false;                          // guarded by mu_
  bool draining_ = false;                          // guarded by mu_
  std::atomic<int> running_count_{0};
  std::atomic<int> used_blocks_{0};
  std::vector<std::unique_ptr<Sequence>> running_;  // engine thread only
  std::thread thread_;
};

}  // namespace borealis
