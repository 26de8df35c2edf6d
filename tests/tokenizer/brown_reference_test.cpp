// Exactness against the reference implementation: every document of the
// Brown corpus encodes to the ids tiktoken gives (fixtures made by
// fixtures/make-brown-ids.mjs), and decodes back to the same bytes.
#include <gtest/gtest.h>
#include <zlib.h>

#include <cstring>

#include "test_util.h"
#include "tokenizer/hf_js.h"
#include "tokenizer/tokenizer.h"

namespace borealis {
namespace {

const std::filesystem::path kData = BOREALIS_DATA_DIR;
const std::filesystem::path kFixtures = BOREALIS_TOKENIZER_FIXTURES;

std::vector<std::vector<std::uint32_t>> read_fixture(const std::string& name) {
  const auto path = kFixtures / ("brown-" + name + ".ids.gz");
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) throw std::runtime_error("cannot open " + path.string());
  std::string data;
  char buf[1 << 16];
  int n = 0;
  while ((n = gzread(f, buf, sizeof buf)) > 0) data.append(buf, static_cast<std::size_t>(n));
  gzclose(f);
  if (data.compare(0, 8, "BRIDS001") != 0) throw std::runtime_error("bad fixture " + path.string());
  std::size_t pos = 8;
  auto u32 = [&] {
    std::uint32_t v = 0;
    std::memcpy(&v, data.data() + pos, 4);
    pos += 4;
    return v;
  };
  std::vector<std::vector<std::uint32_t>> docs(u32());
  for (auto& doc : docs) {
    doc.resize(u32());
    for (auto& id : doc) id = u32();
  }
  return docs;
}

void expect_matches_reference(const Tokenizer& tok, const std::string& fixture) {
  const auto texts = test::brown_documents(SIZE_MAX);
  const auto expected = read_fixture(fixture);
  ASSERT_EQ(texts.size(), expected.size());
  std::size_t tokens = 0;
  for (std::size_t d = 0; d < texts.size(); ++d) {
    const auto ids = tok.encode(texts[d]);
    tokens += ids.size();
    if (ids != expected[d]) {
      std::size_t i = 0;
      while (i < ids.size() && i < expected[d].size() && ids[i] == expected[d][i]) ++i;
      FAIL() << "document " << d << " differs at token " << i << " of " << expected[d].size()
             << ": got " << (i < ids.size() ? std::to_string(ids[i]) : "end") << ", expected "
             << (i < expected[d].size() ? std::to_string(expected[d][i]) : "end");
    }
    ASSERT_EQ(tok.decode(ids), texts[d]) << "document " << d;
  }
  EXPECT_GT(tokens, 1000000u);
}

TEST(BrownReference, Gpt2FromTiktokenJson) {
  expect_matches_reference(Tokenizer::load(kData / "tokenizers" / "gpt2.json"), "gpt2");
}

TEST(BrownReference, Gpt2FromEncoderJsonAndVocabBpe) {
  expect_matches_reference(Tokenizer::load(kData / "tokenizers" / "gpt2"), "gpt2");
}

TEST(BrownReference, Cl100kFromTiktokenJson) {
  expect_matches_reference(Tokenizer::load(kData / "tokenizers" / "cl100k_base.json"),
                           "cl100k_base");
}

}  // namespace
}  // namespace borealis
