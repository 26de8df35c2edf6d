// borealis launch: start a command on N ranks with the launcher of this
// machine (srun in Slurm jobs, mpiexec elsewhere), printing the command it
// runs; --dry-run prints it only. --max-restarts N reruns a failed job with
// --resume auto (dist/restart.h).
#include <fmt/format.h>
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <memory>

#include "cli/commands.h"
#include "core/config.h"
#include "dist/launcher.h"
#include "dist/restart.h"
#include "train/metrics_reader.h"
#include "train/train_config.h"

namespace borealis::cli {

namespace {

struct LaunchFlags {
  LaunchOptions options;
  bool dry_run = false;
  int max_restarts = 0;
  double restart_delay = 5;
};

// The last step a run's metrics log records; -1 when it has none.
std::int64_t last_logged_step(const std::string& run_dir) {
  try {
    const MetricsLog log = read_metrics(std::filesystem::path(run_dir) / "metrics.jsonl");
    return log.train.empty() ? -1 : log.train.back().step;
  } catch (const std::exception&) {
    return -1;
  }
}

// For `borealis train CONFIG`: the run's model-parallel layout on the
// launch's ranks, checked before any rank starts. A config that cannot be
// read here is left to the run itself to report.
std::string train_layout(const LaunchPlan& plan, const std::vector<std::string>& command) {
  const std::optional<TrainCommand> train = find_train_command(command);
  if (!train) return "";
  int tensor = 1, pipeline = 1;
  std::string where;
  try {
    const Config config = load_config(train_config_schema(), train->config, train->overrides);
    tensor = static_cast<int>(config.get<std::int64_t>("dist.tensor_parallel"));
    pipeline = static_cast<int>(config.get<std::int64_t>("dist.pipeline_parallel"));
    where = config.origin(pipeline > 1 ? "dist.pipeline_parallel" : "dist.tensor_parallel");
  } catch (const std::exception& e) {
    return fmt::format("layout: not checked ({})\n", e.what());
  }
  if (tensor == 1 && pipeline == 1) return "";
  return describe_launch_layout(plan, tensor, pipeline, where);
}

}  // namespace

Command add_launch(CLI::App& parent) {
  auto f = std::make_shared<LaunchFlags>();
  CLI::App* app = parent.add_subcommand(
      "launch",
      "Run a command on N ranks: detects Slurm, PBS, a hostfile or this machine, sets OpenMP "
      "threads per rank from cores per node, prints the srun/mpiexec command and runs it.");
  app->add_option("-n,--ranks", f->options.ranks,
                  "Ranks in total (default: --ppn per node, or one per slot/node)")
      ->check(CLI::PositiveNumber);
  app->add_option("--ppn", f->options.ppn, "Ranks per node (default: from -n and the nodes)")
      ->check(CLI::PositiveNumber);
  app->add_option("--hostfile", f->options.hostfile,
                  "Hosts to run on: 'host', 'host slots=N' or 'host:N' lines")
      ->check(CLI::ExistingFile);
  app->add_option("--mpi", f->options.mpi,
                  "Launcher: auto (from 'mpiexec --version'), openmpi, mpich, pals, srun")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "openmpi", "mpich", "pals", "srun"}));
  app->add_option("--cores-per-node", f->options.cores_per_node,
                  "Cores per node (default: from the scheduler, else this machine)")
      ->check(CLI::PositiveNumber);
  app->add_option("--threads-per-rank", f->options.threads_per_rank,
                  "OpenMP threads per rank (default: cores per node / ranks per node)")
      ->check(CLI::PositiveNumber);
  app->add_option("--max-restarts", f->max_restarts,
                  "Run the job again after a failure (a rank killed, a time-out, a non-zero "
                  "exit), up to N times, with --resume auto; stops early when the same failure "
                  "comes at the same step twice")
      ->check(CLI::NonNegativeNumber);
  app->add_option("--restart-delay", f->restart_delay, "Seconds to wait before a restart")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app->add_flag("--dry-run", f->dry_run, "Print the command without running it");
  app->add_option("command", f->options.command, "The command to run on every rank, after --")
      ->required();
  app->footer(
      "Example: borealis launch -n 8 --max-restarts 3 -- borealis train configs/run.toml\n"
      "With --max-restarts the launcher stays and watches the job: each failure is logged with "
      "its cause and step, and the exit status is the last attempt's.");

  return {app, [f] {
            if (f->max_restarts > 0) f->options.export_env.push_back(kLaunchStatusEnv);
            const LaunchPlan plan = plan_launch(f->options, current_launch_context());
            std::cout << describe_launch(plan) << train_layout(plan, f->options.command);
            RestartOptions restart;
            restart.max_restarts = f->max_restarts;
            restart.delay_s = f->restart_delay;
            // In the working directory, which batch jobs share between nodes.
            restart.status_file = std::filesystem::absolute(
                fmt::format(".borealis-launch-{}.jsonl", static_cast<long>(::getpid())));
            restart.last_step = last_logged_step;
            if (f->max_restarts > 0 && (f->dry_run || plan.source != "local")) {
              std::cout << restart_loop_script(plan.argv, restart);
            }
            std::cout.flush();
            if (f->dry_run) return;
            if (f->max_restarts == 0) exec_launch(plan);
            const int code = run_with_restarts(plan.argv, restart);
            if (code != 0) std::exit(code);
          }};
}

}  // namespace borealis::cli
