// Causal grouped-query attention over a paged key/value cache (inference).
//
// A sequence's cache is a list of fixed-size blocks of a shared pool: its
// position p lives in row blocks[p / block_size] * block_size + p %
// block_size of the pool. The new rows' k and v heads are stored first, so a
// query at position p sees positions 0..p, its own included. As in training's
// attention_forward, a block of up to kBlock query rows of one head is scored
// against the keys with GEMMs (one per cache block, whose rows are
// contiguous), softmaxed in place and multiplied by the values; a decode step
// (N = 1) uses plain vector loops instead. A contiguous cache is the case
// of one block as long as the context.
#include <algorithm>
#include <cmath>
#include <memory>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/softmax_row.h"
#include "kernels/cpu/vec_math.h"

namespace borealis::cpu {

namespace {
constexpr int kBlock = 64;
}  // namespace

template <typename T>
void attention_kv_forward(T* out, T* kpool, T* vpool, const std::int32_t* blocks, int block_size,
                          const T* qkv, int N, int pos0, int NH, int NKV, int HD) {
  const int S = (NH + 2 * NKV) * HD;
  const int C = NH * HD;
  const int KW = NKV * HD;
  const int group = NH / NKV;
  const auto slot = [&](int pos) {
    return (static_cast<std::size_t>(blocks[pos / block_size]) * block_size + pos % block_size) *
           KW;
  };
  for (int i = 0; i < N; ++i) {
    const T* row = qkv + static_cast<std::size_t>(i) * S;
    const std::size_t at = slot(pos0 + i);
    std::copy(row + C, row + C + KW, kpool + at);
    std::copy(row + C + KW, row + C + 2 * KW, vpool + at);
  }
  const T scale = T(1) / std::sqrt(T(HD));
  const int total = pos0 + N;  // keys visible to the last query
  const int qblocks = (N + kBlock - 1) / kBlock;
  const int tasks = NH * qblocks;
  // A decode step over a short context is a few microseconds of work: less
  // than waking a thread team, which a batch of many sequences pays per call.
#pragma omp parallel if (worth_threads(std::int64_t{NH} * N * total * HD / 32))
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
      const std::size_t head = static_cast<std::size_t>(h / group) * HD;
      const T* q = qkv + static_cast<std::size_t>(t0) * S + static_cast<std::size_t>(h) * HD;
      for (int k0 = 0; k0 < tk; k0 += block_size) {
        const int nk = std::min(block_size, tk - k0);
        const T* k = kpool + slot(k0) + head;
        if (nq == 1) {
          // A decode step: plain dot products. A BLAS call per cache block
          // and head costs more than the few hundred multiply-adds it does.
          for (int j = 0; j < nk; ++j) {
            const T* kj = k + static_cast<std::size_t>(j) * KW;
            T dot = 0;
#pragma omp simd reduction(+ : dot)
            for (int c = 0; c < HD; ++c) dot += q[c] * kj[c];
            sc[static_cast<std::size_t>(k0 + j)] = scale * dot;
          }
        } else {
          gemm<T>(false, true, nq, nk, HD, scale, q, S, k, KW, T(0), sc.get() + k0, tk);
        }
      }
      for (int i = 0; i < nq; ++i) {
        causal_softmax_row(sc.get() + static_cast<std::size_t>(i) * tk, pos0 + t0 + i + 1, tk);
      }
      T* o = out + static_cast<std::size_t>(t0) * C + static_cast<std::size_t>(h) * HD;
      if (nq == 1) std::fill(o, o + HD, T(0));
      for (int k0 = 0; k0 < tk; k0 += block_size) {
        const int nk = std::min(block_size, tk - k0);
        const T* v = vpool + slot(k0) + head;
        const T beta = k0 == 0 ? T(0) : T(1);
        if (nq == 1) {
          for (int j = 0; j < nk; ++j) {
            const T pj = sc[static_cast<std::size_t>(k0 + j)];
            const T* vj = v + static_cast<std::size_t>(j) * KW;
#pragma omp simd
            for (int c = 0; c < HD; ++c) o[c] += pj * vj[c];
          }
        } else {
          gemm<T>(false, false, nq, HD, nk, T(1), sc.get() + k0, tk, v, KW, beta, o, C);
        }
      }
    }
  }
}

template void attention_kv_forward<float>(float*, float*, float*, const std::int32_t*, int,
                                          const float*, int, int, int, int, int);
template void attention_kv_forward<double>(double*, double*, double*, const std::int32_t*, int,
                                           const double*, int, int, int, int, int);

}  // namespace borealis::cpu
