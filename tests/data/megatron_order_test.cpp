// The megatron order: every sample of many random small mixtures against a
// plain transcription of Megatron-DeepSpeed's index building written here,
// and against fixtures written by a numpy restatement of it
// (fixtures/make_megatron_fixture.py).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <sstream>

#include "core/error.h"
#include "data/data_list.h"
#include "data/indexed_dataset.h"
#include "data/megatron_order.h"
#include "data/mixture.h"
#include "data/numpy_random.h"
#include "test_util.h"

namespace borealis {
namespace {

namespace fs = std::filesystem;

using Piece = std::array<std::uint64_t, 4>;  // file, document, offset, length
using Sample = std::vector<Piece>;

// ------------------------------------------------ Megatron, written plainly

// build_blending_indices: the source with the largest w * max(t, 1) - count.
std::vector<std::pair<std::size_t, std::uint64_t>> plain_blend(const std::vector<double>& w,
                                                               std::uint64_t size) {
  std::vector<std::int64_t> current(w.size(), 0);
  std::vector<std::pair<std::size_t, std::uint64_t>> out;
  for (std::uint64_t s = 0; s < size; ++s) {
    const double t = std::max(static_cast<double>(s), 1.0);
    std::size_t best = 0;
    double best_error = w[0] * t - static_cast<double>(current[0]);
    for (std::size_t k = 1; k < w.size(); ++k) {
      const double error = w[k] * t - static_cast<double>(current[k]);
      if (error > best_error) best_error = error, best = k;
    }
    out.push_back({best, static_cast<std::uint64_t>(current[best])});
    ++current[best];
  }
  return out;
}

// GPTDataset over documents [begin, end) of `sizes`.
struct PlainGpt {
  std::vector<std::int32_t> sizes, doc_idx;
  std::vector<std::array<std::int64_t, 2>> sample_idx;
  std::vector<std::uint64_t> shuffle_idx;

  PlainGpt(std::vector<std::int32_t> sz, std::uint64_t begin, std::uint64_t end,
           std::int64_t num_samples, std::int64_t seq_len, std::uint32_t seed)
      : sizes(std::move(sz)) {
    std::int64_t tokens = 0;
    for (std::uint64_t d = begin; d < end; ++d) tokens += sizes[d];
    if (tokens == 0) throw std::runtime_error("Megatron loops forever");
    std::int64_t epochs = 0, total = 0;
    for (;;) {  // _num_epochs
      ++epochs;
      total += tokens;
      if ((total - 1) / seq_len >= num_samples) break;
    }
    NumpyRandomState rng(seed);
    bool separate = false;
    std::int64_t before = 0;
    if (epochs > 1) {
      before = ((epochs - 1) * tokens - 1) / seq_len;
      const std::int64_t last = num_samples - before;
      const std::int64_t per_epoch = (tokens - 1) / seq_len;
      separate = last < static_cast<std::int64_t>(0.80 * static_cast<double>(per_epoch));
    }
    const auto epochs_of = [&](std::int64_t e) {
      std::vector<std::int32_t> v;
      for (std::int64_t k = 0; k < e; ++k) {
        for (std::uint64_t d = begin; d < end; ++d) v.push_back(static_cast<std::int32_t>(d));
      }
      rng.shuffle(v);
      return v;
    };
    if (!separate) {
      doc_idx = epochs_of(epochs);
    } else {
      doc_idx = epochs_of(epochs - 1);
      const auto last = epochs_of(1);
      doc_idx.insert(doc_idx.end(), last.begin(), last.end());
    }
    // build_sample_idx, as its loop is written.
    const std::int64_t n = (epochs * tokens - 1) / seq_len;
    sample_idx.push_back({0, 0});
    std::int64_t d = 0, offset = 0;
    while (static_cast<std::int64_t>(sample_idx.size()) <= n) {
      std::int64_t remaining = seq_len + 1;
      while (remaining != 0) {
        const std::int64_t length = sizes[static_cast<std::size_t>(doc_idx[d])] - offset;
        remaining -= length;
        if (remaining <= 0) {
          offset += remaining + length - 1;
          remaining = 0;
        } else {
          ++d;
          offset = 0;
        }
      }
      sample_idx.push_back({d, offset});
    }
    const std::int64_t first = separate ? before : n;
    std::vector<std::uint64_t> a, b;
    for (std::int64_t s = 0; s < first; ++s) a.push_back(static_cast<std::uint64_t>(s));
    rng.shuffle(a);
    for (std::int64_t s = first; s < n; ++s) b.push_back(static_cast<std::uint64_t>(s));
    rng.shuffle(b);
    shuffle_idx = a;
    shuffle_idx.insert(shuffle_idx.end(), b.begin(), b.end());
  }

