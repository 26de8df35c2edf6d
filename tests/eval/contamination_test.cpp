#include "eval/contamination.h"

#include <gtest/gtest.h>

#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "test_util.h"

namespace borealis {
namespace {

using test::TempDir;
using Tokens = std::vector<std::uint32_t>;

// Writes one sequence per document; with `doc_idx`, groups sequences into
// documents as Megatron's --split-sentences does.
std::filesystem::path write_corpus(const TempDir& dir, const std::string& name,
                                   const std::vector<Tokens>& docs, TokenType type = TokenType::U16,
                                   const std::vector<std::int64_t>* doc_idx = nullptr) {
  IndexedDatasetWriter w(dir / name, type);
  for (const auto& d : docs) w.add_document(d);
  w.commit(doc_idx);
  return dir / name;
}

std::vector<BenchmarkDoc> bench_docs(const std::vector<Tokens>& tokens) {
  std::vector<BenchmarkDoc> docs;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    docs.push_back({"task", static_cast<std::int64_t>(i), tokens[i]});
  }
  return docs;
}

// Tokens first, first + 1, ..., first + count - 1: every n-gram distinct.
Tokens run(std::uint32_t first, std::size_t count) {
  Tokens t(count);
  std::iota(t.begin(), t.end(), first);
  return t;
}

Tokens concat(std::initializer_list<Tokens> parts) {
  Tokens all;
  for (const auto& p : parts) all.insert(all.end(), p.begin(), p.end());
  return all;
}

ContaminationReport check(const std::vector<Tokens>& bench, const std::filesystem::path& corpus,
                          ContaminationOptions options = {}) {
  ContaminationIndex index(bench_docs(bench), options);
  index.scan(IndexedDataset(corpus));
  return index.report();
}

// The definition, by brute force: per benchmark doc, how many of its
// distinct n-grams occur inside some corpus document.
std::vector<std::int64_t> reference_hits(const std::vector<Tokens>& bench,
                                         const IndexedDataset& corpus, std::size_t n) {
  std::set<Tokens> seen;
  for (std::size_t d = 0; d < corpus.documents(); ++d) {
    Tokens doc;
    for (auto s = corpus.doc_index(d); s < corpus.doc_index(d + 1); ++s) {
      const Tokens part = corpus.sequence(static_cast<std::size_t>(s));
      doc.insert(doc.end(), part.begin(), part.end());
    }
    for (std::size_t i = 0; i + n <= doc.size(); ++i)
      seen.emplace(doc.begin() + i, doc.begin() + i + n);
  }
  std::vector<std::int64_t> hits;
  for (const auto& b : bench) {
    std::set<Tokens> own;
    for (std::size_t i = 0; i + n <= b.size(); ++i) own.emplace(b.begin() + i, b.begin() + i + n);
    std::int64_t h = 0;
    for (const auto& g : own) h += seen.count(g) > 0 ? 1 : 0;
    hits.push_back(h);
  }
  return hits;
}

TEST(Contamination, PlantedNgramsAreFoundInTheRightDocs) {
  TempDir dir;
  const Tokens a = run(100, 30), b = run(200, 20), c = run(300, 40);
  // One 13-gram of a (tokens 5..17), all of c, nothing of b.
  const auto corpus = write_corpus(
      dir, "corpus",
      {run(1000, 50), concat({run(2000, 7), Tokens(a.begin() + 5, a.begin() + 18), run(3000, 9)}),
       concat({run(4000, 3), c})});
  const auto r = check({a, b, c}, corpus);
  EXPECT_EQ(r.ngrams, (std::vector<std::int64_t>{18, 8, 28}));
  EXPECT_EQ(r.hits, (std::vector<std::int64_t>{1, 0, 28}));
  EXPECT_EQ(r.flagged, (std::vector<bool>{true, false, true}));
  EXPECT_EQ(r.docs_flagged, 2);
  EXPECT_EQ(r.docs_too_short, 0);
  EXPECT_EQ(r.corpus_tokens, 50u + 29u + 43u);
  EXPECT_EQ(r.corpus_documents, 3u);
}

TEST(Contamination, SharedAndRepeatedNgramsCountOncePerDoc) {
  TempDir dir;
  const Tokens g = run(10, 13);
  const Tokens twice = concat({g, Tokens{0}, g});  // 15 windows, 14 distinct: g twice
  const auto corpus = write_corpus(dir, "corpus", {g, g, run(500, 20)});
  const auto r = check({twice, g, run(500, 20)}, corpus);
  EXPECT_EQ(r.ngrams, (std::vector<std::int64_t>{14, 1, 8}));
  EXPECT_EQ(r.hits, (std::vector<std::int64_t>{1, 1, 8}));
}

TEST(Contamination, NgramsNeverCrossCorpusDocuments) {
  TempDir dir;
  const Tokens doc = run(1, 13);
  // The doc split over two corpus documents, then over two sequences of one
  // document (which is one text: found).
  const std::vector<Tokens> parts = {concat({run(900, 5), run(1, 6)}), run(7, 7)};
  EXPECT_EQ(check({doc}, write_corpus(dir, "split", parts)).hits[0], 0);
  const std::vector<std::int64_t> one_document = {0, 2};
  EXPECT_EQ(
      check({doc}, write_corpus(dir, "sentences", parts, TokenType::U16, &one_document)).hits[0],
      1);
}

TEST(Contamination, DocsShorterThanNAreCountedNotFlagged) {
  TempDir dir;
  const Tokens short_doc = run(1, 12);
  const auto r =
      check({short_doc, Tokens{}, run(1, 13)}, write_corpus(dir, "corpus", {run(1, 13)}));
  EXPECT_EQ(r.docs_too_short, 2);
  EXPECT_EQ(r.flagged, (std::vector<bool>{false, false, true}));
  EXPECT_EQ(r.ngrams, (std::vector<std::int64_t>{0, 0, 1}));
}

TEST(Contamination, NgramsDifferingInOneTokenAreNotFound) {
  TempDir dir;
  const Tokens doc = run(1, 13);
  std::vector<Tokens> corpus;
  for (std::size_t i = 0; i < doc.size(); ++i) {
    Tokens t = doc;
    t[i] += 1000;
    corpus.push_back(t);
  }
  corpus.push_back(Tokens(doc.begin(), doc.end() - 1));  // 12 of the 13
  EXPECT_EQ(check({doc}, write_corpus(dir, "corpus", corpus)).hits[0], 0);
}

TEST(Contamination, HashCollisionsAreNeverMatches) {
  TempDir dir;
  // With no hash bits every n-gram has the same hash: only the tokens tell
  // them apart. Near misses of each doc fill the corpus; one doc is there.
  std::vector<Tokens> bench, corpus;
  for (std::uint32_t d = 0; d < 20; ++d) {
    bench.push_back(run(d * 100, 15));
    Tokens near = bench.back();
    near[7] += 50;
    corpus.push_back(near);
  }
  corpus.push_back(Tokens(bench[3].begin() + 1, bench[3].begin() + 14));
  const auto path = write_corpus(dir, "corpus", corpus);
  for (int bits : {0, 1, 5, 64}) {
    ContaminationOptions o;
    o.hash_bits = bits;
    const auto r = check(bench, path, o);
    EXPECT_EQ(r.docs_flagged, 1) << bits;
    EXPECT_EQ(r.hits[3], 1) << bits;
    EXPECT_EQ(r.ngrams[3], 3) << bits;  // distinct n-grams stay distinct
  }
}

TEST(Contamination, Uint16AndInt32CorporaGiveTheSameReport) {
  TempDir dir;
  std::mt19937 rng(7);
  std::vector<Tokens> bench, corpus;
  for (int d = 0; d < 30; ++d) {
    Tokens t(10 + rng() % 40);
    for (auto& x : t) x = rng() % 60000;
    bench.push_back(t);
    if (d % 3 == 0) corpus.push_back(concat({run(1, 5), t, run(9, 3)}));
  }
  const auto r16 = check(bench, write_corpus(dir, "u16", corpus, TokenType::U16));
  const auto r32 = check(bench, write_corpus(dir, "i32", corpus, TokenType::I32));
  EXPECT_EQ(r16.hits, r32.hits);
  EXPECT_GT(r16.docs_flagged, 5);
  // Token ids above uint16's range, as in a 128k vocabulary.
  const Tokens wide = run(100000, 20);
  EXPECT_EQ(check({wide}, write_corpus(dir, "wide", {wide}, TokenType::I32)).hits[0], 8);
}

// A random corpus over a small vocabulary (so that many n-grams occur by
// chance), some long documents that the scan cuts into pieces, checked
// against brute force for several n, threads and hash widths.
TEST(Contamination, MatchesBruteForceOnRandomCorpora) {
  TempDir dir;
  std::mt19937 rng(1234);
  for (const auto& [n, vocab] :
       std::vector<std::pair<int, std::uint32_t>>{{3, 6}, {5, 3}, {13, 2}}) {
    std::vector<Tokens> corpus;
    std::uint64_t total = 0;
    while (total < 300'000) {
      Tokens t(rng() % 5 == 0 ? 40'000 + rng() % 60'000 : rng() % 40);
      for (auto& x : t) x = rng() % vocab;
      total += t.size();
      corpus.push_back(t);
    }
    std::vector<Tokens> bench;
    for (int d = 0; d < 40; ++d) {
      Tokens t(rng() % 30);
      for (auto& x : t) x = rng() % (vocab + 1);  // the extra token never occurs in the corpus
      bench.push_back(t);
    }
    const auto path = write_corpus(dir, "random" + std::to_string(n), corpus);
    const auto expected = reference_hits(bench, IndexedDataset(path), static_cast<std::size_t>(n));
    for (int threads : {1, 2, 3}) {
      for (int bits : {64, 12}) {  // 12: ~100 colliding pairs among the n-grams
        ContaminationOptions o;
        o.ngram = n;
        o.threads = threads;
        o.hash_bits = bits;
        EXPECT_EQ(check(bench, path, o).hits, expected)
            << "n " << n << " threads " << threads << " bits " << bits;
      }
    }
  }
}

TEST(Contamination, OneAndTwoThreadsAgree) {
  TempDir dir;
  std::mt19937 rng(99);
  std::vector<Tokens> bench, corpus;
  for (int d = 0; d < 200; ++d) {
    Tokens t(5 + rng() % 100);
    for (auto& x : t) x = rng() % 50000;
    bench.push_back(t);
  }
  for (int d = 0; d < 400; ++d) {
    Tokens t(rng() % 1500);
    for (auto& x : t) x = rng() % 50000;
    const Tokens& src = bench[rng() % bench.size()];
    const std::size_t from = rng() % src.size(),
                      take = std::min<std::size_t>(src.size() - from, 20);
    t.insert(t.begin() + static_cast<std::ptrdiff_t>(rng() % (t.size() + 1)),
             src.begin() + static_cast<std::ptrdiff_t>(from),
             src.begin() + static_cast<std::ptrdiff_t>(from + take));
    corpus.push_back(t);
  }
  const auto path = write_corpus(dir, "corpus", corpus);
  ContaminationOptions one, two;
  one.threads = 1;
  two.threads = 2;
  const auto r1 = check(bench, path, one);
  const auto r2 = check(bench, path, two);
  EXPECT_EQ(r1.hits, r2.hits);
  EXPECT_EQ(r1.flagged, r2.flagged);
  EXPECT_GT(r1.docs_flagged, 20);
  EXPECT_EQ(r1.hits, reference_hits(bench, IndexedDataset(path), 13));
}

TEST(Contamination, ScansAccumulateAndReportProgress) {
  TempDir dir;
  const Tokens a = run(1, 20), b = run(100, 20);
  const auto first = write_corpus(dir, "first", {a});
  const auto second = write_corpus(dir, "second", {run(7, 3), b}, TokenType::I32);
  ContaminationIndex index(bench_docs({a, b}), {});
  std::vector<std::pair<std::uint64_t, std::uint64_t>> calls;
  index.scan(IndexedDataset(first),
             [&](std::uint64_t done, std::uint64_t total) { calls.emplace_back(done, total); });
  EXPECT_EQ(index.report().flagged, (std::vector<bool>{true, false}));
  ASSERT_FALSE(calls.empty());
  EXPECT_EQ(calls.back(), (std::pair<std::uint64_t, std::uint64_t>{20, 20}));
  index.scan(IndexedDataset(second));
  const auto r = index.report();
  EXPECT_EQ(r.flagged, (std::vector<bool>{true, true}));
  EXPECT_EQ(r.corpus_tokens, 43u);
  EXPECT_EQ(r.corpus_documents, 3u);
  EXPECT_EQ(index.docs()[1].tokens, b);
}

TEST(Contamination, BadOptionsAndCorruptCorporaAreErrors) {
  ContaminationOptions o;
  o.ngram = 0;
  EXPECT_EQ(test::error_line([&] { ContaminationIndex index({}, o); }),
            "error: the n-gram length must be at least 1, got 0 (ngram)");
  TempDir dir;
  // Opening checks only the last record; the scan verifies them all first.
  const auto path = write_corpus(dir, "corpus", {run(1, 20), run(1, 5), run(1, 5)});
  std::string idx = test::read_file(dir / "corpus.idx");
  idx[34 + 12 + 8] = 9;  // the second pointer: 40 -> 9
  test::write_file(dir / "corpus.idx", idx);
  ContaminationIndex index(bench_docs({run(1, 13)}), {});
  EXPECT_NE(test::error_line([&] {
              index.scan(IndexedDataset(path));
            }).find("sequence 1: pointer 9 should be 40"),
            std::string::npos);
}

}  // namespace
}  // namespace borealis
