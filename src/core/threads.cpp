#include "core/threads.h"

#include <cblas.h>
#include <omp.h>

#include <stdexcept>

namespace borealis {

int cpu_threads() {
  return omp_get_max_threads();
}

// OpenBLAS keeps a count of its own, read when a call starts: setting only
// OpenMP's would leave BLAS on its start-up count.
void set_cpu_threads(int threads) {
  if (threads < 1) throw std::invalid_argument("set_cpu_threads: threads must be >= 1");
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
}

}  // namespace borealis
