// Blended training mixtures: which tokens make training sample i.
//
// A Mixture takes a data list (weight prefix corpus), a sequence length L and
// a number of samples N, and maps every sample i < N of the train split to
// the token spans it is made of. Two levels of blending, as AuroraGPT runs
// Megatron-DeepSpeed: corpora are blended by their summed weights, and the
// files of each corpus by their weights inside it (both with Blender).
//
// Two orders. The "megatron" order is Megatron-DeepSpeed's own, bit for bit
// (data/megatron_order.h). The "fast" order inside one file:
// - the split (--split 98,1,1) takes a range of documents, as Megatron does;
//   the train range's tokens, concatenated in document order, form the
//   file's stream of T tokens;
// - an epoch holds S = floor((T - 1) / L) samples of L + 1 tokens, sample r
//   starting at token r L (consecutive samples share one token, as in
//   Megatron); epoch 0 starts at token 0, every later epoch at a keyed
//   offset, wrapping from the end of the stream to its start, so that sample
//   boundaries differ from epoch to epoch;
// - the samples of epoch e are visited in the order of a keyed bijective
//   permutation of [0, S) (KeyedPermutation), computed on the fly: no
//   shuffle arrays are stored.
// Documents are not reordered inside a file (Megatron shuffles them per
// epoch); this is what lets a sample be located by a binary search over the
// .idx pointers, with no per-document index built or stored.
//
// Building reads only a few bytes of each .idx (header and two pointers);
// files are memory-mapped when a sample first needs them.
//
// What is stored is the blend: for every sample, its file and its number
// among that file's samples, compactly in the fast order (FastBlend, 3 to 5
// bytes per sample, data/fast_order.h) and as 8-byte records in the
// megatron order. It is built in parallel (corpora on separate threads; the
// result does not depend on the thread count) and cached in
// CACHE_DIR/<key>.mix, written atomically, where the key hashes everything
// that determines it. A large fast-order blend is built in the background
// in rounds of doubling size: the first sample is served at once and a
// sample waits only for its round (MixOptions::background_from).
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/mapped_file.h"
#include "data/data_list.h"
#include "data/fast_order.h"
#include "data/indexed_dataset.h"
#include "data/megatron_order.h"

namespace borealis {

enum class MixOrder { fast, megatron };
const char* order_name(MixOrder order);

struct MixOptions {
  std::vector<DataListEntry> list;
  std::uint64_t seq_len = 0;
  std::uint64_t samples = 0;  // samples of the chosen part
  // Which part of the split the samples come from: 0 train, 1 valid, 2 test.
  // In the valid and test parts, a file whose part is too short for one
  // sample is left out of the blend (its weight counts as zero).
  int part = 0;
  std::uint64_t seed = 1234;
  std::array<double, 3> split = {969, 30, 1};  // train, valid, test (Megatron's default)
  std::filesystem::path cache_dir;             // empty: build in memory, cache nothing
  unsigned threads = 0;                        // 0: all cores
  MixOrder order = MixOrder::fast;
  // Fast order, no cache: a blend of at least this many samples is built in
  // the background, and sample(i) waits only for the round holding i (the
  // first 65,536 samples are ready within milliseconds whatever the size).
  // Smaller blends are built before the constructor returns.
  std::uint64_t background_from = std::uint64_t{1} << 22;
  // AuroraGPT's --blend-sample-in-corpus / --shuffle-sample-in-corpus
  // (megatron order only): blend a corpus's files by weight instead of
  // concatenating them; shuffle the corpus's samples.
  bool blend_sample_in_corpus = false;
  bool shuffle_sample_in_corpus = false;
};

// "train", "valid" or "test".
const char* split_part_name(int part);

// Documents [begin, end) of `size` that split part `part` (0 train, 1 valid,
// 2 test) gets; Megatron's get_train_valid_test_split_ rounding.
std::array<std::uint64_t, 2> split_range(const std::array<double, 3>& split, std::uint64_t size,
                                         int part);

// A bijection of [0, n) chosen by `key`: a 4-round Feistel network on the
// smallest even-bit power of two >= n, cycle-walking back into range.
class KeyedPermutation {
 public:
  KeyedPermutation(std::uint64_t n, std::uint64_t key);
  std::uint64_t operator()(std::uint64_t x) const;

