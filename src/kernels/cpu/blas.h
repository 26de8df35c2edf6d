// The BLAS library behind the CPU GEMMs, and the one thread pool it shares
// with our OpenMP kernels.
//
// Borealis links OpenBLAS built with OpenMP, so BLAS calls and our own
// parallel loops run on the same libgomp threads and never oversubscribe the
// cores. set_cpu_threads() is the one place that sets that thread count.
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

// Threads OpenMP loops will use (omp_get_max_threads).
int cpu_threads();

// Sets the thread count for OpenMP loops and BLAS together.
void set_cpu_threads(int threads);

}  // namespace borealis
