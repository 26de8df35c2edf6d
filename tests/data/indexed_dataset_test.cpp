#include "data/indexed_dataset.h"

#include <gtest/gtest.h>

#include <cstring>

#include "core/error.h"
#include "data/dataset_tools.h"
#include "test_util.h"

namespace borealis {
namespace {

using test::read_file;
using test::TempDir;

template <class T>
void put(std::string& s, T v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof v);
}

// The .idx of three documents of 2, 0 and 3 uint16 tokens, written by hand
// from the format description (not by the code under test).
std::string expected_idx() {
  std::string s("MMIDIDX\0\0", 9);
  put<std::uint64_t>(s, 1);  // version
  put<std::uint8_t>(s, 8);   // dtype: uint16
  put<std::uint64_t>(s, 3);  // sequences
  put<std::uint64_t>(s, 4);  // document index entries
  for (std::int32_t size : {2, 0, 3}) put(s, size);
  for (std::int64_t ptr : {0, 4, 4}) put(s, ptr);  // bytes: sizes x 2
  for (std::int64_t d : {0, 1, 2, 3}) put(s, d);
  return s;
}

TEST(IndexedDataset, WriterProducesMegatronBytes) {
  TempDir dir;
  IndexedDatasetWriter w(dir / "ds", TokenType::U16);
  w.add_document(std::vector<std::uint32_t>{1, 65535});
  w.add_document(std::vector<std::uint32_t>{});
  w.add_document(std::vector<std::uint32_t>{7, 8, 9});
  EXPECT_FALSE(std::filesystem::exists(dir / "ds.bin"));  // nothing visible before commit
  w.commit();
  EXPECT_EQ(read_file(dir / "ds.idx"), expected_idx());
  std::string bin;
  for (std::uint16_t t : {1, 65535, 7, 8, 9}) put(bin, t);
  EXPECT_EQ(read_file(dir / "ds.bin"), bin);
  EXPECT_EQ(test::list_dir(dir.path()), (std::vector<std::string>{"ds.bin", "ds.idx"}));
}

TEST(IndexedDataset, ReaderReadsHandWrittenFiles) {
  TempDir dir;
  test::write_file(dir / "hand.idx", expected_idx());
  std::string bin;
  for (std::uint16_t t : {1, 65535, 7, 8, 9}) put(bin, t);
  test::write_file(dir / "hand.bin", bin);
  const IndexedDataset ds(dir / "hand.idx");  // a suffix is accepted
  EXPECT_EQ(ds.token_type(), TokenType::U16);
  EXPECT_EQ(ds.sequences(), 3u);
  EXPECT_EQ(ds.documents(), 3u);
  EXPECT_EQ(ds.tokens(), 5u);
  EXPECT_EQ(ds.sequence(0), (std::vector<std::uint32_t>{1, 65535}));
  EXPECT_TRUE(ds.sequence(1).empty());
  std::vector<std::uint32_t> span;
  ds.read(2, 1, 2, span);
  EXPECT_EQ(span, (std::vector<std::uint32_t>{8, 9}));
  EXPECT_THROW(ds.read(2, 2, 2, span), std::out_of_range);
  ds.verify();
}

TEST(IndexedDataset, Int32ForLargeVocabularies) {
  TempDir dir;
  EXPECT_EQ(token_type_for_vocab(50257), TokenType::U16);
  EXPECT_EQ(token_type_for_vocab(100277), TokenType::I32);
  IndexedDatasetWriter w(dir / "big", TokenType::I32);
  w.add_document(std::vector<std::uint32_t>{100000, 3});
  w.commit();
  EXPECT_EQ(IndexedDataset(dir / "big").sequence(0), (std::vector<std::uint32_t>{100000, 3}));
  IndexedDatasetWriter narrow(dir / "narrow", TokenType::U16);
  EXPECT_THROW(narrow.add_document(std::vector<std::uint32_t>{70000}), Error);
}

TEST(IndexedDataset, CorruptionIsFoundAndNamed) {
  TempDir dir;
  std::string bin;
  for (std::uint16_t t : {1, 65535, 7, 8, 9}) put(bin, t);
  test::write_file(dir / "c.bin", bin);
  const std::string idx_path = (dir / "c.idx").string();
  auto with_idx = [&](const std::function<void(std::string&)>& edit) {
    std::string idx = expected_idx();
    edit(idx);
    test::write_file(dir / "c.idx", idx);
    return test::error_line([&] { IndexedDataset(dir / "c").verify(); });
  };
  EXPECT_EQ(with_idx([](std::string& s) { s[0] = 'X'; }),
            "error: not a Megatron .idx file (bad magic) (" + idx_path + ")");
  EXPECT_EQ(with_idx([](std::string& s) { s[9] = 2; }),
            "error: unsupported .idx version 2 (" + idx_path + ")");
  EXPECT_EQ(
      with_idx([](std::string& s) { s.pop_back(); }),
      "error: .idx is 101 bytes but its header (3 sequences, 4 document entries) needs 102 (" +
          idx_path + ")");
  // Second pointer 4 -> 2.
  EXPECT_EQ(
      with_idx([](std::string& s) { s[34 + 12 + 8] = 2; }),
      "error: sequence 1: pointer 2 should be 4 (the sum of the sizes before it x 2 bytes) (" +
          idx_path + ")");
  // Document index out of order.
  EXPECT_EQ(with_idx([](std::string& s) { s[34 + 12 + 24 + 8] = 3; }),
            "error: document 2: index entry 2 is out of order or past the 3 sequences (" +
                idx_path + ")");
  test::write_file(dir / "c.idx", expected_idx());
  test::write_file(dir / "c.bin", bin.substr(2));
  EXPECT_EQ(
      test::error_line([&] { IndexedDataset ds(dir / "c"); }),
      "error: .bin is 8 bytes but the index ends at byte 10 (" + (dir / "c.bin").string() + ")");
  EXPECT_EQ(test::error_line([&] { IndexedDataset ds(dir / "missing"); }),
            "error: cannot open file: No such file or directory (" +
                (dir / "missing.idx").string() + ")");
}

TEST(IndexedDataset, MergeConcatenatesInOrder) {
  TempDir dir;
  for (const char* name : {"a", "b"}) {
    IndexedDatasetWriter w(dir / name, TokenType::U16);
    w.add_document(std::vector<std::uint32_t>{name[0] == 'a' ? 1u : 4u, 2});
    w.add_document(std::vector<std::uint32_t>{3});
    w.commit();
  }
  EXPECT_EQ(merge_datasets({dir / "a", dir / "b"}, dir / "ab"), 4u);
  const IndexedDataset ab(dir / "ab");
  ab.verify();
  EXPECT_EQ(ab.sequences(), 4u);
  EXPECT_EQ(ab.sequence(2), (std::vector<std::uint32_t>{4, 2}));
  IndexedDatasetWriter wide(dir / "wide", TokenType::I32);
  wide.add_document(std::vector<std::uint32_t>{1});
  wide.commit();
  EXPECT_EQ(test::error_line([&] {
              merge_datasets({dir / "a", dir / "wide"}, dir / "x");
            }),
            "error: token type int32 differs from uint16 of " + (dir / "a").string() + " (" +
                (dir / "wide").string() + ")");
  EXPECT_FALSE(std::filesystem::exists(dir / "x.bin"));
}

TEST(IndexedDataset, LengthStatistics) {
  TempDir dir;
  IndexedDatasetWriter w(dir / "s", TokenType::U16);
  for (std::uint32_t n = 1; n <= 100; ++n) w.add_document(std::vector<std::uint32_t>(n, 5));
  w.commit();
  const LengthStats st = length_stats(IndexedDataset(dir / "s"));
  EXPECT_EQ(st.tokens, 5050u);
  EXPECT_DOUBLE_EQ(st.mean, 50.5);
  EXPECT_EQ(st.percentiles.front().second, 1);
  EXPECT_EQ(st.percentiles.back().second, 100);
  ASSERT_EQ(st.log2_histogram.size(), 7u);  // 64..127 is the last bucket
  EXPECT_EQ(st.log2_histogram[0], 1u);      // length 1
  EXPECT_EQ(st.log2_histogram[6], 37u);     // 64..100
}

}  // namespace
}  // namespace borealis
