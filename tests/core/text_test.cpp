#include "core/text.h"

#include <gtest/gtest.h>

#include "core/error.h"

namespace borealis {
namespace {

TEST(Text, FormatBytes) {
  EXPECT_EQ(format_bytes(0), "0 B");
  EXPECT_EQ(format_bytes(1023), "1023 B");
  EXPECT_EQ(format_bytes(1536), "1.50 KiB");
  EXPECT_EQ(format_bytes(std::uint64_t{25} << 30), "25.0 GiB");
  EXPECT_EQ(format_bytes(std::uint64_t{300} << 40), "300 TiB");
}

TEST(Text, Utf8BomLength) {
  EXPECT_EQ(utf8_bom_length("\xEF\xBB\xBF{}"), 3u);
  EXPECT_EQ(utf8_bom_length("\xEF\xBB\xBF"), 3u);
  EXPECT_EQ(utf8_bom_length("\xEF\xBB"), 0u);
  EXPECT_EQ(utf8_bom_length("{}\xEF\xBB\xBF"), 0u);
  EXPECT_EQ(utf8_bom_length(""), 0u);
}

TEST(Text, ParseBytes) {
  EXPECT_EQ(parse_bytes("512", "x"), 512u);
  EXPECT_EQ(parse_bytes("64K", "x"), 65536u);
  EXPECT_EQ(parse_bytes("1.5GiB", "x"), 1536u << 20);
  EXPECT_EQ(parse_bytes("10gb", "x"), 10000000000u);
  EXPECT_EQ(parse_bytes(" 2 T ", "x"), std::uint64_t{2} << 40);
  EXPECT_THROW(parse_bytes("", "x"), Error);
  EXPECT_THROW(parse_bytes("G", "x"), Error);
  EXPECT_THROW(parse_bytes("-1G", "x"), Error);
  try {
    parse_bytes("5 parsecs", "--min-free-disk");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.where(), "--min-free-disk");
    EXPECT_NE(e.message().find("unknown size unit 'parsecs'"), std::string::npos);
  }
}

TEST(Text, EditDistanceAndSuggestions) {
  EXPECT_EQ(edit_distance("kitten", "sitting"), 3u);
  EXPECT_EQ(edit_distance("", "abc"), 3u);
  const std::vector<std::string> keys = {"train.steps", "train.lr", "data.paths"};
  EXPECT_EQ(closest_match("train.setps", keys), "train.steps");
  EXPECT_EQ(closest_match("optim.lr", keys), "train.lr");
  EXPECT_EQ(closest_match("model.layers", keys), "");
}

TEST(Text, TrimAndSplit) {
  EXPECT_EQ(trim("  a b \n"), "a b");
  EXPECT_EQ(split("a,,b", ','), (std::vector<std::string>{"a", "", "b"}));
  EXPECT_EQ(split("", ','), (std::vector<std::string>{""}));
}

}  // namespace
}  // namespace borealis
