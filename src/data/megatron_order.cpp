#include "data/megatron_order.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/error.h"
#include "core/tasks.h"
#include "data/mixture.h"
#include "data/numpy_random.h"

namespace borealis {

std::uint64_t megatron_requested_samples(std::uint64_t samples, double weight) {
  // Python: int(math.ceil(val * weight * 1.005)), left to right.
  const double x = static_cast<double>(samples) * weight * 1.005;
  return static_cast<std::uint64_t>(std::ceil(x));
}

MegatronFilePlan megatron_file_plan(std::uint64_t tokens, std::uint64_t seq_len,
                                    std::uint64_t requested) {
  MegatronFilePlan p;
  p.requested = requested;
  p.tokens = tokens;
  p.samples_per_epoch = (tokens - 1) / seq_len;
  // The fewest epochs with (E T - 1) / L >= requested.
  std::uint64_t e = requested * seq_len / tokens;
  e = e > 2 ? e - 2 : 1;
  while ((e * tokens - 1) / seq_len < requested) ++e;
  while (e > 1 && ((e - 1) * tokens - 1) / seq_len >= requested) --e;
  p.epochs = e;
  p.samples = (e * tokens - 1) / seq_len;
  p.first_samples = p.samples;
  if (e > 1) {
    const std::uint64_t before_last = ((e - 1) * tokens - 1) / seq_len;
    const std::uint64_t last = requested - before_last;
    p.separate_last_epoch =
        last < static_cast<std::uint64_t>(0.80 * static_cast<double>(p.samples_per_epoch));
    if (p.separate_last_epoch) p.first_samples = before_last;
  }
  return p;
}

// ------------------------------------------------------------------ blending

namespace {

using V4 = double __attribute__((vector_size(32)));
using I4 = std::int64_t __attribute__((vector_size(32)));

V4 load4(const double* p) {
  V4 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// The first k < n with the largest w[k] * t - c[k], as a scan with a strict
// > finds it: each of 4 lanes keeps its first largest value, then the lanes'
// winners are compared (equal values: the lower index).
std::size_t first_max(const double* w, const double* c, std::size_t n, double t, double& value) {
  std::size_t k = 0, best = 0;
  double v = -std::numeric_limits<double>::infinity();
  if (n >= 4) {
    const V4 vt = {t, t, t, t};
    V4 top = load4(w) * vt - load4(c);
    I4 at = {0, 1, 2, 3}, index = at;
    const I4 step = {4, 4, 4, 4};
    for (k = 4; k + 4 <= n; k += 4) {
      at += step;
      const V4 e = load4(w + k) * vt - load4(c + k);
      const I4 greater = e > top;
      top = greater ? e : top;
      index = greater ? at : index;
    }
    v = top[0];
    best = static_cast<std::size_t>(index[0]);
    for (int l = 1; l < 4; ++l) {
      const auto i = static_cast<std::size_t>(index[l]);
      if (top[l] > v || (top[l] == v && i < best)) v = top[l], best = i;
    }
  }
  for (; k < n; ++k) {
    const double e = w[k] * t - c[k];
    if (e > v) v = e, best = k;
  }
  value = v;
  return best;
}

}  // namespace

MegatronBlend::MegatronBlend(std::vector<double> weights)
    : weights_(std::move(weights)), taken_(weights_.size(), 0.0), counts_(weights_.size(), 0) {
  if (weights_.empty()) throw std::invalid_argument("MegatronBlend: no sources");
  scan_ = weights_.size() <= 4 * kBlock;
  if (!scan_) {
    const std::size_t blocks = (weights_.size() + kBlock - 1) / kBlock;
    block_weight_.assign(blocks, 0);
    block_offset_.assign(blocks, 0);
    for (std::size_t b = 0; b < blocks; ++b) {
      const std::size_t end = std::min(weights_.size(), (b + 1) * kBlock);
      for (std::size_t k = b * kBlock; k < end; ++k) {
        block_weight_[b] = std::max(block_weight_[b], weights_[k]);
      }
      reset_block(b, 1.0);
    }
  }
}

std::size_t MegatronBlend::best_in(std::size_t block, double t, double& value) const {
  const std::size_t begin = block * kBlock, end = std::min(weights_.size(), begin + kBlock);
  return begin + first_max(weights_.data() + begin, taken_.data() + begin, end - begin, t, value);
}

// The block's bound from now on: its exact maximum m at t, growing by its
// largest weight per step, kept as wmax * t' - offset (offset = wmax t - m).
void MegatronBlend::reset_block(std::size_t b, double t) {
  double m;
  best_in(b, t, m);
  block_offset_[b] = block_weight_[b] * t - m;
}

std::size_t MegatronBlend::next() {
  const double t = static_cast<double>(std::max<std::uint64_t>(step_, 1));
  ++step_;
  std::size_t best = 0;
  double v;
  if (scan_) {
    best = first_max(weights_.data(), taken_.data(), weights_.size(), t, v);
  } else {
    // A block's maximum grows by at most its largest weight per step (taking
    // a sample only lowers it); the slack covers rounding, far above the few
    // ulps the roundings of the bound and of w t - count can add.
    const double slack = 1e-13 * (t + 1);
    const std::size_t blocks = block_weight_.size();
    double top;
    const std::size_t first = first_max(block_weight_.data(), block_offset_.data(), blocks, t, top);
    best = best_in(first, t, v);
    block_offset_[first] = block_weight_[first] * t - v;
    const V4 vt = {t, t, t, t};
    std::size_t b = 0;
    const auto visit = [&](std::size_t blk) {
      if (blk == first) return;
      double bv;
      const std::size_t k = best_in(blk, t, bv);
      block_offset_[blk] = block_weight_[blk] * t - bv;
      if (bv > v || (bv == v && k < best)) v = bv, best = k;
    };
    for (; b + 4 <= blocks; b += 4) {
      const V4 bound = load4(block_weight_.data() + b) * vt - load4(block_offset_.data() + b);
      const V4 floor = {v - slack, v - slack, v - slack, v - slack};
      const I4 near = bound >= floor;
      if ((near[0] | near[1] | near[2] | near[3]) == 0) continue;
      for (std::size_t l = 0; l < 4; ++l) {
        if (near[l] != 0) visit(b + l);
      }
    }
    for (; b < blocks; ++b) {
      if (block_weight_[b] * t - block_offset_[b] >= v - slack) visit(b);
    }
  }
  taken_[best] += 1.0;
  ++counts_[best];
  if (!scan_) reset_block(best / kBlock, t);  // the winner's block: tight again
  return best;
}

// ------------------------------------------------------------- one file's index

namespace {

// Per-thread buffers for the parts of a file's index that are not kept:
// allocating and freeing them per file costs more than filling them.
struct Scratch {
  std::vector<std::uint64_t> starts;
  std::vector<std::uint32_t> shuffle;
};

template <class T>
T* scratch_of(std::vector<T>& v, std::size_t n) {
  if (v.size() < n) {
    v.clear();
    v.shrink_to_fit();
    v.resize(n + n / 4);
  }
  return v.data();
}

void read_sizes(const IndexedDataset& ds, std::uint64_t first, std::uint64_t count,
                std::int32_t* out) {
  const std::string path = ds.prefix().string() + ".idx";
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw_errno("cannot open", path, errno);
  auto* bytes = reinterpret_cast<char*>(out);
  std::size_t left = count * 4, at = kIdxHeaderSize + first * 4;
  while (left > 0) {
    const ssize_t got = ::pread(fd, bytes, left, static_cast<off_t>(at));
    if (got <= 0) {
      const int err = got < 0 ? errno : EIO;
      ::close(fd);
      throw_errno("cannot read the sequence sizes", path, err);
    }
    bytes += got, at += static_cast<std::size_t>(got), left -= static_cast<std::size_t>(got);
  }
  ::close(fd);
}

}  // namespace

MegatronFileIndex::MegatronFileIndex(const IndexedDataset& ds, std::uint64_t first_doc,
                                     std::uint64_t end_doc, const MegatronFilePlan& plan,
                                     std::uint64_t seq_len, std::uint32_t seed, std::uint64_t keep,
                                     std::span<std::int32_t> storage) {
  NumpyRandomState rng(seed);
  const std::uint64_t docs = end_doc - first_doc;
  const std::uint64_t doc_idx_size = plan.epochs * docs;
  if (doc_idx_size >= (std::uint64_t{1} << (64 - kOffsetBits))) {
    throw Error(fmt::format("{} epochs of {} documents: too many for the megatron order",
                            plan.epochs, docs),
                ds.prefix().string());
  }
  // Only the shuffled-together epochs are stored: a separate last epoch is
  // shuffled in per-thread scratch, and only the few kept samples that reach
  // into it keep their documents (explicit_). A file asked for 100.5% of its
  // tokens keeps 1 epoch of doc_idx instead of 2.
  const std::uint64_t head = plan.separate_last_epoch ? (plan.epochs - 1) * docs : doc_idx_size;
  if (storage.size() != head) throw std::logic_error("MegatronFileIndex: storage size");
  std::int32_t* stored = storage.data();
  doc_idx_ = storage;
  thread_local std::vector<std::int32_t> tail_scratch;
  if (tail_scratch.size() < doc_idx_size - head) tail_scratch.resize(doc_idx_size - head);
  std::int32_t* tail = tail_scratch.data();
  const auto entry = [&](std::uint64_t p) { return p < head ? stored[p] : tail[p - head]; };
  for (std::uint64_t e = 0; e < plan.epochs; ++e) {
    std::int32_t* out = e * docs < head ? stored + e * docs : tail + (e * docs - head);
    for (std::uint64_t d = 0; d < docs; ++d) out[d] = static_cast<std::int32_t>(first_doc + d);
  }
  if (plan.separate_last_epoch) {
    rng.shuffle(stored, head);
    rng.shuffle(tail, docs);
  } else {
    rng.shuffle(stored, doc_idx_size);
  }

  // The split's sequence sizes, read with pread: faulting in the mapped
  // .idx page by page costs more.
  thread_local std::vector<std::int32_t> sizes;
  sizes.resize(docs);
  read_sizes(ds, first_doc, docs, sizes.data());

  // Where each sample starts: sample 0 at doc_idx[0] offset 0, sample s > 0
  // at the token s L of the documents in doc_idx order (the last token of
  // sample s - 1), which lies in a non-empty document.
  thread_local Scratch scratch;
  // One slot more than the samples: the loop writes a start before it knows
  // whether the document holds one.
  std::uint64_t* starts = scratch_of(scratch.starts, plan.samples + 1);
  if (plan.samples > 0) starts[0] = 0;
  {
    std::uint64_t s = 1, next = seq_len, begin = 0;
    const std::int32_t* size = sizes.data() - first_doc;
    // Positions [from, to) of doc_idx, which `part` holds from its start.
    const auto walk = [&](const std::int32_t* part, std::uint64_t from, std::uint64_t to) {
      for (std::uint64_t p = from; p < to && s < plan.samples; ++p) {
        const std::int32_t* at = part + (p - from);
        if (p + 16 < to) __builtin_prefetch(size + at[16]);
        const std::uint64_t end = begin + static_cast<std::uint64_t>(size[*at]);
        // Most documents hold no sample start or one: no branch for those.
        starts[s] = (p << kOffsetBits) | (next - begin);
        const bool hit = next < end;
        s += hit;
        next += hit ? seq_len : 0;
        for (; next < end && s < plan.samples; ++s, next += seq_len) {
          starts[s] = (p << kOffsetBits) | (next - begin);
        }
        begin = end;
      }
    };
    walk(stored, 0, head);
    walk(tail, head, doc_idx_size);
  }

  // shuffle_idx; where its first `keep` samples start is all that is kept.
  std::uint32_t* shuffle = scratch_of(scratch.shuffle, plan.samples);
  for (std::uint64_t s = 0; s < plan.samples; ++s) shuffle[s] = static_cast<std::uint32_t>(s);
  rng.shuffle(shuffle, plan.first_samples);
  rng.shuffle(shuffle + plan.first_samples, plan.samples - plan.first_samples);
  starts_.resize(std::min(keep, plan.samples));
  for (std::uint64_t n = 0; n < starts_.size(); ++n) starts_[n] = starts[shuffle[n]];
  if (head == doc_idx_size) return;
  // Sample s covers positions [p_s, p_{s+1}] of doc_idx (it ends on the token
  // where sample s + 1 starts); the last sample, at most the rest.
  for (std::uint64_t n = 0; n < starts_.size(); ++n) {
    const std::uint64_t s = shuffle[n];
    const std::uint64_t first = starts[s] >> kOffsetBits;
    const std::uint64_t last =
        s + 1 < plan.samples ? starts[s + 1] >> kOffsetBits : doc_idx_size - 1;
    if (last < head) continue;
    explicit_.push_back({n, first, tail_docs_.size(), last - first + 1});
    for (std::uint64_t p = first; p <= last; ++p) tail_docs_.push_back(entry(p));
  }
}

std::vector<SamplePiece> MegatronFileIndex::pieces(std::size_t file, std::uint64_t n,
                                                   const IndexedDataset& ds,
                                                   std::uint64_t seq_len) const {
  std::vector<SamplePiece> out;
  auto [p, offset] = start(n);
  // A sample reaching into a separate last epoch has its documents here.
  const auto x = std::lower_bound(explicit_.begin(), explicit_.end(), n,
                                  [](const Explicit& e, std::uint64_t v) { return e.sample < v; });
  const Explicit* own = x != explicit_.end() && x->sample == n ? &*x : nullptr;
  std::uint64_t left = seq_len + 1;
  while (left > 0) {
    std::int32_t entry;
    if (own != nullptr) {
      if (p - own->first >= own->count)
        throw std::logic_error("Megatron sample runs past its documents");
      entry = tail_docs_[own->at + (p - own->first)];
    } else {
      if (p >= doc_idx_.size()) throw std::logic_error("Megatron sample runs past doc_idx");
      entry = doc_idx_[p];
    }
    const auto doc = static_cast<std::uint64_t>(entry);
    const auto size = static_cast<std::uint64_t>(ds.size(static_cast<std::size_t>(doc)));
    const std::uint64_t take = std::min(left, size - offset);
    if (take > 0) out.push_back({file, doc, offset, take});
    left -= take;
    offset = 0;
    ++p;
  }
  return out;
}

// ----------------------------------------------------------------- the mixture

MegatronOrder::MegatronOrder(const MixOptions& options, const std::vector<MixFile>& files,
                             const std::vector<MixCorpus>& corpora)
    : samples_(options.samples),
      seq_len_(options.seq_len),
      seed_(static_cast<std::uint32_t>(options.seed)),
      blend_in_corpus_(options.blend_sample_in_corpus),
      shuffle_in_corpus_(options.shuffle_sample_in_corpus) {
  if (options.seed > std::numeric_limits<std::uint32_t>::max()) {
    throw Error("must be below 2^32 in the megatron order (numpy's RandomState seeds)", "--seed");
  }
  plans_.reserve(files.size());
  for (const auto& f : files) {
    files_.push_back({f.entry.prefix.string(), f.entry.where, f.first_doc, f.end_doc});
    const std::uint64_t requested = megatron_requested_samples(options.samples, f.entry.weight);
    if (f.tokens == 0) {
      throw Error(fmt::format("{} has no tokens in the split (Megatron would loop forever "
                              "counting its epochs)",
                              f.entry.prefix.string()),
                  f.entry.where);
    }
    plans_.push_back(megatron_file_plan(f.tokens, options.seq_len, requested));
    if (plans_.back().samples > std::numeric_limits<std::uint32_t>::max()) {
      throw Error(fmt::format("{} has {} samples: at most 2^32 - 1 per file are supported",
                              f.entry.prefix.string(), plans_.back().samples),
                  f.entry.where);
    }
  }
  for (const auto& c : corpora) {
    corpus_names_.push_back(c.name);
    corpus_files_.push_back(c.files);
  }
  corpus_order_.resize(corpora.size());
  std::iota(corpus_order_.begin(), corpus_order_.end(), std::size_t{0});
  std::sort(corpus_order_.begin(), corpus_order_.end(),
            [&](std::size_t a, std::size_t b) { return corpora[a].name < corpora[b].name; });
  std::uint64_t entries = 0;
  for (std::size_t k = 0; k < files.size(); ++k) {
    arena_at_.push_back(entries);
    // A separate last epoch is not stored (MegatronFileIndex).
    const std::uint64_t stored = plans_[k].epochs - (plans_[k].separate_last_epoch ? 1 : 0);
    entries += stored * (files[k].end_doc - files[k].first_doc);
  }
  arena_at_.push_back(entries);
  if (entries > 0) {
    arena_.bytes = entries * sizeof(std::int32_t);
    void* p = ::mmap(nullptr, arena_.bytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      throw_errno(fmt::format("cannot reserve {} bytes for doc_idx", arena_.bytes),
                  "megatron order", errno);
    }
    ::madvise(p, arena_.bytes, MADV_HUGEPAGE);  // a hint; failure is harmless
    arena_.data = static_cast<std::int32_t*>(p);
  }
  indices_.resize(files.size());
  built_ = std::make_unique<std::once_flag[]>(files.size());
}

MegatronOrder::Arena::~Arena() {
  if (data != nullptr) ::munmap(data, bytes);
}

namespace {

// Sizes a large array, asking for huge pages first: on virtual machines,
// faulting in 4 KiB pages costs more than filling them.
template <class T>
void resize_huge(std::vector<T>& v, std::size_t n) {
  constexpr std::uintptr_t kHuge = std::uintptr_t{1} << 21;
  v.reserve(n);
  const auto begin = (reinterpret_cast<std::uintptr_t>(v.data()) + kHuge - 1) & ~(kHuge - 1);
  const auto end = (reinterpret_cast<std::uintptr_t>(v.data() + n)) & ~(kHuge - 1);
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
  v.resize(n);
}

// One corpus's samples in Megatron's BuildCorpusDataset order: for corpus
// sample j, the file (local number) and that file's sample number.
struct CorpusDraws {
  std::uint64_t size = 0;
  std::vector<std::uint64_t> starts;  // concatenated: first sample of each file
  std::vector<std::uint16_t> file;    // blended: per corpus sample
  std::vector<std::uint32_t> number;
  std::vector<std::uint32_t> shuffle;  // shuffled: corpus sample -> position

