// `borealis launch --max-restarts N`: runs the launch plan as a child, and
// after a failure (a non-zero exit, a rank killed, a time-out) runs it again
// with `--resume auto`, until it succeeds, the restarts are used up, or the
// same failure comes at the same step twice in a row (a deterministic bug,
// not a fault, which another try would only repeat).
//
// What failed, and at which step, comes from the job itself: the launcher
// names a file in BOREALIS_LAUNCH_STATUS (emptied before every attempt), and
// `borealis train` appends JSON lines to it: rank 0 a start event with its
// run directory and first step, every rank whose run fails an error event
// with its rank, host, completed steps and message. A rank killed outright
// writes nothing; then the step comes from the run's metrics log (the last
// step rank 0 finished) and the cause from the exit status.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace borealis {

inline constexpr const char* kLaunchStatusEnv = "BOREALIS_LAUNCH_STATUS";

// Appends one JSON line to the file named by BOREALIS_LAUNCH_STATUS, if set,
// in one write. Never throws: reporting must not change how a run fails.
void report_to_launcher(const std::string& json_line);

// One attempt's failure.
struct AttemptFailure {
  std::string cause;       // "rank 1 (host): message", or the exit status
  std::int64_t step = -1;  // the step being run when it failed (from 1); -1: unknown
  int exit_code = 1;       // the launcher's exit status (128 + signal when killed)
};

// `wait_status` as waitpid gives it; `status_text` the status file's lines;
// `last_step(run_dir)` the last step the run's metrics log records (-1: none).
AttemptFailure describe_failure(int wait_status, const std::string& status_text,
                                const std::function<std::int64_t(const std::string&)>& last_step);

bool same_failure(const AttemptFailure& a, const AttemptFailure& b);

// The command for a restart: every --resume VALUE / --resume=VALUE becomes
// auto (`borealis train` resumes by default, so nothing is added).
std::vector<std::string> restart_command(const std::vector<std::string>& argv);

struct RestartOptions {
  int max_restarts = 0;
  double delay_s = 5;
  std::filesystem::path status_file;  // BOREALIS_LAUNCH_STATUS for the child
  std::function<std::int64_t(const std::string&)> last_step;
};

// Runs argv (the launcher's command line) with restarts; returns the exit
// code of the last attempt. SIGTERM to the launcher is passed to the job and
// SIGINT (which a terminal sends to the job too) is not; after either the
// job is not restarted.
int run_with_restarts(const std::vector<std::string>& argv, const RestartOptions& options);

// A bash loop that does what run_with_restarts does, short of telling
// failures apart: for batch scripts (PBS, Slurm) that call the launcher
// themselves.
std::string restart_loop_script(const std::vector<std::string>& argv,
                                const RestartOptions& options);

}  // namespace borealis