  std::optional<Sample> get(std::size_t file, std::uint64_t j) const {
    if (j >= shuffle_idx.size()) return std::nullopt;  // IndexError
    const std::uint64_t idx = shuffle_idx[j];
    const auto [df, of] = sample_idx[idx];
    const auto [dl, ol] = sample_idx[idx + 1];
    Sample out;
    const auto add = [&](std::int64_t d, std::int64_t off, std::int64_t len) {
      if (len > 0) {
        out.push_back({file, static_cast<std::uint64_t>(doc_idx[d]),
                       static_cast<std::uint64_t>(off), static_cast<std::uint64_t>(len)});
      }
    };
    if (df == dl) {
      add(df, of, ol - of + 1);
    } else {
      add(df, of, sizes[doc_idx[df]] - of);
      for (std::int64_t d = df + 1; d < dl; ++d) add(d, 0, sizes[doc_idx[d]]);
      add(dl, 0, ol + 1);
    }
    return out;
  }
};

struct PlainFile {
  std::vector<std::int32_t> sizes;
  std::string weight, corpus;
};

// The whole mixture as AuroraGPT builds it; nullopt where Megatron would fail.
std::optional<std::vector<Sample>> plain_mixture(const std::vector<PlainFile>& files,
                                                 const std::vector<DataListEntry>& list,
                                                 std::uint64_t seq_len, std::uint64_t n,
                                                 std::uint32_t seed,
                                                 const std::array<double, 3>& split, bool blend,
                                                 bool shuffle) {
  std::vector<std::int64_t> requested;
  std::vector<PlainGpt> gpts;
  for (std::size_t f = 0; f < files.size(); ++f) {
    requested.push_back(
        static_cast<std::int64_t>(std::ceil(static_cast<double>(n) * list[f].weight * 1.005)));
    const auto [b, e] = split_range(split, files[f].sizes.size(), 0);
    try {
      gpts.emplace_back(files[f].sizes, b, e, requested.back(), static_cast<std::int64_t>(seq_len),
                        seed);
    } catch (const std::runtime_error&) {
      return std::nullopt;
    }
  }
  std::set<std::string> names;
  for (const auto& f : files) names.insert(f.corpus);
  struct Corpus {
    std::vector<std::size_t> members;
    std::vector<std::pair<std::size_t, std::uint64_t>> index;
    std::vector<std::uint64_t> order;
  };
  std::vector<Corpus> corpora;
  std::int64_t total = 0;
  for (const auto& name : names) {
    Corpus c;
    std::vector<std::int64_t> counts;
    std::int64_t size = 0;
    for (std::size_t f = 0; f < files.size(); ++f) {
      if (files[f].corpus == name) {
        c.members.push_back(f);
        counts.push_back(requested[f]);
        size += requested[f];
      }
    }
    if (blend) {
      std::vector<double> w;
      for (const auto k : counts) w.push_back(static_cast<double>(k) / static_cast<double>(size));
      c.index = plain_blend(w, static_cast<std::uint64_t>(size));
    } else {
      for (std::size_t m = 0; m < counts.size(); ++m) {
        for (std::int64_t j = 0; j < counts[m]; ++j) {
          c.index.push_back({m, static_cast<std::uint64_t>(j)});
        }
      }
    }
    NumpyRandomState rng(seed);
    for (std::int64_t j = 0; j < size; ++j) c.order.push_back(static_cast<std::uint64_t>(j));
    if (shuffle) rng.shuffle(c.order);
    total += size;
    corpora.push_back(std::move(c));
  }
  std::vector<double> w;
  for (const auto& c : corpora) {
    w.push_back(static_cast<double>(c.order.size()) / static_cast<double>(total));
  }
  const double sum = numpy_sum(w.data(), w.size());
  for (double& x : w) x /= sum;
  std::vector<Sample> out;
  for (const auto& [c, j] : plain_blend(w, n)) {
    if (j >= corpora[c].order.size()) return std::nullopt;
    const auto [m, jj] = corpora[c].index[corpora[c].order[j]];
    const std::size_t f = corpora[c].members[m];
    auto s = gpts[f].get(f, jj);
    if (!s) return std::nullopt;
    out.push_back(*s);
  }
  return out;
}

// ---------------------------------------------------------------- helpers

Sample pieces_of(const Mixture& m, std::uint64_t i) {
  Sample s;
  for (const auto& p : m.sample(i)) s.push_back({p.file, p.document, p.offset, p.length});
  return s;
}

std::string write_files(const test::TempDir& dir, const std::vector<PlainFile>& files) {
  std::string list;
  for (std::size_t f = 0; f < files.size(); ++f) {
    const std::string prefix = (dir / ("f" + std::to_string(f))).string();
    IndexedDatasetWriter w(prefix, TokenType::U16);
    for (const auto n : files[f].sizes) {
      w.add_document(
          std::vector<std::uint32_t>(static_cast<std::size_t>(n), static_cast<std::uint32_t>(f)));
    }
    w.commit();
    list += files[f].weight + " " + prefix + " " + files[f].corpus + "\n";
  }
  return list;
}

// ------------------------------------------------------------------- tests

TEST(MegatronOrder, BlendMatchesThePlainScan) {
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 120; ++trial) {
    const std::size_t k = 1 + rng() % (trial < 40 ? 20 : 400);
    std::vector<double> w(k);
    std::uint64_t total = 0;
    std::vector<std::uint64_t> counts(k);
    for (auto& c : counts) {
      c = trial % 4 == 0 ? 100 : rng() % 1000;  // all ties, or random sizes
      if (rng() % 9 == 0) c = 0;
      total += c;
    }
    if (total == 0) continue;
    for (std::size_t j = 0; j < k; ++j) {
      w[j] = static_cast<double>(counts[j]) / static_cast<double>(total);
    }
    const std::uint64_t size = std::min<std::uint64_t>(total, 20000);
    const auto expect = plain_blend(w, size);
    MegatronBlend blend(w);
    for (std::uint64_t s = 0; s < size; ++s) {
      const std::size_t got = blend.next();
      ASSERT_EQ(got, expect[s].first) << "trial " << trial << " k " << k << " step " << s;
      ASSERT_EQ(blend.counts()[got] - 1, expect[s].second);
    }
  }
}

TEST(MegatronOrder, FilePlanFollowsTheEpochLoopAndThe80PercentRule) {
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 3000; ++trial) {
    const std::uint64_t tokens = 1 + rng() % 5000, seq_len = 1 + rng() % 300;
    const std::uint64_t requested = rng() % 2000;
    const MegatronFilePlan p = megatron_file_plan(tokens, seq_len, requested);
    std::uint64_t epochs = 0, total = 0;
    for (;;) {
      ++epochs;
      total += tokens;
      if ((total - 1) / seq_len >= requested) break;
    }
    ASSERT_EQ(p.epochs, epochs) << tokens << " " << seq_len << " " << requested;
    ASSERT_EQ(p.samples, (epochs * tokens - 1) / seq_len);
    if (epochs > 1) {
      const std::uint64_t before = ((epochs - 1) * tokens - 1) / seq_len;
      const bool separate = static_cast<double>(requested - before) <
                            std::floor(0.8 * static_cast<double>((tokens - 1) / seq_len));
      ASSERT_EQ(p.separate_last_epoch, separate);
      ASSERT_EQ(p.first_samples, separate ? before : p.samples);
    } else {
      ASSERT_FALSE(p.separate_last_epoch);
    }
  }
  EXPECT_EQ(megatron_requested_samples(1000, 0.25), 252u);  // ceil(251.25)
  EXPECT_EQ(megatron_requested_samples(0, 0.25), 0u);
}

