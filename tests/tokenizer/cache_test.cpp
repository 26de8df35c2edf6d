// The binary tokenizer cache (tokenizer/cache.h) and one large input: a hit,
// a stale source and a damaged cache all give the ids of the source itself,
// and a text far larger than one batch of pieces encodes exactly as its
// pieces do one by one.
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <functional>
#include <sstream>

#include "test_util.h"
#include "tokenizer/cache.h"
#include "tokenizer/hf_js.h"
#include "tokenizer/tokenizer.h"

namespace borealis {
namespace {

namespace fs = std::filesystem;
const fs::path kTokenizers = fs::path(BOREALIS_DATA_DIR) / "tokenizers";

std::string sample_text() {
  std::string text;
  for (const auto& d : test::brown_documents(20)) text += d + "\n\n";
  return text + "<|endoftext|> caf\xc3\xa9 \xff\xfe 12345  \n";
}

ino_t inode_of(const fs::path& p) {
  struct stat st {};
  EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
  return st.st_ino;
}

TEST(TokenizerCache, HitGivesTheSourceIds) {
  const test::TempDir cache;
  const std::string text = sample_text();
  for (const char* name : {"cl100k_base.json", "gpt2", "o200k_base.json", "llama2", "llama3"}) {
    const fs::path source = kTokenizers / name;
    const Tokenizer reference = Tokenizer::load(source, {});
    const Tokenizer first = Tokenizer::load(source, cache.path());  // writes the cache
    const fs::path file = tokenizer_cache_path(source, cache.path());
    ASSERT_TRUE(fs::exists(file)) << name;
    const ino_t written = inode_of(file);
    const Tokenizer hit = Tokenizer::load(source, cache.path());
    EXPECT_EQ(inode_of(file), written) << name << ": a hit must not rewrite the cache";
    for (const bool special : {false, true}) {
      const auto ids = reference.encode(text, special);
      EXPECT_EQ(first.encode(text, special), ids) << name;
      EXPECT_EQ(hit.encode(text, special), ids) << name;
    }
    EXPECT_EQ(hit.decode(hit.encode(text)), reference.decode(reference.encode(text))) << name;
    EXPECT_EQ(hit.vocab_size(), reference.vocab_size()) << name;
    EXPECT_EQ(hit.source_format(), reference.source_format()) << name;
    EXPECT_EQ(hit.pre_tokenizer().engine(), std::string(reference.pre_tokenizer().engine()));
    EXPECT_EQ(hit.model().merge_count(), reference.model().merge_count()) << name;
  }
}

TEST(TokenizerCache, StaleSourceIsReloaded) {
  const test::TempDir dir;
  const test::TempDir cache;
  const fs::path source = dir / "tok.json";
  const std::string text = sample_text();
  fs::copy_file(kTokenizers / "gpt2.json", source);
  EXPECT_EQ(Tokenizer::load(source, cache.path()).encode(text),
            Tokenizer::load(kTokenizers / "gpt2.json", {}).encode(text));
  fs::copy_file(kTokenizers / "cl100k_base.json", source, fs::copy_options::overwrite_existing);
  EXPECT_EQ(Tokenizer::load(source, cache.path()).encode(text),
            Tokenizer::load(kTokenizers / "cl100k_base.json", {}).encode(text));
  EXPECT_EQ(Tokenizer::load(source, cache.path()).encode(text),
            Tokenizer::load(kTokenizers / "cl100k_base.json", {}).encode(text));
}

TEST(TokenizerCache, DamagedCacheFallsBackToTheSource) {
  const test::TempDir cache;
  const fs::path source = kTokenizers / "cl100k_base.json";
  const std::string text = sample_text();
  const auto ids = Tokenizer::load(source, {}).encode(text);
  Tokenizer::load(source, cache.path());
  const fs::path file = tokenizer_cache_path(source, cache.path());
  const std::string good = test::read_file(file);
  const auto damaged = [&](const std::function<void()>& damage) {
    test::write_file(file, good);
    damage();
    std::ostringstream log;
    {
      const test::LogCapture capture(log);
      EXPECT_EQ(Tokenizer::load(source, cache.path()).encode(text), ids);
    }
    EXPECT_NE(log.str().find("corrupt tokenizer cache"), std::string::npos) << log.str();
    EXPECT_EQ(test::read_file(file), good) << "the cache is rewritten";
  };
  damaged([&] { test::flip_bits(file, static_cast<std::streamoff>(good.size() / 2), 0x10); });
  damaged([&] { test::flip_bits(file, static_cast<std::streamoff>(good.size() - 1), 0x01); });
  damaged([&] { fs::resize_file(file, good.size() - 100); });
  damaged([&] { test::write_file(file, "not a cache"); });
  damaged([&] { test::write_file(file, good + "x"); });
}

TEST(TokenizerCache, RestoreRejectsTruncatedPayloads) {
  const Tokenizer tok = Tokenizer::load(kTokenizers / "gpt2.json", {});
  const std::string bytes = serialize_tokenizer(tok);
  for (const std::size_t cut :
       {std::size_t{0}, std::size_t{7}, bytes.size() / 3, bytes.size() - 1}) {
    EXPECT_NE(test::error_line([&] {
                restore_tokenizer(bytes.substr(0, cut), "c");
              }).find("corrupt tokenizer cache"),
              std::string::npos)
        << cut;
  }
}

// One big input is split in batches of pieces; the ids must be those of its
// pieces encoded one by one from a single split (as before batching).
TEST(TokenizerLargeInput, EqualsItsPiecesConcatenated) {
  std::string text;
  for (const auto& d : test::brown_documents(SIZE_MAX)) text += d + "\n\n";
  for (const char* name : {"cl100k_base.json", "o200k_base.json", "llama2"}) {
    const Tokenizer tok = Tokenizer::load(kTokenizers / name, {});
    if (!tok.normalizer().empty()) continue;  // the pieces are of the normalized text
    std::vector<std::string_view> pieces;
    tok.pre_tokenizer().split(text, pieces);
    ASSERT_GT(pieces.size(), 100000u) << name;
    std::vector<std::uint32_t> expected;
    for (const auto piece : pieces) tok.model().encode(piece, expected);
    EXPECT_EQ(tok.encode(text), expected) << name;
    std::vector<std::string_view> batched;
    for (std::size_t pos = 0; pos < text.size();)
      pos = tok.pre_tokenizer().split(text, pos, batched, 777);
    EXPECT_EQ(batched, pieces) << name;
  }
}

}  // namespace
}  // namespace borealis
