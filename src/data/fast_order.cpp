#include "data/fast_order.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <optional>
#include <stdexcept>

#include <sys/mman.h>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/tasks.h"
#include "data/fast_order_rule.h"

namespace borealis {

namespace {

// Fresh memory for a sequence, not zero-filled by hand, in huge pages where
// the kernel gives them: faulting in 4 KiB pages costs more than the blend.
std::shared_ptr<void> allocate(std::size_t bytes) {
  if (bytes == 0) bytes = 8;
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    throw_errno(fmt::format("cannot allocate {} bytes for the blend", bytes), "mixture", errno);
  }
  ::madvise(p, bytes, MADV_HUGEPAGE);  // a hint; failure is harmless
  return {p, [bytes](void* q) { ::munmap(q, bytes); }};
}

unsigned width_for(std::uint64_t choices) {
  return choices <= 256 ? 1 : choices <= 65536 ? 2 : 4;
}

std::uint64_t round8(std::uint64_t x) {
  return (x + 7) & ~std::uint64_t{7};
}

// The layout of a sequence's memory (and of its serialized form after a
// 24-byte header): picks, offsets, weights, totals, each 8-byte aligned.
struct Layout {
  std::uint64_t picks, offsets, weights, totals, bytes;
  Layout(std::uint64_t width, std::uint64_t length, std::uint64_t choices)
      : picks(0),
        offsets(round8(length * width)),
        weights(offsets + round8(length)),
        totals(weights + choices * 8),
        bytes(totals + choices * 8) {}
};

// Picks [from, to) into picks (the whole array) and offsets (from `from` on).
template <class T>
void fill(Blender& blender, std::byte* picks, std::int8_t* offsets, std::uint64_t from,
          std::uint64_t to) {
  auto* out = reinterpret_cast<T*>(picks);
  const auto& counts = blender.counts();
  const auto& w = blender.weights();
  for (std::uint64_t i = from; i < to; ++i) {
    const std::size_t k = blender.next();
    out[i] = static_cast<T>(k);
    // The same expression as PickSequence::count_at.
    const double base = __builtin_floor(w[k] * static_cast<double>(i));
    const auto offset = static_cast<std::int64_t>(counts[k] - 1) - static_cast<std::int64_t>(base);
    if (offset < -128 || offset > 127) {
      throw std::logic_error("PickSequence: a count strayed from its share");
    }
    offsets[i - from] = static_cast<std::int8_t>(offset);
  }
}

}  // namespace

PickSequence PickSequence::reserve(const Blender& blender, std::uint64_t length) {
  PickSequence s;
  const std::uint64_t choices = blender.counts().size();
  s.width_ = width_for(choices);
  s.length_ = length;
  s.choices_ = choices;
  const Layout at(s.width_, length, choices);
  s.owned_ = allocate(at.bytes);
  auto* base = static_cast<std::byte*>(s.owned_.get());
  std::memcpy(base + at.weights, blender.weights().data(), choices * 8);
  s.picks_ = base;
  s.offsets_ = reinterpret_cast<const std::int8_t*>(base + at.offsets);
  s.weights_ = reinterpret_cast<const double*>(base + at.weights);
  s.totals_ = reinterpret_cast<const std::uint64_t*>(base + at.totals);
  return s;
}

void PickSequence::extend(Blender& blender, std::uint64_t to) {
  if (!owned_ || to > length_ || to < filled_ || blender.steps() != filled_) {
    throw std::logic_error("PickSequence::extend");
  }
  // The memory is this sequence's own (reserve made it).
  auto* base = const_cast<std::byte*>(picks_);
  auto* offsets = const_cast<std::int8_t*>(offsets_) + filled_;
  const std::uint64_t from = filled_;
  if (width_ == 1) {
    fill<std::uint8_t>(blender, base, offsets, from, to);
  } else if (width_ == 2) {
    fill<std::uint16_t>(blender, base, offsets, from, to);
  } else {
    fill<std::uint32_t>(blender, base, offsets, from, to);
  }
  std::memcpy(const_cast<std::uint64_t*>(totals_), blender.counts().data(), choices_ * 8);
  filled_ = to;
}

