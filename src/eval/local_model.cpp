#include "eval/local_model.h"

#include <fmt/format.h>

#include <algorithm>
#include <condition_variable>
#include <exception>
#include <map>
#include <mutex>
#include <numeric>

#include "core/error.h"
#include "kernels/backend.h"
#include "model/inference.h"
#include "model/kv_cache.h"
#include "serve/engine.h"
#include "serve/sampling.h"

namespace borealis {

namespace {

constexpr int kBlock =
    16;  // cache block: divides kPrefillChunk, so a shared prefix is whole blocks
static_assert(kPrefillChunk % kBlock == 0);

// One request as the model sees it: the tokens run (input), the rows whose
// logits score it, and the tokens those rows predict.
struct Prepared {
  std::size_t index = 0;  // in the caller's list
  std::vector<std::int32_t> input;
  int first_row = 0;  // input row predicting the first continuation token
  std::vector<std::int32_t> targets;
  int shared = 0;  // leading tokens run once for the whole context group
};

}  // namespace

struct LocalModel::Impl {
  LoadedModel model;
  const Tokenizer* tokenizer;
  LocalModelOptions options;
  std::unique_ptr<Backend<float>> backend;
  BatchInference<float> run;
  KvCache<float> cache;

  Impl(LoadedModel m, const Tokenizer* tok, const LocalModelOptions& o)
      : model(std::move(m)),
        tokenizer(tok),
        options(o),
        backend(make_cpu_backend<float>()),
        run(model.config, model.params.data(), *backend),
        cache(model.config, cache_blocks(model.config, o), kBlock) {}

  static int cache_blocks(const ModelConfig& config, const LocalModelOptions& o) {
    return (std::max(o.wave_tokens, 2 * config.max_seq) + kBlock - 1) / kBlock + 2 * o.batch_size;
  }

  Prepared prepare(const ScoreRequest& r, std::size_t index) const {
    if (r.context.empty() || r.continuation.empty()) {
      throw std::logic_error("ScoreRequest needs a context and a continuation");
    }
    const int L = model.config.max_seq;
    std::vector<std::int32_t> all = r.context;
    all.insert(all.end(), r.continuation.begin(), r.continuation.end());
    const int cont = static_cast<int>(r.continuation.size());
    if (cont > L) {
      throw Error(fmt::format("a continuation of {} tokens does not fit the model's context of {}",
                              cont, L),
                  "request");
    }
    Prepared p;
    p.index = index;
    if (static_cast<int>(all.size()) <= L) {
      // The whole request, its last token included, as the server runs it.
      p.input = all;
      p.first_row = static_cast<int>(r.context.size()) - 1;
      p.shared = (p.first_row / kPrefillChunk) * kPrefillChunk;
    } else {
      // lm-eval's truncation: the last L + 1 tokens, the last not run.
      p.input.assign(all.end() - (L + 1), all.end() - 1);
      p.first_row = L - cont;
    }
    p.targets = r.continuation;
    return p;
  }

  std::vector<std::int32_t> take_blocks(int tokens) {
    std::vector<std::int32_t> out;
    for (int i = 0; i < cache.blocks_for(tokens); ++i) {
      const std::int32_t b = cache.allocate();
      if (b < 0) throw std::logic_error("LocalModel: the key/value cache is full");
      out.push_back(b);
    }
    return out;
  }

