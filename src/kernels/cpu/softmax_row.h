// The softmax of one causal attention score row, shared by the training
// attention (which keeps its log-sum-exp for backward) and the key/value-cache
// attention of inference, so both round the same way.
#pragma once

#include <algorithm>
#include <cmath>

#include "kernels/cpu/vec_math.h"

namespace borealis::cpu {

// Softmax in place over row[0, len) (the keys a query may see); row[len,
// width) is set to zero so a following GEMM over all width columns adds
// nothing for masked keys. Returns the log-sum-exp of the len scores.
template <typename T>
inline T causal_softmax_row(T* row, int len, int width) {
  T mx = row[0];
#pragma omp simd reduction(max : mx)
  for (int j = 0; j < len; ++j) mx = vmax(mx, row[j]);
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int j = 0; j < len; ++j) {
    const T e = vexp<T>(row[j] - mx);
    row[j] = e;
    sum += e;
  }
  const T inv = T(1) / sum;
#pragma omp simd
  for (int j = 0; j < len; ++j) row[j] *= inv;
  std::fill(row + len, row + width, T(0));
  return mx + std::log(sum);
}

}  // namespace borealis::cpu
