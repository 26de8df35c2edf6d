// Contamination scan throughput (eval/contamination.h) on a synthetic corpus,
// beside a plain read of the same tokens in the same run.
//
//   build/release/bench/contamination_bench [--tokens 200000000] [--type uint16|int32]
//       [--docs 10000] [--planted 100] [--threads N] [--keep]
//
// Writes a corpus of random token ids (documents of 1 to 8000 tokens) under
// $TMPDIR, and benchmark docs of 50-300 random tokens, `--planted` of which
// are copied into the corpus (whole, or a 20-token slice for every other
// one). Prints the index build time and size; the scan's tokens/s right
// after writing (the .bin is then in the page cache), with one thread, and
// cold (after posix_fadvise DONTNEED, with the share of the file still
// cached); the peak RSS; the read floor: passes that only sum the tokens,
// through a fresh mapping (warm and cold) and over mapped pages (memory
// bandwidth); and the hash alone, rolling against XXH3 per window, which is
// why contamination.cpp rolls. Figures only, no pass/fail on time; it exits
// 1 unless exactly the planted docs are flagged, with the expected counts.
#include <fcntl.h>
#include <fmt/format.h>
#include <omp.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "bench_util.h"
#include "core/error.h"
#include "core/hash.h"
#include "core/mapped_file.h"
#include "core/sysinfo.h"
#include "core/text.h"
#include "data/indexed_dataset.h"
#include "eval/contamination.h"

namespace {

using namespace borealis;
using bench::Clock;
using bench::seconds_since;
namespace fs = std::filesystem;

std::uint64_t peak_rss() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<std::uint64_t>(u.ru_maxrss) * 1024;
}

// Writes dirty pages out, then asks the kernel to forget the file's cached
// pages; returns the share of the file still cached afterwards (mincore).
double drop_from_page_cache(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw_errno("cannot open", path.string(), errno);
  ::fdatasync(fd);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  const auto size = static_cast<std::size_t>(fs::file_size(path));
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  double resident = 0;
  if (size > 0) {
    void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    if (p != MAP_FAILED) {
      std::vector<unsigned char> pages((size + page - 1) / page);
      if (::mincore(p, size, pages.data()) == 0) {
        resident = static_cast<double>(std::count_if(pages.begin(), pages.end(),
                                                     [](unsigned char c) { return c & 1; })) /
                   static_cast<double>(pages.size());
      }
      ::munmap(p, size);
    }
  }
  ::close(fd);
  return resident;
}

// The floor: every token read and summed, on the same threads as the scan,
// through a fresh sequential mapping; returns the seconds of the first pass
// (which maps the pages, and reads them from disk when cold) and of a
// second pass over the mapped pages (memory bandwidth alone).
template <class T>
std::pair<double, double> sum_tokens(const fs::path& bin, int threads) {
  const MappedFile file(bin, MappedFile::Access::Sequential);
  const T* tokens = reinterpret_cast<const T*>(file.data());
  const auto count = static_cast<std::int64_t>(file.size() / sizeof(T));
  double seconds[2];
  std::uint64_t sums[2] = {0, 0};
  for (int pass = 0; pass < 2; ++pass) {
    const auto t0 = Clock::now();
    std::uint64_t sum = 0;
#pragma omp parallel for num_threads(threads) reduction(+ : sum) schedule(static)
    for (std::int64_t i = 0; i < count; ++i) sum += static_cast<std::uint64_t>(tokens[i]);
    seconds[pass] = seconds_since(t0);
    sums[pass] = sum;
  }
  if (sums[0] != sums[1]) throw Error("the two passes read different tokens", bin.string());
  return {seconds[0], seconds[1]};
}

// The hash alone over a warm array (one thread): the rolling polynomial hash
// as contamination.cpp computes it, against XXH3 over each window (core/hash.h).
template <class T>
void compare_hashes(const fs::path& bin, std::size_t windows, int n) {
  const MappedFile file(bin);
  const T* tokens = reinterpret_cast<const T*>(file.data());
  windows = std::min(windows, file.size() / sizeof(T) - static_cast<std::size_t>(n));
  std::uint64_t acc = 0;
  for (std::size_t i = 0; i < windows + static_cast<std::size_t>(n); ++i) acc += tokens[i];  // warm
  constexpr std::uint64_t kBase = 0x9E3779B97F4A7C15ull;
  std::uint64_t top = 1;
  for (int j = 1; j < n; ++j) top *= kBase;
  auto t0 = Clock::now();
  std::uint64_t h = 0;
  for (int j = 0; j < n; ++j) h = h * kBase + static_cast<std::uint64_t>(tokens[j]);
  for (std::size_t i = 0; i < windows; ++i) {
    std::uint64_t m = h;  // the finalizer contamination.cpp applies
    m ^= m >> 33;
    m *= 0xff51afd7ed558ccdull;
    m ^= m >> 33;
    m *= 0xc4ceb9fe1a85ec53ull;
    m ^= m >> 33;
    acc += m;
    h = (h - static_cast<std::uint64_t>(tokens[i]) * top) * kBase +
        static_cast<std::uint64_t>(tokens[i + static_cast<std::size_t>(n)]);
  }
  const double rolling = seconds_since(t0);
  t0 = Clock::now();
  for (std::size_t i = 0; i < windows; ++i)
    acc += hash64(tokens + i, sizeof(T) * static_cast<std::size_t>(n));
  const double xxh3 = seconds_since(t0);
  const double w = static_cast<double>(windows);
  fmt::print(
      "hash alone, 1 thread, {:.0f} M windows: rolling + finalizer {:.2f} ns/token, "
      "XXH3 per window {:.2f} ns/token ({:.1f}x) [{}]\n",
      w / 1e6, rolling / w * 1e9, xxh3 / w * 1e9, xxh3 / rolling, acc % 10);
}

