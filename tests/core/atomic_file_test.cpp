#include "core/atomic_file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>

#include "core/error.h"
#include "test_util.h"

namespace borealis {
namespace {

using test::list_dir;
using test::read_file;
using test::TempDir;
using test::write_file;

TEST(AtomicFile, CommitPublishesTheWholeFileAndLeavesNoTemporary) {
  TempDir dir;
  {
    AtomicFile f(dir / "out.bin");
    f.write("hello ");
    f.write(std::string_view("world"));
    EXPECT_FALSE(std::filesystem::exists(dir / "out.bin"));  // not visible before commit
    EXPECT_EQ(f.size(), 11u);
    f.commit();
  }
  EXPECT_EQ(read_file(dir / "out.bin"), "hello world");
  EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"out.bin"});
}

TEST(AtomicFile, LargeWritesCrossTheBufferIntact) {
  TempDir dir;
  std::string big(3 << 20, '\0');
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 131 % 251);
  AtomicFile f(dir / "big");
  f.write(big.data(), 1000);                      // buffered
  f.write(big.data() + 1000, big.size() - 2000);  // larger than the buffer
  f.write(big.data() + big.size() - 1000, 1000);
  f.commit();
  EXPECT_EQ(read_file(dir / "big"), big);
}

// Past 32 MiB the writer starts the disk write-back of what it has written
// while it goes on writing: the content must not change.
TEST(AtomicFile, FilesPastTheWritebackStepAreIntact) {
  TempDir dir;
  std::string piece(8 << 20, '\0');
  for (std::size_t i = 0; i < piece.size(); ++i) piece[i] = static_cast<char>(i * 31 % 253);
  std::string expected;
  AtomicFile f(dir / "big");
  for (int i = 0; i < 15; ++i) {
    const std::size_t n = i % 3 == 0 ? piece.size() : 65536 + static_cast<std::size_t>(i);
    f.write(piece.data(), n);
    expected.append(piece, 0, n);
  }
  f.commit();
  EXPECT_EQ(expected.size(), f.size());
  EXPECT_GT(expected.size(), std::size_t{32} << 20);
  EXPECT_EQ(read_file(dir / "big"), expected);
}

TEST(AtomicFile, DestroyedWithoutCommitLeavesNothing) {
  TempDir dir;
  try {
    AtomicFile f(dir / "out.bin");
    f.write(std::string(5 << 20, 'x'));
    throw std::runtime_error("failure while writing");
  } catch (const std::runtime_error&) {
  }
  EXPECT_TRUE(list_dir(dir.path()).empty());
}

TEST(AtomicFile, OverwriteKeepsTheOldFileUntilCommit) {
  TempDir dir;
  write_file(dir / "state.json", "old");
  {
    AtomicFile f(dir / "state.json");
    f.write("new contents");
    EXPECT_EQ(read_file(dir / "state.json"), "old");
  }  // abandoned
  EXPECT_EQ(read_file(dir / "state.json"), "old");
  write_file_atomic(dir / "state.json", "new contents");
  EXPECT_EQ(read_file(dir / "state.json"), "new contents");
}

// A writer process killed before commit (e.g. by the OOM killer or a batch
// scheduler) must leave the final name untouched: absent, or the old file.
TEST(AtomicFile, WriterKilledBeforeCommitLeavesNoPartialFile) {
  TempDir dir;
  write_file(dir / "existing", "previous version");
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    AtomicFile fresh(dir / "fresh");
    fresh.write(std::string(4 << 20, 'a'));
    AtomicFile existing(dir / "existing");
    existing.write(std::string(4 << 20, 'b'));
    ::raise(SIGKILL);  // dies mid-write: no destructors, no commit
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status));
  EXPECT_FALSE(std::filesystem::exists(dir / "fresh"));
  EXPECT_EQ(read_file(dir / "existing"), "previous version");
  // Only stray temporaries remain, named so they are recognisable.
  for (const auto& name : list_dir(dir.path())) {
    if (name == "existing") continue;
    EXPECT_TRUE(name.starts_with(".fresh.tmp.") || name.starts_with(".existing.tmp.")) << name;
  }
}

TEST(AtomicFile, FileModeFollowsTheUmask) {
  TempDir dir;
  const mode_t old = ::umask(027);
  write_file_atomic(dir / "f", "x");
  ::umask(old);
  struct stat st {};
  ASSERT_EQ(::stat((dir / "f").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0640u);
}

TEST(AtomicFile, MissingDirectoryIsAnErrorNamingThePath) {
  TempDir dir;
  const auto path = dir / "no" / "such" / "file";
  try {
    AtomicFile f(path);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.where(), path.string());
    EXPECT_EQ(e.message(), "cannot create file: No such file or directory");
  }
}

TEST(AtomicFile, WriteAfterCommitIsAProgrammingError) {
  TempDir dir;
  AtomicFile f(dir / "f");
  f.commit();
  EXPECT_THROW(f.write("x"), std::logic_error);
  EXPECT_THROW(f.commit(), std::logic_error);
  EXPECT_EQ(read_file(dir / "f"), "");
}

}  // namespace
}  // namespace borealis
