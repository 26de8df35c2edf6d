// The process's CPU thread count: one pool for OpenMP loops and OpenBLAS.
//
// Borealis links OpenBLAS built with OpenMP, so BLAS calls and our own
// parallel loops (kernels, data preparation, mixtures) run on the same
// libgomp threads and never oversubscribe the cores. set_cpu_threads() is the
// one place that sets that count (the global --threads flag); everything
// else reads cpu_threads().
#pragma once

namespace borealis {

// Threads OpenMP loops will use (omp_get_max_threads).
int cpu_threads();

// Sets the thread count for OpenMP loops and BLAS together; threads >= 1.
void set_cpu_threads(int threads);

}  // namespace borealis
