// borealis data mix and data sample from the command line.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "data/indexed_dataset.h"
#include "data/mixture.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"

namespace borealis {
namespace {

using test::run_borealis;

const std::string kGpt2 = std::string(BOREALIS_DATA_DIR) + "/tokenizers/gpt2.json";

// Two corpora: "books" (one file of known text) and "web" (two files).
struct CliFixture {
  test::TempDir dir;
  std::string list;
  CliFixture() {
    const Tokenizer tok = Tokenizer::load(kGpt2);
    IndexedDatasetWriter books(dir / "books", TokenType::U16);
    for (int d = 0; d < 20; ++d) {
      books.add_document(tok.encode("Call me Ishmael. Some years ago, never mind how long."));
    }
    books.commit();
    for (const char* name : {"web0", "web1"}) {
      IndexedDatasetWriter w(dir / name, TokenType::U16);
      for (int d = 0; d < 40; ++d) w.add_document(std::vector<std::uint32_t>(3 + d % 9, 100));
      w.commit();
    }
    test::write_file(dir / "list.txt", "# weight prefix corpus\n0.2 " + (dir / "books").string() +
                                           ".bin books\n\n0.5 " + (dir / "web0").string() +
                                           " web\n0.3 " + (dir / "web1").string() + " web\n");
    list = (dir / "list.txt").string();
  }
  std::vector<std::string> flags(const std::string& samples = "100") const {
    return {"--data-list", list,      "--seq-len", "16",          "--train-samples",
            samples,       "--split", "100,0,0",   "--cache-dir", (dir / "cache").string()};
  }
};

std::vector<std::string> cat(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST(MixCli, ReportsRequestedAndAchievedWeights) {
  CliFixture fx;
  const auto r = run_borealis(cat({"data", "mix", "--json"}, fx.flags()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["samples"], 100);
  EXPECT_EQ(j["from_cache"], false);
  ASSERT_EQ(j["corpora"].size(), 2u);
  EXPECT_EQ(j["corpora"][0]["name"], "books");
  EXPECT_EQ(j["corpora"][0]["samples"], 20);
  EXPECT_EQ(j["corpora"][1]["samples"], 80);
  EXPECT_EQ(j["corpora"][1]["files"][0]["samples"], 50);
  EXPECT_EQ(j["corpora"][1]["files"][1]["samples"], 30);
  EXPECT_DOUBLE_EQ(j["corpora"][1]["files"][1]["weight"].get<double>(), 0.3);
  EXPECT_GT(j["corpora"][0]["files"][0]["epochs"].get<double>(), 1.0);

  const auto again = run_borealis(cat({"data", "mix", "--build-only"}, fx.flags()));
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_NE(again.out.find("index loaded"), std::string::npos) << again.out;
  const auto text = run_borealis(cat({"data", "mix"}, fx.flags()));
  EXPECT_NE(text.out.find("web1"), std::string::npos) << text.out;
}

TEST(MixCli, SampleListsItsPiecesAndText) {
  CliFixture fx;
  int books = -1;
  for (int k = 0; k < 10; ++k) {
    const auto r = run_borealis(cat({"data", "sample", std::to_string(k), "--json"}, fx.flags()));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto j = nlohmann::json::parse(r.out);
    std::uint64_t total = 0;
    for (const auto& p : j["pieces"]) total += p["length"].get<std::uint64_t>();
    EXPECT_EQ(total, 17u);
    if (j["corpus"] == "books" && books < 0) books = k;
  }
  ASSERT_GE(books, 0);
  // The text of a books sample (the tokenizer is loaded once: it is slow under sanitizers).
  const auto r = run_borealis(
      cat({"data", "sample", std::to_string(books), "--json", "-t", kGpt2}, fx.flags()));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_NE(j["text"].get<std::string>().find("Ishmael"), std::string::npos) << j.dump();
  EXPECT_EQ(j["pieces"][0]["prefix"], (fx.dir / "books").string());
  const auto plain = run_borealis(cat({"data", "sample", std::to_string(books)}, fx.flags()));
  EXPECT_NE(plain.out.find("(corpus books)"), std::string::npos) << plain.out;
  const auto out = run_borealis(cat({"data", "sample", "100"}, fx.flags()));
  EXPECT_EQ(out.exit_code, 1);
  EXPECT_EQ(out.err, "error: sample 100 is outside the mixture's 100 samples (K)\n");
}

TEST(MixCli, DataPathFormAndErrors) {
  CliFixture fx;
  const auto r = run_borealis({"data", "mix", "--data-path", "1", (fx.dir / "web0").string(), "1",
                               (fx.dir / "web1.idx").string(), "--seq-len", "8", "--train-samples",
                               "10", "--no-cache", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["corpora"].size(), 2u);

  test::write_file(fx.dir / "bad.txt", "1 " + (fx.dir / "web0").string() + "\n-1 x\n");
  const auto neg = run_borealis({"data", "mix", "--data-list", (fx.dir / "bad.txt").string(),
                                 "--seq-len", "8", "--train-samples", "10"});
  EXPECT_EQ(neg.exit_code, 1);
  EXPECT_EQ(neg.err, "error: negative weight -1 (" + (fx.dir / "bad.txt").string() + ":2)\n");

  test::write_file(fx.dir / "missing.txt", "1 " + (fx.dir / "nope").string() + " c\n");
  const auto missing =
      run_borealis({"data", "mix", "--data-list", (fx.dir / "missing.txt").string(), "--seq-len",
                    "8", "--train-samples", "10", "--no-cache"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_TRUE(missing.err.starts_with("error: cannot open file")) << missing.err;
  EXPECT_TRUE(missing.err.ends_with("(" + (fx.dir / "missing.txt").string() + ":1)\n"))
      << missing.err;

  const auto split = run_borealis({"data", "mix", "--data-list", fx.list, "--seq-len", "8",
                                   "--train-samples", "10", "--split", "98,x"});
  EXPECT_EQ(split.exit_code, 1);
  EXPECT_EQ(split.err, "error: '98,x' is not a split such as 98,1,1 (--split)\n");
  const auto both = run_borealis({"data", "mix", "--seq-len", "8", "--train-samples", "10"});
  EXPECT_EQ(both.exit_code, 1);
  EXPECT_TRUE(both.err.starts_with("error: give either --data-list")) << both.err;
}

TEST(MixCli, MegatronOrderAndItsCorpusFlags) {
  CliFixture fx;
  const std::vector<std::string> megatron = {"--order", "megatron", "--blend-sample-in-corpus",
                                             "--shuffle-sample-in-corpus"};
  const auto r = run_borealis(cat(cat({"data", "mix", "--json"}, fx.flags()), megatron));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["order"], "megatron");
  const auto& web0 = j["corpora"][1]["files"][0]["megatron"];
  EXPECT_EQ(web0["requested"], 51);  // ceil(100 * 0.5 * 1.005)
  EXPECT_GE(web0["samples"].get<std::uint64_t>(), 51u);

  // data sample gives what the library gives for the same options.
  MixOptions o;
  o.list = read_data_list(fx.list);
  o.seq_len = 16;
  o.samples = 100;
  o.split = {100, 0, 0};
  o.order = MixOrder::megatron;
  o.blend_sample_in_corpus = o.shuffle_sample_in_corpus = true;
  const Mixture m(o);
  for (const std::uint64_t k : {0u, 37u, 99u}) {
    const auto s = run_borealis(
        cat(cat({"data", "sample", std::to_string(k), "--json"}, fx.flags()), megatron));
    ASSERT_EQ(s.exit_code, 0) << s.err;
    const auto js = nlohmann::json::parse(s.out);
    const auto pieces = m.sample(k);
    ASSERT_EQ(js["pieces"].size(), pieces.size());
    for (std::size_t p = 0; p < pieces.size(); ++p) {
      EXPECT_EQ(js["pieces"][p]["document"], pieces[p].document);
      EXPECT_EQ(js["pieces"][p]["offset"], pieces[p].offset);
      EXPECT_EQ(js["pieces"][p]["length"], pieces[p].length);
      EXPECT_EQ(js["pieces"][p]["prefix"], m.files()[pieces[p].file].entry.prefix.string());
    }
  }

  const auto fast =
      run_borealis(cat(cat({"data", "mix"}, fx.flags()), {"--shuffle-sample-in-corpus"}));
  EXPECT_EQ(fast.exit_code, 1);
  EXPECT_TRUE(fast.err.starts_with("error: applies to the megatron order only")) << fast.err;
  EXPECT_TRUE(fast.err.ends_with("(--shuffle-sample-in-corpus)\n")) << fast.err;
  const auto bad = run_borealis(cat(cat({"data", "mix"}, fx.flags()), {"--order", "random"}));
  EXPECT_EQ(bad.exit_code, 2) << bad.err;
}

}  // namespace
}  // namespace borealis
