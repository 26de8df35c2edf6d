// Blended mixtures: data lists, the blending rule, and every sample of many
// random small mixtures checked against a plain reference written here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include "core/error.h"
#include "data/data_list.h"
#include "data/fast_order_rule.h"
#include "data/fast_order_rule_reference.h"
#include "data/indexed_dataset.h"
#include "data/mixture.h"
#include "test_util.h"

namespace borealis {
namespace {

namespace fs = std::filesystem;

// ---------------------------------------------------------------- data lists

TEST(DataList, ParsesLinesCommentsSuffixesAndNormalizes) {
  const auto list = parse_data_list(
      "# AuroraGPT style\n"
      "\n"
      "0.5 /data/a_text_document cc   # trailing comment\n"
      "  1.5\t/data/b_text_document.bin  cc\n"
      "2 rel/c.idx\n",
      "list.txt");
  ASSERT_EQ(list.size(), 3u);
  EXPECT_DOUBLE_EQ(list[0].weight, 0.125);
  EXPECT_DOUBLE_EQ(list[1].weight, 0.375);
  EXPECT_DOUBLE_EQ(list[2].weight, 0.5);
  EXPECT_EQ(list[0].weight_text, "0.5");
  EXPECT_EQ(list[1].prefix, "/data/b_text_document");
  EXPECT_EQ(list[2].prefix, "rel/c");
  EXPECT_EQ(list[1].corpus, "cc");
  EXPECT_EQ(list[2].corpus, "rel/c");  // no corpus: a corpus of its own
  EXPECT_EQ(list[1].where, "list.txt:4");
}

TEST(DataList, CommandLineForm) {
  const auto list = data_list_from_args({"1", "a.bin", "3", "b"});
  ASSERT_EQ(list.size(), 2u);
  EXPECT_DOUBLE_EQ(list[1].weight, 0.75);
  EXPECT_EQ(list[0].prefix, "a");
  EXPECT_EQ(list[1].where, "--data-path (pair 2)");
}

void expect_error(const std::function<void()>& f, const std::string& what_part,
                  const std::string& where) {
  try {
    f();
    ADD_FAILURE() << "no error; expected " << what_part;
  } catch (const Error& e) {
    EXPECT_NE(e.message().find(what_part), std::string::npos) << e.message();
    EXPECT_EQ(e.where(), where);
  }
}

TEST(DataList, BadListsNameTheLine) {
  expect_error([] { parse_data_list("1 a\n-0.5 b c\n", "L"); }, "negative weight -0.5", "L:2");
  expect_error([] { parse_data_list("1 a\nabc b\n", "L"); }, "'abc' is not a weight", "L:2");
  expect_error([] { parse_data_list("1 a\n\n0.5\n", "L"); }, "found 1 fields", "L:3");
  expect_error([] { parse_data_list("1 a b c\n", "L"); }, "found 4 fields", "L:1");
  expect_error([] { parse_data_list("0 a\n0.0 b\n", "L"); }, "add up to zero", "L");
  expect_error([] { parse_data_list("# nothing\n\n", "L"); }, "names no datasets", "L");
  expect_error([] { parse_data_list("nan a\n", "L"); }, "is not a weight", "L:1");
  expect_error([] { data_list_from_args({"1", "a", "2"}); }, "pairs", "--data-path");
  expect_error(
      [] {
        data_list_from_args({"1", "a", "-2", "b"});
      },
      "negative", "--data-path (pair 2)");
  expect_error([] { read_data_list("/nonexistent/list.txt"); }, "cannot read the data list",
               "/nonexistent/list.txt");
}

TEST(DataList, ByteOrderMarkAtTheStartIsSkipped) {
  const auto list = parse_data_list(
      "\xEF\xBB\xBF"
      "0.25 a\n0.75 b web\n",
      "L");
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].weight_text, "0.25");
  EXPECT_EQ(list[1].corpus, "web");
  test::TempDir dir;
  test::write_file(dir / "list.txt", "\xEF\xBB\xBF# written on Windows\n1 a\n");
  EXPECT_EQ(read_data_list(dir / "list.txt").at(0).prefix, "a");
  // Only at the start: further down it is not a weight.
  expect_error(
      [] {
        parse_data_list(
            "1 a\n\xEF\xBB\xBF"
            "1 b\n",
            "L");
      },
      "is not a weight", "L:2");
}

// ------------------------------------------------------------------ pieces

