// Training a byte-level BPE vocabulary on a corpus.
//
// Pre-tokenized pieces are counted on all threads (memory grows with the
// number of distinct pieces, not with the corpus). Merges are then learned
// with incremental pair counts and a priority queue: each merge touches only
// the words that contain its pair. Ties go to the smaller pair of ids, and
// pieces are processed in sorted order, so the result depends only on the
// input and the options, never on the thread count.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace borealis {

struct BpeTrainOptions {
  std::size_t vocab_size = 32000;  // everything: 256 bytes, merged tokens, special tokens
  std::string pattern = std::string(kCl100kPattern);
  std::vector<std::string> special_tokens = {"<|endoftext|>"};
  std::uint64_t min_frequency = 2;  // pairs seen fewer times are never merged
  std::string json_key = "text";    // field of JSON Lines inputs
  int threads = 0;                  // 0: all OpenMP threads
  bool progress = true;
};

struct BpeTrainStats {
  std::uint64_t documents = 0;
  std::uint64_t bytes = 0;
  std::uint64_t pieces = 0;           // pre-tokenized pieces counted
  std::uint64_t distinct_pieces = 0;  // memory is proportional to this
  std::size_t merges = 0;
  double count_seconds = 0;
  double merge_seconds = 0;
};

// Documents from files: *.jsonl (one JSON object per line, text in
// options.json_key) or any other file as one plain-text document.
Tokenizer train_bpe(const std::vector<std::filesystem::path>& inputs,
                    const BpeTrainOptions& options, BpeTrainStats* stats = nullptr);

// The same from documents in memory.
Tokenizer train_bpe_documents(const std::vector<std::string>& documents,
                              const BpeTrainOptions& options, BpeTrainStats* stats = nullptr);

}  // namespace borealis
