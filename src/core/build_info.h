// How this binary was built: version, source commit, compiler, options and
// the optional backends compiled in. Printed by `borealis version` and
// recorded in run directories so results can be traced to a build.
#pragma once

#include <string>

namespace borealis {

struct BuildInfo {
  std::string version;     // "0.1.0"
  std::string git_commit;  // short hash, "+dirty" when built from modified sources, or "unknown"
  std::string build_type;  // "Release", "Debug", ...
  std::string compiler;    // "GNU 12.2.0"
  bool native_simd = false;
  bool sanitizers = false;
  bool blas = false;
  bool mpi = false;
  bool cuda = false;
  std::string cuda_toolkit;        // toolkit version when cuda is true
  bool cuda_backend = false;       // the CUDA backend's kernels are compiled in
  std::string cuda_architectures;  // what they were compiled for ("90")
};

const BuildInfo& build_info();

}  // namespace borealis
