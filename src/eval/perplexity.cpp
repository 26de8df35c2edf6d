#include "eval/perplexity.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <numbers>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/stopwatch.h"
#include "train/loader.h"

namespace borealis {
namespace {

// Score requests gathered into calls of up to `limit`; each call's negative
// log-likelihood is added to `res`, and progress is reported after it.
struct PendingScores {
  LanguageModel& model;
  PerplexityResult& res;
  std::chrono::steady_clock::time_point started;
  const std::function<void(const PerplexityResult&)>& progress;
  std::vector<ScoreRequest> requests;

  void add(ScoreRequest r, std::size_t limit) {
    requests.push_back(std::move(r));
    if (requests.size() >= limit) flush();
  }
  void flush() {
    if (requests.empty()) return;
    for (const Score& s : model.score(requests, nullptr)) res.nll -= s.logprob;
    requests.clear();
    res.seconds = seconds_since(started);
    if (progress) progress(res);
  }
};

}  // namespace

double PerplexityResult::perplexity() const {
  return tokens == 0 ? std::nan("") : std::exp(nll / static_cast<double>(tokens));
}

double PerplexityResult::bits_per_token() const {
  return tokens == 0 ? std::nan("") : nll / static_cast<double>(tokens) / std::numbers::ln2;
}

PerplexityResult dataset_perplexity(LanguageModel& model, const IndexedDataset& data,
                                    const PerplexityOptions& options,
                                    const std::function<void(const PerplexityResult&)>& progress) {
  const int L = model.max_length();
  const int stride = options.stride == 0 ? std::max(1, L / 2) : options.stride;
  if (stride < 1 || stride > L) {
    throw Error(fmt::format("stride {} is outside 1..{} (the context length)", stride, L),
                "--stride");
  }
  const auto started = std::chrono::steady_clock::now();
  PerplexityResult res;
  PendingScores pending{model, res, started, progress, {}};
  std::vector<std::uint32_t> doc;
  const auto Ls = static_cast<std::size_t>(L);
  const auto step = static_cast<std::size_t>(stride);
  for (std::size_t d = 0; d < data.documents(); ++d) {
    if (options.max_tokens > 0 && res.tokens >= options.max_tokens) break;
    // A document is its sequences from doc_idx[d] to doc_idx[d + 1].
    doc.clear();
    for (auto s = static_cast<std::size_t>(data.doc_index(d));
         s < static_cast<std::size_t>(data.doc_index(d + 1)); ++s) {
      data.read(s, 0, static_cast<std::size_t>(data.size(s)), doc);
    }
    ++res.documents;
    if (doc.size() < 2) continue;
    // Scored ranges [a, b), a from 1; input from max(0, b - L - 1).
    for (std::size_t a = 1; a < doc.size(); a += step) {
      const std::size_t b = std::min(doc.size(), a + step);
      const std::size_t s = b > Ls + 1 ? b - Ls - 1 : 0;
      ScoreRequest r;
      r.context.assign(doc.begin() + static_cast<std::ptrdiff_t>(s),
                       doc.begin() + static_cast<std::ptrdiff_t>(a));
      r.continuation.assign(doc.begin() + static_cast<std::ptrdiff_t>(a),
                            doc.begin() + static_cast<std::ptrdiff_t>(b));
      res.tokens += b - a;
      pending.add(std::move(r), static_cast<std::size_t>(std::max(1, options.requests_per_call)));
    }
  }
  pending.flush();
  res.seconds = seconds_since(started);
  return res;
}

PerplexityResult mixture_perplexity(LanguageModel& model, const Mixture& mixture,
                                    std::uint64_t samples,
                                    const std::function<void(const PerplexityResult&)>& progress) {
  const auto started = std::chrono::steady_clock::now();
  const auto L = static_cast<int>(mixture.options().seq_len);
  PerplexityResult res;
  Batch batch;
  batch.batch = 1;
  batch.seq = L;
  batch.inputs.resize(static_cast<std::size_t>(L));
  batch.targets.resize(static_cast<std::size_t>(L));
  PendingScores pending{model, res, started, progress, {}};
  const std::uint64_t n = std::min<std::uint64_t>(samples, mixture.size());
  for (std::uint64_t i = 0; i < n; ++i) {
    read_sample(mixture, i, batch, 0);
    pending.add({{batch.inputs[0]}, batch.targets}, 64);
    res.tokens += static_cast<std::uint64_t>(L);
    ++res.documents;
  }
  pending.flush();
  res.seconds = seconds_since(started);
  return res;
}

}  // namespace borealis
