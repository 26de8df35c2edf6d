// Train/benchmark contamination: which benchmark docs share an n-gram (13
// tokens by default, as in GPT-3 and lm-evaluation-harness) with a training
// corpus.
//
// The index holds every n-gram of every benchmark doc, about 40 bytes each
// (60 MiB for 10k docs of 50-300 tokens). scan() streams corpora (Megatron
// .bin/.idx) through it, so memory is bounded by the benchmark, not the
// corpus. A corpus n-gram never crosses a document boundary (a document is a
// doc_idx entry: all its sequences, back to back). Matches are checked token
// by token, so a hash collision is never reported.
//
//   ContaminationIndex index(docs, {});
//   index.scan(IndexedDataset(prefix));   // any number of corpora; results add up
//   ContaminationReport r = index.report();
//
// A doc's `hits` is the number of its distinct n-grams that occur anywhere
// in the scanned corpora (an n-gram the doc repeats, or the corpus repeats,
// counts once). A doc is flagged when hits > 0. A doc shorter than n has no
// n-grams: it is counted in docs_too_short and never flagged.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "data/indexed_dataset.h"

namespace borealis {

struct ContaminationOptions {
  int ngram = 13;   // tokens per n-gram, >= 1
  int threads = 0;  // corpus scan threads; 0 = cpu_threads()
  // For tests only: keep this many low bits (0..64) of each n-gram's hash,
  // so that different n-grams collide and must be told apart by their tokens.
  int hash_bits = 64;
};

struct BenchmarkDoc {
  std::string task;
  std::int64_t doc_id = 0;
  std::vector<std::uint32_t> tokens;  // the doc's text, tokenized as the corpus was
};

struct ContaminationReport {
  // Per doc, in the order given to the index.
  std::vector<std::int64_t> ngrams;  // distinct n-grams of the doc
  std::vector<std::int64_t> hits;    // of those, how many occur in the corpora
  std::vector<bool> flagged;         // hits > 0
  std::int64_t docs_flagged = 0;
  std::int64_t docs_too_short = 0;  // fewer than n tokens: no n-grams, never flagged
  std::uint64_t corpus_tokens = 0;  // over all scans
  std::uint64_t corpus_documents = 0;
  double seconds = 0;  // spent scanning
};

// (tokens done, tokens in this corpus); called from the scanning threads,
// one call at a time, `done` never decreasing.
using ScanProgress = std::function<void(std::uint64_t done, std::uint64_t total)>;

// Not for concurrent calls: one scan() at a time (each runs its own threads).
class ContaminationIndex {
 public:
  // Throws Error for bad options or a benchmark of more than 2^32 n-grams.
  ContaminationIndex(std::vector<BenchmarkDoc> docs, const ContaminationOptions& options);
  ~ContaminationIndex();
  ContaminationIndex(ContaminationIndex&&) noexcept;
  ContaminationIndex& operator=(ContaminationIndex&&) noexcept;

  const std::vector<BenchmarkDoc>& docs() const;
  std::size_t distinct_ngrams() const;  // over all docs
  std::size_t memory_bytes() const;     // the set, prefilter and doc lists (not the docs)

  // Streams the corpus through the set and accumulates. Verifies the .idx
  // first (a corrupt one throws Error naming it, never reads out of bounds).
  // Pages of the .bin it has read leave this process's resident set (the
  // page cache keeps them), so memory stays bounded by the benchmark.
  void scan(const IndexedDataset& corpus, const ScanProgress& progress = {});

  ContaminationReport report() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace borealis
