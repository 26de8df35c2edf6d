#include "tokenizer/tokenizer.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "test_util.h"
#include "tokenizer/byte_level.h"
#include "tokenizer/hf_json.h"

namespace borealis {
namespace {

const std::filesystem::path kTokenizers = std::filesystem::path(BOREALIS_DATA_DIR) / "tokenizers";

const Tokenizer& gpt2() {
  static const Tokenizer t = Tokenizer::load(kTokenizers / "gpt2.json");
  return t;
}
const Tokenizer& cl100k() {
  static const Tokenizer t = Tokenizer::load(kTokenizers / "cl100k_base.json");
  return t;
}
const Tokenizer& o200k() {
  static const Tokenizer t = Tokenizer::load(kTokenizers / "o200k_base.json");
  return t;
}

TEST(Tokenizer, RandomBytesRoundTripExactly) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<int> length(0, 300);
  for (const Tokenizer* tok : {&gpt2(), &cl100k(), &o200k()}) {
    for (int round = 0; round < 300; ++round) {
      std::string s(static_cast<std::size_t>(length(rng)), '\0');
      for (auto& c : s) c = static_cast<char>(byte(rng));
      ASSERT_EQ(tok->decode(tok->encode(s)), s) << tok->pre_tokenizer().engine();
    }
  }
}

TEST(Tokenizer, KnownIds) {
  // Values from tiktoken for the same strings.
  EXPECT_EQ(gpt2().encode("Hello world"), (std::vector<std::uint32_t>{15496, 995}));
  EXPECT_EQ(cl100k().encode("Hello world"), (std::vector<std::uint32_t>{9906, 1917}));
  EXPECT_EQ(o200k().encode("Hello world"), (std::vector<std::uint32_t>{13225, 2375}));
}

TEST(Tokenizer, SpecialTokensOnlyWhenAllowed) {
  const std::string text = "a<|endoftext|>b";
  const auto plain = gpt2().encode(text);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 50256u), 0);
  EXPECT_EQ(gpt2().decode(plain), text);
  const auto special = gpt2().encode(text, true);
  EXPECT_EQ(special, (std::vector<std::uint32_t>{64, 50256, 65}));
  EXPECT_EQ(gpt2().decode(special), text);
  EXPECT_EQ(gpt2().eod_id(), 50256u);
  EXPECT_EQ(cl100k().encode("<|fim_prefix|>x<|endoftext|>", true),
            (std::vector<std::uint32_t>{100258, 87, 100257}));
}

TEST(Tokenizer, DecodeRejectsIdsOutsideTheVocabulary) {
  EXPECT_EQ(test::error_line([] {
              gpt2().decode(std::vector<std::uint32_t>{15496, 50257});
            }),
            "error: token id 50257 is not in the vocabulary (size 50257) (decode)");
  EXPECT_EQ(test::error_line([] {
              cl100k().decode(std::vector<std::uint32_t>{100261});
            }),  // a gap among the specials
            "error: token id 100261 is not in the vocabulary (size 100277) (decode)");
}

TEST(Bpe, HeapAndQuadraticMergesAgree) {
  std::mt19937 rng(3);
  const std::string alphabet = "aaaabbbcc  eeeeth";
  std::uniform_int_distribution<std::size_t> pick(0, alphabet.size() - 1);
  for (const Tokenizer* tok : {&gpt2(), &cl100k()}) {
    for (int round = 0; round < 200; ++round) {
      std::string piece(1 + static_cast<std::size_t>(round) * 3, ' ');
      for (auto& c : piece) c = alphabet[pick(rng)];
      std::vector<std::uint32_t> a, b;
      tok->model().encode_quadratic(piece, a);
      tok->model().encode_heap(piece, b);
      ASSERT_EQ(a, b) << piece;
    }
  }
  // A long run uses the heap inside encode() and still round-trips.
  const std::string run(100000, 'a');
  EXPECT_EQ(gpt2().decode(gpt2().encode(run)), run);
}

TEST(Tokenizer, HuggingFaceJsonRoundTrip) {
  test::TempDir dir;
  const Tokenizer& src = gpt2();
  // GPT-2 from encoder.json/vocab.bpe holds its merges; save it as tokenizer.json.
  const Tokenizer merges_tok = Tokenizer::load(kTokenizers / "gpt2");
  test::write_file(dir / "tokenizer.json", hf_tokenizer_json(merges_tok));
  const Tokenizer loaded = Tokenizer::load(dir / "tokenizer.json");
  EXPECT_EQ(loaded.source_format(), "huggingface");
  EXPECT_EQ(loaded.vocab_size(), src.vocab_size());
  const std::string text = "Scientists measured 3.14159 photons/s in 2026, didn't they?\n\n  Yes.";
  EXPECT_EQ(loaded.encode(text), src.encode(text));
  EXPECT_EQ(loaded.encode("<|endoftext|>", true), (std::vector<std::uint32_t>{50256}));
  const Tokenizer again = Tokenizer::load(dir.path());  // a directory with tokenizer.json
  EXPECT_EQ(hf_tokenizer_json(again), hf_tokenizer_json(merges_tok));
}

// A minimal byte-level tokenizer.json, with `edit` applied to its JSON.
std::string hf_json_with(const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_level_encode(std::string(1, static_cast<char>(b)))] = b;
  vocab["ab"] = 256;
  nlohmann::json j = {
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"added_tokens", nlohmann::json::array()},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", {"a b"}}}},
  };
  edit(j);
  return j.dump();
}

