// The borealis binary as a user meets it: help, exit codes, and the rule that
// every failure ends with exactly one "error: ..." line on stderr.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_util.h"

namespace borealis {
namespace {

using test::run_borealis;
using test::RunResult;

// stderr holds exactly one line, and it starts with "error: ".
void expect_one_error_line(const RunResult& r, const std::string& fragment) {
  EXPECT_TRUE(r.err.starts_with("error: ")) << r.err;
  ASSERT_FALSE(r.err.empty());
  EXPECT_EQ(r.err.back(), '\n');
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_NE(r.err.find(fragment), std::string::npos) << r.err;
}

TEST(Cli, HelpListsTheCommands) {
  const RunResult r = run_borealis({"--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("version"), std::string::npos);
  EXPECT_NE(r.out.find("doctor"), std::string::npos);
  EXPECT_NE(r.out.find("--log-level"), std::string::npos);
  EXPECT_EQ(run_borealis({}).exit_code, 0);  // no command: help
}

TEST(Cli, SubcommandHelpDescribesItsFlags) {
  const RunResult r = run_borealis({"doctor", "--help"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_NE(r.out.find("--min-free-disk"), std::string::npos);
  EXPECT_NE(r.out.find("--require"), std::string::npos);
}

TEST(Cli, UnknownCommandIsAUsageError) {
  const RunResult r = run_borealis({"trian"});
  EXPECT_EQ(r.exit_code, 2);
  expect_one_error_line(r, "trian");
}

TEST(Cli, UnknownFlagIsAUsageError) {
  const RunResult r = run_borealis({"version", "--jsn"});
  EXPECT_EQ(r.exit_code, 2);
  expect_one_error_line(r, "--jsn");
}

TEST(Cli, BadLogLevelIsAUsageError) {
  const RunResult r = run_borealis({"--log-level", "loud", "version"});
  EXPECT_EQ(r.exit_code, 2);
  expect_one_error_line(r, "loud");
}

TEST(Cli, BadLogLevelInEnvironmentIsAnError) {
  const RunResult r = run_borealis({"version"}, {"BOREALIS_LOG_LEVEL=loud"});
  EXPECT_EQ(r.exit_code, 1);
  expect_one_error_line(r, "(BOREALIS_LOG_LEVEL)");
}

TEST(Cli, LogLevelFromFlagOrEnvironment) {
  const RunResult quiet = run_borealis({"version"});
  EXPECT_EQ(quiet.exit_code, 0);
  EXPECT_EQ(quiet.err, "");  // info is the default: no debug line
  const RunResult flag = run_borealis({"--log-level", "debug", "--threads", "1", "version"});
  EXPECT_NE(flag.err.find("[debug] borealis 0."), std::string::npos) << flag.err;
  EXPECT_NE(flag.err.find(", 1 CPU threads"), std::string::npos) << flag.err;
  const RunResult env = run_borealis({"version"}, {"BOREALIS_LOG_LEVEL=debug"});
  EXPECT_NE(env.err.find("[debug]"), std::string::npos) << env.err;
  const RunResult flag_wins =
      run_borealis({"--log-level", "info", "version"}, {"BOREALIS_LOG_LEVEL=debug"});
  EXPECT_EQ(flag_wins.err, "");
}

TEST(Cli, ThreadsMustBePositive) {
  const RunResult r = run_borealis({"--threads", "0", "version"});
  EXPECT_EQ(r.exit_code, 2);
  expect_one_error_line(r, "--threads");
}

TEST(Cli, VersionReportsBuildAndBackends) {
  const RunResult r = run_borealis({"version"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(r.out.starts_with("borealis 0.")) << r.out;
  for (const char* field : {"commit", "build", "blas", "mpi", "cuda"}) {
    EXPECT_NE(r.out.find(field), std::string::npos) << field;
  }
  const RunResult j = run_borealis({"version", "--json"});
  ASSERT_EQ(j.exit_code, 0);
  const auto doc = nlohmann::json::parse(j.out);
  EXPECT_TRUE(doc["backends"]["blas"]["compiled"].get<bool>());
  EXPECT_EQ(doc["backends"]["blas"]["threading"], "OpenMP");
  EXPECT_TRUE(doc["backends"]["cuda"].contains("compiled"));
  EXPECT_TRUE(doc["backends"]["cuda"].contains("backend"));
  EXPECT_FALSE(doc["git_commit"].get<std::string>().empty());
}

TEST(Cli, DoctorPassesOnThisMachine) {
  const RunResult r = run_borealis({"doctor", "--min-free-disk", "1M", "--min-memory", "1M"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  for (const char* check : {"cpu", "simd", "memory", "disk", "threads", "blas", "mpi", "cuda"}) {
    EXPECT_NE(("\n" + r.out).find(std::string("\n") + check + " "), std::string::npos)
        << check << "\n"
        << r.out;
  }
  EXPECT_NE(r.out.find("0 failed"), std::string::npos);
}

TEST(Cli, DoctorFailsWithTheReasonWhenARequirementIsNotMet) {
  const RunResult r = run_borealis({"doctor", "--min-free-disk", "900000T"});
  EXPECT_EQ(r.exit_code, 1);
  expect_one_error_line(r, "1 requirement(s) not met: disk:");
  EXPECT_NE(r.out.find("disk     FAIL"), std::string::npos) << r.out;

  const RunResult m = run_borealis({"doctor", "--min-memory", "900000T", "--json"});
  EXPECT_EQ(m.exit_code, 1);
  expect_one_error_line(m, "memory:");
  const auto doc = nlohmann::json::parse(m.out);
  EXPECT_FALSE(doc["ok"].get<bool>());
}

// OpenBLAS falls back to old kernels on CPUs newer than its release; doctor
// says so (simulated here by forcing the old kernel set).
TEST(Cli, DoctorWarnsWhenBlasUsesOldKernels) {
  const RunResult r = run_borealis({"doctor", "--min-free-disk", "1M", "--min-memory", "1M"},
                                   {"OPENBLAS_CORETYPE=Prescott"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("blas     warn"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("OpenBLAS chose Prescott kernels (sse)"), std::string::npos) << r.out;
  const RunResult good = run_borealis({"doctor", "--min-free-disk", "1M", "--min-memory", "1M"},
                                      {"OPENBLAS_CORETYPE=Haswell"});
  EXPECT_NE(good.out.find("blas     ok"), std::string::npos) << good.out;
}

TEST(Cli, DoctorRejectsBadArguments) {
  const RunResult path = run_borealis({"doctor", "--path", "/no/such/dir"});
  EXPECT_EQ(path.exit_code, 2);
  expect_one_error_line(path, "/no/such/dir");

  const RunResult size = run_borealis({"doctor", "--min-memory", "lots"});
  EXPECT_EQ(size.exit_code, 1);
  expect_one_error_line(size, "(--min-memory)");

  const RunResult req = run_borealis({"doctor", "--require", "tpu"});
  EXPECT_EQ(req.exit_code, 2);
  expect_one_error_line(req, "tpu");
}

}  // namespace
}  // namespace borealis