TEST(Mixture, SplitRangesFollowMegatronsRounding) {
  using R = std::array<std::uint64_t, 2>;
  EXPECT_EQ(split_range({969, 30, 1}, 1000, 0), (R{0, 969}));
  EXPECT_EQ(split_range({969, 30, 1}, 1000, 1), (R{969, 999}));
  EXPECT_EQ(split_range({969, 30, 1}, 1000, 2), (R{999, 1000}));
  // round(7/3) = 2 each; the 1 left over shifts every boundary (Megatron's diff).
  EXPECT_EQ(split_range({1, 1, 1}, 7, 0), (R{0, 3}));
  EXPECT_EQ(split_range({1, 1, 1}, 7, 1), (R{3, 5}));
  EXPECT_EQ(split_range({1, 1, 1}, 7, 2), (R{5, 7}));
  EXPECT_EQ(split_range({100, 0, 0}, 5, 0), (R{0, 5}));
}

TEST(Mixture, KeyedPermutationIsABijection) {
  for (std::uint64_t n = 1; n < 300; n += (n < 40 ? 1 : 37)) {
    for (std::uint64_t key = 0; key < 3; ++key) {
      KeyedPermutation p(n, key * 977);
      std::vector<bool> seen(n, false);
      for (std::uint64_t x = 0; x < n; ++x) {
        const std::uint64_t y = p(x);
        ASSERT_LT(y, n);
        ASSERT_FALSE(seen[y]) << "n " << n << " key " << key;
        seen[y] = true;
      }
    }
  }
  // Different keys give different orders.
  KeyedPermutation a(1000, 1), b(1000, 2);
  int same = 0;
  for (std::uint64_t x = 0; x < 1000; ++x) same += a(x) == b(x);
  EXPECT_LT(same, 50);
}

TEST(Blender, MatchesThePlainScanAndStaysWithinOneSample) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 300; ++trial) {
    const std::size_t k = 1 + rng() % (trial < 250 ? 8 : 60);
    std::vector<double> w(k);
    for (auto& x : w) x = std::pow(std::uniform_real_distribution<double>(0, 1)(rng), 3);
    if (k > 1 && trial % 5 == 0) w[rng() % k] = 0;
    if (trial % 7 == 0) std::fill(w.begin(), w.end(), 1.0);  // all ties
    double total = 0;
    for (const double x : w) total += x;
    if (!(total > 0)) continue;
    const std::uint64_t n = 1 + rng() % 2000;
    ASSERT_NO_FATAL_FAILURE(
        test::expect_blender_follows_reference(w, n, 1, "trial " + std::to_string(trial)));
  }
}

// ------------------------------------------------- whole mixtures, by brute force

struct Fixture {
  test::TempDir dir;
  std::vector<std::vector<std::int32_t>> sizes;  // per file, per sequence
  std::string list;
};

// Files of random documents (some empty), grouped in random corpora.
void make_mixture(Fixture& fx, std::mt19937_64& rng, std::size_t files, std::size_t corpora) {
  for (std::size_t f = 0; f < files; ++f) {
    const std::string prefix = (fx.dir / ("f" + std::to_string(f))).string();
    IndexedDatasetWriter w(prefix, TokenType::U16);
    const std::size_t docs = 1 + rng() % 40;
    std::vector<std::int32_t> sz;
    for (std::size_t d = 0; d < docs; ++d) {
      const std::size_t n = rng() % 5 == 0 ? 0 : 1 + rng() % 30;
      w.add_document(std::vector<std::uint32_t>(n, static_cast<std::uint32_t>(f)));
      sz.push_back(static_cast<std::int32_t>(n));
    }
    w.commit();
    fx.sizes.push_back(sz);
    const double weight = 0.05 + static_cast<double>(rng() % 100) / 10.0;
    fx.list +=
        std::to_string(weight) + " " + prefix + " corpus" + std::to_string(rng() % corpora) + "\n";
  }
}

// One token of a file: (file, sequence, offset in the sequence).
using Tok = std::array<std::uint64_t, 3>;

std::vector<Tok> expand(const std::vector<SamplePiece>& pieces) {
  std::vector<Tok> out;
  for (const auto& p : pieces) {
    for (std::uint64_t t = 0; t < p.length; ++t) out.push_back({p.file, p.document, p.offset + t});
  }
  return out;
}

