#include "dist/launch_env.h"

#include <mpi.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string_view>

#include "core/text.h"

namespace borealis {

namespace {

const char* env(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? value : nullptr;
}

int env_int(const char* name, int fallback) {
  const char* value = env(name);
  return value != nullptr ? std::atoi(value) : fallback;
}

std::string find_on_path(std::string_view program) {
  const char* path = env("PATH");
  if (path == nullptr) return {};
  for (const auto& dir : split(path, ':')) {
    if (dir.empty()) continue;
    const std::filesystem::path candidate = std::filesystem::path(dir) / program;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate.string();
  }
  return {};
}

}  // namespace

LaunchEnv detect_launch_env() {
  LaunchEnv e;
  if (const char* id = env("PBS_JOBID")) {
    e.scheduler = "PBS";
    e.job_id = id;
  } else if (const char* sid = env("SLURM_JOB_ID")) {
    e.scheduler = "Slurm";
    e.job_id = sid;
  }
  // Launchers in order of specificity; each sets rank and size variables.
  if (env("OMPI_COMM_WORLD_SIZE") != nullptr) {
    e.launcher = "Open MPI";
    e.rank = env_int("OMPI_COMM_WORLD_RANK", 0);
    e.world_size = env_int("OMPI_COMM_WORLD_SIZE", 1);
    e.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0);
    e.local_size = env_int("OMPI_COMM_WORLD_LOCAL_SIZE", 1);
  } else if (env("PMIX_RANK") != nullptr && env("PMIX_SIZE") != nullptr) {
    e.launcher = "PMIx";
    e.rank = env_int("PMIX_RANK", 0);
    e.world_size = env_int("PMIX_SIZE", 1);
    e.local_rank = env_int("PMIX_LOCAL_RANK", 0);
    e.local_size = env_int("PMIX_LOCAL_SIZE", 1);
  } else if (env("PMI_SIZE") != nullptr) {
    e.launcher = "PMI";  // MPICH / Cray MPICH (PALS on Aurora and Polaris)
    e.rank = env_int("PMI_RANK", 0);
    e.world_size = env_int("PMI_SIZE", 1);
    e.local_rank = env_int("PMI_LOCAL_RANK", env_int("PALS_LOCAL_RANKID", 0));
    e.local_size = env_int("PMI_LOCAL_SIZE", env_int("PALS_LOCAL_SIZE", 1));
  } else if (env("SLURM_NTASKS") != nullptr && env("SLURM_PROCID") != nullptr) {
    e.launcher = "Slurm";
    e.rank = env_int("SLURM_PROCID", 0);
    e.world_size = env_int("SLURM_NTASKS", 1);
    e.local_rank = env_int("SLURM_LOCALID", 0);
    e.local_size = env_int("SLURM_NTASKS_PER_NODE", 1);
  }
  return e;
}

MpiInfo mpi_info() {
  MpiInfo info;
  info.compiled = true;
  char version[MPI_MAX_LIBRARY_VERSION_STRING] = {};
  int length = 0;
  if (MPI_Get_library_version(version, &length) == MPI_SUCCESS) {
    std::string_view text(version, static_cast<std::size_t>(length));
    info.library = std::string(trim(text.substr(0, text.find('\n'))));
    if (const auto comma = info.library.find(','); comma != std::string::npos) {
      info.library.resize(comma);  // Open MPI appends package and date details
    }
  }
  info.mpiexec = find_on_path("mpiexec");
  if (info.mpiexec.empty()) info.mpiexec = find_on_path("mpirun");
  return info;
}

}  // namespace borealis