  // Scores one wave: requests (indices into prepared) in groups sharing a
  // context prefix.
  void run_wave(std::vector<Prepared>& prepared,
                const std::vector<std::vector<std::size_t>>& groups, std::vector<Score>& out) {
    using Segment = BatchInference<float>::Segment;
    struct Seq {
      Prepared* p;
      std::vector<std::int32_t> blocks;  // the group's prefix blocks, then its own
    };
    std::vector<std::vector<std::int32_t>> prefix_blocks(groups.size());
    std::vector<Seq> seqs;
    for (std::size_t g = 0; g < groups.size(); ++g) {
      const int shared = prepared[groups[g].front()].shared;
      prefix_blocks[g] = take_blocks(shared);
      for (std::size_t i : groups[g]) {
        Prepared& p = prepared[i];
        Seq s{&p, prefix_blocks[g]};
        const std::vector<std::int32_t> own =
            take_blocks(static_cast<int>(p.input.size()) - p.shared);
        s.blocks.insert(s.blocks.end(), own.begin(), own.end());
        seqs.push_back(std::move(s));
      }
    }
    // The shared prefixes, chunk by chunk.
    for (int c0 = 0;; c0 += kPrefillChunk) {
      std::vector<Segment> segs;
      for (std::size_t g = 0; g < groups.size(); ++g) {
        const Prepared& p = prepared[groups[g].front()];
        if (c0 >= p.shared) continue;
        Segment s;
        s.tokens = std::span<const std::int32_t>(p.input).subspan(
            static_cast<std::size_t>(c0), static_cast<std::size_t>(kPrefillChunk));
        s.pos0 = c0;
        s.blocks = prefix_blocks[g];
        segs.push_back(s);
      }
      if (segs.empty()) break;
      run.forward(cache, segs);
    }
    // Each request from its group's prefix on, in chunks at fixed positions.
    const auto V = static_cast<std::size_t>(model.config.vocab_size);
    for (int round = 0;; ++round) {
      std::vector<Segment> segs;
      std::vector<Seq*> owners;
      for (Seq& s : seqs) {
        const Prepared& p = *s.p;
        const int n = static_cast<int>(p.input.size());
        const int a = p.shared + round * kPrefillChunk;
        if (a >= n) continue;
        const int b = std::min(n, (a / kPrefillChunk + 1) * kPrefillChunk);
        Segment seg;
        seg.tokens = std::span<const std::int32_t>(p.input).subspan(
            static_cast<std::size_t>(a), static_cast<std::size_t>(b - a));
        seg.pos0 = a;
        seg.blocks = s.blocks;
        const int last_row = p.first_row + static_cast<int>(p.targets.size()) - 1;
        if (b > p.first_row && a <= last_row) {
          seg.all_logits = true;
          seg.first_logit = std::max(0, p.first_row - a);
        }
        segs.push_back(seg);
        owners.push_back(&s);
      }
      if (segs.empty()) break;
      const std::span<const float> logits = run.forward(cache, segs);
      // The rows that predict continuation tokens: their log-softmax over the
      // vocabulary, one row per thread, then added up per request in order.
      struct Pick {
        std::size_t row;
        std::int32_t target;
        Score* score;
        double logprob = 0;
        bool greedy = false;
      };
      std::vector<Pick> picks;
      std::size_t row = 0;
      for (std::size_t i = 0; i < segs.size(); ++i) {
        const Segment& seg = segs[i];
        const Prepared& p = *owners[i]->p;
        const int n = static_cast<int>(seg.tokens.size());
        if (!seg.all_logits) {
          ++row;
          continue;
        }
        for (int j = seg.first_logit; j < n; ++j, ++row) {
          const int t = seg.pos0 + j - p.first_row;  // which continuation token this row predicts
          if (t < 0 || t >= static_cast<int>(p.targets.size())) continue;
          picks.push_back({row, p.targets[static_cast<std::size_t>(t)], &out[p.index]});
        }
      }
      std::exception_ptr failure;  // argmax's Error for non-finite logits
#pragma omp parallel for schedule(static) if (picks.size() > 1)
      for (std::size_t k = 0; k < picks.size(); ++k) {
        try {
          const auto r = logits.subspan(picks[k].row * V, V);
          picks[k].logprob = LogSoftmax(r).of(r, picks[k].target);
          picks[k].greedy = argmax(r) == picks[k].target;
        } catch (...) {
#pragma omp critical
          failure = std::current_exception();
        }
      }
      if (failure) std::rethrow_exception(failure);
      for (const Pick& k : picks) {
        k.score->logprob += k.logprob;
        if (!k.greedy) k.score->is_greedy = false;
      }
    }
    // Give every block back: each sequence's own, then each prefix once.
    for (std::size_t k = 0, q = 0; k < groups.size(); ++k) {
      for (std::size_t m = 0; m < groups[k].size(); ++m, ++q) {
        const Seq& s = seqs[q];
        for (std::size_t b = prefix_blocks[k].size(); b < s.blocks.size(); ++b) {
          cache.release(s.blocks[b]);
        }
      }
      for (std::int32_t b : prefix_blocks[k]) cache.release(b);
    }
  }
};

std::vector<std::int32_t> TokenizerCodec::encode(const std::string& text) const {
  const std::vector<std::uint32_t> ids = tok_.encode(text);
  return {ids.begin(), ids.end()};
}

std::int32_t TokenizerCodec::end_of_text() const {
  const auto eod = tok_.eod_id();
  if (!eod) {
    throw Error(
        "the tokenizer has no end-of-text token, which empty contexts and perplexity "
        "windows condition on",
        "--tokenizer");
  }
  return static_cast<std::int32_t>(*eod);
}

LocalModel::LocalModel(LoadedModel model, const Tokenizer* tokenizer, std::string description,
                       const LocalModelOptions& options)
    : impl_(std::make_unique<Impl>(std::move(model), tokenizer, options)),
      description_(std::move(description)) {
  if (options.batch_size <= 0) throw Error("must be positive", "--batch-size");
}

LocalModel::~LocalModel() = default;

int LocalModel::max_length() const {
  return impl_->model.config.max_seq;
}

std::vector<Score> LocalModel::score(const std::vector<ScoreRequest>& requests,
                                     const ProgressFn& progress) {
  std::vector<Score> out(requests.size(), Score{0.0, true});
  std::vector<Prepared> prepared;
  prepared.reserve(requests.size());
  for (std::size_t i = 0; i < requests.size(); ++i) {
    prepared.push_back(impl_->prepare(requests[i], i));
  }
  // Groups of requests with the same context (and so the same shared prefix).
  std::map<std::vector<std::int32_t>, std::vector<std::size_t>> by_context;
  std::vector<std::vector<std::size_t>> groups;
  for (std::size_t i = 0; i < prepared.size(); ++i) {
    if (prepared[i].shared == 0) {
      groups.push_back({i});
      continue;
    }
    by_context[requests[i].context].push_back(i);
  }
  for (auto& [ctx, members] : by_context) groups.push_back(std::move(members));
  const auto group_tokens = [&](const std::vector<std::size_t>& g) {
    std::size_t t = static_cast<std::size_t>(prepared[g.front()].shared);
    for (std::size_t i : g)
      t += prepared[i].input.size() - static_cast<std::size_t>(prepared[i].shared);
    return t;
  };
  // Longest first (as lm-eval orders them), then in the order given.
  std::vector<std::size_t> order(groups.size());
  std::iota(order.begin(), order.end(), 0);
  std::vector<std::size_t> longest(groups.size());
  for (std::size_t g = 0; g < groups.size(); ++g) {
    for (std::size_t i : groups[g]) longest[g] = std::max(longest[g], prepared[i].input.size());
  }
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return longest[a] > longest[b] ||
           (longest[a] == longest[b] && groups[a].front() < groups[b].front());
  });

  const auto budget = static_cast<std::size_t>(impl_->options.wave_tokens);
  const auto max_requests = static_cast<std::size_t>(impl_->options.batch_size);
  std::size_t done = 0;
  std::vector<std::vector<std::size_t>> wave;
  std::size_t wave_tokens = 0, wave_requests = 0;
  const auto flush = [&] {
    if (wave.empty()) return;
    impl_->run_wave(prepared, wave, out);
    done += wave_requests;
    if (progress) progress(done);
    wave.clear();
    wave_tokens = wave_requests = 0;
  };
  for (std::size_t g : order) {
    // A group larger than a wave is split; each part runs the prefix again.
    std::vector<std::size_t> part;
    for (std::size_t i : groups[g]) {
      part.push_back(i);
      const bool full = part.size() >= max_requests || group_tokens(part) >= budget;
      if (full) {
        if (wave_requests + part.size() > max_requests || wave_tokens + group_tokens(part) > budget)
          flush();
        wave_tokens += group_tokens(part);
        wave_requests += part.size();
        wave.push_back(std::move(part));
        part.clear();
        flush();
      }
    }
    if (part.empty()) continue;
    const std::size_t t = group_tokens(part);
    if (wave_requests + part.size() > max_requests || wave_tokens + t > budget) flush();
    wave_tokens += t;
    wave_requests += part.size();
    wave.push_back(std::move(part));
  }
  flush();
  return out;
}

