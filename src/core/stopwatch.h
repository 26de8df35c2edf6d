// Wall-clock seconds since a steady_clock time point: the one helper the
// trainer, benchmarks and fault handling use to time things.
#pragma once

#include <chrono>

namespace borealis {

inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace borealis