// The fast order, written plainly from its definition in data/mixture.h.
std::vector<std::vector<Tok>> reference_samples(const Fixture& fx, const MixOptions& o) {
  const auto list = parse_data_list(fx.list, "list");
  // Per file: the train split's token stream and samples per epoch.
  std::vector<std::vector<Tok>> stream(list.size());
  std::vector<std::uint64_t> per_epoch(list.size());
  for (std::size_t f = 0; f < list.size(); ++f) {
    const auto [begin, end] = split_range(o.split, fx.sizes[f].size(), 0);
    for (std::uint64_t d = begin; d < end; ++d) {
      for (std::int32_t t = 0; t < fx.sizes[f][d]; ++t) {
        stream[f].push_back({f, d, static_cast<std::uint64_t>(t)});
      }
    }
    const std::uint64_t T = stream[f].size();
    per_epoch[f] = T > o.seq_len ? (T - 1) / o.seq_len : 0;
  }
  // Corpora in order of first appearance, weights summed in list order.
  std::vector<std::string> names;
  std::vector<double> corpus_weight;
  std::vector<std::vector<std::size_t>> members;
  for (std::size_t f = 0; f < list.size(); ++f) {
    std::size_t c = 0;
    while (c < names.size() && names[c] != list[f].corpus) ++c;
    if (c == names.size()) {
      names.push_back(list[f].corpus);
      corpus_weight.push_back(0);
      members.emplace_back();
    }
    corpus_weight[c] += list[f].weight;
    members[c].push_back(f);
  }
  const auto outer = test::reference_blend(corpus_weight, o.samples);
  std::vector<std::uint64_t> corpus_count(names.size(), 0);
  for (const auto c : outer) ++corpus_count[c];
  std::vector<std::vector<std::size_t>> inner(names.size());
  for (std::size_t c = 0; c < names.size(); ++c) {
    std::vector<double> w;
    for (const auto f : members[c]) w.push_back(list[f].weight / corpus_weight[c]);
    inner[c] = test::reference_blend(w, corpus_count[c]);
  }
  std::vector<std::uint64_t> used_corpus(names.size(), 0), used_file(list.size(), 0);
  std::vector<std::vector<Tok>> out;
  for (std::uint64_t i = 0; i < o.samples; ++i) {
    const std::size_t c = outer[i];
    const std::size_t f = members[c][inner[c][used_corpus[c]++]];
    const std::uint64_t j = used_file[f]++;
    const std::uint64_t S = per_epoch[f], T = stream[f].size(), e = j / S;
    const std::uint64_t r = KeyedPermutation(S, epoch_permutation_key(o.seed, f, e))(j % S);
    const std::uint64_t start = epoch_start(o.seed, f, e, T);
    std::vector<Tok> s;
    for (std::uint64_t t = 0; t <= o.seq_len; ++t)
      s.push_back(stream[f][(start + r * o.seq_len + t) % T]);
    out.push_back(s);
  }
  return out;
}

TEST(Mixture, EverySampleMatchesThePlainReference) {
  std::mt19937_64 rng(20261126);
  int checked = 0;
  for (int trial = 0; trial < 40; ++trial) {
    Fixture fx;
    make_mixture(fx, rng, 1 + rng() % 6, 1 + rng() % 3);
    MixOptions o;
    o.list = parse_data_list(fx.list, "list");
    o.seq_len = 1 + rng() % 12;
    o.samples = 1 + rng() % 300;
    o.seed = rng();
    o.split = trial % 3 == 0 ? std::array<double, 3>{100, 0, 0} : std::array<double, 3>{8, 1, 1};
    o.threads = 1 + trial % 3;
    std::optional<Mixture> m;
    try {
      m.emplace(o);
    } catch (const Error& e) {  // a drawn file too short for one sample
      EXPECT_NE(e.message().find("fewer than the"), std::string::npos) << e.message();
      continue;
    }
    ++checked;
    const auto ref = reference_samples(fx, o);
    ASSERT_EQ(m->size(), ref.size());
    for (std::uint64_t i = 0; i < m->size(); ++i) {
      const auto pieces = m->sample(i);
      for (const auto& p : pieces) ASSERT_GT(p.length, 0u);
      ASSERT_EQ(expand(pieces), ref[i]) << "trial " << trial << " sample " << i;
    }

    // Blend shares within one sample of the target at every prefix, per
    // corpus and per file inside its corpus.
    std::vector<std::uint64_t> per_corpus(m->corpora().size(), 0), per_file(m->files().size(), 0);
    for (std::uint64_t i = 0; i < m->size(); ++i) {
      const auto [f, j] = m->source(i);
      EXPECT_EQ(j, per_file[f]);  // a file's samples are drawn in order
      ++per_file[f];
      const std::size_t c = m->files()[f].corpus;
      ++per_corpus[c];
      for (std::size_t k = 0; k < per_corpus.size(); ++k) {
        ASSERT_LT(std::abs(static_cast<double>(per_corpus[k]) -
                           m->corpora()[k].weight * static_cast<double>(i + 1)),
                  1.0 + 1e-9);
      }
      for (const std::size_t g : m->corpora()[c].files) {
        ASSERT_LT(std::abs(static_cast<double>(per_file[g]) -
                           m->files()[g].weight_in_corpus * static_cast<double>(per_corpus[c])),
                  1.0 + 1e-9);
      }
    }
  }
  EXPECT_GE(checked, 30);
}