 private:
  std::uint64_t n_;
  unsigned half_bits_ = 0;
  std::uint64_t mask_ = 0;
  std::array<std::uint64_t, 4> keys_{};
};

// The keys the fast order uses for file `file`, epoch `epoch`.
std::uint64_t epoch_permutation_key(std::uint64_t seed, std::size_t file, std::uint64_t epoch);
// Where epoch `epoch` starts in a stream of `tokens` tokens (0 for epoch 0).
std::uint64_t epoch_start(std::uint64_t seed, std::size_t file, std::uint64_t epoch,
                          std::uint64_t tokens);

struct MixFile {
  DataListEntry entry;
  std::size_t corpus = 0;
  std::uint64_t sequences = 0;               // in the whole file
  std::uint64_t first_doc = 0, end_doc = 0;  // the chosen split part's sequences
  std::uint64_t first_token = 0;             // token offset of first_doc in .bin
  std::uint64_t tokens = 0;                  // T
  std::uint64_t samples_per_epoch = 0;       // S
  std::uint64_t samples = 0;                 // drawn from this file
  double weight = 0;  // entry.weight, or 0 when the file is left out of this part
  double weight_in_corpus = 0;
};

struct MixCorpus {
  std::string name;
  double weight = 0;  // summed file weights
  std::vector<std::size_t> files;
  std::uint64_t samples = 0;
};

// One contiguous span of a sample: tokens [offset, offset + length) of
// sequence `document` of file `file`.
struct SamplePiece {
  std::size_t file = 0;
  std::uint64_t document = 0;
  std::uint64_t offset = 0;
  std::uint64_t length = 0;
};

class Mixture {
 public:
  // Opens every file (errors name the list line), then loads the blend from
  // the cache or builds it (and writes the cache).
  explicit Mixture(MixOptions options);
  // Stops a background build that is still running (nothing is cached then).
  ~Mixture();
  Mixture(const Mixture&) = delete;
  Mixture& operator=(const Mixture&) = delete;

  std::uint64_t size() const { return options_.samples; }
  const MixOptions& options() const { return options_; }
  // The files and corpora; their `samples` counts are final once wait()
  // returns (at once unless the blend is built in the background).
  const std::vector<MixFile>& files() const { return files_; }
  const std::vector<MixCorpus>& corpora() const { return corpora_; }
  // Waits for a background build (and its cache write) to finish; rethrows
  // its error, such as a drawn file too short for one sample.
  void wait() const;
  // True while a background build runs.
  bool building() const;

  // Sample i (i < size()): its pieces in order, L + 1 tokens in all.
  std::vector<SamplePiece> sample(std::uint64_t i) const;
  // File k, opened (memory-mapped) on first use; thread-safe.
  const IndexedDataset& dataset(std::size_t k) const;
  // Which file sample i comes from and its number among that file's samples.
  std::pair<std::size_t, std::uint64_t> source(std::uint64_t i) const;

  bool from_cache() const { return from_cache_; }
  const std::filesystem::path& cache_path() const { return cache_path_; }
  const std::string& key() const { return key_; }
  // Seconds from the start of the constructor until the whole blend was
  // loaded or built (waits for a background build).
  double build_seconds() const;
  // Seconds the constructor took: reading the headers, then loading the
  // blend, building it, or starting it in the background.
  double ready_seconds() const { return ready_seconds_; }

  // The megatron order's plans and per-file indices (null in the fast order).
  const MegatronOrder* megatron() const { return megatron_.get(); }
  // Builds every per-file index a sample can need now rather than on first
  // use (megatron order; nothing to do in the fast order).
  void prepare(unsigned threads) const;

 private:
  void open_files();
  void build(unsigned threads);
  bool load_cache();
  void write_cache() const;
  void count_file_samples();  // fast order: every file's samples, from the blend
  void finish();              // per-corpus counts and checks once the blend is complete
  void build_in_background(unsigned threads, const std::function<double()>& since_start);
  std::pair<std::vector<double>, std::vector<std::vector<double>>> blend_weights() const;
  void wait_for(std::uint64_t samples) const;  // until sample(samples - 1) can be read

  MixOptions options_;
  std::vector<MixFile> files_;
  std::vector<MixCorpus> corpora_;
  std::string key_;
  std::filesystem::path cache_path_;
  bool from_cache_ = false;
  double build_seconds_ = 0, ready_seconds_ = 0;
  // A background build: samples below ready_ can be read; done_ once it has
  // ended (error_ says how). Cancelled by the destructor.
  struct Background {
    std::thread thread;
    mutable std::mutex mutex;
    mutable std::condition_variable changed;
    std::atomic<std::uint64_t> ready{0};
    std::atomic<bool> cancel{false};
    bool done = false;
    std::exception_ptr error;
  };
  std::unique_ptr<Background> background_;
  // The fast order's blend; built here or read from the mapped cache.
  FastBlend blend_;
  // Megatron order, per sample: file << 40 | number among the file's samples.
  std::vector<std::uint64_t> built_;
  MappedFile mapped_;
  const std::byte* records_ = nullptr;
  // Building reads a few bytes of each .idx; sampling maps the files it needs.
  mutable std::vector<std::unique_ptr<IndexedDataset>> datasets_;
  mutable std::unique_ptr<std::once_flag[]> opened_;
  std::unique_ptr<MegatronOrder> megatron_;
  std::vector<std::uint64_t> keep_;  // megatron: per file, 1 + the largest sample number drawn
};

}  // namespace borealis
