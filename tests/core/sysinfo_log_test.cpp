#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include "core/build_info.h"
#include "core/error.h"
#include "core/log.h"
#include "core/sysinfo.h"
#include "test_util.h"

namespace borealis {
namespace {

TEST(Log, LevelsByName) {
  init_logging();
  for (const char* level : kLogLevels) {
    set_log_level(level);
    EXPECT_EQ(log_level_name(), level);
  }
  set_log_level("debug");
  EXPECT_TRUE(spdlog::should_log(spdlog::level::debug));
  EXPECT_FALSE(spdlog::should_log(spdlog::level::trace));
  set_log_level("info");
  try {
    set_log_level("verbose", "config.toml:3:1");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.where(), "config.toml:3:1");
  }
  EXPECT_EQ(log_level_name(), "info");  // unchanged by the failed call
}

TEST(SysInfo, DescribesThisMachine) {
  const CpuInfo cpu = cpu_info();
  EXPECT_GE(cpu.online, 1u);
  EXPECT_GE(cpu.usable, 1u);
  EXPECT_LE(cpu.usable, cpu.online);
  EXPECT_TRUE(cpu.simd_build_supported);  // the tests run on the machine they were built for
  const MemoryInfo mem = memory_info();
  EXPECT_GT(mem.total, 0u);
  EXPECT_GT(mem.available, 0u);
  EXPECT_LE(mem.available, mem.total);
  test::TempDir dir;
  const DiskInfo disk = disk_info(dir.path());
  EXPECT_GT(disk.total, 0u);
  EXPECT_LE(disk.free, disk.total);
  EXPECT_THROW(disk_info(dir / "missing"), Error);
}

TEST(BuildInfo, NamesVersionAndCompiler) {
  const BuildInfo& b = build_info();
  EXPECT_FALSE(b.version.empty());
  EXPECT_FALSE(b.compiler.empty());
  EXPECT_FALSE(b.git_commit.empty());
  EXPECT_TRUE(b.blas);
}

}  // namespace
}  // namespace borealis
