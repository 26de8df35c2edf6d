#include "serve/engine.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>

#include "core/error.h"

namespace borealis {

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

}  // namespace

struct Engine::Sequence {
  GenerationRequest req;
  std::shared_ptr<Ticket> ticket;
  std::vector<std::int32_t> tokens;  // prompt, then generated
  int prompt_len = 0;
  int cached = 0;  // tokens whose keys and values are in the cache
  int generated = 0;
  std::vector<std::int32_t> blocks;
  Sampler sampler;
  Clock::time_point submitted, last_token;
  bool done = false;

  Sequence(GenerationRequest r, std::shared_ptr<Ticket> t)
      : req(std::move(r)),
        ticket(std::move(t)),
        tokens(req.prompt),
        prompt_len(static_cast<int>(req.prompt.size())),
        sampler(req.sampling, req.seed),
        submitted(Clock::now()) {}
};

Engine::Engine(LoadedModel model, const EngineOptions& options)
    : model_(std::move(model)),
      options_(options),
      max_context_(options.max_context == 0 ? model_.config.max_seq : options.max_context),
      backend_(make_cpu_backend<float>()),
      run_(model_.config, model_.params.data(), *backend_),
      cache_([&] {
        const ModelConfig& c = model_.config;
        if (options.max_batch <= 0) throw Error("must be positive", "--max-batch");
        if (options.max_queue < 0) throw Error("must not be negative", "--max-queue");
        if (options.kv_block <= 0) throw Error("must be positive", "--kv-block");
        if (max_context_ <= 0 || max_context_ > c.max_seq) {
          throw Error(
              fmt::format("{} is outside 1..{} (the model's max_seq)", max_context_, c.max_seq),
              "--max-context");
        }
        const std::size_t per_block = 2 * static_cast<std::size_t>(c.n_layer) * options.kv_block *
                                      c.n_kv_head * c.head_dim() * sizeof(float);
        const auto blocks = static_cast<std::size_t>(options.kv_cache_mb) * 1024 * 1024 / per_block;
        const auto need =
            static_cast<std::size_t>((max_context_ + options.kv_block - 1) / options.kv_block);
        if (blocks < need) {
          throw Error(fmt::format("{} MiB holds {} blocks of {} tokens; one sequence of the "
                                  "context ({} tokens) needs {} ({:.1f} MiB)",
                                  options.kv_cache_mb, blocks, options.kv_block, max_context_, need,
                                  need * per_block / 1048576.0),
                      "--kv-cache-mb");
        }
        return KvCache<float>(c, static_cast<int>(blocks), options.kv_block);
      }()) {
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() {
  {
    const std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();  // drain() may have joined it
}

std::shared_ptr<Engine::Ticket> Engine::submit(GenerationRequest request) {
  auto ticket = std::make_shared<Ticket>();
  {
    const std::lock_guard lock(mu_);
    if (stopping_ || draining_ || static_cast<int>(waiting_.size()) >= options_.max_queue) {
      return nullptr;
    }
    waiting_.push_back(std::make_unique<Sequence>(std::move(request), ticket));
  }
  cv_.notify_all();
  return ticket;
}

Engine::Load Engine::load() const {
  Load l;
  {
    const std::lock_guard lock(mu_);
    l.waiting = static_cast<int>(waiting_.size());
  }
  l.running = running_count_;
  l.used_blocks = used_blocks_;
  l.total_blocks = cache_.num_blocks();
  return l;
}

void Engine::drain(double seconds) {
  {
    const std::lock_guard lock(mu_);
    draining_ = true;
  }
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(seconds));
  std::unique_lock lock(mu_);
  while (Clock::now() < deadline && (!waiting_.empty() || running_count_ > 0)) {
    cv_.wait_for(lock, std::chrono::milliseconds(20));
  }
  // The loop sees stopping_ between steps and finishes every waiting and
  // running sequence as cancelled before it exits.
  stopping_ = true;
  cv_.notify_all();
  lock.unlock();
  if (thread_.joinable()) thread_.join();
}

void Engine::loop() {
  for (;;) {
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !waiting_.empty() || !running_.empty(); });
      if (stopping_) {
        for (auto& s : waiting_) running_.push_back(std::move(s));
        waiting_.clear();
        lock.unlock();
        for (auto& s : running_) {
          if (!s->done) finish(*s, FinishReason::kCancelled);
        }
        running_.clear();
        running_count_ = 0;
        cv_.notify_all();
        return;
      }
    }
    admit();
    try {
      step();
    } catch (const std::exception& e) {
      // A failure of the pass itself (requests are checked before they get
      // here): end what runs rather than the server, and say why.
      spdlog::error("serving step failed, cancelling {} running requests: {}", running_.size(),
                    e.what());
      for (auto& s : running_) {
        if (!s->done) finish(*s, FinishReason::kCancelled);
      }
      running_.clear();
      running_count_ = 0;
    }
    cv_.notify_all();  // drain() watches the counts
  }
}

