// The fast order's blend machinery: Blender's calendar and heaps against the
// plain scan, and the compact two-level blend (FastBlend) against blends
// dealt out by hand, through its cache serialization too.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/atomic_file.h"
#include "core/mapped_file.h"
#include "data/fast_order.h"
#include "data/fast_order_rule.h"
#include "data/fast_order_rule_reference.h"
#include "test_util.h"

namespace borealis {
namespace {

std::vector<double> random_weights(std::mt19937_64& rng, std::size_t k, int kind) {
  std::vector<double> w(k);
  std::uniform_real_distribution<double> u(0, 1);
  for (auto& x : w) {
    switch (kind) {
      case 0:  // spread over a few orders of magnitude
        x = std::pow(u(rng), 3);
        break;
      case 1:  // all equal: ties everywhere
        x = 1;
        break;
      case 2:  // a few values only: many ties
        x = static_cast<double>(1 + rng() % 3);
        break;
      default:  // one tiny weight: too long a calendar, the heaps serve
        x = 0.5 + u(rng);
    }
  }
  if (kind == 3) w[rng() % k] = 1e-9;
  if (kind == 0 && k > 2) w[rng() % k] = 0;
  return w;
}

TEST(BlenderCalendar, ManySourcesMatchThePlainScanAndStayWithinOneSample) {
  std::mt19937_64 rng(31);
  for (int trial = 0; trial < 48; ++trial) {
    const std::size_t k = 9 + rng() % (trial % 4 == 0 ? 1500 : 120);
    const int kind = trial % 4;
    const auto w = random_weights(rng, k, kind);
    // Long enough for the calendar to wrap around several times.
    const std::uint64_t n = 2000 + rng() % (k < 200 ? 30000 : 6000);
    ASSERT_NO_FATAL_FAILURE(
        test::expect_blender_follows_reference(w, n, 97, "trial " + std::to_string(trial)));
  }
}

// The file and number every sample gets, dealt out by hand from Blenders.
struct Dealt {
  std::size_t corpus, file;
  std::uint64_t number;
};
std::vector<Dealt> deal(const std::vector<double>& corpus_weights,
                        const std::vector<std::vector<double>>& file_weights, std::uint64_t n) {
  Blender outer(corpus_weights);
  std::vector<std::unique_ptr<Blender>> inner;
  for (std::size_t c = 0; c < file_weights.size(); ++c) {
    inner.push_back(corpus_weights[c] > 0 ? std::make_unique<Blender>(file_weights[c]) : nullptr);
  }
  std::vector<Dealt> out;
  for (std::uint64_t i = 0; i < n; ++i) {
    const std::size_t c = outer.next();
    const std::size_t f = inner[c]->next();
    out.push_back({c, f, inner[c]->counts()[f] - 1});
  }
  return out;
}

void expect_same(const FastBlend& b, const std::vector<Dealt>& expect) {
  ASSERT_EQ(b.size(), expect.size());
  for (std::uint64_t i = 0; i < expect.size(); ++i) {
    const auto s = b.at(i);
    ASSERT_EQ(s.corpus, expect[i].corpus) << "sample " << i;
    ASSERT_EQ(s.file, expect[i].file) << "sample " << i;
    ASSERT_EQ(s.number, expect[i].number) << "sample " << i;
  }
}

TEST(FastBlend, EverySampleMatchesTheBlendsDealtOut) {
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 8; ++trial) {
    const std::size_t corpora = 1 + rng() % (trial < 4 ? 4 : 300);
    std::vector<double> corpus_weights;
    std::vector<std::vector<double>> file_weights;
    for (std::size_t c = 0; c < corpora; ++c) {
      // Up to 700 files: 2-byte picks.
      const std::size_t files = 1 + rng() % (c == 0 ? 700 : 12);
      file_weights.push_back(random_weights(rng, files, c % 3));
      double sum = 0;
      for (const double x : file_weights.back()) sum += x;
      corpus_weights.push_back(c == 1 ? 0.0 : sum * (0.2 + static_cast<double>(rng() % 10)));
    }
    if (corpora == 1) corpus_weights[0] = 1;
    const std::uint64_t n = 1 + rng() % 30000;
    const auto expect = deal(corpus_weights, file_weights, n);
    const FastBlend one = FastBlend::build(corpus_weights, file_weights, n, 1);
    expect_same(one, expect);
    const FastBlend three = FastBlend::build(corpus_weights, file_weights, n, 3);
    expect_same(three, expect);
    for (std::size_t c = 0; c < corpora; ++c) {
      std::vector<std::uint64_t> count(file_weights[c].size(), 0);
      for (const auto& d : expect) {
        if (d.corpus == c) ++count[d.file];
      }
      EXPECT_EQ(one.file_samples(c), count) << "corpus " << c;
    }
  }
}

TEST(FastBlend, RoundsServeEarlySamplesAndEndAsOneBuild) {
  const std::vector<double> corpus_weights = {3, 1, 0.5, 0};
  const std::vector<std::vector<double>> file_weights = {{1, 2}, {5}, {1, 1, 1}, {1}};
  const std::uint64_t n = 5 * FastBlend::kFirstRound + 123;  // four rounds
  const FastBlend whole = FastBlend::build(corpus_weights, file_weights, n, 2);
  FastBlend rounds;
  std::vector<std::uint64_t> readies;
  rounds.build_in_rounds(corpus_weights, file_weights, n, 2, [&](std::uint64_t ready) {
    // Everything below `ready` is final already.
    const std::uint64_t from = readies.empty() ? 0 : readies.back();
    for (std::uint64_t i = from; i < ready; ++i) {
      const auto a = rounds.at(i), b = whole.at(i);
      ASSERT_TRUE(a.corpus == b.corpus && a.file == b.file && a.number == b.number) << i;
    }
    readies.push_back(ready);
  });
  EXPECT_EQ(readies, (std::vector<std::uint64_t>{FastBlend::kFirstRound, 2 * FastBlend::kFirstRound,
                                                 4 * FastBlend::kFirstRound, n}));
  for (std::size_t c = 0; c < corpus_weights.size(); ++c) {
    EXPECT_EQ(rounds.file_samples(c), whole.file_samples(c)) << "corpus " << c;
  }
  EXPECT_EQ(rounds.serialized_bytes(), whole.serialized_bytes());
}

TEST(FastBlend, ManyChoicesUseWiderPicks) {
  // 70,000 files in one corpus: 4-byte picks.
  std::vector<double> files(70000);
  for (std::size_t k = 0; k < files.size(); ++k) files[k] = 1.0 + static_cast<double>(k % 5);
  const std::uint64_t n = 150000;
  const auto expect = deal({1.0}, {files}, n);
  expect_same(FastBlend::build({1.0}, {files}, n, 2), expect);
}

TEST(FastBlend, ReadsBackWhatItWritesAndRejectsWhatItDidNot) {
  test::TempDir dir;
  std::mt19937_64 rng(3);
  std::vector<std::vector<double>> file_weights = {
      random_weights(rng, 300, 0), random_weights(rng, 5, 2), {1.0, 2.0}};
  const std::vector<double> corpus_weights = {0.7, 0.25, 0.05};
  const std::uint64_t n = 50000;
  const FastBlend built = FastBlend::build(corpus_weights, file_weights, n, 2);
  const auto path = dir / "blend";
  {
    AtomicFile out(path);
    built.write(out);
    EXPECT_EQ(out.size(), built.serialized_bytes());
    out.commit();
  }
  const MappedFile m(path);
  const std::byte* begin = m.data();
  const std::byte* end = begin + m.size();
  const std::vector<std::size_t> shape = {300, 5, 2};
  FastBlend read;
  ASSERT_TRUE(FastBlend::read(begin, end, n, shape, read));
  expect_same(read, deal(corpus_weights, file_weights, n));
  EXPECT_FALSE(FastBlend::read(begin, end - 8, n, shape, read));    // truncated
  EXPECT_FALSE(FastBlend::read(begin, end, n + 1, shape, read));    // other sample count
  EXPECT_FALSE(FastBlend::read(begin, end, n, {300, 5}, read));     // other corpora
  EXPECT_FALSE(FastBlend::read(begin, end, n, {300, 6, 2}, read));  // other files
  EXPECT_FALSE(FastBlend::read(begin + 8, end, n, shape, read));    // not a blend
}

}  // namespace
}  // namespace borealis
