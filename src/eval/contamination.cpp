// How the scan is fast:
//
// - Each window of n tokens gets a 64-bit polynomial hash, rolled one token at
//   a time (two multiplies a token, whatever n is, and two more to mix it).
//   XXH3 over each window from scratch costs 2-3x as much per token
//   (bench/contamination_bench.cpp prints both).
// - Almost no corpus window is a benchmark n-gram, so the common case must be
//   a cheap "no": a blocked Bloom filter (one 64-bit word per key, three
//   bits) of 16+ bits per n-gram passes ~0.5% of other windows. Only those go
//   to the open-addressing table, whose 32-bit fingerprints reject most of
//   them before the tokens themselves are compared. Hashes are computed a
//   batch at a time and the batch's filter words prefetched together, so the
//   filter need not fit L2: for 10k docs of 50-300 tokens, 4 MiB (three bits
//   a key) scanned faster than 2 MiB (two bits), which sends 7x more windows
//   to the table.
// - Distinct n-grams are numbered once (an n-gram shared by docs, or repeated
//   in one, is one entry with a list of its docs), so the scan only sets a
//   "found" byte per n-gram; the per-doc counts come from those bytes at
//   report time. Setting a byte is idempotent, so any split of the corpus over
//   threads gives the same result.
#include "eval/contamination.h"

#include <fmt/format.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <utility>

#include "core/error.h"
#include "core/stopwatch.h"
#include "core/threads.h"

namespace borealis {
namespace {

constexpr std::uint64_t kBase = 0x9E3779B97F4A7C15ull;  // odd: invertible mod 2^64
constexpr std::uint32_t kEmpty = 0xFFFFFFFFu;
constexpr std::size_t kBatch = 64;  // windows hashed, then looked up, together
// At least this many filter bits per distinct n-gram (rounded up to a power
// of two words): with three bits a word, about 0.5% false positives.
constexpr std::uint64_t kFilterBitsPerNgram = 16;

// Tokens compare as their integer values: a negative token of a signed type
// becomes a huge value, which no benchmark token (u32) equals.
template <class T>
inline std::uint64_t value(T t) {
  return static_cast<std::uint64_t>(t);
}

// MurmurHash3's finalizer: the polynomial hash's low bits depend only on the
// low bits of the tokens, so they are spread before being used as indices.
inline std::uint64_t mix(std::uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return h;
}

inline std::uint32_t fingerprint(std::uint64_t m) {
  return static_cast<std::uint32_t>((m * 0x9FB21C651E98DF25ull) >> 32);
}

inline std::uint64_t filter_bits(std::uint64_t m) {
  return (std::uint64_t{1} << (m & 63)) | (std::uint64_t{1} << ((m >> 6) & 63)) |
         (std::uint64_t{1} << ((m >> 12) & 63));
}

// A table slot; zero bytes are an empty slot, so fresh memory is an empty table.
struct Slot {
  std::uint32_t fingerprint = 0;
  std::uint32_t id_plus_1 = 0;
};

// Zero-filled memory for the arrays the scan reads at random, in 2 MiB pages
// where the kernel gives them: on virtual machines a TLB miss on 4 KiB pages
// costs more than the cache miss itself.
template <class T>
class HugeArray {
 public:
  HugeArray() = default;
  explicit HugeArray(std::size_t n) : size_(n) {
    constexpr std::size_t kHuge = std::size_t{1} << 21;
    bytes_ = (std::max<std::size_t>(n * sizeof(T), 1) + kHuge - 1) / kHuge * kHuge + kHuge;
    base_ = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base_ == MAP_FAILED) {
      base_ = nullptr;
      throw_errno(fmt::format("cannot allocate {} bytes", bytes_), "contamination index", errno);
    }
    const auto start = reinterpret_cast<std::uintptr_t>(base_);
    const auto aligned = (start + kHuge - 1) & ~(kHuge - 1);
    ::madvise(reinterpret_cast<void*>(aligned), start + bytes_ - aligned,
              MADV_HUGEPAGE);  // a hint; failure is harmless
    data_ = reinterpret_cast<T*>(aligned);
  }
  ~HugeArray() {
    if (base_ != nullptr) ::munmap(base_, bytes_);
  }
  HugeArray(HugeArray&& o) noexcept
      : base_(std::exchange(o.base_, nullptr)),
        bytes_(std::exchange(o.bytes_, 0)),
        data_(std::exchange(o.data_, nullptr)),
        size_(std::exchange(o.size_, 0)) {}
  HugeArray& operator=(HugeArray&& o) noexcept {
    std::swap(base_, o.base_);
    std::swap(bytes_, o.bytes_);
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    return *this;
  }

