// The BLAS library behind the CPU GEMMs: which OpenBLAS, built how, and which
// kernel set it chose for this CPU (for `borealis version` and `doctor`). Its
// thread count is the process's, set in one place: core/threads.h.
#pragma once

#include <string>

namespace borealis {

struct BlasInfo {
  std::string library;  // "OpenBLAS 0.3.21"
  std::string
      config;        // build configuration, e.g. "DYNAMIC_ARCH NO_AFFINITY Haswell MAX_THREADS=64"
  std::string core;  // kernel set chosen for this CPU, e.g. "Haswell"
  std::string threading;          // "OpenMP", "pthreads" or "sequential"
  int threads = 1;                // threads BLAS will use
  std::string coretype_override;  // OPENBLAS_CORETYPE if set, else ""
};

BlasInfo blas_info();

// The widest SIMD an OpenBLAS kernel set uses: "avx512", "avx2+fma", "avx" or
// "sse" (older or unknown sets). OpenBLAS falls back to old kernels on CPUs
// newer than its release (e.g. "Prescott" on recent Xeons), which is many
// times slower; OPENBLAS_CORETYPE overrides its choice.
std::string blas_core_simd(const std::string& core);

}  // namespace borealis