  std::pair<std::size_t, std::uint64_t> at(std::uint64_t j) const {
    const std::uint64_t p = shuffle.empty() ? j : shuffle[j];
    if (!file.empty()) return {file[p], number[p]};
    const auto it = std::upper_bound(starts.begin(), starts.end(), p) - 1;
    const auto local = static_cast<std::size_t>(it - starts.begin());
    return {local, p - *it};
  }
};

}  // namespace

std::vector<std::uint64_t> MegatronOrder::build(unsigned threads, unsigned sample_bits) const {
  const std::size_t corpora = corpus_names_.size();
  std::vector<CorpusDraws> draws(corpora);
  std::uint64_t total = 0;
  for (std::size_t c = 0; c < corpora; ++c) {
    for (const std::size_t k : corpus_files_[c]) draws[c].size += plans_[k].requested;
    total += draws[c].size;
  }
  if (total > std::numeric_limits<std::uint32_t>::max()) {
    throw Error(
        fmt::format("{} samples with the 0.5% surplus: at most 2^32 - 1 are supported", total),
        "--train-samples");
  }
  const std::uint64_t n = samples_;
  std::vector<std::uint16_t> outer;
  resize_huge(outer, n);

  const auto corpus_task = [&](std::size_t c) {
    CorpusDraws& d = draws[c];
    const auto& files = corpus_files_[c];
    if (blend_in_corpus_ && d.size > 0) {
      if (files.size() > 65536) throw Error("more than 65536 files in one corpus", "data list");
      std::vector<double> w;
      for (const std::size_t k : files) {
        w.push_back(static_cast<double>(plans_[k].requested) / static_cast<double>(d.size));
      }
      MegatronBlend blend(std::move(w));
      resize_huge(d.file, d.size);
      resize_huge(d.number, d.size);
      for (std::uint64_t j = 0; j < d.size; ++j) {
        const std::size_t local = blend.next();
        d.file[j] = static_cast<std::uint16_t>(local);
        d.number[j] = static_cast<std::uint32_t>(blend.counts()[local] - 1);
      }
    } else {
      std::uint64_t at = 0;
      for (const std::size_t k : files) {
        d.starts.push_back(at);
        at += plans_[k].requested;
      }
    }
    if (shuffle_in_corpus_) {
      NumpyRandomState rng(seed_);
      resize_huge(d.shuffle, d.size);
      std::iota(d.shuffle.begin(), d.shuffle.end(), std::uint32_t{0});
      rng.shuffle(d.shuffle);
    }
  };
  const auto outer_task = [&] {
    // BlendableDataset: weights float(size_c) / total, divided by np.sum of them.
    std::vector<double> w;
    for (const std::size_t c : corpus_order_) {
      w.push_back(static_cast<double>(draws[c].size) / static_cast<double>(total));
    }
    const double sum = numpy_sum(w.data(), w.size());
    for (double& x : w) x /= sum;
    MegatronBlend blend(std::move(w));
    for (std::uint64_t i = 0; i < n; ++i) {
      outer[i] = static_cast<std::uint16_t>(corpus_order_[blend.next()]);
    }
  };

  // Task `corpora` is the outer blend; the largest tasks go first.
  std::vector<std::size_t> order(corpora + 1);
  std::iota(order.begin(), order.end(), std::size_t{0});
  const auto cost = [&](std::size_t t) {
    return t == corpora ? n * corpora
                        : draws[t].size * std::min<std::size_t>(corpus_files_[t].size(), 48);
  };
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return cost(a) > cost(b); });
  run_tasks(threads, order.size(), [&](std::size_t t) {
    if (order[t] == corpora) {
      outer_task();
    } else {
      corpus_task(order[t]);
    }
  });