  T& operator[](std::size_t i) { return data_[i]; }
  const T& operator[](std::size_t i) const { return data_[i]; }
  std::size_t size() const { return size_; }

 private:
  void* base_ = nullptr;
  std::size_t bytes_ = 0;
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace

struct ContaminationIndex::State {
  ContaminationOptions options;
  std::vector<BenchmarkDoc> docs;
  std::size_t n = 0;
  std::uint64_t hash_mask = ~std::uint64_t{0};
  std::uint64_t top = 1;  // kBase^(n-1): the weight of the token leaving the window

  HugeArray<std::uint64_t> filter;
  int filter_shift = 0;
  HugeArray<Slot> slots;  // load factor <= 1/2
  std::uint64_t slot_mask = 0;
  std::vector<const std::uint32_t*> ngram_tokens;  // id -> its first occurrence in a doc
  std::vector<std::uint32_t> doc_begin;  // id -> doc_list[doc_begin[id], doc_begin[id + 1])
  std::vector<std::uint32_t> doc_list;   // ascending docs per n-gram
  std::vector<std::int64_t> doc_ngrams;
  std::vector<std::uint8_t> found;  // per id, written by the scan threads

  std::int64_t too_short = 0;
  std::uint64_t corpus_tokens = 0;
  std::uint64_t corpus_documents = 0;
  double seconds = 0;

  // Calls f(i, keys, count) for the windows starting in [first, last), in
  // batches: keys[j] is the mixed hash of tokens[i + j, i + j + n).
  template <class T, class F>
  void for_each_batch(const T* tokens, std::size_t first, std::size_t last, F&& f) const {
    std::uint64_t keys[kBatch];
    std::uint64_t h = 0;
    for (std::size_t j = 0; j < n; ++j) h = h * kBase + value(tokens[first + j]);
    for (std::size_t i = first; i < last; i += kBatch) {
      const std::size_t count = std::min(kBatch, last - i);
      for (std::size_t j = 0; j < count; ++j) {
        keys[j] = mix(h & hash_mask);
        if (i + j + 1 < last)
          h = (h - value(tokens[i + j]) * top) * kBase + value(tokens[i + j + n]);
      }
      f(i, keys, count);
    }
  }

  template <class T>
  bool same(const std::uint32_t* ngram, const T* window) const {
    for (std::size_t j = 0; j < n; ++j) {
      if (value(ngram[j]) != value(window[j])) return false;
    }
    return true;
  }

  // The id of the n-gram at `window`, or kEmpty; `slot` ends at the match or
  // at the empty slot where it would go.
  template <class T>
  std::uint32_t find(std::uint64_t m, const T* window, std::uint64_t& slot) const {
    const std::uint32_t fp = fingerprint(m);
    for (slot = (m >> 18) & slot_mask;; slot = (slot + 1) & slot_mask) {
      const Slot s = slots[slot];
      if (s.id_plus_1 == 0) return kEmpty;
      if (s.fingerprint == fp && same(ngram_tokens[s.id_plus_1 - 1], window))
        return s.id_plus_1 - 1;
    }
  }