std::vector<std::string> LocalModel::generate(const std::vector<GenerationTask>& tasks,
                                              const ProgressFn& progress) {
  if (tasks.empty()) return {};
  EngineOptions eo;
  eo.max_batch = impl_->options.batch_size;
  eo.max_queue = static_cast<int>(tasks.size()) + 1;
  Engine engine(impl_->model, eo);
  const int max_context = engine.max_context();
  if (impl_->tokenizer == nullptr) throw std::logic_error("LocalModel::generate needs a tokenizer");
  const Tokenizer& tok = *impl_->tokenizer;
  const std::optional<std::uint32_t> eod = tok.eod_id();

  struct State {
    std::vector<std::uint32_t> ids;
    std::string text;
    bool done = false;
  };
  std::vector<State> states(tasks.size());
  std::mutex mu;
  std::condition_variable cv;
  std::size_t finished = 0;
  const auto cut = [](std::string text, const std::vector<std::string>& until) {
    for (const std::string& stop : until) {
      if (stop.empty()) continue;
      const std::size_t at = text.find(stop);
      if (at != std::string::npos) text.resize(at);
    }
    return text;
  };
  for (std::size_t i = 0; i < tasks.size(); ++i) {
    const GenerationTask& t = tasks[i];
    const int gen = std::max(1, std::min(t.max_gen_toks, max_context - 1));
    GenerationRequest req;
    // lm-eval keeps the last max_length - max_gen_toks context tokens.
    const auto keep = static_cast<std::size_t>(max_context - gen);
    req.prompt.assign(t.context.size() > keep ? t.context.end() - static_cast<std::ptrdiff_t>(keep)
                                              : t.context.begin(),
                      t.context.end());
    if (req.prompt.empty()) throw std::logic_error("GenerationTask with no context");
    req.max_tokens = gen;
    req.sampling = SamplingParams{0.0f, 0, 1.0f};
    if (eod) req.eos = static_cast<std::int32_t>(*eod);
    req.sample_vocab = static_cast<int>(tok.vocab_size());
    req.on_token = [&, i](const TokenEvent& ev) {
      State& s = states[i];
      if (ev.prompt || (eod && static_cast<std::uint32_t>(ev.token) == *eod)) return true;
      s.ids.push_back(static_cast<std::uint32_t>(ev.token));
      const std::string text = tok.decode(s.ids);
      for (const std::string& stop : tasks[i].until) {
        if (!stop.empty() && text.find(stop) != std::string::npos) return false;
      }
      return true;
    };
    req.on_finish = [&, i](FinishReason) {
      std::lock_guard lock(mu);
      State& s = states[i];
      s.text = cut(tok.decode(s.ids), tasks[i].until);
      s.done = true;
      ++finished;
      cv.notify_all();
    };
    if (!engine.submit(std::move(req))) throw std::logic_error("LocalModel: engine queue full");
  }
  std::unique_lock lock(mu);
  std::size_t reported = 0;
  while (finished < tasks.size()) {
    cv.wait(lock);
    if (progress && finished != reported) {
      reported = finished;
      progress(finished);
    }
  }
  std::vector<std::string> out;
  for (State& s : states) out.push_back(std::move(s.text));
  return out;
}

}  // namespace borealis
