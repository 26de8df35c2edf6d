#include "kernels/cpu/blas.h"

#include <cblas.h>

#include <cctype>
#include <cstdlib>

#include "core/text.h"

namespace borealis {

BlasInfo blas_info() {
  BlasInfo info;
#ifdef OPENBLAS_VERSION
  info.library = std::string(trim(OPENBLAS_VERSION));
#else
  info.library = "OpenBLAS";
#endif
  info.config = std::string(trim(openblas_get_config()));
  info.core = openblas_get_corename();
  switch (openblas_get_parallel()) {
    case 0:
      info.threading = "sequential";
      break;
    case 1:
      info.threading = "pthreads";
      break;
    case 2:
      info.threading = "OpenMP";
      break;
    default:
      info.threading = "unknown";
      break;
  }
  info.threads = openblas_get_num_threads();
  if (const char* env = std::getenv("OPENBLAS_CORETYPE")) info.coretype_override = env;
  return info;
}

std::string blas_core_simd(const std::string& core) {
  std::string c;
  for (const char ch : core)
    c.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(ch))));
  for (const char* k : {"skylakex", "cooperlake", "sapphirerapids"}) {
    if (c == k) return "avx512";
  }
  for (const char* k : {"haswell", "zen", "excavator"}) {
    if (c == k) return "avx2+fma";
  }
  for (const char* k : {"sandybridge", "bulldozer", "piledriver", "steamroller"}) {
    if (c == k) return "avx";
  }
  return "sse";
}

}  // namespace borealis