  std::vector<std::uint64_t> records;
  resize_huge(records, n);
  std::vector<std::uint64_t> used(corpora, 0);
  // A concatenated corpus is drawn in order: its current file is a cursor,
  // not a binary search per sample.
  std::vector<std::size_t> cursor(corpora, 0);
  for (std::uint64_t i = 0; i < n; ++i) {
    const std::size_t c = outer[i];
    const std::uint64_t j = used[c]++;
    const CorpusDraws& d = draws[c];
    if (j >= d.size) {
      throw Error(fmt::format("Megatron's blend draws sample {} of corpus {}, which has {}; "
                              "Megatron fails on this sample too (IndexError)",
                              j, corpus_names_[c], d.size),
                  "--train-samples");
    }
    std::pair<std::size_t, std::uint64_t> at;
    if (d.shuffle.empty() && d.file.empty()) {
      std::size_t& f = cursor[c];
      while (f + 1 < d.starts.size() && d.starts[f + 1] <= j) ++f;
      at = {f, j - d.starts[f]};
    } else {
      at = d.at(j);
    }
    const auto [local, number] = at;
    const std::size_t k = corpus_files_[c][local];
    if (number >= plans_[k].samples) {
      throw Error(fmt::format("Megatron's corpus blend draws sample {} of {}, which has {}; "
                              "Megatron fails on this sample too (IndexError)",
                              number, files_[k].prefix, plans_[k].samples),
                  "--train-samples");
    }
    records[i] = (static_cast<std::uint64_t>(k) << sample_bits) | number;
  }
  return records;
}

const MegatronFileIndex& MegatronOrder::file(std::size_t k, const IndexedDataset& ds,
                                             std::uint64_t keep) const {
  std::call_once(built_[k], [&] {
    const File& f = files_[k];
    const std::span<std::int32_t> storage(arena_.data + arena_at_[k],
                                          arena_at_[k + 1] - arena_at_[k]);
    indices_[k] = std::make_unique<MegatronFileIndex>(ds, f.first_doc, f.end_doc, plans_[k],
                                                      seq_len_, seed_, keep, storage);
  });
  return *indices_[k];
}

}  // namespace borealis