template <class T>
int run_typed(std::uint64_t target_tokens, TokenType type, std::uint32_t vocab, int docs_n,
              int planted, int threads, bool keep) {
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = std::string(tmp != nullptr ? tmp : "/tmp") + "/borealis-contam-XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) throw_errno("cannot make a directory", pattern, errno);
  const fs::path dir = pattern;
  const fs::path prefix = dir / "corpus";
  std::mt19937_64 rng(1234);

  // The benchmark: random docs, so no n-gram of theirs occurs in the corpus
  // by chance (vocab^13 >> corpus).
  std::vector<BenchmarkDoc> docs(static_cast<std::size_t>(docs_n));
  for (int i = 0; i < docs_n; ++i) {
    auto& d = docs[static_cast<std::size_t>(i)];
    d.task = "synthetic";
    d.doc_id = i;
    d.tokens.resize(50 + rng() % 251);
    for (auto& t : d.tokens) t = static_cast<std::uint32_t>(rng() % vocab);
  }
  // Planted docs are spread evenly over the corpus.
  const int stride = std::max(1, docs_n / std::max(1, planted));
  std::vector<int> plant;
  for (int i = 0; i < planted && i * stride < docs_n; ++i) plant.push_back(i * stride);

  auto t0 = Clock::now();
  std::uint64_t corpus_docs = 0;
  {
    IndexedDatasetWriter w(prefix, type);
    std::vector<std::uint32_t> doc;
    std::size_t next_plant = 0;
    const std::uint64_t plant_every = target_tokens / (plant.size() + 1);
    while (w.tokens() < target_tokens) {
      // Mostly short documents, a few long ones, as in web text.
      const std::size_t len = rng() % 8 == 0 ? 1 + rng() % 8000 : 1 + rng() % 1500;
      doc.resize(len);
      for (auto& t : doc) t = static_cast<std::uint32_t>(rng() % vocab);
      if (next_plant < plant.size() && w.tokens() >= (next_plant + 1) * plant_every) {
        const auto& src = docs[static_cast<std::size_t>(plant[next_plant])].tokens;
        const std::size_t take = next_plant % 2 == 0 ? src.size() : 20;
        const std::size_t from = next_plant % 2 == 0 ? 0 : src.size() / 2 - 10;
        const std::size_t at = rng() % (doc.size() + 1);
        doc.insert(doc.begin() + static_cast<std::ptrdiff_t>(at),
                   src.begin() + static_cast<std::ptrdiff_t>(from),
                   src.begin() + static_cast<std::ptrdiff_t>(from + take));
        ++next_plant;
      }
      w.add_document(doc);
    }
    corpus_docs = w.documents();
    w.commit();
  }
  const double write_s = seconds_since(t0);
  const fs::path bin = prefix.string() + ".bin";
  const std::uint64_t corpus_tokens = IndexedDataset(prefix).tokens();
  fmt::print("corpus: {:.1f} M {} tokens in {} documents, written in {:.1f} s to {}\n",
             static_cast<double>(corpus_tokens) / 1e6, token_type_name(type), corpus_docs, write_s,
             dir.string());

  ContaminationOptions options;
  options.threads = threads;
  t0 = Clock::now();
  const ContaminationIndex index(docs, options);
  const double build_s = seconds_since(t0);
  std::uint64_t bench_tokens = 0;
  for (const auto& d : docs) bench_tokens += d.tokens.size();
  fmt::print("benchmark: {} docs, {:.2f} M tokens, {:.2f} M distinct {}-grams; {} planted\n",
             docs.size(), static_cast<double>(bench_tokens) / 1e6,
             static_cast<double>(index.distinct_ngrams()) / 1e6, options.ngram, plant.size());
  fmt::print("index build: {:.3f} s, {} (set, prefilter, doc lists)\n", build_s,
             format_bytes(index.memory_bytes()));

  // Each scan gets a fresh index and a fresh mapping of the corpus.
  auto scan = [&](int scan_threads, const std::string& label) {
    ContaminationOptions o = options;
    o.threads = scan_threads;
    ContaminationIndex fresh(docs, o);
    fresh.scan(IndexedDataset(prefix));
    const ContaminationReport r = fresh.report();
    fmt::print("scan, {} thread{}, {}: {:.3f} s, {:.1f} M tokens/s\n", scan_threads,
               scan_threads == 1 ? "" : "s", label, r.seconds,
               static_cast<double>(r.corpus_tokens) / r.seconds / 1e6);
    return r;
  };
  const ContaminationReport first =
      scan(threads, "first scan after writing (the .bin was just written: in the page cache)");
  const ContaminationReport warm = scan(threads, "page cache");
  scan(1, "page cache");
  const double resident = drop_from_page_cache(bin);
  const ContaminationReport cold = scan(
      threads, fmt::format("cold (posix_fadvise DONTNEED before: {:.1f}% of the .bin still cached)",
                           resident * 100));
  const std::uint64_t rss = peak_rss();
  const std::uint64_t rss_now = process_rss();

  // Whole copies match every n-gram of their doc, 20-token slices 20 - n + 1.
  std::int64_t planted_flagged = 0;
  bool counts_ok = true;
  for (std::size_t k = 0; k < plant.size(); ++k) {
    const auto p = static_cast<std::size_t>(plant[k]);
    planted_flagged += cold.flagged[p] ? 1 : 0;
    counts_ok = counts_ok && cold.hits[p] == (k % 2 == 0 ? cold.ngrams[p] : 21 - options.ngram);
  }
  const bool ok = counts_ok && cold.docs_flagged == static_cast<std::int64_t>(plant.size()) &&
                  planted_flagged == cold.docs_flagged && first.hits == cold.hits &&
                  warm.hits == cold.hits;
  fmt::print("flagged: {} of {} docs, {} of them planted, of {} planted: {}\n", cold.docs_flagged,
             docs.size(), planted_flagged, plant.size(), ok ? "as expected" : "WRONG");
  fmt::print("peak RSS (corpus written, 5 indexes built, 4 scans): {}; now, one index alive: {}\n",
             format_bytes(rss), format_bytes(rss_now));

  const double tokens_d = static_cast<double>(corpus_tokens);
  auto floor_line = [&](const std::string& label, double s) {
    fmt::print("read floor, {} threads, {}: {:.3f} s, {:.1f} M tokens/s, {:.2f} GB/s\n", threads,
               label, s, tokens_d / s / 1e6, tokens_d * sizeof(T) / s / 1e9);
  };
  const auto [map_warm, memory] = sum_tokens<T>(bin, threads);
  floor_line("first pass, fresh mapping of the page cache", map_warm);
  floor_line("second pass, pages mapped (memory-read floor)", memory);
  const double resident2 = drop_from_page_cache(bin);
  const double map_cold = sum_tokens<T>(bin, threads).first;
  floor_line(fmt::format("first pass, cold ({:.1f}% still cached)", resident2 * 100), map_cold);
  fmt::print(
      "scan in the page cache: {:.3f}x of the memory-read floor, {:.3f}x of a first pass; "
      "cold: {:.3f}x of a cold first pass\n",
      memory / warm.seconds, map_warm / warm.seconds, map_cold / cold.seconds);
  compare_hashes<T>(bin, 20'000'000, options.ngram);

  if (!keep) fs::remove_all(dir);
  return ok ? 0 : 1;
}