void Engine::admit() {
  const std::lock_guard lock(mu_);
  while (!waiting_.empty() && static_cast<int>(running_.size()) < options_.max_batch) {
    Sequence& s = *waiting_.front();
    if (s.ticket->cancelled()) {
      auto gone = std::move(waiting_.front());
      waiting_.pop_front();
      finish(*gone, FinishReason::kCancelled);
      continue;
    }
    const int need =
        cache_.blocks_for(std::min(max_context_, s.prompt_len + std::max(0, s.req.max_tokens)));
    if (cache_.free_blocks() < need) break;  // first come, first served: wait for blocks
    for (int i = 0; i < need; ++i) s.blocks.push_back(cache_.allocate());
    used_blocks_ = cache_.used_blocks();
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
  running_count_ = static_cast<int>(running_.size());
}

void Engine::finish(Sequence& s, FinishReason reason) {
  s.done = true;
  for (std::int32_t b : s.blocks) cache_.release(b);
  s.blocks.clear();
  used_blocks_ = cache_.used_blocks();
  static const char* const kNames[] = {"length", "stop", "cancelled"};
  metrics_.request_finished(kNames[static_cast<int>(reason)], since(s.submitted));
  if (s.req.on_finish) s.req.on_finish(reason);
}

// Samples the next token from logits, hands it out, and finishes the
// sequence when it is done.
void Engine::emit_sampled(Sequence& s, std::span<const float> logits) {
  // Ids past the tokenizer's vocabulary (untrained padding rows of the
  // model) are never drawn; logprobs are of the model's whole distribution.
  const std::span<const float> drawable =
      s.req.sample_vocab > 0 && static_cast<std::size_t>(s.req.sample_vocab) < logits.size()
          ? logits.first(static_cast<std::size_t>(s.req.sample_vocab))
          : logits;
  const std::int32_t next = s.sampler.sample(drawable);
  TokenEvent ev;
  ev.token = next;
  if (s.req.logprobs || s.req.top_logprobs > 0) {
    // A pass of exp over the vocabulary: only for requests that asked.
    const LogSoftmax ls(logits);
    ev.logprob = ls.of(logits, next);
    if (s.req.top_logprobs > 0) ev.top = top_logprobs(drawable, ls, s.req.top_logprobs);
  }
  const auto now = Clock::now();
  if (s.generated == 0) {
    metrics_.time_to_first_token(std::chrono::duration<double>(now - s.submitted).count());
  } else {
    metrics_.time_per_output_token(std::chrono::duration<double>(now - s.last_token).count());
  }
  s.last_token = now;
  s.tokens.push_back(next);
  ++s.generated;
  metrics_.generation_tokens(1);
  if (!s.req.on_token(ev)) {
    finish(s, FinishReason::kStop);
  } else if (s.req.eos && next == *s.req.eos) {
    finish(s, FinishReason::kStop);
  } else if (s.generated >= s.req.max_tokens || static_cast<int>(s.tokens.size()) >= max_context_) {
    finish(s, FinishReason::kLength);
  }
}

void Engine::step() {
  // Cancelled sequences leave before the pass.
  for (auto& s : running_) {
    if (!s->done && s->ticket->cancelled()) finish(*s, FinishReason::kCancelled);
  }
  std::erase_if(running_, [](const std::unique_ptr<Sequence>& s) { return s->done; });
  running_count_ = static_cast<int>(running_.size());
  if (running_.empty()) return;

  using Segment = BatchInference<float>::Segment;
  std::vector<Segment> segments;
  std::vector<Sequence*> owners;
  int prefill_budget = kPrefillChunk;
  for (auto& sp : running_) {
    Sequence& s = *sp;
    Segment seg;
    seg.pos0 = s.cached;
    seg.blocks = s.blocks;
    if (s.cached < s.prompt_len) {
      // The next prompt chunk, its boundaries at fixed multiples of the
      // chunk size; one chunk per pass so decoding sequences keep going.
      if (prefill_budget <= 0) continue;
      const int end = std::min(s.prompt_len, (s.cached / kPrefillChunk + 1) * kPrefillChunk);
      seg.tokens = std::span<const std::int32_t>(s.tokens).subspan(
          static_cast<std::size_t>(s.cached), static_cast<std::size_t>(end - s.cached));
      seg.all_logits = s.req.prompt_logprobs;
      prefill_budget -= end - s.cached;
      if (s.cached == 0) {
        metrics_.prompt_tokens(s.prompt_len);
        if (s.req.prompt_logprobs) {
          TokenEvent first;
          first.token = s.tokens[0];
          first.prompt = true;
          if (!s.req.on_token(first)) {
            finish(s, FinishReason::kStop);
            continue;
          }
        }
      }
    } else {
      // The last sampled token, not yet in the cache.
      seg.tokens =
          std::span<const std::int32_t>(s.tokens).subspan(static_cast<std::size_t>(s.cached), 1);
    }
    segments.push_back(seg);
    owners.push_back(&s);
  }
  if (segments.empty()) return;
  const std::span<const float> logits = run_.forward(cache_, segments);
  const auto V = static_cast<std::size_t>(model_.config.vocab_size);
  std::size_t row = 0;
  for (std::size_t i = 0; i < segments.size(); ++i) {
    Sequence& s = *owners[i];
    const Segment& seg = segments[i];
    const int n = static_cast<int>(seg.tokens.size());
    const std::size_t rows = seg.all_logits ? static_cast<std::size_t>(n) : 1;
    const std::span<const float> mine = logits.subspan(row * V, rows * V);
    row += rows;
    if (s.done) continue;
    s.cached += n;
    if (seg.all_logits) {
      // Prompt logprobs: row j predicts the token at position pos0 + j + 1.
      bool go_on = true;
      for (int j = 0; j < n && go_on; ++j) {
        const int target = seg.pos0 + j + 1;
        if (target >= s.prompt_len) break;
        const auto r = mine.subspan(static_cast<std::size_t>(j) * V, V);
        const LogSoftmax ls(r);
        TokenEvent ev;
        ev.token = s.tokens[static_cast<std::size_t>(target)];
        ev.logprob = ls.of(r, ev.token);
        if (s.req.top_logprobs > 0) ev.top = top_logprobs(r, ls, s.req.top_logprobs);
        ev.prompt = true;
        go_on = s.req.on_token(ev);
      }
      if (!go_on) {
        finish(s, FinishReason::kStop);
        continue;
      }
    }
    if (s.cached < s.prompt_len) continue;  // more prompt to read
    if (s.req.max_tokens <= 0) {
      finish(s, FinishReason::kLength);
      continue;
    }
    emit_sampled(s, mine.subspan(mine.size() - V, V));
  }
}

}  // namespace borealis