PickSequence PickSequence::generate(Blender& blender, std::uint64_t length) {
  PickSequence s = reserve(blender, length);
  s.extend(blender, length);
  return s;
}

PickSequence PickSequence::empty(std::uint64_t choices) {
  PickSequence s;
  s.width_ = width_for(choices);
  s.choices_ = choices;
  const Layout at(s.width_, 0, choices);
  s.owned_ = allocate(at.bytes);  // zeros
  s.filled_ = 0;
  auto* base = static_cast<std::byte*>(s.owned_.get());
  s.picks_ = base;
  s.offsets_ = reinterpret_cast<const std::int8_t*>(base + at.offsets);
  s.weights_ = reinterpret_cast<const double*>(base + at.weights);
  s.totals_ = reinterpret_cast<const std::uint64_t*>(base + at.totals);
  return s;
}

void PickSequence::truncate(std::uint64_t length) {
  if (!owned_ || length > length_) throw std::logic_error("PickSequence::truncate");
  // The memory is this sequence's own (generate made it).
  auto* totals = const_cast<std::uint64_t*>(totals_);
  for (std::uint64_t i = length; i < length_; ++i) --totals[at(i)];
  length_ = length;
  filled_ = std::min(filled_, length);
}

std::uint64_t PickSequence::serialized_bytes() const {
  return 24 + Layout(width_, length_, choices_).bytes;
}

void PickSequence::write(AtomicFile& out) const {
  const std::uint64_t head[3] = {width_, length_, choices_};
  out.write(head, sizeof head);
  const std::uint64_t zeros[1] = {0};
  const auto padded = [&](const void* data, std::uint64_t bytes) {
    out.write(data, bytes);
    out.write(zeros, round8(bytes) - bytes);
  };
  padded(picks_, length_ * width_);
  padded(offsets_, length_);
  out.write(weights_, choices_ * 8);
  out.write(totals_, choices_ * 8);
}

bool PickSequence::read(const std::byte*& p, const std::byte* end, PickSequence& out) {
  if (end - p < 24) return false;
  std::uint64_t head[3];
  std::memcpy(head, p, sizeof head);
  const auto [width, length, choices] = head;
  if (length > (std::uint64_t{1} << 40) || choices == 0 || choices > (std::uint64_t{1} << 32) ||
      width != width_for(choices)) {
    return false;
  }
  const Layout at(width, length, choices);
  if (static_cast<std::uint64_t>(end - p) < 24 + at.bytes) return false;
  const std::byte* base = p + 24;
  out = PickSequence();
  out.width_ = static_cast<unsigned>(width);
  out.length_ = length;
  out.choices_ = choices;
  out.picks_ = base;
  out.offsets_ = reinterpret_cast<const std::int8_t*>(base + at.offsets);
  out.weights_ = reinterpret_cast<const double*>(base + at.weights);
  out.totals_ = reinterpret_cast<const std::uint64_t*>(base + at.totals);
  out.filled_ = length;
  std::uint64_t sum = 0;
  for (std::uint64_t k = 0; k < choices; ++k) sum += out.totals_[k];
  if (sum != length) return false;
  p += 24 + at.bytes;
  return true;
}

FastBlend FastBlend::build(const std::vector<double>& corpus_weights,
                           const std::vector<std::vector<double>>& file_weights,
                           std::uint64_t samples, unsigned threads) {
  FastBlend b;
  b.build_in_rounds(corpus_weights, file_weights, samples, threads, {});
  return b;
}

