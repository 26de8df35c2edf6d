// One spelling per idea across the subcommands: -t/--tokenizer, -o/--out,
// --seq-len, --json on the commands that print a report, and the global
// --threads anywhere on the line; the old spellings still parse for one
// release but are gone from --help.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_util.h"

namespace borealis::test {
namespace {

const std::string kGpt2 = std::string(BOREALIS_DATA_DIR) + "/tokenizers/gpt2.json";

std::string help(const std::vector<std::string>& command) {
  std::vector<std::string> args = command;
  args.push_back("--help");
  const RunResult r = run_borealis(args);
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.out;
}

bool has(const std::string& text, const std::string& what) {
  return text.find(what) != std::string::npos;
}

TEST(CliFlags, OneSpellingInEveryCommandsHelp) {
  using Cmd = std::vector<std::string>;
  for (const Cmd& c : {Cmd{"data", "prepare"}, Cmd{"data", "inspect"}, Cmd{"data", "verify"},
                       Cmd{"data", "sample"}, Cmd{"tokenizer", "encode"},
                       Cmd{"tokenizer", "decode"}, Cmd{"tokenizer", "info"}, Cmd{"generate"}}) {
    EXPECT_TRUE(has(help(c), "-t,--tokenizer")) << c.back();
  }
  for (const Cmd& c :
       {Cmd{"data", "prepare"}, Cmd{"data", "merge"}, Cmd{"tokenizer", "train"}, Cmd{"plot"}}) {
    EXPECT_TRUE(has(help(c), "-o,--out")) << c.back();
  }
  for (const Cmd& c :
       {Cmd{"version"}, Cmd{"doctor"}, Cmd{"data", "prepare"}, Cmd{"data", "merge"},
        Cmd{"data", "inspect"}, Cmd{"data", "verify"}, Cmd{"data", "mix"}, Cmd{"data", "sample"},
        Cmd{"data", "contamination"}, Cmd{"bench", "train"}, Cmd{"tokenizer", "info"},
        Cmd{"tokenizer", "train"}, Cmd{"plot"}, Cmd{"eval"}, Cmd{"export", "hf"},
        Cmd{"export", "gguf"}, Cmd{"import", "hf"}}) {
    EXPECT_TRUE(has(help(c), "--json")) << c.back();
  }
  const std::string bench = help({"bench", "train"});
  EXPECT_TRUE(has(bench, "--seq-len"));
  EXPECT_FALSE(has(bench, "--seq ")) << bench;  // the old spelling is hidden
  EXPECT_TRUE(has(help({"data", "mix"}), "--seq-len"));
  EXPECT_FALSE(has(help({"data", "prepare"}), "--workers"));
}

TEST(CliFlags, BenchTrainSeqLenOldSpellingAndJson) {
  for (const char* flag : {"--seq-len", "--seq"}) {
    const RunResult r = run_borealis({"--threads", "1", "bench", "train", "--model", "llama-tiny",
                                      "--batch", "1", flag, "8", "--steps", "1", "--json"});
    ASSERT_EQ(r.exit_code, 0) << flag << ": " << r.err;
    const auto j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j["seq_len"], 8) << flag;
    EXPECT_EQ(j["batch"], 1);
    EXPECT_EQ(j["steps"].size(), 1u);
    EXPECT_GT(j["tokens_per_s"]["mean"].get<double>(), 0);
    EXPECT_TRUE(j["op_seconds"].contains("optimizer")) << r.out;
  }
  const RunResult bad = run_borealis({"bench", "train", "--model", "gpt2-tiny", "--seq-len", "65"});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_TRUE(has(bad.err, "(--seq-len)")) << bad.err;
}

// --threads may follow the command; --workers, prepare's own old spelling,
// still sets the tokenizer threads.
TEST(CliFlags, ThreadsAfterTheCommandAndDataJsonReports) {
  TempDir dir;
  write_file(dir / "in.jsonl", "{\"text\": \"one\"}\n{\"text\": \"two\"}\n");
  const std::string in = (dir / "in.jsonl").string();
  const std::string out = (dir / "out").string();
  for (const auto& [flag, threads] :
       {std::pair<std::string, int>{"--threads", 1}, {"--workers", 2}}) {
    const RunResult r = run_borealis({"data", "prepare", "-i", in, "-t", kGpt2, "-o", out, flag,
                                      std::to_string(threads), "--json"});
    ASSERT_EQ(r.exit_code, 0) << flag << ": " << r.err;
    const auto j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j["threads"], threads) << flag;
    EXPECT_EQ(j["documents_read"], 2);
    EXPECT_EQ(j["documents_written"], 2);
    EXPECT_EQ(j["outputs"], nlohmann::json::array({out}));
  }
  const RunResult verify = run_borealis({"data", "verify", out, "-t", kGpt2, "--json"});
  ASSERT_EQ(verify.exit_code, 0) << verify.err;
  const auto v = nlohmann::json::parse(verify.out);
  EXPECT_EQ(v["documents"], 2);
  EXPECT_EQ(v["vocabulary_checked"], true);
  const RunResult merge =
      run_borealis({"data", "merge", "-i", out, out, "-o", (dir / "both").string(), "--json"});
  ASSERT_EQ(merge.exit_code, 0) << merge.err;
  EXPECT_EQ(nlohmann::json::parse(merge.out)["documents"], 4);
  // A bad value after the command is still a usage error naming the flag.
  const RunResult zero = run_borealis({"version", "--threads", "0"});
  EXPECT_EQ(zero.exit_code, 2);
  EXPECT_TRUE(has(zero.err, "--threads")) << zero.err;
}

}  // namespace
}  // namespace borealis::test
