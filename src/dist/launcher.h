// `borealis launch`: turns "run this command on N ranks" into the launcher
// command line of the machine it runs on. It finds where it runs (a Slurm
// job, a PBS job via PBS_NODEFILE, a user hostfile, or this machine alone),
// how many nodes and cores per node there are, picks the ranks per node and
// OpenMP threads per rank (cores per node / ranks per node), and builds the
// command for the MPI launcher at hand: Open MPI's or MPICH's (Hydra)
// mpiexec, Cray PALS mpiexec, or Slurm's srun. Planning is a pure function of
// its inputs so that every case can be tested with fake environments.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace borealis {

struct LaunchOptions {
  int ranks = 0;             // -n; 0: one per slot or --ppn per node
  int ppn = 0;               // ranks per node; 0: derived
  std::string hostfile;      // --hostfile
  std::string mpi = "auto";  // auto, openmpi, mpich, pals, srun
  int cores_per_node = 0;    // 0: from the scheduler or this machine
  int threads_per_rank = 0;  // 0: cores per node / ranks per node
  std::vector<std::string> command;
  // Environment variables the ranks must see on every node (Open MPI passes
  // only those named with -x to other nodes; the other launchers pass all).
  std::vector<std::string> export_env;
};

// What the planner may look at; current_launch_context() fills it from the
// real process environment.
struct LaunchContext {
  std::function<std::optional<std::string>(const std::string&)> getenv;
  std::string local_host;
  int local_cores = 1;
  std::string mpiexec = "mpiexec";  // launcher program name as found on PATH
  // `mpiexec --version` output; called only when the flavour is "auto" and
  // the launch does not use srun.
  std::function<std::string()> mpiexec_version;
};

struct LaunchPlan {
  std::string source;  // "Slurm", "PBS", "hostfile", "local"
  std::string hosts;   // the hosts as found (list or Slurm node list)
  int nodes = 1;       // nodes used
  int ranks = 1;
  int ppn = 1;
  int cores_per_node = 1;
  int threads = 1;     // OpenMP threads per rank
  std::string flavor;  // "openmpi", "mpich", "pals", "srun"
  std::vector<std::string> argv;
};

// Throws Error (where: the flag or file at fault) for impossible requests:
// more ranks than the nodes hold at --ppn, an unreadable or empty hostfile,
// an unknown launcher.
LaunchPlan plan_launch(const LaunchOptions& options, const LaunchContext& context);

// "openmpi", "mpich" or "pals" from `mpiexec --version` output; "" if unknown.
std::string mpi_flavor_from_version(std::string_view text);

// Hosts and slots of a hostfile: "host", "host slots=N" (Open MPI),
// "host:N" (MPICH), '#' comments; hosts in first-seen order, a host listed
// several times gets the sum of its slots (PBS_NODEFILE lists one line per slot).
struct HostList {
  std::vector<std::string> hosts;
  std::vector<int> slots;
};
HostList read_hostfile(const std::string& path);

// The command as one line a POSIX shell would split back into argv.
std::string shell_join(const std::vector<std::string>& argv);

// Two lines: what was found and chosen, then the command.
std::string describe_launch(const LaunchPlan& plan);

// A training run's model-parallel layout on the plan's ranks (ranks are
// placed by node, ppn at a time; tensor-parallel innermost, then data, then
// pipeline, as the trainer orders them). Throws Error (at `where`) when
// tensor x pipeline does not divide the ranks. Otherwise a line naming the
// layout and where its groups fall, with a warning when tensor groups span
// nodes (their four collectives per layer would cross the network).
std::string describe_launch_layout(const LaunchPlan& plan, int tensor, int pipeline,
                                   const std::string& where);

// From a launched command `... borealis train CONFIG [--set K=V ...]`: the
// config file and its --set overrides. Nothing (nullopt) for other commands.
struct TrainCommand {
  std::string config;
  std::vector<std::string> overrides;
};
std::optional<TrainCommand> find_train_command(const std::vector<std::string>& command);

LaunchContext current_launch_context();

// Replaces this process with the planned command; throws Error if it cannot.
[[noreturn]] void exec_launch(const LaunchPlan& plan);

}  // namespace borealis