  // A batch's lookups are issued together (prefetches, then a branch-free
  // filter pass), so their cache misses overlap instead of queueing behind
  // one another; one window at a time ran at half the speed.
  template <class T>
  void scan_tokens(const T* tokens, std::size_t first, std::size_t last) {
    for_each_batch(
        tokens, first, last, [&](std::size_t i, const std::uint64_t* keys, std::size_t count) {
          for (std::size_t j = 0; j < count; ++j)
            __builtin_prefetch(&filter[keys[j] >> filter_shift]);
          std::uint32_t candidates[kBatch];
          std::size_t c = 0;
          for (std::size_t j = 0; j < count; ++j) {
            const std::uint64_t bits = filter_bits(keys[j]);
            candidates[c] = static_cast<std::uint32_t>(j);
            c += (filter[keys[j] >> filter_shift] & bits) == bits ? 1 : 0;
          }
          for (std::size_t k = 0; k < c; ++k)
            __builtin_prefetch(&slots[(keys[candidates[k]] >> 18) & slot_mask]);
          for (std::size_t k = 0; k < c; ++k) {
            std::uint64_t slot;
            const std::uint32_t id = find(keys[candidates[k]], tokens + i + candidates[k], slot);
            if (id != kEmpty)
              std::atomic_ref<std::uint8_t>(found[id]).store(1, std::memory_order_relaxed);
          }
        });
  }

