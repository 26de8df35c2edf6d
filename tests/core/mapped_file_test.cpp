#include "core/mapped_file.h"

#include <gtest/gtest.h>

#include "core/error.h"
#include "test_util.h"

namespace borealis {
namespace {

using test::TempDir;
using test::write_file;

TEST(MappedFile, MapsTheContents) {
  TempDir dir;
  std::string data(100000, '\0');
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i % 256);
  write_file(dir / "f", data);
  const MappedFile m(dir / "f", MappedFile::Access::Random);
  ASSERT_EQ(m.size(), data.size());
  EXPECT_EQ(m.text(), data);
  m.prefetch(4096, 1 << 20);  // past the end is clamped
  EXPECT_EQ(m.path(), dir / "f");
}

TEST(MappedFile, EmptyFileMapsToEmptySpan) {
  TempDir dir;
  write_file(dir / "empty", "");
  const MappedFile m(dir / "empty");
  EXPECT_TRUE(m.empty());
  EXPECT_TRUE(m.bytes().empty());
}

TEST(MappedFile, MoveTransfersOwnership) {
  TempDir dir;
  write_file(dir / "f", "abc");
  MappedFile a(dir / "f");
  MappedFile b(std::move(a));
  EXPECT_EQ(b.text(), "abc");
  EXPECT_TRUE(a.empty());  // NOLINT(bugprone-use-after-move): moved-from is empty by contract
  MappedFile c;
  c = std::move(b);
  EXPECT_EQ(c.text(), "abc");
}

TEST(MappedFile, MissingFileAndDirectoryAreErrors) {
  TempDir dir;
  try {
    MappedFile m(dir / "missing");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.line(), "error: cannot open file: No such file or directory (" +
                            (dir / "missing").string() + ")");
  }
  try {
    MappedFile m(dir.path());
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.message(), "expected a file, found a directory");
  }
}

}  // namespace
}  // namespace borealis