int run(int argc, char** argv) {
  std::uint64_t tokens = 200'000'000;
  std::string type = "uint16";
  int docs = 10000, planted = 100, threads = omp_get_max_threads();
  bool keep = false;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--keep") {
      keep = true;
      continue;
    }
    if (i + 1 >= argc) throw Error("needs a value", flag);
    const char* value = argv[++i];
    if (flag == "--tokens") {
      char* end = nullptr;
      tokens = std::strtoull(value, &end, 10);
      if (*end != '\0' || tokens < 100'000) {
        throw Error(std::string("expected at least 100000 tokens, got '") + value + "'", flag);
      }
    } else if (flag == "--type") {
      type = value;
    } else if (flag == "--docs") {
      docs = bench::parse_positive_int(flag, value);
    } else if (flag == "--planted") {
      planted = bench::parse_positive_int(flag, value);
    } else if (flag == "--threads") {
      threads = bench::parse_positive_int(flag, value);
    } else {
      throw Error("unknown flag", flag);
    }
  }
  if (type == "uint16")
    return run_typed<std::uint16_t>(tokens, TokenType::U16, 50257, docs, planted, threads, keep);
  if (type == "int32")
    return run_typed<std::int32_t>(tokens, TokenType::I32, 128256, docs, planted, threads, keep);
  throw Error("expected uint16 or int32, got '" + type + "'", "--type");
}

}  // namespace

int main(int argc, char** argv) {
  return borealis::bench::main_with_errors([&] { return run(argc, argv); },
                                           "it writes its corpus under $TMPDIR");
}