  void build();
  template <class T>
  void scan(const IndexedDataset& corpus, const ScanProgress& progress);
};

void ContaminationIndex::State::build() {
  std::uint64_t windows = 0;
  for (const auto& d : docs) {
    if (d.tokens.size() < n) {
      ++too_short;
    } else {
      windows += d.tokens.size() - n + 1;
    }
  }
  if (docs.size() >= kEmpty || windows >= kEmpty) {
    throw Error(fmt::format("{} docs with {} n-grams of {} tokens are more than the index holds "
                            "(2^32 - 1 of each)",
                            docs.size(), windows, n),
                "benchmark docs");
  }
  slots = HugeArray<Slot>(std::bit_ceil(std::max<std::uint64_t>(16, 2 * windows)));
  slot_mask = slots.size() - 1;

  // Number the distinct n-grams; note each (n-gram, doc) pair once, in doc order.
  std::vector<std::uint64_t> keys;                             // id -> mixed hash, for the filter
  std::vector<std::uint32_t> last_doc;                         // id -> last doc that added a pair
  std::vector<std::pair<std::uint32_t, std::uint32_t>> pairs;  // (id, doc)
  doc_ngrams.assign(docs.size(), 0);
  ngram_tokens.reserve(windows);  // at most one n-gram per window: no regrowth
  keys.reserve(windows);
  last_doc.reserve(windows);
  pairs.reserve(windows);
  for (std::uint32_t d = 0; d < docs.size(); ++d) {
    const auto& tokens = docs[d].tokens;
    if (tokens.size() < n) continue;
    for_each_batch(tokens.data(), 0, tokens.size() - n + 1,
                   [&](std::size_t i, const std::uint64_t* batch, std::size_t count) {
                     for (std::size_t j = 0; j < count; ++j)
                       __builtin_prefetch(&slots[(batch[j] >> 18) & slot_mask]);
                     for (std::size_t j = 0; j < count; ++j) {
                       const std::uint64_t m = batch[j];
                       std::uint64_t slot;
                       std::uint32_t id = find(m, tokens.data() + i + j, slot);
                       if (id == kEmpty) {
                         id = static_cast<std::uint32_t>(ngram_tokens.size());
                         slots[slot] = {fingerprint(m), id + 1};
                         ngram_tokens.push_back(tokens.data() + i + j);
                         keys.push_back(m);
                         last_doc.push_back(kEmpty);
                       }
                       if (last_doc[id] != d) {
                         last_doc[id] = d;
                         pairs.emplace_back(id, d);
                         ++doc_ngrams[d];
                       }
                     }
                   });
  }

  const std::size_t ids = ngram_tokens.size();
  doc_begin.assign(ids + 1, 0);
  for (const auto& [id, d] : pairs) ++doc_begin[id + 1];
  for (std::size_t i = 0; i < ids; ++i) doc_begin[i + 1] += doc_begin[i];
  doc_list.resize(pairs.size());
  std::vector<std::uint32_t> next(doc_begin.begin(), doc_begin.end() - 1);
  for (const auto& [id, d] : pairs) doc_list[next[id]++] = d;

  const std::uint64_t words =
      std::bit_ceil(std::max<std::uint64_t>(64, ids * kFilterBitsPerNgram / 64));
  filter = HugeArray<std::uint64_t>(words);
  filter_shift = 64 - std::countr_zero(words);
  for (const std::uint64_t m : keys) filter[m >> filter_shift] |= filter_bits(m);
  found.assign(ids, 0);
}

template <class T>
void ContaminationIndex::State::scan(const IndexedDataset& corpus, const ScanProgress& progress) {
  const std::uint64_t total = corpus.tokens();
  const std::size_t sequences = corpus.sequences();
  const std::size_t documents = corpus.documents();
  if (total == 0) return;
  const T* base = reinterpret_cast<const T*>(corpus.raw(0).data());  // verify(): pointer(0) == 0
  // First token of document d, for d in [0, documents].
  auto doc_start = [&](std::size_t d) -> std::uint64_t {
    const auto s = static_cast<std::size_t>(corpus.doc_index(d));
    return s == sequences ? total : static_cast<std::uint64_t>(corpus.pointer(s)) / sizeof(T);
  };

  const int threads = options.threads > 0 ? options.threads : cpu_threads();
  // Equal pieces of the token array, cut anywhere (a long document spreads
  // over several); each piece scans the windows that start in it.
  const std::uint64_t piece = std::clamp<std::uint64_t>(
      total / (static_cast<std::uint64_t>(threads) * 16), 1 << 16, 1 << 24);
  const auto pieces = static_cast<std::int64_t>((total + piece - 1) / piece);
  const auto page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  // madvise on the pages wholly inside tokens [from, to).
  auto advise = [&](std::uint64_t from, std::uint64_t to, int advice) {
    const std::uint64_t b = (from * sizeof(T) + page - 1) / page * page;
    const std::uint64_t e = to * sizeof(T) / page * page;
    auto* start = const_cast<std::byte*>(reinterpret_cast<const std::byte*>(base));
    if (e > b) ::madvise(start + b, e - b, advice);
  };
  // The .bin is mapped for random access (no read-ahead on faults), and one
  // MADV_WILLNEED reads at most the file's read-ahead window (read_ahead_kb,
  // 128 KiB by default) and ignores the rest: so a cold scan asks for its
  // pieces ahead 128 KiB at a time (1.6x slower with one call a piece).
  auto read_ahead = [&](std::uint64_t from, std::uint64_t to) {
    constexpr std::uint64_t kChunk = (std::uint64_t{128} << 10) / sizeof(T);
    for (std::uint64_t at = std::min(from, total); at < std::min(to, total); at += kChunk) {
      advise(at, std::min({at + kChunk, to, total}), MADV_WILLNEED);
    }
  };

  std::mutex progress_mutex;
  std::uint64_t done = 0;
  std::exception_ptr failure;
  std::atomic<bool> failed{false};

  read_ahead(0, 2 * piece * static_cast<std::uint64_t>(threads));
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
  for (std::int64_t p = 0; p < pieces; ++p) {
    if (failed.load(std::memory_order_relaxed)) continue;
    const std::uint64_t begin = static_cast<std::uint64_t>(p) * piece;
    const std::uint64_t end = std::min(total, begin + piece);
    // Pieces are taken in order: read ahead the one this thread will likely
    // take after its next (one piece ahead ran 10-20% slower cold).
    const std::uint64_t ahead = begin + 2 * piece * static_cast<std::uint64_t>(threads);
    read_ahead(ahead, ahead + piece);
#ifdef MADV_POPULATE_READ
    // Map the piece's pages in one call, not a page fault per 64 KiB: half
    // the system time on a virtual machine, where faults are dear.
    advise(begin, std::min(total, end + n), MADV_POPULATE_READ);
#endif
    // The first document that ends after `begin`.
    std::size_t lo = 0, hi = documents;
    while (lo < hi) {
      const std::size_t mid = lo + (hi - lo) / 2;
      if (doc_start(mid + 1) > begin) {
        hi = mid;
      } else {
        lo = mid + 1;
      }
    }
    for (std::size_t d = lo; d < documents; ++d) {
      const std::uint64_t start = doc_start(d);
      if (start >= end) break;
      const std::uint64_t stop = doc_start(d + 1);
      if (stop - start < n) continue;
      const std::uint64_t first = std::max(start, begin);
      const std::uint64_t last = std::min(stop - n + 1, end);
      if (first < last) scan_tokens(base + start, first - start, last - start);
    }
    // Pages read once leave this process's resident set (they stay in the
    // page cache), so memory stays bounded by the benchmark, not the corpus.
    advise(begin, end, MADV_DONTNEED);
    if (progress) {
      try {
        std::lock_guard lock(progress_mutex);
        done += end - begin;
        progress(done, total);
      } catch (...) {
        std::lock_guard lock(progress_mutex);
        if (!failure) failure = std::current_exception();
        failed = true;
      }
    }
  }
  if (failure) std::rethrow_exception(failure);
}

ContaminationIndex::ContaminationIndex(std::vector<BenchmarkDoc> docs,
                                       const ContaminationOptions& options)
    : state_(std::make_unique<State>()) {
  if (options.ngram < 1) {
    throw Error(fmt::format("the n-gram length must be at least 1, got {}", options.ngram),
                "ngram");
  }
  if (options.threads < 0) {
    throw Error(fmt::format("the thread count must be 0 (all) or more, got {}", options.threads),
                "threads");
  }
  if (options.hash_bits < 0 || options.hash_bits > 64) {
    throw std::invalid_argument("ContaminationOptions::hash_bits must be in [0, 64]");
  }
  State& s = *state_;
  s.options = options;
  s.docs = std::move(docs);
  s.n = static_cast<std::size_t>(options.ngram);
  s.hash_mask =
      options.hash_bits == 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << options.hash_bits) - 1;
  for (std::size_t j = 1; j < s.n; ++j) s.top *= kBase;
  s.build();
}

ContaminationIndex::~ContaminationIndex() = default;
ContaminationIndex::ContaminationIndex(ContaminationIndex&&) noexcept = default;
ContaminationIndex& ContaminationIndex::operator=(ContaminationIndex&&) noexcept = default;

const std::vector<BenchmarkDoc>& ContaminationIndex::docs() const {
  return state_->docs;
}

std::size_t ContaminationIndex::distinct_ngrams() const {
  return state_->ngram_tokens.size();
}

std::size_t ContaminationIndex::memory_bytes() const {
  const State& s = *state_;
  return s.filter.size() * sizeof(std::uint64_t) + s.slots.size() * sizeof(Slot) +
         s.ngram_tokens.size() * sizeof(const std::uint32_t*) +
         (s.doc_begin.size() + s.doc_list.size()) * sizeof(std::uint32_t) + s.found.size();
}

void ContaminationIndex::scan(const IndexedDataset& corpus, const ScanProgress& progress) {
  const auto start = std::chrono::steady_clock::now();
  corpus.verify();
  State& s = *state_;
  switch (corpus.token_type()) {
    case TokenType::U8:
      s.scan<std::uint8_t>(corpus, progress);
      break;
    case TokenType::I8:
      s.scan<std::int8_t>(corpus, progress);
      break;
    case TokenType::I16:
      s.scan<std::int16_t>(corpus, progress);
      break;
    case TokenType::I32:
      s.scan<std::int32_t>(corpus, progress);
      break;
    case TokenType::I64:
      s.scan<std::int64_t>(corpus, progress);
      break;
    case TokenType::U16:
      s.scan<std::uint16_t>(corpus, progress);
      break;
  }
  s.corpus_tokens += corpus.tokens();
  s.corpus_documents += corpus.documents();
  s.seconds += seconds_since(start);
}

ContaminationReport ContaminationIndex::report() const {
  const State& s = *state_;
  ContaminationReport r;
  r.ngrams = s.doc_ngrams;
  r.hits.assign(s.docs.size(), 0);
  for (std::size_t id = 0; id < s.found.size(); ++id) {
    if (s.found[id] == 0) continue;
    for (std::uint32_t k = s.doc_begin[id]; k < s.doc_begin[id + 1]; ++k) ++r.hits[s.doc_list[k]];
  }
  r.flagged.resize(s.docs.size());
  for (std::size_t d = 0; d < s.docs.size(); ++d) {
    r.flagged[d] = r.hits[d] > 0;
    r.docs_flagged += r.flagged[d] ? 1 : 0;
  }
  r.docs_too_short = s.too_short;
  r.corpus_tokens = s.corpus_tokens;
  r.corpus_documents = s.corpus_documents;
  r.seconds = s.seconds;
  return r;
}

}  // namespace borealis
