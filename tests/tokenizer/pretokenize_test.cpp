#include "tokenizer/pretokenize.h"

#include <gtest/gtest.h>

#include <random>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace borealis {
namespace {

std::vector<std::string> pieces_of(const PreTokenizer& p, std::string_view text) {
  std::vector<std::string_view> views;
  p.split(text, views);
  return {views.begin(), views.end()};
}

using Pieces = std::vector<std::string>;

TEST(PreTokenize, Gpt2Pattern) {
  const auto p = PreTokenizer::create(kGpt2Pattern);
  EXPECT_STREQ(p->engine(), "gpt2");
  EXPECT_EQ(
      pieces_of(*p, "Hello world's 2026 cats!!  x\n\n  y "),
      (Pieces{"Hello", " world", "'s", " 2026", " cats", "!!", " ", " x", "\n\n ", " y", " "}));
  EXPECT_EQ(pieces_of(*p, "I'M 'RE 're"),
            (Pieces{"I", "'", "M", " '", "RE", " '", "re"}));  // case-sensitive
  EXPECT_EQ(pieces_of(*p, "   "), (Pieces{"   "}));
}

TEST(PreTokenize, Cl100kPattern) {
  const auto p = PreTokenizer::create(kCl100kPattern);
  EXPECT_STREQ(p->engine(), "cl100k");
  EXPECT_EQ(
      pieces_of(*p, "Hello world's 12345 (cats)!!\n\n  x"),
      (Pieces{"Hello", " world", "'s", " ", "123", "45", " (", "cats", ")!!\n\n", " ", " x"}));
  EXPECT_EQ(pieces_of(*p, "I'M 'RE\tword  \n  y"),
            (Pieces{"I", "'M", " '", "RE", "\tword", "  \n", " ", " y"}));
  EXPECT_EQ(pieces_of(*p, "'\xC5\xBF"), (Pieces{"'\xC5\xBF"}));  // 'ſ case-folds to 's
}

TEST(PreTokenize, InvalidUtf8BytesArePiecesOfTheirOwn) {
  for (const auto& pattern : {kGpt2Pattern, kCl100kPattern}) {
    const auto fast = PreTokenizer::create(pattern);
    const auto regex = PreTokenizer::create_regex(pattern);
    const std::string text = "ab\xFF\xFE cd\xC3 \xE2\x82";
    EXPECT_EQ(pieces_of(*fast, text), pieces_of(*regex, text)) << pattern;
    std::string joined;
    for (const auto& piece : pieces_of(*fast, text)) joined += piece;
    EXPECT_EQ(joined, text);
  }
}

// Random text from a pool that exercises every class and alternative:
// letters of several scripts and cases, marks, digits, whitespace kinds,
// apostrophe contractions, punctuation, emoji, invalid bytes.
std::string random_text(std::mt19937& rng, std::size_t chars) {
  static const std::vector<std::string> pool = {
      "a",
      "Z",
      "é",
      "ß",
      "Ω",
      "ж",
      "ſ",
      "ǅ",
      "ʰ",
      "中",
      "の",
      "\xCC\x81",
      "\xE0\xA4\x82",
      "7",
      "٣",
      "Ⅻ",
      "½",
      " ",
      " ",
      " ",
      "\t",
      "\n",
      "\r",
      "\xC2\xA0",
      "\xE3\x80\x80",
      "\xC2\x85",
      "'",
      "'s",
      "'T",
      "'re",
      "'LL",
      "'d",
      "'ve",
      "'M",
      ".",
      ",",
      "!",
      "(",
      "-",
      "/",
      "😀",
      "\xFF",
      "\xC3",
      "\xE2\x82",
  };
  std::uniform_int_distribution<std::size_t> pick(0, pool.size() - 1);
  std::string s;
  for (std::size_t i = 0; i < chars; ++i) s += pool[pick(rng)];
  return s;
}

TEST(PreTokenize, HandWrittenMatchersAgreeWithPcre2) {
  std::mt19937 rng(1234);
  for (const auto& pattern : {kGpt2Pattern, kCl100kPattern}) {
    const auto fast = PreTokenizer::create(pattern);
    const auto regex = PreTokenizer::create_regex(pattern);
    ASSERT_STREQ(regex->engine(), "pcre2");
    for (int round = 0; round < 3000; ++round) {
      const std::string text = random_text(rng, 1 + round % 40);
      ASSERT_EQ(pieces_of(*fast, text), pieces_of(*regex, text))
          << "pattern " << pattern << "\ntext: " << text;
    }
  }
}

TEST(PreTokenize, InvalidPatternIsAnError) {
  try {
    PreTokenizer::create("(unclosed", "tok.json: pre_tokenizer");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.where(), "tok.json: pre_tokenizer");
    EXPECT_NE(e.message().find("invalid regular expression"), std::string::npos);
  }
}

TEST(Unicode, ClassesAndUtf8) {
  using namespace unicode;
  EXPECT_TRUE(classify('a') & kLl);
  EXPECT_TRUE(classify(0x4E2D) & kLo);  // 中
  EXPECT_TRUE(classify(0x0301) & kMark);
  EXPECT_TRUE(classify(0x0663) & kNumber);  // Arabic-Indic three
  EXPECT_TRUE(classify(0x85) & kSpace);
  EXPECT_FALSE(classify(0x1C) & kSpace);  // a separator control, not White_Space
  EXPECT_EQ(classify('!'), 0);
  std::uint32_t cp = 0;
  const unsigned char overlong[] = {0xC0, 0x80};
  EXPECT_EQ(decode_utf8(overlong, 2, cp), 0u);
  const unsigned char surrogate[] = {0xED, 0xA0, 0x80};
  EXPECT_EQ(decode_utf8(surrogate, 3, cp), 0u);
  const unsigned char emoji[] = {0xF0, 0x9F, 0x98, 0x80};
  EXPECT_EQ(decode_utf8(emoji, 4, cp), 4u);
  EXPECT_EQ(cp, 0x1F600u);
  char buf[4];
  EXPECT_EQ(encode_utf8(0x1F600, buf), 4u);
  EXPECT_EQ(std::string(buf, 4), "\xF0\x9F\x98\x80");
}

}  // namespace
}  // namespace borealis
