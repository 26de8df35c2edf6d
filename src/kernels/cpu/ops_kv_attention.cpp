// Causal grouped-query attention over a key/value cache (inference).
//
// The new rows' k and v heads are copied into the caches first, so a query
// at position p sees cache rows 0..p, its own included. As in training's
// attention_forward, a block of up to kBlock query rows of one head is one
// GEMM against the cached keys, a softmax in place and a second GEMM with the
// cached values; a decode step (N = 1) uses matrix-vector products instead.
// They run on one thread unless the context makes them worth a team.
#include <algorithm>
#include <cmath>
#include <memory>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"

namespace borealis::cpu {

namespace {
constexpr int kBlock = 64;
}  // namespace

template <typename T>
void attention_kv_forward(T* out, T* kcache, T* vcache, const T* qkv, int N, int pos0, int NH,
                          int NKV, int HD) {
  const int S = (NH + 2 * NKV) * HD;
  const int C = NH * HD;
  const int KW = NKV * HD;
  const int group = NH / NKV;
  for (int i = 0; i < N; ++i) {
    const T* row = qkv + static_cast<std::size_t>(i) * S;
    const std::size_t at = static_cast<std::size_t>(pos0 + i) * KW;
    std::copy(row + C, row + C + KW, kcache + at);
    std::copy(row + C + KW, row + C + 2 * KW, vcache + at);
  }
  const T scale = T(1) / std::sqrt(T(HD));
  const int total = pos0 + N;  // keys visible to the last query
  const int qblocks = (N + kBlock - 1) / kBlock;
  const int tasks = NH * qblocks;
#pragma omp parallel if (worth_threads(std::int64_t{NH} * N * total * HD))
  {
    const auto sc =
        std::make_unique_for_overwrite<T[]>(static_cast<std::size_t>(std::min(kBlock, N)) * total);
#pragma omp for schedule(dynamic, 1)
    for (int task = 0; task < tasks; ++task) {
      const int qb = qblocks - 1 - task % qblocks;
      const int h = task / qblocks;
      const int t0 = qb * kBlock;
      const int nq = std::min(kBlock, N - t0);
      const int tk = pos0 + t0 + nq;
      const T* q = qkv + static_cast<std::size_t>(t0) * S + static_cast<std::size_t>(h) * HD;
      const T* k = kcache + static_cast<std::size_t>(h / group) * HD;
      const T* v = vcache + static_cast<std::size_t>(h / group) * HD;
      if (nq == 1) {
        gemv<T>(false, tk, HD, scale, k, KW, q, T(0), sc.get());
      } else {
        gemm<T>(false, true, nq, tk, HD, scale, q, S, k, KW, T(0), sc.get(), tk);
      }
      for (int i = 0; i < nq; ++i) {
        T* row = sc.get() + static_cast<std::size_t>(i) * tk;
        const int len = pos0 + t0 + i + 1;
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
        std::fill(row + len, row + tk, T(0));
      }
      T* o = out + static_cast<std::size_t>(t0) * C + static_cast<std::size_t>(h) * HD;
      if (nq == 1) {
        gemv<T>(true, tk, HD, T(1), v, KW, sc.get(), T(0), o);
      } else {
        gemm<T>(false, false, nq, HD, tk, T(1), sc.get(), tk, v, KW, T(0), o, C);
      }
    }
  }
}

template void attention_kv_forward<float>(float*, float*, float*, const float*, int, int, int, int,
                                          int);
template void attention_kv_forward<double>(double*, double*, double*, const double*, int, int, int,
                                           int, int);

}  // namespace borealis::cpu
