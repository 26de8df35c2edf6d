// Hugging Face tokenizer.json files of real model families, against Hugging
// Face's own tokenizers.js on Brown documents: Llama 3 (Split + ByteLevel,
// ignore_merges) and a Llama 2-style SentencePiece model (Prepend/Replace
// normalizer, character-level BPE, byte fallback, Replace/ByteFallback/Fuse/
// Strip decoder).
#include <gtest/gtest.h>

#include "tokenizer/hf_js.h"
#include "tokenizer/tokenizer.h"

namespace borealis {
namespace {

const std::filesystem::path kTokenizers = std::filesystem::path(BOREALIS_DATA_DIR) / "tokenizers";

void expect_same_as_tokenizers_js(const std::filesystem::path& path, std::size_t n) {
  const Tokenizer tok = Tokenizer::load(path);
  const auto docs = test::brown_documents(n);
  const auto reference = test::hf_js_encode(path, n);
  ASSERT_EQ(reference.size(), docs.size());
  for (std::size_t i = 0; i < docs.size(); ++i) {
    const auto ids = tok.encode(docs[i]);
    ASSERT_EQ(ids, reference[i]) << "document " << i;
    ASSERT_EQ(tok.decode(ids), docs[i]) << "document " << i;
  }
}

TEST(HuggingFaceReference, Llama3) {
  expect_same_as_tokenizers_js(kTokenizers / "llama3" / "tokenizer.json", 30);
}

TEST(HuggingFaceReference, Llama2StyleWithByteFallback) {
  expect_same_as_tokenizers_js(kTokenizers / "llama2" / "tokenizer.json", 30);
}

TEST(HuggingFaceReference, ByteFallbackAndSpecialTokens) {
  const Tokenizer tok = Tokenizer::load(kTokenizers / "llama2" / "tokenizer.json");
  EXPECT_STREQ(tok.pre_tokenizer().engine(), "none");
  EXPECT_TRUE(tok.model().char_level());
  // A character outside the vocabulary becomes its four UTF-8 bytes, and decodes back.
  const std::string text = "x \xF0\x9D\x94\x98 y";
  const auto ids = tok.encode(text);
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_NE(std::find(ids.begin(), ids.end(), *tok.model().find("<0xF0>")), ids.end());
  EXPECT_EQ(tok.encode("</s>", true), (std::vector<std::uint32_t>{2}));
  EXPECT_EQ(tok.eod_id(), 2u);
  // Leading spaces survive the prefix "▁" and the decoder's Strip.
  EXPECT_EQ(tok.decode(tok.encode("  two spaces")), "  two spaces");
}

}  // namespace
}  // namespace borealis