TEST(MegatronOrder, RandomMixturesMatchThePlainTranscription) {
  std::mt19937_64 rng(1234);
  int compared = 0, failing = 0;
  for (int trial = 0; trial < 60; ++trial) {
    test::TempDir dir;
    std::vector<PlainFile> files(1 + rng() % 7);
    const std::size_t corpora = 1 + rng() % 3;
    for (auto& f : files) {
      const std::size_t docs = 2 + rng() % 40;
      for (std::size_t d = 0; d < docs; ++d) {
        f.sizes.push_back(rng() % 5 == 0 ? 0 : static_cast<std::int32_t>(1 + rng() % 30));
      }
      f.sizes[0] = std::max(f.sizes[0], 1);  // the train split holds a token
      f.weight = std::to_string(static_cast<double>(1 + rng() % 100) / 7.0);
      if (rng() % 8 == 0) f.weight = "0";
      f.corpus = "c" + std::to_string(rng() % corpora);
    }
    if (std::all_of(files.begin(), files.end(), [](const PlainFile& f) { return f.weight == "0"; }))
      files[0].weight = "1";
    MixOptions o;
    o.list = parse_data_list(write_files(dir, files), "list");
    o.seq_len = 1 + rng() % 20;
    o.samples = 1 + rng() % 400;
    o.seed = rng() % 3 == 0 ? rng() % 4294967296ull : rng() % 100;
    o.split = {static_cast<double>(50 + rng() % 50), static_cast<double>(rng() % 20),
               static_cast<double>(rng() % 5)};
    o.order = MixOrder::megatron;
    o.blend_sample_in_corpus = rng() % 2 == 0;
    o.shuffle_sample_in_corpus = rng() % 2 == 0;
    o.threads = 1 + static_cast<unsigned>(rng() % 3);
    const auto expect =
        plain_mixture(files, o.list, o.seq_len, o.samples, static_cast<std::uint32_t>(o.seed),
                      o.split, o.blend_sample_in_corpus, o.shuffle_sample_in_corpus);
    if (!expect) {  // Megatron raises IndexError within the first N samples
      ++failing;
      EXPECT_THROW(Mixture{o}, Error) << "trial " << trial;
      continue;
    }
    const Mixture m(o);
    for (std::uint64_t i = 0; i < o.samples; ++i) {
      const Sample got = pieces_of(m, i);
      ASSERT_EQ(got, (*expect)[i]) << "trial " << trial << " sample " << i;
      std::uint64_t tokens = 0;
      for (const auto& p : got) tokens += p[3];
      ASSERT_EQ(tokens, o.seq_len + 1);
    }
    ++compared;
  }
  EXPECT_GT(compared, 40);
  (void)failing;
}