void FastBlend::build_in_rounds(const std::vector<double>& corpus_weights,
                                const std::vector<std::vector<double>>& file_weights,
                                std::uint64_t samples, unsigned threads,
                                const std::function<void(std::uint64_t)>& ready) {
  const std::size_t corpora = corpus_weights.size();
  if (file_weights.size() != corpora) throw std::invalid_argument("FastBlend: corpus count");
  const double total = std::accumulate(corpus_weights.begin(), corpus_weights.end(), 0.0);
  // Blender keeps |count - w n| < 1, so in the first n samples no corpus is
  // drawn more often than this.
  const auto bound = [&](std::size_t c, std::uint64_t n) -> std::uint64_t {
    if (!(corpus_weights[c] > 0)) return 0;
    const double most = std::ceil(corpus_weights[c] / total * static_cast<double>(n)) + 2;
    return std::min<std::uint64_t>(n, static_cast<std::uint64_t>(most));
  };
  // Sequences and their blenders: task `corpora` is the outer blend.
  std::vector<std::optional<Blender>> blenders(corpora + 1);
  blenders[corpora].emplace(corpus_weights);
  outer_ = PickSequence::reserve(*blenders[corpora], samples);
  inner_.assign(corpora, PickSequence());
  for (std::size_t c = 0; c < corpora; ++c) {
    if (bound(c, samples) == 0) {
      inner_[c] = PickSequence::empty(file_weights[c].size());
    } else {
      blenders[c].emplace(file_weights[c]);
      inner_[c] = PickSequence::reserve(*blenders[c], bound(c, samples));
    }
  }
  const auto target = [&](std::size_t t, std::uint64_t n) {
    return t == corpora ? n : bound(t, n);
  };
  // Rounds of doubling size; in each, the longest tasks go first.
  std::vector<std::size_t> order;
  for (std::size_t t = 0; t <= corpora; ++t) {
    if (blenders[t]) order.push_back(t);
  }
  for (std::uint64_t done = 0; done < samples;) {
    // At most kLastRound more per round, so that a reader of a late
    // sample, or a cancellation, never waits for a long round.
    const std::uint64_t end =
        std::min({samples, std::max(kFirstRound, 2 * done), done + kLastRound});
    const auto sequence = [&](std::size_t t) -> PickSequence& {
      return t == corpora ? outer_ : inner_[t];
    };
    const auto work = [&](std::size_t t) { return target(t, end) - sequence(t).filled(); };
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t x, std::size_t y) { return work(x) > work(y); });
    run_tasks(threads, order.size(), [&](std::size_t i) {
      const std::size_t t = order[i];
      sequence(t).extend(*blenders[t], target(t, end));
    });
    done = end;
    if (done < samples && ready) ready(done);
  }
  const auto drawn = outer_.totals();
  for (std::size_t c = 0; c < corpora; ++c) {
    if (drawn[c] > inner_[c].size()) throw std::logic_error("FastBlend: a corpus outran its bound");
    inner_[c].truncate(drawn[c]);
  }
  if (ready) ready(samples);
}

std::uint64_t FastBlend::serialized_bytes() const {
  std::uint64_t n = outer_.serialized_bytes();
  for (const auto& s : inner_) n += s.serialized_bytes();
  return n;
}

void FastBlend::write(AtomicFile& out) const {
  outer_.write(out);
  for (const auto& s : inner_) s.write(out);
}

bool FastBlend::read(const std::byte* p, const std::byte* end, std::uint64_t samples,
                     const std::vector<std::size_t>& files_per_corpus, FastBlend& out) {
  const std::size_t corpora = files_per_corpus.size();
  out = FastBlend();
  if (!PickSequence::read(p, end, out.outer_) || out.outer_.size() != samples ||
      out.outer_.choices() != corpora) {
    return false;
  }
  const auto drawn = out.outer_.totals();
  out.inner_.resize(corpora);
  for (std::size_t c = 0; c < corpora; ++c) {
    if (!PickSequence::read(p, end, out.inner_[c]) || out.inner_[c].size() != drawn[c] ||
        out.inner_[c].choices() != files_per_corpus[c]) {
      return false;
    }
  }
  return p == end;
}

}  // namespace borealis
