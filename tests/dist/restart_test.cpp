// `borealis launch --max-restarts`: what failed and where, the restart
// command, and the restart loop itself on small shell jobs.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "dist/restart.h"
#include "test_util.h"

namespace borealis {
namespace {

namespace fs = std::filesystem;

int exited(int code) {
  return code << 8;
}  // a waitpid status
int killed(int sig) {
  return sig;
}

TEST(Restart, FailureCauseAndStep) {
  const auto no_log = [](const std::string&) -> std::int64_t { return -1; };
  // A time-out on rank 0 and the root cause on rank 1: the root cause wins.
  const std::string status =
      R"({"event":"start","run_dir":"/r","step":6})"
      "\n"
      R"({"event":"error","rank":0,"host":"a","step":9,"timeout":true,"error":"allreduce timed out\nmore"})"
      "\n"
      R"({"event":"error","rank":1,"host":"b","step":9,"timeout":false,"error":"disk full"})"
      "\n"
      R"({"event":"err)";  // cut short by a kill
  AttemptFailure f = describe_failure(exited(1), status, no_log);
  EXPECT_EQ(f.cause, "rank 1 (b): disk full");
  EXPECT_EQ(f.step, 10);
  EXPECT_EQ(f.exit_code, 1);
  // Only the time-out: its first line.
  f = describe_failure(
      exited(1),
      R"({"event":"error","rank":0,"host":"a","step":3,"timeout":true,"error":"allreduce timed out\nmore"})",
      no_log);
  EXPECT_EQ(f.cause, "rank 0 (a): allreduce timed out");
  // A rank killed: the step from the run's metrics log.
  f = describe_failure(
      killed(9), R"({"event":"start","run_dir":"/r","step":6})",
      [](const std::string& dir) -> std::int64_t { return dir == "/r" ? 14 : -1; });
  EXPECT_EQ(f.step, 15);
  EXPECT_EQ(f.exit_code, 128 + 9);
  EXPECT_NE(f.cause.find("signal 9"), std::string::npos) << f.cause;
  f = describe_failure(exited(137), "", no_log);
  EXPECT_EQ(f.step, -1);
  EXPECT_EQ(f.exit_code, 137);
  EXPECT_EQ(f.cause, "the job exited with status 137");

  EXPECT_TRUE(same_failure({"x", 4, 1}, {"x", 4, 2}));
  EXPECT_FALSE(same_failure({"x", 4, 1}, {"x", 5, 1}));
  EXPECT_FALSE(same_failure({"x", 4, 1}, {"y", 4, 1}));
}

TEST(Restart, RestartCommandResumesAuto) {
  EXPECT_EQ(restart_command({"mpiexec", "-n", "2", "borealis", "train", "c.toml", "--resume",
                             "never", "--resume=ck"}),
            (std::vector<std::string>{"mpiexec", "-n", "2", "borealis", "train", "c.toml",
                                      "--resume", "auto", "--resume=auto"}));
  EXPECT_EQ(restart_command({"borealis", "train", "c.toml"}),
            (std::vector<std::string>{"borealis", "train", "c.toml"}));
  RestartOptions o;
  o.max_restarts = 3;
  o.delay_s = 2;
  const std::string script = restart_loop_script({"srun", "borealis", "train", "a b.toml"}, o);
  EXPECT_NE(script.find("cmd=(srun borealis train 'a b.toml')"), std::string::npos) << script;
  EXPECT_NE(script.find("seq 0 3"), std::string::npos) << script;
}

// A job that fails `fails` times, then succeeds; each attempt appends a line
// to `count` and reports a start and an error as borealis train does.
// `step` is shell text: a number, or $n for the attempt's number.
std::vector<std::string> flaky_job(const fs::path& count, int fails, const std::string& error,
                                   const std::string& step) {
  const std::string script = fmt::format(
      "echo x >> '{0}'; n=$(wc -l < '{0}'); "
      "echo '{{\"event\":\"start\",\"run_dir\":\"/nowhere\",\"step\":0}}' >> "
      "\"$BOREALIS_LAUNCH_STATUS\"; "
      "if [ \"$n\" -le {1} ]; then "
      "echo '{{\"event\":\"error\",\"rank\":0,\"host\":\"h\",\"step\":'{3}',\"timeout\":false,"
      "\"error\":\"'{2}'\"}}' >> \"$BOREALIS_LAUNCH_STATUS\"; exit 3; fi; exit 0",
      count.string(), fails, error, step);
  return {"/bin/sh", "-c", script};
}

int attempts(const fs::path& count) {
  const std::string text = test::read_file(count);
  return static_cast<int>(std::count(text.begin(), text.end(), '\n'));
}

TEST(Restart, RunsAgainUntilTheJobSucceeds) {
  test::TempDir dir;
  RestartOptions o;
  o.delay_s = 0;
  o.status_file = dir.path() / "status.jsonl";
  // Two passing faults (different steps): two restarts, then success.
  o.max_restarts = 3;
  const fs::path count = dir.path() / "count";
  auto job = flaky_job(count, 2, "rank lost", "$n");
  EXPECT_EQ(run_with_restarts(job, o), 0);
  EXPECT_EQ(attempts(count), 3);
  EXPECT_FALSE(fs::exists(o.status_file));

  // Out of restarts: the last attempt's exit status.
  const fs::path count2 = dir.path() / "count2";
  o.max_restarts = 1;
  job[2] = fmt::format("echo x >> '{0}'; n=$(wc -l < '{0}'); exit $((10 + n))", count2.string());
  EXPECT_EQ(run_with_restarts(job, o), 12);
  EXPECT_EQ(attempts(count2), 2);
}

TEST(Restart, TheSameFailureAtTheSameStepTwiceStops) {
  test::TempDir dir;
  RestartOptions o;
  o.delay_s = 0;
  o.max_restarts = 5;
  o.status_file = dir.path() / "status.jsonl";
  const fs::path count = dir.path() / "count";
  EXPECT_EQ(run_with_restarts(flaky_job(count, 100, "bad data", "7"), o), 3);
  EXPECT_EQ(attempts(count), 2) << "a deterministic failure is tried twice, not six times";
}

}  // namespace
}  // namespace borealis