TEST(MegatronOrder, EverySampleMatchesTheNumpyFixture) {
  std::ifstream in(BOREALIS_SOURCE_DIR "/tests/data/fixtures/megatron_mixture.txt");
  ASSERT_TRUE(in.good());
  int configs = 0;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream head(line);
    std::string kind, name, split;
    std::uint64_t seq_len = 0, n = 0, seed = 0;
    int blend = 0, shuffle = 0;
    head >> kind >> name >> seq_len >> n >> seed >> split >> blend >> shuffle;
    ASSERT_EQ(kind, "config");
    std::vector<PlainFile> files;
    std::vector<Sample> expect;
    while (std::getline(in, line) && line != "end") {
      std::istringstream w(line);
      w >> kind;
      if (kind == "file") {
        PlainFile f;
        w >> f.weight >> f.corpus;
        for (std::int32_t s; w >> s;) f.sizes.push_back(s);
        files.push_back(f);
      } else {
        std::uint64_t i;
        w >> i;
        ASSERT_EQ(i, expect.size());
        Sample s;
        for (Piece p; w >> p[0] >> p[1] >> p[2] >> p[3];) s.push_back(p);
        expect.push_back(s);
      }
    }
    test::TempDir dir;
    MixOptions o;
    o.list = parse_data_list(write_files(dir, files), "list");
    o.seq_len = seq_len;
    o.samples = n;
    o.seed = seed;
    std::replace(split.begin(), split.end(), ',', ' ');
    std::istringstream parts(split);
    parts >> o.split[0] >> o.split[1] >> o.split[2];
    o.order = MixOrder::megatron;
    o.blend_sample_in_corpus = blend != 0;
    o.shuffle_sample_in_corpus = shuffle != 0;
    const Mixture m(o);
    ASSERT_EQ(expect.size(), n);
    for (std::uint64_t i = 0; i < n; ++i) {
      ASSERT_EQ(pieces_of(m, i), expect[i]) << name << " sample " << i;
    }
    ++configs;
  }
  EXPECT_EQ(configs, 5);
}

