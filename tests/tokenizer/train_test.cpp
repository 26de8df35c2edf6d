#include "tokenizer/train.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "test_util.h"
#include "tokenizer/hf_js.h"
#include "tokenizer/hf_json.h"

namespace borealis {
namespace {

const std::filesystem::path kData = BOREALIS_DATA_DIR;

BpeTrainOptions small(std::size_t vocab, int threads = 1) {
  BpeTrainOptions o;
  o.vocab_size = vocab;
  o.threads = threads;
  o.progress = false;
  return o;
}

TEST(TrainBpe, LearnsTheMostFrequentPairsInOrder) {
  // Pieces (spaces apart): "ab" occurs 5 times, then "abc" (ab + c) 3 times, "de" twice.
  BpeTrainOptions o = small(256 + 3 + 1);
  o.pattern = R"(\S+|\s+)";
  const Tokenizer tok = train_bpe_documents(std::vector<std::string>{"ab ab abc abc abc de de"}, o);
  const auto merges = tok.model().merges();
  ASSERT_EQ(merges.size(), 3u);
  auto text = [&](const BpeModel::Merge& m) {
    return tok.model().token(m.left) + "+" + tok.model().token(m.right);
  };
  EXPECT_EQ(text(merges[0]), "a+b");
  EXPECT_EQ(text(merges[1]), "ab+c");
  EXPECT_EQ(text(merges[2]), "d+e");
  EXPECT_EQ(tok.vocab_size(), 260u);
  EXPECT_EQ(tok.added_token_id("<|endoftext|>"), 259u);  // special tokens come last
  EXPECT_EQ(tok.encode("ab abc de"), (std::vector<std::uint32_t>{256, ' ', 257, ' ', 258}));
}

TEST(TrainBpe, OverlappingPairsMergeLeftToRight) {
  BpeTrainOptions o = small(256 + 1);
  o.special_tokens = {};
  o.pattern = R"(\S+)";
  const Tokenizer tok = train_bpe_documents(std::vector<std::string>{"aaa aaa aaa"}, o);
  EXPECT_EQ(tok.encode("aaa"), (std::vector<std::uint32_t>{256, 'a'}));
}

TEST(TrainBpe, StopsWhenNoPairIsFrequentEnough) {
  BpeTrainOptions o = small(1000);
  o.min_frequency = 3;
  const Tokenizer tok = train_bpe_documents(std::vector<std::string>{"xy xy xy zw zw"}, o);
  EXPECT_LT(tok.vocab_size(), 1000u);
  EXPECT_EQ(tok.encode(" zw").size(), 3u);  // seen twice: never merged
}

TEST(TrainBpe, DeterministicAndIndependentOfThreads) {
  const std::vector<std::filesystem::path> inputs = {kData / "brown" / "brown.jsonl"};
  const std::string one = hf_tokenizer_json(train_bpe(inputs, small(2000, 1)));
  const std::string two = hf_tokenizer_json(train_bpe(inputs, small(2000, 2)));
  const std::string again = hf_tokenizer_json(train_bpe(inputs, small(2000, 2)));
  EXPECT_EQ(one, two);
  EXPECT_EQ(two, again);
}

TEST(TrainBpe, TrainedTokenizerRoundTripsAndCompresses) {
  BpeTrainStats stats;
  const Tokenizer tok = train_bpe(
      std::vector<std::filesystem::path>{kData / "brown" / "brown.jsonl"}, small(4000, 2), &stats);
  EXPECT_EQ(tok.vocab_size(), 4000u);
  EXPECT_EQ(stats.documents, 500u);
  EXPECT_GT(stats.distinct_pieces, 10000u);
  const std::string text = "The committee's report on nuclear physics was published in 1961.";
  const auto ids = tok.encode(text);
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_LT(ids.size(), text.size() / 3);
}

// Hugging Face's own implementation (tokenizers.js) reads the saved file and
// encodes exactly as Borealis does.
TEST(TrainBpe, SavedTokenizerJsonEncodesTheSameInHuggingFaceTokenizers) {
  test::TempDir dir;
  const Tokenizer tok = train_bpe(
      std::vector<std::filesystem::path>{kData / "brown" / "brown.jsonl"}, small(3000, 2));
  test::write_file(dir / "tokenizer.json", hf_tokenizer_json(tok));
  const auto docs = test::brown_documents(40);
  const auto reference = test::hf_js_encode(dir / "tokenizer.json", docs.size());
  ASSERT_EQ(reference.size(), docs.size());
  for (std::size_t i = 0; i < docs.size(); ++i)
    ASSERT_EQ(tok.encode(docs[i]), reference[i]) << "document " << i;
}

TEST(TrainBpe, BadInputsAreErrors) {
  test::TempDir dir;
  test::write_file(dir / "bad.jsonl", "{\"text\": \"ok\"}\n{\"text\": 5}\n");
  try {
    train_bpe(std::vector<std::filesystem::path>{dir / "bad.jsonl"}, small(300));
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.line(), "error: 'text' is not a string (" + (dir / "bad.jsonl").string() + ":2)");
  }
  test::write_file(dir / "broken.jsonl", "{\"text\": \"ok\"\n");
  EXPECT_THROW(train_bpe(std::vector<std::filesystem::path>{dir / "broken.jsonl"}, small(300)),
               Error);
  EXPECT_THROW(train_bpe_documents(std::vector<std::string>{"x"}, small(100)),
               Error);  // below 256 + specials
}

}  // namespace
}  // namespace borealis
