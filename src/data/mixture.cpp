#include "data/mixture.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <thread>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/hash.h"
#include "core/tasks.h"
#include "data/fast_order.h"

namespace borealis {

namespace fs = std::filesystem;

namespace {

constexpr std::uint64_t kFormatVersion = 2;
constexpr char kMagic[8] = {'B', 'O', 'R', 'E', 'M', 'I', 'X', '1'};
constexpr unsigned kSampleBits = 40;
constexpr std::uint64_t kSampleMask = (std::uint64_t{1} << kSampleBits) - 1;

std::uint64_t mix64(std::uint64_t x) {  // splitmix64's finalizer
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

std::uint64_t load_u64(const std::byte* p, std::size_t i) {
  std::uint64_t v;
  std::memcpy(&v, p + i * 8, 8);
  return v;
}

// The few numbers of an .idx the build needs, read with pread: mapping
// thousands of files costs more (TLB shootdowns on unmap) than the build.
class IdxProbe {
 public:
  // Returns false when the file is missing or malformed; IndexedDataset then
  // says why.
  bool open(const fs::path& prefix) {
    fd_ = ::open((prefix.string() + ".idx").c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) return false;
    unsigned char head[kIdxHeaderSize];
    struct stat st {};
    if (::pread(fd_, head, sizeof head, 0) != static_cast<ssize_t>(sizeof head) ||
        std::memcmp(head, kIdxMagic, sizeof kIdxMagic) != 0 || ::fstat(fd_, &st) != 0) {
      return false;
    }
    std::uint64_t version, d;
    std::memcpy(&version, head + 9, 8);
    std::memcpy(&n_, head + 18, 8);
    std::memcpy(&d, head + 26, 8);
    const unsigned code = head[17];
    if (version != 1 || code < 1 || code > 8 || code == 6 || code == 7) return false;
    item_ = token_size(static_cast<TokenType>(code));
    const auto size = static_cast<std::uint64_t>(st.st_size);
    if (n_ > size || d > size || kIdxHeaderSize + n_ * 12 + d * 8 != size) return false;
    std::uint64_t bin_bytes = 0;
    if (n_ > 0) {
      const std::int64_t p = pointer(n_ - 1);
      const std::int32_t last = read<std::int32_t>(kIdxHeaderSize + (n_ - 1) * 4);
      if (p < 0 || last < 0) return false;
      bin_bytes = static_cast<std::uint64_t>(p) + static_cast<std::uint64_t>(last) * item_;
    }
    std::error_code ec;
    const auto bin = fs::file_size(prefix.string() + ".bin", ec);
    if (ec || bin != bin_bytes || !ok_) return false;
    tokens_ = bin_bytes / item_;
    return true;
  }
  ~IdxProbe() {
    if (fd_ >= 0) ::close(fd_);
  }
  std::uint64_t sequences() const { return n_; }
  std::uint64_t token_offset(std::uint64_t doc) {
    return doc >= n_ ? tokens_ : static_cast<std::uint64_t>(pointer(doc)) / item_;
  }

 private:
  template <class T>
  T read(std::uint64_t at) {
    T v{};
    if (::pread(fd_, &v, sizeof v, static_cast<off_t>(at)) != static_cast<ssize_t>(sizeof v)) {
      ok_ = false;
    }
    return v;
  }
  std::int64_t pointer(std::uint64_t i) {
    return read<std::int64_t>(kIdxHeaderSize + n_ * 4 + i * 8);
  }

  int fd_ = -1;
  bool ok_ = true;
  std::uint64_t n_ = 0, item_ = 1, tokens_ = 0;
};

std::uint64_t token_offset(const IndexedDataset& ds, std::uint64_t doc) {
  if (doc >= ds.sequences()) return ds.tokens();
  return static_cast<std::uint64_t>(ds.pointer(doc)) / token_size(ds.token_type());
}

// The last document d in [lo, hi) whose token offset is <= `token`, and that
// offset, given offset(lo) = lo_off <= token < hi_off = offset(hi). A plain
// bisection of a file with a million documents takes 20 dependent cache and
// TLB misses in a large .idx. Document offsets grow almost linearly (lengths are
// independent draws), so each round interpolates a guess, which lands about
// sqrt(range) documents from the answer, then gallops from the guess in
// steps of sqrt(range), doubling, until the answer is bracketed: about three
// probes shrink a million documents to a thousand, a thousand to thirty, and
// the last rounds stay in one page. Skewed files still finish, since every
// probe narrows the range. Empty documents share their successor's offset;
// the predicate offset <= token is monotone, so the result is the same as a
// plain binary search.
struct DocAt {
  std::uint64_t doc, offset;  // the document and its token offset
};
DocAt last_doc_at(const IndexedDataset& ds, std::uint64_t lo, std::uint64_t hi,
                  std::uint64_t lo_off, std::uint64_t hi_off, std::uint64_t token) {
  // Narrows [lo, hi) by one probe at `at` (lo < at < hi); true if at <= answer.
  const auto probe = [&](std::uint64_t at) {
    const std::uint64_t off = token_offset(ds, at);
    if (off <= token) {
      lo = at;
      lo_off = off;
      return true;
    }
    hi = at;
    hi_off = off;
    return false;
  };
  while (hi - lo > 1) {
    const std::uint64_t span = hi - lo;
    const double frac = static_cast<double>(token - lo_off) / static_cast<double>(hi_off - lo_off);
    const std::uint64_t guess = std::clamp(
        lo + static_cast<std::uint64_t>(frac * static_cast<double>(span)), lo + 1, hi - 1);
    std::uint64_t step = std::max<std::uint64_t>(
        1, static_cast<std::uint64_t>(std::sqrt(static_cast<double>(span))));
    if (probe(guess)) {
      while (hi - lo > step && probe(lo + step)) step *= 2;
    } else {
      while (hi - lo > step && !probe(hi - step)) step *= 2;
    }
  }
  return {lo, lo_off};
}

}  // namespace

const char* order_name(MixOrder order) {
  return order == MixOrder::megatron ? "megatron" : "fast";
}

std::array<std::uint64_t, 2> split_range(const std::array<double, 3>& split, std::uint64_t size,
                                         int part) {
  double total = 0;
  for (const double s : split) total += s;
  std::array<std::int64_t, 4> index{0, 0, 0, 0};
  for (int k = 0; k < 3; ++k) {
    index[k + 1] = index[k] + static_cast<std::int64_t>(
                                  std::nearbyint(split[k] / total * static_cast<double>(size)));
  }
  const std::int64_t diff = index[3] - static_cast<std::int64_t>(size);
  for (int k = 1; k < 4; ++k) index[k] -= diff;
  const auto clamp = [&](std::int64_t v) {
    return static_cast<std::uint64_t>(
        std::clamp<std::int64_t>(v, 0, static_cast<std::int64_t>(size)));
  };
  return {clamp(index[part]), clamp(index[part + 1])};
}

KeyedPermutation::KeyedPermutation(std::uint64_t n, std::uint64_t key) : n_(n) {
  unsigned bits = 0;
  while (bits < 64 && (std::uint64_t{1} << bits) < n) ++bits;
  half_bits_ = std::max(1u, (bits + 1) / 2);
  mask_ = (std::uint64_t{1} << half_bits_) - 1;
  for (std::size_t r = 0; r < keys_.size(); ++r)
    keys_[r] = mix64(key + 0x9e3779b97f4a7c15ull * (r + 1));
}

std::uint64_t KeyedPermutation::operator()(std::uint64_t x) const {
  if (n_ <= 1) return 0;
  do {
    std::uint64_t left = x >> half_bits_, right = x & mask_;
    for (const std::uint64_t k : keys_) {
      const std::uint64_t next = left ^ (mix64(right ^ k) & mask_);
      left = right;
      right = next;
    }
    x = (left << half_bits_) | right;
  } while (x >= n_);  // cycle-walking: at most a few steps, the domain is < 4 n
  return x;
}

std::uint64_t epoch_permutation_key(std::uint64_t seed, std::size_t file, std::uint64_t epoch) {
  return mix64(mix64(mix64(seed) ^ file) ^ (epoch * 2 + 1));
}

std::uint64_t epoch_start(std::uint64_t seed, std::size_t file, std::uint64_t epoch,
                          std::uint64_t tokens) {
  if (epoch == 0 || tokens == 0) return 0;
  return mix64(epoch_permutation_key(seed, file, epoch) ^ 0x5ca1ab1eull) % tokens;
}

const char* split_part_name(int part) {
  return part == 0 ? "train" : part == 1 ? "valid" : "test";
}

Mixture::Mixture(MixOptions options) : options_(std::move(options)) {
  const auto start = std::chrono::steady_clock::now();
  if (options_.seq_len == 0) throw Error("must be at least 1", "--seq-len");
  if (options_.samples == 0) throw Error("must be at least 1", "--train-samples");
  if (options_.samples > kSampleMask) {
    throw Error(fmt::format("at most {} samples are supported", kSampleMask), "--train-samples");
  }
  for (const double s : options_.split) {
    if (!(s >= 0)) throw Error("the split parts must be non-negative", "--split");
  }
  if (options_.part < 0 || options_.part > 2) {
    throw std::invalid_argument("MixOptions::part must be 0, 1 or 2");
  }
  if (!(options_.split[options_.part] > 0)) {
    throw Error(fmt::format("the {} part of the split is zero", split_part_name(options_.part)),
                "--split");
  }
  if (options_.order == MixOrder::fast &&
      (options_.blend_sample_in_corpus || options_.shuffle_sample_in_corpus)) {
    throw Error(
        "applies to the megatron order only (the fast order always blends the files of a "
        "corpus and shuffles each file's samples)",
        options_.blend_sample_in_corpus ? "--blend-sample-in-corpus"
                                        : "--shuffle-sample-in-corpus");
  }
  open_files();
  if (options_.order == MixOrder::megatron) {
    megatron_ = std::make_unique<MegatronOrder>(options_, files_, corpora_);
  }

  Hasher h;
  h.add(std::string_view("borealis-mix")).add(kFormatVersion);
  h.add(std::string_view(order_name(options_.order)));
  if (options_.order == MixOrder::megatron) {
    h.add(std::uint64_t{options_.blend_sample_in_corpus})
        .add(std::uint64_t{options_.shuffle_sample_in_corpus});
  }
  h.add(options_.seq_len).add(options_.samples).add(options_.seed);
  for (const double s : options_.split) h.add(s);
  h.add(static_cast<std::uint64_t>(options_.part));
  for (const auto& f : files_) {
    const fs::path prefix = fs::absolute(f.entry.prefix);
    const fs::path idx = prefix.string() + ".idx", bin = prefix.string() + ".bin";
    h.add(f.entry.weight).add(prefix.string()).add(f.entry.corpus);
    h.add(static_cast<std::uint64_t>(fs::file_size(idx)));
    h.add(static_cast<std::uint64_t>(fs::last_write_time(idx).time_since_epoch().count()));
    h.add(static_cast<std::uint64_t>(fs::file_size(bin)));
    h.add(static_cast<std::uint64_t>(fs::last_write_time(bin).time_since_epoch().count()));
  }
  key_ = h.digest().hex();

  if (!options_.cache_dir.empty()) {
    cache_path_ = options_.cache_dir / (key_ + ".mix");
    from_cache_ = load_cache();
  }
  const unsigned threads =
      std::max(1u, options_.threads != 0 ? options_.threads : std::thread::hardware_concurrency());
  const auto since_start = [start] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  if (!from_cache_ && !megatron_ && options_.samples >= options_.background_from) {
    build_in_background(threads, since_start);
    ready_seconds_ = since_start();
    return;
  }
  if (!from_cache_) {
    build(threads);
    if (!options_.cache_dir.empty()) write_cache();
  }
  finish();
  build_seconds_ = ready_seconds_ = since_start();
}

Mixture::~Mixture() {
  if (background_ && background_->thread.joinable()) {
    background_->cancel = true;
    background_->thread.join();
  }
}

namespace {

Error too_short(const MixFile& f, std::uint64_t seq_len, int part) {
  return Error(fmt::format("{} has {} tokens in the {} split, fewer than the {} a sample "
                           "needs (seq_len + 1)",
                           f.entry.prefix.string(), f.tokens, split_part_name(part), seq_len + 1),
               f.entry.where);
}

struct Cancelled {};

}  // namespace

void Mixture::build_in_background(unsigned threads, const std::function<double()>& since_start) {
  // A file too short for one sample that the blend must draw (its share of
  // the samples is at least one more than Blender's slack) fails at once;
  // one that may or may not be drawn is checked when the blend is complete.
  double total = 0;
  for (const auto& c : corpora_) total += c.weight;
  const double n = static_cast<double>(options_.samples);
  for (const auto& f : files_) {
    const double corpus_draws = corpora_[f.corpus].weight / total * n - 1;
    if (f.samples_per_epoch == 0 && f.weight_in_corpus * corpus_draws >= 2) {
      throw too_short(f, options_.seq_len, options_.part);
    }
  }
  auto [corpus_weights, file_weights] = blend_weights();
  background_ = std::make_unique<Background>();
  background_->thread = std::thread(
      [this, threads, since_start, cw = std::move(corpus_weights), fw = std::move(file_weights)] {
        Background& bg = *background_;
        try {
          blend_.build_in_rounds(cw, fw, options_.samples, threads, [&bg](std::uint64_t ready) {
            if (bg.cancel) throw Cancelled{};
            {
              const std::lock_guard lock(bg.mutex);
              bg.ready.store(ready, std::memory_order_release);
            }
            bg.changed.notify_all();
          });
          count_file_samples();
          build_seconds_ = since_start();
          finish();
          if (!options_.cache_dir.empty()) write_cache();
        } catch (const Cancelled&) {
        } catch (...) {
          // Logged too, for a process that never calls wait() (a training
          // run); samples already announced ready stay valid.
          try {
            throw;
          } catch (const Error& e) {
            spdlog::warn("mixture index, built in the background: {} ({})", e.message(), e.where());
          } catch (const std::exception& e) {
            spdlog::warn("mixture index, built in the background: {}", e.what());
          }
          const std::lock_guard lock(bg.mutex);
          bg.error = std::current_exception();
        }
        {
          const std::lock_guard lock(bg.mutex);
          bg.done = true;
        }
        bg.changed.notify_all();
      });
}

void Mixture::wait_for(std::uint64_t samples) const {
  Background& bg = *background_;
  std::unique_lock lock(bg.mutex);
  bg.changed.wait(lock, [&] { return bg.ready.load() >= samples || bg.done; });
  if (bg.ready.load() >= samples) return;
  if (bg.error) std::rethrow_exception(bg.error);
  throw std::logic_error("Mixture: the background build ended before the sample was ready");
}

void Mixture::wait() const {
  if (!background_) return;
  Background& bg = *background_;
  std::unique_lock lock(bg.mutex);
  bg.changed.wait(lock, [&] { return bg.done; });
  if (bg.error) std::rethrow_exception(bg.error);
}

bool Mixture::building() const {
  if (!background_) return false;
  const std::lock_guard lock(background_->mutex);
  return !background_->done;
}

double Mixture::build_seconds() const {
  wait();
  return build_seconds_;
}

void Mixture::finish() {
  for (auto& c : corpora_) {
    c.samples = 0;
    for (const std::size_t k : c.files) c.samples += files_[k].samples;
  }
  if (megatron_) {  // the largest sample number drawn from each file
    keep_.assign(files_.size(), 0);
    for (std::uint64_t i = 0; i < options_.samples; ++i) {
      const std::uint64_t r = load_u64(records_, i);
      auto& k = keep_[r >> kSampleBits];
      k = std::max(k, (r & kSampleMask) + 1);
    }
  }
  for (const auto& f : files_) {
    if (!megatron_ && f.samples > 0 && f.samples_per_epoch == 0) {
      throw too_short(f, options_.seq_len, options_.part);
    }
  }
}

void Mixture::open_files() {
  for (const auto& e : options_.list) {
    MixFile f;
    f.entry = e;
    IdxProbe probe;
    if (!probe.open(e.prefix)) {
      try {
        IndexedDataset check(e.prefix);  // says what is wrong
      } catch (const Error& err) {
        throw Error(fmt::format("{} ({})", err.message(), err.where()), e.where);
      }
      throw Error(fmt::format("cannot read {}.idx", e.prefix.string()), e.where);
    }
    f.sequences = probe.sequences();
    const auto [begin, end] = split_range(options_.split, f.sequences, options_.part);
    f.first_doc = begin;
    f.end_doc = end;
    f.first_token = probe.token_offset(begin);
    f.tokens = probe.token_offset(end) - f.first_token;
    f.samples_per_epoch = f.tokens > options_.seq_len ? (f.tokens - 1) / options_.seq_len : 0;
    f.weight = options_.part != 0 && f.samples_per_epoch == 0 ? 0.0 : e.weight;
    const auto it = std::find_if(corpora_.begin(), corpora_.end(),
                                 [&](const MixCorpus& c) { return c.name == e.corpus; });
    f.corpus = static_cast<std::size_t>(it - corpora_.begin());
    if (it == corpora_.end()) corpora_.push_back({e.corpus, 0, {}, 0});
    corpora_[f.corpus].weight += f.weight;
    corpora_[f.corpus].files.push_back(files_.size());
    files_.push_back(std::move(f));
  }
  datasets_.resize(files_.size());
  opened_ = std::make_unique<std::once_flag[]>(files_.size());
  if (corpora_.size() > 65536) {
    throw Error(fmt::format("{} corpora: at most 65536 are supported", corpora_.size()),
                "data list");
  }
  if (files_.size() >= (std::size_t{1} << (64 - kSampleBits))) {
    throw Error(fmt::format("{} files: at most {} are supported", files_.size(),
                            (std::size_t{1} << (64 - kSampleBits)) - 1),
                "data list");
  }
  for (auto& c : corpora_) {
    for (const std::size_t k : c.files) {
      files_[k].weight_in_corpus = c.weight > 0 ? files_[k].weight / c.weight : 0;
    }
  }
  double total = 0;
  for (const auto& c : corpora_) total += c.weight;
  if (!(total > 0)) {
    throw Error(fmt::format("no file has the {} tokens a sample needs in the {} split",
                            options_.seq_len + 1, split_part_name(options_.part)),
                "data list");
  }
}

// The fast order's blend: data/fast_order.h.
void Mixture::build(unsigned threads) {
  if (megatron_) {
    built_ = megatron_->build(threads, kSampleBits);
    for (const std::uint64_t r : built_) ++files_[r >> kSampleBits].samples;
    records_ = reinterpret_cast<const std::byte*>(built_.data());
    return;
  }
  const auto [corpus_weights, file_weights] = blend_weights();
  blend_ = FastBlend::build(corpus_weights, file_weights, options_.samples, threads);
  count_file_samples();
}

std::pair<std::vector<double>, std::vector<std::vector<double>>> Mixture::blend_weights() const {
  std::pair<std::vector<double>, std::vector<std::vector<double>>> out;
  for (const auto& c : corpora_) {
    out.first.push_back(c.weight);
    auto& w = out.second.emplace_back();
    for (const std::size_t k : c.files) w.push_back(files_[k].weight_in_corpus);
  }
  return out;
}

void Mixture::count_file_samples() {
  for (std::size_t c = 0; c < corpora_.size(); ++c) {
    const auto counts = blend_.file_samples(c);
    for (std::size_t f = 0; f < counts.size(); ++f)
      files_[corpora_[c].files[f]].samples = counts[f];
  }
}

// A cache file: magic, format version, samples, files, every file's samples,
// then the megatron order's records (file and the file's sample number, 8 bytes per sample) or
// the fast order's blend (FastBlend).
bool Mixture::load_cache() {
  std::error_code ec;
  if (!fs::exists(cache_path_, ec)) return false;
  MappedFile m(cache_path_, MappedFile::Access::Random);
  const std::size_t header = 32 + files_.size() * 8;
  if (m.size() < header || std::memcmp(m.data(), kMagic, 8) != 0 ||
      load_u64(m.data() + 8, 0) != kFormatVersion ||
      load_u64(m.data() + 16, 0) != options_.samples ||
      load_u64(m.data() + 24, 0) != files_.size()) {
    return false;  // not ours or from another version: rebuild and replace it
  }
  if (megatron_) {
    if (m.size() != header + options_.samples * 8) return false;
    records_ = m.data() + header;
  } else {
    std::vector<std::size_t> files_per_corpus;
    for (const auto& c : corpora_) files_per_corpus.push_back(c.files.size());
    if (!FastBlend::read(m.data() + header, m.data() + m.size(), options_.samples, files_per_corpus,
                         blend_)) {
      return false;
    }
  }
  for (std::size_t k = 0; k < files_.size(); ++k) files_[k].samples = load_u64(m.data() + 32, k);
  mapped_ = std::move(m);
  return true;
}

void Mixture::write_cache() const {
  std::error_code ec;
  fs::create_directories(options_.cache_dir, ec);
  if (ec) throw_errno("cannot create the cache directory", options_.cache_dir.string(), ec.value());
  AtomicFile out(cache_path_);
  out.write(kMagic, 8);
  const std::uint64_t head[3] = {kFormatVersion, options_.samples, files_.size()};
  out.write(head, sizeof head);
  for (const auto& f : files_) out.write(&f.samples, 8);
  if (megatron_) {
    out.write(built_.data(), built_.size() * 8);
  } else {
    blend_.write(out);
  }
  out.commit();
}

const IndexedDataset& Mixture::dataset(std::size_t k) const {
  std::call_once(opened_[k], [&] {
    try {
      datasets_[k] = std::make_unique<IndexedDataset>(files_[k].entry.prefix);
    } catch (const Error& err) {
      throw Error(fmt::format("{} ({})", err.message(), err.where()), files_[k].entry.where);
    }
  });
  return *datasets_[k];
}

std::pair<std::size_t, std::uint64_t> Mixture::source(std::uint64_t i) const {
  if (i >= options_.samples) {
    throw Error(fmt::format("sample {} is outside the mixture's {} samples", i, options_.samples),
                "sample");
  }
  if (!megatron_) {
    if (background_ && i >= background_->ready.load(std::memory_order_acquire)) wait_for(i + 1);
    const auto s = blend_.at(i);
    return {corpora_[s.corpus].files[s.file], s.number};
  }
  const std::uint64_t r = load_u64(records_, i);
  return {static_cast<std::size_t>(r >> kSampleBits), r & kSampleMask};
}

void Mixture::prepare(unsigned threads) const {
  if (!megatron_) return;
  // The largest files first, so that the threads finish together.
  std::vector<std::size_t> order;
  for (std::size_t k = 0; k < files_.size(); ++k) {
    if (keep_[k] > 0) order.push_back(k);
  }
  const auto work = [&](std::size_t k) {
    return megatron_->plan(k).epochs * (files_[k].end_doc - files_[k].first_doc);
  };
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return work(a) > work(b); });
  run_tasks(threads, order.size(), [&](std::size_t t) {
    const std::size_t k = order[t];
    megatron_->file(k, dataset(k), keep_[k]);
  });
}