// Long files with skewed lengths (runs of empty documents, rare huge ones,
// a linear ramp): locating a sample's first document interpolates over the
// .idx offsets and falls back to bisection, and must still find the same
// document as the plain stream.
TEST(Mixture, SkewedLongFilesMatchThePlainReference) {
  std::mt19937_64 rng(7);
  for (int shape = 0; shape < 3; ++shape) {
    Fixture fx;
    for (int f = 0; f < 2; ++f) {
      const std::string prefix = (fx.dir / ("s" + std::to_string(f))).string();
      IndexedDatasetWriter w(prefix, TokenType::U16);
      std::vector<std::int32_t> sz;
      for (int d = 0; d < 6000; ++d) {
        std::int32_t n = 0;
        if (shape == 0) n = rng() % 50 == 0 ? 2000 + static_cast<std::int32_t>(rng() % 3000) : 0;
        if (shape == 1) n = d < 3000 ? static_cast<std::int32_t>(rng() % 2) : 1 + d / 40;
        if (shape == 2) n = (d / 500) % 2 == 0 ? 0 : 1 + static_cast<std::int32_t>(rng() % 60);
        w.add_document(std::vector<std::uint32_t>(static_cast<std::size_t>(n), 1));
        sz.push_back(n);
      }
      w.commit();
      fx.sizes.push_back(sz);
      fx.list += "1 " + prefix + " c\n";
    }
    MixOptions o;
    o.list = parse_data_list(fx.list, "list");
    o.seq_len = 37;
    o.samples = 4000;
    o.seed = rng();
    o.split = {100, 0, 0};
    const Mixture m(o);
    const auto ref = reference_samples(fx, o);
    ASSERT_EQ(m.size(), ref.size());
    for (std::uint64_t i = 0; i < m.size(); ++i) {
      ASSERT_EQ(expand(m.sample(i)), ref[i]) << "shape " << shape << " sample " << i;
    }
  }
}

TEST(Mixture, EachEpochTilesTheFileOnce) {
  std::mt19937_64 rng(99);
  for (int trial = 0; trial < 20; ++trial) {
    Fixture fx;
    make_mixture(fx, rng, 1 + rng() % 3, 1);
    MixOptions o;
    o.list = parse_data_list(fx.list, "list");
    o.seq_len = 1 + rng() % 6;
    o.samples = 200 + rng() % 200;
    o.split = {100, 0, 0};
    std::optional<Mixture> m;
    try {
      m.emplace(o);
    } catch (const Error&) {
      continue;  // a file too short for one sample
    }
    // Group the samples by (file, epoch) and count how often each token is used.
    std::map<std::pair<std::size_t, std::uint64_t>, std::map<Tok, int>> uses;
    std::map<std::pair<std::size_t, std::uint64_t>, std::uint64_t> samples;
    for (std::uint64_t i = 0; i < m->size(); ++i) {
      const auto [f, j] = m->source(i);
      const auto key = std::make_pair(f, j / m->files()[f].samples_per_epoch);
      ++samples[key];
      for (const auto& t : expand(m->sample(i))) ++uses[key][t];
    }
    for (const auto& [key, count] : samples) {
      const MixFile& f = m->files()[key.first];
      if (count < f.samples_per_epoch) continue;  // the last, partial epoch
      // S samples of L+1 tokens sharing S-1 boundary tokens: S L + 1 distinct
      // tokens, used once each but for the S-1 boundaries, used twice.
      const auto& u = uses[key];
      EXPECT_EQ(u.size(), f.samples_per_epoch * o.seq_len + 1);
      std::uint64_t twice = 0;
      for (const auto& [tok, n] : u) {
        EXPECT_LE(n, 2);
        twice += n == 2;
      }
      EXPECT_EQ(twice, f.samples_per_epoch - 1);
      // Every non-empty document of the file appears in the epoch unless it
      // lies entirely in the T - (S L + 1) tokens the epoch leaves out.
      std::set<std::uint64_t> docs;
      for (const auto& [tok, n] : u) docs.insert(tok[1]);
      std::uint64_t nonempty = 0;
      for (const auto s : fx.sizes[key.first]) nonempty += s > 0;
      const std::uint64_t left_out = f.tokens - (f.samples_per_epoch * o.seq_len + 1);
      EXPECT_GE(docs.size() + left_out, nonempty);
    }
  }
}

TEST(Mixture, ResultDoesNotDependOnThreads) {
  std::mt19937_64 rng(5);
  Fixture fx;
  make_mixture(fx, rng, 12, 4);
  MixOptions o;
  o.list = parse_data_list(fx.list, "list");
  o.seq_len = 3;
  o.samples = 5000;
  o.split = {100, 0, 0};
  o.threads = 1;
  const Mixture one(o);
  o.threads = 5;
  const Mixture five(o);
  for (std::uint64_t i = 0; i < o.samples; ++i) ASSERT_EQ(one.source(i), five.source(i));
}

}  // namespace
}  // namespace borealis
