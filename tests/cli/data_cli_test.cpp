// borealis data from the command line.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "data/indexed_dataset.h"
#include "test_util.h"

namespace borealis {
namespace {

using test::run_borealis;

const std::string kGpt2 = std::string(BOREALIS_DATA_DIR) + "/tokenizers/gpt2.json";
const std::string kBrown = std::string(BOREALIS_DATA_DIR) + "/brown/brown.jsonl";

TEST(DataCli, PrepareInspectVerifyOnTheDemoCorpus) {
  test::TempDir dir;
  const std::string out = (dir / "brown").string();
  const auto prep =
      run_borealis({"data", "prepare", "-i", kBrown, "-t", kGpt2, "-o", out, "--append-eod"});
  ASSERT_EQ(prep.exit_code, 0) << prep.err;
  EXPECT_NE(prep.out.find("read 500 documents: wrote 500, skipped 0"), std::string::npos)
      << prep.out;
  EXPECT_NE(prep.out.find("1355614 tokens (uint16)"), std::string::npos)
      << prep.out;  // tiktoken's count + 500 EODs

  const auto verify = run_borealis({"data", "verify", out, "-t", kGpt2});
  EXPECT_EQ(verify.exit_code, 0) << verify.err;
  EXPECT_NE(verify.out.find("ok: 500 documents"), std::string::npos);

  const auto inspect = run_borealis({"data", "inspect", out + ".idx", "-t", kGpt2, "--json"});
  ASSERT_EQ(inspect.exit_code, 0) << inspect.err;
  const auto j = nlohmann::json::parse(inspect.out);
  EXPECT_EQ(j["documents"], 500);
  EXPECT_EQ(j["dtype"], "uint16");
  EXPECT_TRUE(j["sample"]["text"].get<std::string>().starts_with("The Fulton County Grand Jury"));
  const auto text = run_borealis({"data", "inspect", out});
  EXPECT_NE(text.out.find("histogram of sequence lengths"), std::string::npos);
}

TEST(DataCli, VerifyNamesTheFirstBadRecord) {
  test::TempDir dir;
  IndexedDatasetWriter w(dir / "d", TokenType::U16);
  w.add_document(std::vector<std::uint32_t>{1, 2});
  w.add_document(std::vector<std::uint32_t>{60000});
  w.commit();
  const auto range = run_borealis({"data", "verify", (dir / "d").string(), "-t", kGpt2});
  EXPECT_EQ(range.exit_code, 1);
  EXPECT_EQ(range.err, "error: sequence 1, token 0: id 60000 is outside the vocabulary of 50257 (" +
                           (dir / "d").string() + ".bin)\n");
  std::string idx = test::read_file(dir / "d.idx");
  idx[34 + 8] = 1;  // pointer of sequence 0 (the last one is checked on open, the rest by verify)
  test::write_file(dir / "d.idx", idx);
  const auto bad = run_borealis({"data", "verify", (dir / "d").string()});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_TRUE(bad.err.starts_with("error: sequence 0: pointer 1 should be 0")) << bad.err;
}

TEST(DataCli, SkipBadListsWhatItSkipped) {
  test::TempDir dir;
  test::write_file(dir / "in.jsonl",
                   "{\"text\": \"good\"}\n{\"text\": 1}\nnot json\n{\"text\": \"fine\"}\n");
  const auto stop = run_borealis({"data", "prepare", "-i", (dir / "in.jsonl").string(), "-t", kGpt2,
                                  "-o", (dir / "out").string()});
  EXPECT_EQ(stop.exit_code, 1);
  EXPECT_EQ(stop.err, "error: 'text' is not a string (" + (dir / "in.jsonl").string() + ":2)\n");
  const auto skip = run_borealis({"data", "prepare", "-i", (dir / "in.jsonl").string(), "-t", kGpt2,
                                  "-o", (dir / "out").string(), "--skip-bad"});
  ASSERT_EQ(skip.exit_code, 0) << skip.err;
  EXPECT_NE(skip.out.find("read 4 documents: wrote 2, skipped 2"), std::string::npos) << skip.out;
  EXPECT_NE(skip.out.find(":2: 'text' is not a string"), std::string::npos) << skip.out;
  EXPECT_NE(skip.out.find(":3: malformed JSON"), std::string::npos) << skip.out;
}

TEST(DataCli, PrepareSkipsAByteOrderMark) {
  test::TempDir dir;
  test::write_file(dir / "bom.jsonl", "\xEF\xBB\xBF{\"text\": \"from Windows\"}\n");
  const auto prep = run_borealis({"data", "prepare", "-i", (dir / "bom.jsonl").string(), "-t",
                                  kGpt2, "-o", (dir / "out").string()});
  ASSERT_EQ(prep.exit_code, 0) << prep.err;
  EXPECT_NE(prep.out.find("read 1 documents: wrote 1, skipped 0"), std::string::npos) << prep.out;
}

TEST(DataCli, MergeAndUsageErrors) {
  test::TempDir dir;
  for (const char* name : {"a", "b"}) {
    test::write_file(dir / (std::string(name) + ".jsonl"),
                     "{\"text\": \"doc " + std::string(name) + "\"}\n");
    ASSERT_EQ(
        run_borealis({"data", "prepare", "-i", (dir / (std::string(name) + ".jsonl")).string(),
                      "-t", kGpt2, "-o", (dir / name).string()})
            .exit_code,
        0);
  }
  const auto merged = run_borealis({"data", "merge", "-i", (dir / "a").string(),
                                    (dir / "b").string(), "-o", (dir / "ab").string()});
  ASSERT_EQ(merged.exit_code, 0) << merged.err;
  EXPECT_EQ(IndexedDataset(dir / "ab").sequences(), 2u);
  EXPECT_EQ(run_borealis({"data", "prepare", "-i", "x.jsonl", "-o", "y"}).exit_code,
            2);  // no --tokenizer
  const auto missing = run_borealis({"data", "inspect", (dir / "nothing").string()});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_EQ(missing.err, "error: cannot open file: No such file or directory (" +
                             (dir / "nothing").string() + ".idx)\n");
}

}  // namespace
}  // namespace borealis