std::vector<SamplePiece> Mixture::sample(std::uint64_t i) const {
  const auto [k, j] = source(i);
  if (megatron_) {
    const IndexedDataset& ds = dataset(k);
    return megatron_->file(k, ds, keep_[k]).pieces(k, j, ds, options_.seq_len);
  }
  const MixFile& f = files_[k];
  if (f.samples_per_epoch == 0) throw too_short(f, options_.seq_len, options_.part);
  const IndexedDataset& ds = dataset(k);
  const std::uint64_t per_epoch = f.samples_per_epoch, L = options_.seq_len;
  const std::uint64_t epoch = j / per_epoch;
  const std::uint64_t r =
      KeyedPermutation(per_epoch, epoch_permutation_key(options_.seed, k, epoch))(j % per_epoch);
  std::uint64_t pos = (epoch_start(options_.seed, k, epoch, f.tokens) + r * L) % f.tokens;
  std::uint64_t left = L + 1;
  std::vector<SamplePiece> pieces;
  // The last sequence starting at or before the first token (empty sequences
  // are skipped over); the following pieces are the next sequences in order.
  const std::uint64_t first = f.first_token + pos;
  const DocAt at =
      last_doc_at(ds, f.first_doc, f.end_doc, f.first_token, f.first_token + f.tokens, first);
  // Document lengths come from the differences of consecutive pointers (the
  // lines the search just read) rather than from the sizes array, which would
  // cost another cache and TLB miss in a distant part of the .idx.
  std::uint64_t doc = at.doc, doc_off = at.offset;
  std::uint64_t offset = first - doc_off;
  pieces.reserve(8);
  while (left > 0) {
    const std::uint64_t end_off = token_offset(ds, doc + 1);
    const std::uint64_t take = std::min({left, end_off - doc_off - offset, f.tokens - pos});
    if (take > 0) pieces.push_back({k, doc, offset, take});
    left -= take;
    pos += take;
    offset = 0;
    if (pos == f.tokens) {  // wrap to the start of the stream
      pos = 0;
      doc = f.first_doc;
      doc_off = f.first_token;
    } else {
      ++doc;
      doc_off = end_off;
    }
  }
  return pieces;
}

}  // namespace borealis
