// borealis tokenizer from the command line: encode/decode round trips in
// every id format, info, train, and the error paths.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace borealis {
namespace {

using test::run_borealis;

const std::string kGpt2 = std::string(BOREALIS_DATA_DIR) + "/tokenizers/gpt2.json";

TEST(TokenizerCli, EncodeDecodeRoundTripInEveryFormat) {
  test::TempDir dir;
  const std::string text = "Borealis tokenizes science: E = mc^2, naïve café.\n\xFF raw byte\n";
  test::write_file(dir / "in.txt", text);
  for (const std::string format : {"text", "u16", "u32"}) {
    const auto enc = run_borealis(
        {"tokenizer", "encode", "-t", kGpt2, "-i", (dir / "in.txt").string(), "-f", format});
    ASSERT_EQ(enc.exit_code, 0) << enc.err;
    test::write_file(dir / "ids", enc.out);
    const auto dec = run_borealis(
        {"tokenizer", "decode", "-t", kGpt2, "-i", (dir / "ids").string(), "-f", format});
    ASSERT_EQ(dec.exit_code, 0) << dec.err;
    EXPECT_EQ(dec.out, text) << format;
  }
}

TEST(TokenizerCli, EncodeLinesAndSpecialTokens) {
  test::TempDir dir;
  test::write_file(dir / "in.txt", "Hello world\n<|endoftext|>\n");
  const auto lines = run_borealis(
      {"tokenizer", "encode", "-t", kGpt2, "-i", (dir / "in.txt").string(), "--lines"});
  ASSERT_EQ(lines.exit_code, 0) << lines.err;
  EXPECT_TRUE(lines.out.starts_with("15496 995\n")) << lines.out;
  EXPECT_EQ(lines.out.find("50256"), std::string::npos);
  const auto special = run_borealis({"tokenizer", "encode", "-t", kGpt2, "-i",
                                     (dir / "in.txt").string(), "--lines", "--allow-special"});
  EXPECT_EQ(special.out, "15496 995\n50256\n");
}

TEST(TokenizerCli, InfoDescribesTheTokenizer) {
  const auto r = run_borealis({"tokenizer", "info", "-t", kGpt2});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("vocab size    50257"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("gpt2 engine"), std::string::npos);
  EXPECT_NE(r.out.find("end of doc    50256"), std::string::npos);

  const auto js = run_borealis({"tokenizer", "info", "-t", kGpt2, "--json"});
  ASSERT_EQ(js.exit_code, 0) << js.err;
  const auto j = nlohmann::json::parse(js.out);
  EXPECT_EQ(j["vocab_size"], 50257);
  EXPECT_EQ(j["bpe_tokens"], 50256);
  EXPECT_EQ(j["merges"], 50000);
  EXPECT_EQ(j["bpe_level"], "byte");
  EXPECT_EQ(j["pre_tokenizer_engine"], "gpt2");
  EXPECT_EQ(j["eod_id"], 50256);
  ASSERT_EQ(j["added_tokens"].size(), 1u);
  EXPECT_EQ(j["added_tokens"][0]["text"], "<|endoftext|>");
  EXPECT_EQ(j["added_tokens"][0]["special"], true);
  EXPECT_TRUE(j["normalizer"].empty());
}

TEST(TokenizerCli, TrainWritesALoadableTokenizer) {
  test::TempDir dir;
  const auto out = dir / "tok.json";
  const auto r =
      run_borealis({"tokenizer", "train", "--vocab-size", "600", "-i",
                    std::string(BOREALIS_DATA_DIR) + "/brown/brown.jsonl", "-o", out.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("trained 600 tokens"), std::string::npos) << r.out;
  const Tokenizer tok = Tokenizer::load(out);
  EXPECT_EQ(tok.vocab_size(), 600u);
  EXPECT_EQ(tok.decode(tok.encode("A learned text.")), "A learned text.");
  EXPECT_EQ(test::list_dir(dir.path()), std::vector<std::string>{"tok.json"});  // no temporary left

  const auto js = run_borealis({"tokenizer", "train", "--vocab-size", "300", "--no-special", "-i",
                                std::string(BOREALIS_DATA_DIR) + "/brown/brown.jsonl", "-o",
                                (dir / "small.json").string(), "--json"});
  ASSERT_EQ(js.exit_code, 0) << js.err;
  const auto j = nlohmann::json::parse(js.out);
  EXPECT_EQ(j["vocab_size"], 300);
  EXPECT_EQ(j["merges"], 300 - 256);
  EXPECT_TRUE(j["special_tokens"].empty());
  EXPECT_GT(j["documents"].get<std::size_t>(), 0u);
  EXPECT_EQ(Tokenizer::load(dir / "small.json").vocab_size(), 300u);
}

TEST(TokenizerCli, ErrorsAreOneLine) {
  test::TempDir dir;
  test::write_file(dir / "ids.txt", "15496 99999999\n");
  const auto bad_id =
      run_borealis({"tokenizer", "decode", "-t", kGpt2, "-i", (dir / "ids.txt").string()});
  EXPECT_EQ(bad_id.exit_code, 1);
  EXPECT_EQ(bad_id.err,
            "error: token id 99999999 is not in the vocabulary (size 50257) (decode)\n");
  test::write_file(dir / "ids.txt", "15496 hello\n");
  const auto not_id =
      run_borealis({"tokenizer", "decode", "-t", kGpt2, "-i", (dir / "ids.txt").string()});
  EXPECT_EQ(not_id.err, "error: 'hello' is not a token id (input byte 6)\n");
  test::write_file(dir / "ids.bin", "abc");
  const auto odd = run_borealis(
      {"tokenizer", "decode", "-t", kGpt2, "-i", (dir / "ids.bin").string(), "-f", "u16"});
  EXPECT_EQ(odd.err,
            "error: binary input of 3 bytes is not a whole number of 2-byte ids (input)\n");
  const auto missing = run_borealis({"tokenizer", "info", "-t", (dir / "nope.json").string()});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_EQ(missing.err, "error: cannot open file: No such file or directory (" +
                             (dir / "nope.json").string() + ")\n");
  const auto small = run_borealis({"tokenizer", "train", "--vocab-size", "100", "-i",
                                   (dir / "ids.txt").string(), "-o", (dir / "t.json").string()});
  EXPECT_EQ(small.exit_code, 1);
  EXPECT_TRUE(small.err.starts_with("error: vocabulary size 100 is too small")) << small.err;
  const auto no_sub = run_borealis({"tokenizer"});
  EXPECT_EQ(no_sub.exit_code, 2);
}

}  // namespace
}  // namespace borealis
