// The fast order's two-level blend, stored compactly: for every training
// sample, its corpus, its file and its number among that file's samples.
//
// The outer blend picks a corpus for every sample; each corpus's inner blend
// picks one of its files for every draw from the corpus (both with Blender).
// What is stored is the picks themselves (PickSequence: 1, 2 or 4 bytes each,
// as the number of choices needs) and, for every pick, how often its choice
// was picked before, as a one-byte offset from floor(w i) (w the choice's
// normalized weight, i the position). Blender keeps every count within one
// of w i, so the offset is 0 or 1 but for rounding. Sample i's corpus c is
// outer[i] and its number m among c's draws is c's count before i; its file
// is inner_c[m], and its number among the file's samples that file's count
// before m. So 3 to 5 bytes per sample, nothing dealt out after the blends,
// and a lookup reads two bytes or so from each level: no search, no scan.
//
// The outer blend and every corpus's inner blend are independent tasks on
// the task runner (each inner blend runs for the most draws the outer one can
// ask of it, then is cut to what it asked); the result does not depend on the
// number of threads. Built in rounds, the first samples can be read while
// the rest is still being built. The sequences serialize to (and load from, without
// copying) the mixture cache.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

namespace borealis {

class AtomicFile;
class Blender;

class PickSequence {
 public:
  PickSequence() = default;
  // `length` picks from `blender`.
  static PickSequence generate(Blender& blender, std::uint64_t length);
  // Room for `length` picks among `blender`'s choices, none made yet.
  static PickSequence reserve(const Blender& blender, std::uint64_t length);
  // Makes picks [filled(), to) from `blender`, which must have made exactly
  // filled() picks. Positions below filled() are never written again, so
  // other threads may read them meanwhile.
  void extend(Blender& blender, std::uint64_t to);
  std::uint64_t filled() const { return filled_; }
  // No picks among `choices`.
  static PickSequence empty(std::uint64_t choices);

  std::uint64_t size() const { return length_; }
  std::uint64_t choices() const { return choices_; }
  std::uint32_t at(std::uint64_t i) const {
    switch (width_) {
      case 1:
        return std::to_integer<std::uint32_t>(picks_[i]);
      case 2:
        return load<std::uint16_t>(i);
      default:
        return load<std::uint32_t>(i);
    }
  }
  // How often at(i) was picked before position i.
  std::uint64_t count_at(std::uint64_t i) const {
    const double base = __builtin_floor(weights_[at(i)] * static_cast<double>(i));
    return static_cast<std::uint64_t>(static_cast<std::int64_t>(base) + offsets_[i]);
  }
  // Every choice's count over the whole sequence.
  std::vector<std::uint64_t> totals() const { return {totals_, totals_ + choices_}; }
  // Keeps the first `length` picks (length <= size()) of a generated sequence.
  void truncate(std::uint64_t length);

  std::uint64_t serialized_bytes() const;
  void write(AtomicFile& out) const;
  // Reads a sequence written by write() at `p` (8-byte aligned) and advances
  // p; the sequence points into the bytes, which must outlive it. False when
  // the bytes do not hold one.
  static bool read(const std::byte*& p, const std::byte* end, PickSequence& out);

 private:
  template <class T>
  T load(std::uint64_t i) const {
    T v;
    __builtin_memcpy(&v, picks_ + i * sizeof(T), sizeof(T));
    return v;
  }

  unsigned width_ = 1;
  std::uint64_t length_ = 0, choices_ = 0, filled_ = 0;
  const std::byte* picks_ = nullptr;
  const std::int8_t* offsets_ = nullptr;
  const double* weights_ = nullptr;        // choices
  const std::uint64_t* totals_ = nullptr;  // choices
  std::shared_ptr<void> owned_;            // the memory, when built here
};

class FastBlend {
 public:
  FastBlend() = default;
  // `samples` picks among corpora of weights `corpus_weights`, and for every
  // corpus of positive weight, its files by `file_weights[c]`.
  static FastBlend build(const std::vector<double>& corpus_weights,
                         const std::vector<std::vector<double>>& file_weights,
                         std::uint64_t samples, unsigned threads);
  // The same, built in place in rounds of doubling size (the first of
  // kFirstRound samples, none longer than kLastRound): after each round, `ready(n)` is called with
  // the number of samples whose at() may now be read, from any thread, while the later rounds run.
  // The result is the same as build()'s.
  static constexpr std::uint64_t kFirstRound = std::uint64_t{1} << 16;
  static constexpr std::uint64_t kLastRound = std::uint64_t{1} << 24;
  void build_in_rounds(const std::vector<double>& corpus_weights,
                       const std::vector<std::vector<double>>& file_weights, std::uint64_t samples,
                       unsigned threads, const std::function<void(std::uint64_t)>& ready);

  struct Source {
    std::size_t corpus = 0;
    std::size_t file = 0;  // among the corpus's files
    std::uint64_t number = 0;
  };
  Source at(std::uint64_t i) const {
    const std::uint32_t c = outer_.at(i);
    const PickSequence& in = inner_[c];
    const std::uint64_t m = outer_.count_at(i);
    return {c, in.at(m), in.count_at(m)};
  }
  std::uint64_t size() const { return outer_.size(); }
  // Samples drawn from every file of corpus c.
  std::vector<std::uint64_t> file_samples(std::size_t c) const { return inner_[c].totals(); }

  std::uint64_t serialized_bytes() const;
  void write(AtomicFile& out) const;
  // False when the bytes do not hold a blend of `samples` samples over
  // corpora of files_per_corpus[c] files.
  static bool read(const std::byte* p, const std::byte* end, std::uint64_t samples,
                   const std::vector<std::size_t>& files_per_corpus, FastBlend& out);

 private:
  PickSequence outer_;
  std::vector<PickSequence> inner_;  // per corpus; empty for corpora never drawn
};

}  // namespace borealis