TEST(Tokenizer, HuggingFaceFeaturesItLacksAreNamedErrors) {
  test::TempDir dir;
  const auto path = dir / "tokenizer.json";
  auto load_with = [&](const std::function<void(nlohmann::json&)>& edit) {
    test::write_file(path, hf_json_with(edit));
    return test::error_line([&] { Tokenizer::load(path); });
  };
  const std::string f = path.string();
  test::write_file(path, hf_json_with([](nlohmann::json&) {}));
  EXPECT_EQ(Tokenizer::load(path).encode("abab"), (std::vector<std::uint32_t>{256, 256}));
  EXPECT_EQ(load_with([](auto& j) {
              j["normalizer"] = {{"type", "NFC"}};
            }),
            "error: normalizer 'NFC' is not supported (" + f + ": normalizer.type)");
  EXPECT_EQ(load_with([](auto& j) { j["model"]["type"] = "Unigram"; }),
            "error: model type 'Unigram' is not supported (" + f + ": model.type)");
  EXPECT_EQ(load_with([](auto& j) {
              j["pre_tokenizer"] = {{"type", "Digits"}};
            }),
            "error: pre-tokenizer 'Digits' is not supported (" + f + ": pre_tokenizer.type)");
  EXPECT_EQ(
      load_with([](auto& j) {
        j["normalizer"] = {{"type", "Replace"}, {"pattern", {{"Regex", " +"}}}, {"content", " "}};
      }),
      "error: a Regex pattern here is not supported (" + f + ": normalizer.pattern)");
  EXPECT_EQ(load_with([](auto& j) {
              j["pre_tokenizer"] = nullptr;
            }),  // character-level, ByteLevel decoder
            "error: decoder 'ByteLevel' with a character-level model is not supported (" + f +
                ": decoder.type)");
  EXPECT_EQ(load_with([](auto& j) { j["model"]["continuing_subword_prefix"] = "##"; }),
            "error: 'continuing_subword_prefix' = \"##\" is not supported (" + f +
                ": model.continuing_subword_prefix)");
  EXPECT_EQ(
      load_with([](auto& j) {
        j["added_tokens"] = {
            {{"id", 257}, {"content", "<x>"}, {"special", true}, {"lstrip", true}}};
      }),
      "error: added token with lstrip: true is not supported (" + f + ": added_tokens[0].lstrip)");
  EXPECT_EQ(load_with([](auto& j) {
              j["decoder"] = {{"type", "WordPiece"}};
            }),
            "error: decoder 'WordPiece' with a ByteLevel model is not supported (" + f +
                ": decoder.type)");
}

TEST(Tokenizer, MalformedFilesAreClearErrors) {
  test::TempDir dir;
  const auto path = dir / "tokenizer.json";
  const std::string f = path.string();
  // Truncated JSON.
  const std::string good = hf_json_with([](nlohmann::json&) {});
  test::write_file(path, good.substr(0, good.size() / 2));
  const std::string truncated = test::error_line([&] { Tokenizer::load(path); });
  EXPECT_TRUE(truncated.starts_with("error: invalid JSON at byte ")) << truncated;
  EXPECT_TRUE(truncated.ends_with("(" + f + ")")) << truncated;
  // Merges naming unknown tokens, or making tokens that are not in the vocabulary.
  test::write_file(path, hf_json_with([](auto& j) { j["model"]["merges"] = {"a zz"}; }));
  EXPECT_EQ(test::error_line([&] { Tokenizer::load(path); }),
            "error: merge names 'zz', which is not in the vocabulary (" + f + ": model.merges[0])");
  test::write_file(path, hf_json_with([](auto& j) { j["model"]["merges"] = {"a b", "b a"}; }));
  EXPECT_EQ(test::error_line([&] { Tokenizer::load(path); }),
            "error: merge 'b a' makes a token that is not in the vocabulary (" + f +
                ": model.merges[1])");
  test::write_file(path, hf_json_with([](auto& j) { j["model"]["merges"] = {"ab"}; }));
  EXPECT_EQ(
      test::error_line([&] { Tokenizer::load(path); }),
      "error: merge 'ab' is not two tokens separated by a space (" + f + ": model.merges[0])");
  // A vocabulary missing a byte.
  test::write_file(
      path, hf_json_with([](auto& j) { j["model"]["vocab"].erase(byte_level_encode("\x01")); }));
  EXPECT_EQ(test::error_line([&] { Tokenizer::load(path); }),
            "error: byte 0x01 has no token; byte-level BPE needs all 256 (" + f + ": model)");
  // GPT-2 vocab.bpe with a bad line.
  std::filesystem::create_directory(dir / "gpt2");
  test::write_file(dir / "gpt2" / "encoder.json",
                   test::read_file(kTokenizers / "gpt2" / "encoder.json"));
  test::write_file(dir / "gpt2" / "vocab.bpe", "#version: 0.2\nĠ t\nnot-a-pair\n");
  EXPECT_EQ(
      test::error_line([&] { Tokenizer::load(dir / "gpt2"); }),
      "error: expected a merge 'left right' (" + (dir / "gpt2" / "vocab.bpe").string() + ":3)");
  // tiktoken rank files.
  test::write_file(dir / "mine.tiktoken", "IQ== 0\n");
  EXPECT_TRUE(test::error_line([&] {
                Tokenizer::load(dir / "mine.tiktoken");
              }).starts_with("error: unknown tiktoken encoding 'mine'"));
  test::write_file(dir / "cl100k_base.tiktoken", "IQ== 0\nIg== 2\n");
  EXPECT_EQ(test::error_line([&] { Tokenizer::load(dir / "cl100k_base.tiktoken"); }),
            "error: rank 1 is missing (" + (dir / "cl100k_base.tiktoken").string() + ")");
  test::write_file(dir / "x.json", "[1, 2]");
  EXPECT_EQ(test::error_line([&] { Tokenizer::load(dir / "x.json"); }),
            "error: expected a JSON object (" + (dir / "x.json").string() + ")");
}

}  // namespace
}  // namespace borealis
