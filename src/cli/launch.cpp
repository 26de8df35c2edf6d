// borealis launch: start a command on N ranks with the launcher of this
// machine (srun in Slurm jobs, mpiexec elsewhere), printing the command it
// runs; --dry-run prints it only.
#include <iostream>
#include <memory>

#include "cli/commands.h"
#include "dist/launcher.h"

namespace borealis::cli {

namespace {

struct LaunchFlags {
  LaunchOptions options;
  bool dry_run = false;
};

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
  app->add_flag("--dry-run", f->dry_run, "Print the command without running it");
  app->add_option("command", f->options.command, "The command to run on every rank, after --")
      ->required();
  app->footer("Example: borealis launch -n 8 -- borealis train configs/run.toml");

  return {app, [f] {
            const LaunchPlan plan = plan_launch(f->options, current_launch_context());
            std::cout << describe_launch(plan);
            std::cout.flush();
            if (!f->dry_run) exec_launch(plan);
          }};
}

}  // namespace borealis::cli
