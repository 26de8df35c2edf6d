#include "core/hash.h"

#include <gtest/gtest.h>

#include "test_util.h"

namespace borealis {
namespace {

// Reference values of XXH3 from the xxHash specification's test vectors:
// stored checksums depend on them never changing.
TEST(Hash, KnownValues) {
  EXPECT_EQ(hash64("", 0), 0x2D06800538D394C2ull);
  EXPECT_EQ(hex64(hash64("", 0)), "2d06800538d394c2");
  EXPECT_EQ(hash128("").hex(), "99aa06d3014798d86001c324468d497f");
}

TEST(Hash, SeedChangesTheHash) {
  EXPECT_NE(hash64("borealis", 1), hash64("borealis", 2));
}

TEST(Hasher, StreamingEqualsOneShot) {
  const std::string text = "The quick brown fox jumps over the lazy dog, many times over. ";
  std::string long_text;
  for (int i = 0; i < 100; ++i) long_text += text;
  Hasher h;
  for (std::size_t i = 0; i < long_text.size(); i += 7) {
    h.update(long_text.data() + i, std::min<std::size_t>(7, long_text.size() - i));
  }
  EXPECT_EQ(h.digest(), hash128(long_text));
}

TEST(Hasher, FieldsAreUnambiguous) {
  Hasher a, b;
  a.add(std::string_view("ab")).add(std::string_view("c"));
  b.add(std::string_view("a")).add(std::string_view("bc"));
  EXPECT_NE(a.digest(), b.digest());
  Hasher c, d;
  c.add(std::uint64_t{1}).add(0.5);
  d.add(std::uint64_t{1}).add(0.25);
  EXPECT_NE(c.digest(), d.digest());
}

TEST(Hash, FileHashEqualsContentHash) {
  test::TempDir dir;
  test::write_file(dir / "f", "checkpoint tensor bytes");
  EXPECT_EQ(hash_file(dir / "f"), hash128("checkpoint tensor bytes"));
  test::write_file(dir / "empty", "");
  EXPECT_EQ(hash_file(dir / "empty"), hash128(""));
}

}  // namespace
}  // namespace borealis