TEST(MegatronOrder, CacheIsKeyedByTheOrderAndTheCorpusOptions) {
  test::TempDir dir;
  std::vector<PlainFile> files = {{{5, 9, 0, 14, 3, 8, 20, 2}, "1", "web"},
                                  {{7, 7, 7, 7, 1}, "2", "web"},
                                  {{30, 4, 4, 12}, "1.5", "code"}};
  MixOptions o;
  o.list = parse_data_list(write_files(dir, files), "list");
  o.seq_len = 6;
  o.samples = 120;
  o.split = {100, 0, 0};
  o.cache_dir = dir / "cache";
  std::set<std::string> keys;
  for (const auto order : {MixOrder::fast, MixOrder::megatron}) {
    for (int flags = 0; flags < (order == MixOrder::fast ? 1 : 4); ++flags) {
      o.order = order;
      o.blend_sample_in_corpus = flags & 1;
      o.shuffle_sample_in_corpus = flags & 2;
      const Mixture built(o);
      EXPECT_FALSE(built.from_cache());
      const Mixture cached(o);
      EXPECT_TRUE(cached.from_cache());
      for (std::uint64_t i = 0; i < o.samples; ++i) {
        ASSERT_EQ(pieces_of(built, i), pieces_of(cached, i));
      }
      keys.insert(built.key());
    }
  }
  EXPECT_EQ(keys.size(), 5u);
}

TEST(MegatronOrder, OptionsThatDoNotApplyAreErrors) {
  test::TempDir dir;
  MixOptions o;
  o.list = parse_data_list(write_files(dir, {{{5, 9, 3}, "1", "web"}}), "list");
  o.seq_len = 4;
  o.samples = 10;
  o.blend_sample_in_corpus = true;
  EXPECT_EQ(
      test::error_line([&] { Mixture m(o); }).rfind("error: applies to the megatron order", 0), 0u);
  o.blend_sample_in_corpus = false;
  o.order = MixOrder::megatron;
  o.seed = 1ull << 32;
  EXPECT_EQ(test::error_line([&] { Mixture m(o); }),
            "error: must be below 2^32 in the megatron order (numpy's RandomState seeds) (--seed)");
}

}  // namespace
}  // namespace borealis
