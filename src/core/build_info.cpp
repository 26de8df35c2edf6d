#include "core/build_info.h"

// The BOREALIS_BUILD_* macros are set for this file alone by src/CMakeLists.txt.

namespace borealis {

const char* git_commit_text();  // generated at build time by cmake/GitInfo.cmake

const BuildInfo& build_info() {
  static const BuildInfo info = [] {
    BuildInfo b;
    b.version = BOREALIS_BUILD_VERSION;
    b.git_commit = git_commit_text();
    b.build_type = BOREALIS_BUILD_TYPE;
    b.compiler = BOREALIS_BUILD_COMPILER;
    b.native_simd = BOREALIS_BUILD_NATIVE;
    b.sanitizers = BOREALIS_BUILD_SANITIZE;
    b.blas = true;  // required dependencies
    b.mpi = true;
    b.cuda = BOREALIS_BUILD_CUDA;
    b.cuda_toolkit = BOREALIS_BUILD_CUDA_TOOLKIT;
    b.cuda_backend = BOREALIS_BUILD_CUDA_BACKEND;
    b.cuda_architectures = BOREALIS_BUILD_CUDA_ARCHITECTURES;
    return b;
  }();
  return info;
}

}  // namespace borealis
