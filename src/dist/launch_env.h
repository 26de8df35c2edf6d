// How this process was launched: batch scheduler, MPI launcher, rank and
// world size as the launcher's environment variables tell them, before any
// MPI call. The data-parallel trainer and `borealis launch` build on it.
#pragma once

#include <string>

namespace borealis {

struct LaunchEnv {
  std::string scheduler;  // "PBS", "Slurm" or "" (none)
  std::string job_id;     // the scheduler's job id, if any
  std::string launcher;   // "Open MPI", "PMIx", "PMI", "Slurm" or "" (started directly)
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_size = 1;
};

LaunchEnv detect_launch_env();

struct MpiInfo {
  bool compiled = false;
  std::string library;  // MPI_Get_library_version, first line
  std::string mpiexec;  // path of mpiexec/mpirun on PATH, or ""
};

// Reads the MPI library version without initialising MPI.
MpiInfo mpi_info();

}  // namespace borealis
