// The "megatron" order: Megatron-DeepSpeed's sample order, bit for bit, as
// AuroraGPT runs it, so that a Megatron job can move to Borealis and continue
// on the same samples.
//
// Per file (Megatron's GPTDataset over the split's documents):
// - the file is asked for ceil(N w 1.005) samples (w its normalized weight,
//   N the train samples; the 0.5% surplus of get_datasets_weights_and_num_samples);
// - epochs E: the fewest with (E T - 1) / L >= that count (T tokens in the
//   split, L the sequence length);
// - doc_idx: the split's documents repeated E times and shuffled as one array
//   by numpy's RandomState(seed); when E > 1 and the last epoch would hold
//   fewer than int(0.8 * samples per epoch) samples, the first E - 1 epochs
//   and the last one are shuffled separately, in that order;
// - sample s covers L + 1 tokens from token s L of the documents in doc_idx
//   order (build_sample_idx); there are (E T - 1) / L samples;
// - shuffle_idx: those samples shuffled by the same RandomState, the first
//   E - 1 epochs' samples apart from the rest when the last epoch is separate.
// The file's sample n is sample shuffle_idx[n].
//
// Blending (AuroraGPT's two levels): the files of a corpus are concatenated
// in list order, or blended by their sample counts with Megatron's greedy
// rule (--blend-sample-in-corpus), then optionally shuffled by a fresh
// RandomState(seed) (--shuffle-sample-in-corpus); the corpora, sorted by
// name, are blended by their sample counts with the same greedy rule.
//
// The blend is what Mixture stores and caches. A file's doc_idx and sample
// starts are built when a sample first needs the file (or all at once with
// prepare), since they need the file's sequence sizes.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "data/indexed_dataset.h"

namespace borealis {

struct MixOptions;
struct MixFile;
struct MixCorpus;
struct SamplePiece;

// The samples Megatron asks of a file of normalized weight w: ceil(N w 1.005).
std::uint64_t megatron_requested_samples(std::uint64_t samples, double weight);

struct MegatronFilePlan {
  std::uint64_t requested = 0;          // samples asked of the file
  std::uint64_t tokens = 0;             // T
  std::uint64_t epochs = 0;             // E
  std::uint64_t samples_per_epoch = 0;  // (T - 1) / L
  bool separate_last_epoch = false;
  std::uint64_t samples = 0;        // (E T - 1) / L: the file's samples
  std::uint64_t first_samples = 0;  // shuffled apart from the rest (== samples if not separate)
};

// Megatron's _num_epochs and separate_last_epoch rule. T must be positive.
MegatronFilePlan megatron_file_plan(std::uint64_t tokens, std::uint64_t seq_len,
                                    std::uint64_t requested);

// Megatron's build_blending_indices: at step t, the source with the largest
// w * max(t, 1) - count (the lowest index on ties), computed in doubles as
// Megatron does. Large source counts use bounds on blocks of sources to skip
// most of them; the choices are exactly those of the plain scan.
class MegatronBlend {
 public:
  explicit MegatronBlend(std::vector<double> weights);
  std::size_t next();
  const std::vector<std::uint64_t>& counts() const { return counts_; }

 private:
  static constexpr std::size_t kBlock = 16;
  std::size_t best_in(std::size_t block, double t, double& value) const;
  void reset_block(std::size_t block, double t);

  std::vector<double> weights_;
  std::vector<double> taken_;  // counts as doubles
  std::vector<std::uint64_t> counts_;
  std::uint64_t step_ = 0;
  bool scan_ = true;
  // Per block: its largest weight w and an offset such that w t - offset
  // bounds every w_k t - count_k in the block from now on.
  std::vector<double> block_weight_, block_offset_;
};

// One file's doc_idx and, for its samples n < keep, where sample n starts.
// doc_idx is written to `storage`, which must outlive the index: epochs x
// documents entries, or (epochs - 1) x documents when the last epoch is
// shuffled separately. That last epoch is shuffled in scratch memory, and the
// few kept samples that reach into it keep their own documents.
class MegatronFileIndex {
 public:
  MegatronFileIndex(const IndexedDataset& ds, std::uint64_t first_doc, std::uint64_t end_doc,
                    const MegatronFilePlan& plan, std::uint64_t seq_len, std::uint32_t seed,
                    std::uint64_t keep, std::span<std::int32_t> storage);

  // The stored part of doc_idx (without a separate last epoch).
  std::span<const std::int32_t> doc_idx() const { return doc_idx_; }
  // Position in doc_idx and token offset where the file's sample n starts.
  std::pair<std::uint64_t, std::uint64_t> start(std::uint64_t n) const {
    return {starts_[n] >> kOffsetBits, starts_[n] & kOffsetMask};
  }
  std::uint64_t kept() const { return starts_.size(); }
  // The non-empty pieces of the file's sample n (L + 1 tokens).
  std::vector<SamplePiece> pieces(std::size_t file, std::uint64_t n, const IndexedDataset& ds,
                                  std::uint64_t seq_len) const;

 private:
  // A start is position << 31 | offset (sizes are int32 in Megatron's format).
  static constexpr unsigned kOffsetBits = 31;
  static constexpr std::uint64_t kOffsetMask = (std::uint64_t{1} << kOffsetBits) - 1;
  std::span<const std::int32_t> doc_idx_;
  std::vector<std::uint64_t> starts_;
  // Kept samples that reach into a separate last epoch: doc_idx positions
  // [first, first + count) are tail_docs_[at, at + count). Sorted by sample.
  struct Explicit {
    std::uint64_t sample, first, at, count;
  };
  std::vector<Explicit> explicit_;
  std::vector<std::int32_t> tail_docs_;
};

// The mixture-level part: plans, the blend, and the per-file indices.
class MegatronOrder {
 public:
  MegatronOrder(const MixOptions& options, const std::vector<MixFile>& files,
                const std::vector<MixCorpus>& corpora);

  // For every sample i < N: file << sample_bits | the file's sample number.
  std::vector<std::uint64_t> build(unsigned threads, unsigned sample_bits) const;

  const MegatronFilePlan& plan(std::size_t file) const { return plans_[file]; }
  // Corpus numbers in Megatron's order (sorted by name).
  const std::vector<std::size_t>& corpus_order() const { return corpus_order_; }

  // Builds file k's index on first use (thread-safe); `ds` is file k opened.
  const MegatronFileIndex& file(std::size_t k, const IndexedDataset& ds, std::uint64_t keep) const;

 private:
  struct File {
    std::string prefix, where;
    std::uint64_t first_doc = 0, end_doc = 0;
  };
  std::uint64_t samples_ = 0, seq_len_ = 0;
  std::uint32_t seed_ = 0;
  bool blend_in_corpus_ = false, shuffle_in_corpus_ = false;
  std::vector<File> files_;
  std::vector<std::string> corpus_names_;
  std::vector<std::vector<std::size_t>> corpus_files_;
  std::vector<MegatronFilePlan> plans_;
  std::vector<std::size_t> corpus_order_;
  // Every file's doc_idx in one mapping (huge pages where the kernel gives
  // them): faulting in small pages costs more than shuffling.
  struct Arena {
    std::int32_t* data = nullptr;
    std::size_t bytes = 0;
    Arena() = default;
    Arena(const Arena&) = delete;
    Arena& operator=(const Arena&) = delete;
    ~Arena();
  };
  Arena arena_;
  std::vector<std::uint64_t> arena_at_;  // per file, its first entry
  mutable std::vector<std::unique_ptr<MegatronFileIndex>> indices_;
  mutable std::unique_ptr<std::once_flag[]> built_;
};

}  // namespace borealis
