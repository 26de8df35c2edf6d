// The mixture index cache: reuse, invalidation, concurrent builders, and
// errors that name the data list line.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <set>
#include <thread>

#include "core/error.h"
#include "data/indexed_dataset.h"
#include "data/mixture.h"
#include "test_util.h"

namespace borealis {
namespace {

namespace fs = std::filesystem;

void write_dataset(const fs::path& prefix, std::size_t docs, std::uint32_t token) {
  IndexedDatasetWriter w(prefix, TokenType::U16);
  for (std::size_t d = 0; d < docs; ++d) {
    w.add_document(std::vector<std::uint32_t>(5 + d % 7, token));
  }
  w.commit();
}

// Three datasets in two corpora, indexed with a cache under dir/cache.
MixOptions options(const test::TempDir& dir, int seq_len, std::uint64_t samples) {
  write_dataset(dir / "a", 50, 1);
  write_dataset(dir / "b", 80, 2);
  write_dataset(dir / "c", 30, 3);
  MixOptions o;
  o.list = parse_data_list("0.3 " + (dir / "a").string() + " web\n0.5 " + (dir / "b").string() +
                               " web\n0.2 " + (dir / "c").string() + " code\n",
                           "list");
  o.seq_len = seq_len;
  o.samples = samples;
  o.cache_dir = dir / "cache";
  return o;
}

std::vector<std::string> cache_files(const fs::path& dir) {
  std::vector<std::string> out;
  if (!fs::exists(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::pair<std::size_t, std::uint64_t>> all_sources(const Mixture& m) {
  std::vector<std::pair<std::size_t, std::uint64_t>> out;
  for (std::uint64_t i = 0; i < m.size(); ++i) out.push_back(m.source(i));
  return out;
}

TEST(MixtureCache, IsReusedAndKeyedByEverythingThatMatters) {
  test::TempDir dir;
  MixOptions o = options(dir, 8, 400);
  const Mixture first(o);
  EXPECT_FALSE(first.from_cache());
  ASSERT_EQ(cache_files(o.cache_dir), std::vector<std::string>{first.key() + ".mix"});

  const Mixture again(o);
  EXPECT_TRUE(again.from_cache());
  EXPECT_EQ(again.key(), first.key());
  EXPECT_EQ(all_sources(again), all_sources(first));
  for (std::size_t k = 0; k < first.files().size(); ++k) {
    EXPECT_EQ(again.files()[k].samples, first.files()[k].samples);
  }
  for (std::uint64_t i = 0; i < o.samples; i += 7) {
    const auto p = first.sample(i), q = again.sample(i);
    ASSERT_EQ(p.size(), q.size());
    for (std::size_t k = 0; k < p.size(); ++k) EXPECT_EQ(p[k].offset, q[k].offset);
  }

  // Each input changes the key.
  std::set<std::string> keys{first.key()};
  MixOptions seed = o;
  seed.seed = 1;
  keys.insert(Mixture(seed).key());
  MixOptions len = o;
  len.seq_len = 9;
  keys.insert(Mixture(len).key());
  MixOptions n = o;
  n.samples = 401;
  keys.insert(Mixture(n).key());
  MixOptions split = o;
  split.split = {90, 5, 5};
  keys.insert(Mixture(split).key());
  MixOptions weight = o;
  weight.list[0].weight += 0.01;
  keys.insert(Mixture(weight).key());
  EXPECT_EQ(keys.size(), 6u);
  EXPECT_EQ(cache_files(o.cache_dir).size(), 6u);
}

TEST(MixtureCache, AChangedFileInvalidatesIt) {
  test::TempDir dir;
  MixOptions o = options(dir, 8, 300);
  const Mixture first(o);
  // Same name, different contents (and a later modification time).
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  write_dataset(dir / "c", 31, 3);
  const Mixture second(o);
  EXPECT_FALSE(second.from_cache());
  EXPECT_NE(second.key(), first.key());
}

TEST(MixtureCache, ABadCacheFileIsRebuilt) {
  test::TempDir dir;
  MixOptions o = options(dir, 8, 300);
  const Mixture first(o);
  const auto expect = all_sources(first);
  test::write_file(first.cache_path(), "truncated");
  const Mixture second(o);
  EXPECT_FALSE(second.from_cache());
  EXPECT_EQ(all_sources(second), expect);
  const Mixture third(o);
  EXPECT_TRUE(third.from_cache());
}

TEST(MixtureCache, ConcurrentBuildersAgreeAndLeaveOneFile) {
  test::TempDir dir;
  MixOptions o = options(dir, 4, 20000);
  std::vector<std::vector<std::pair<std::size_t, std::uint64_t>>> seen(4);
  std::vector<std::thread> builders;
  for (std::size_t t = 0; t < seen.size(); ++t) {
    builders.emplace_back([&, t] { seen[t] = all_sources(Mixture(o)); });
  }
  for (auto& b : builders) b.join();
  for (std::size_t t = 1; t < seen.size(); ++t) EXPECT_EQ(seen[t], seen[0]);
  EXPECT_EQ(cache_files(o.cache_dir).size(), 1u);  // no temporary files left behind
  EXPECT_TRUE(Mixture(o).from_cache());
}

TEST(MixtureErrors, NameTheListLine) {
  test::TempDir dir;
  write_dataset(dir / "a", 10, 1);
  write_dataset(dir / "tiny", 1, 1);  // 5 tokens
  MixOptions o;
  o.seq_len = 8;
  o.samples = 10;
  o.split = {100, 0, 0};
  o.list = parse_data_list("1 " + (dir / "a").string() + "\n1 " + (dir / "missing").string() + "\n",
                           "L");
  try {
    Mixture m(o);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.where(), "L:2");
    EXPECT_NE(e.message().find((dir / "missing.idx").string()), std::string::npos) << e.message();
  }
  o.list =
      parse_data_list("1 " + (dir / "a").string() + "\n\n1 " + (dir / "tiny").string() + "\n", "L");
  try {
    Mixture m(o);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.where(), "L:3");
    EXPECT_NE(e.message().find("5 tokens in the train split, fewer than the 9"), std::string::npos)
        << e.message();
  }
  // A file of zero weight is never drawn, so being too short is no error.
  o.list =
      parse_data_list("1 " + (dir / "a").string() + "\n0 " + (dir / "tiny").string() + "\n", "L");
  const Mixture ok(o);
  EXPECT_EQ(ok.files()[1].samples, 0u);
  // A file that is not a dataset.
  test::write_file(dir / "junk.idx", "not an index");
  test::write_file(dir / "junk.bin", "");
  o.list = parse_data_list("1 " + (dir / "junk").string() + "\n", "L");
  try {
    Mixture m(o);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.where(), "L:1");
  }
  o.list = parse_data_list("1 " + (dir / "a").string() + "\n", "L");
  o.seq_len = 0;
  EXPECT_THROW(Mixture{o}, Error);
  o.seq_len = 4;
  o.split = {0, 1, 1};
  EXPECT_THROW(Mixture{o}, Error);
}

}  // namespace
}  // namespace borealis
