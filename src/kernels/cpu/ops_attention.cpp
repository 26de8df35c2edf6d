// Causal grouped-query attention, tiled over query blocks.
//
// For a block of kBlock query rows of one head, the scores against all keys
// up to the block's last position are one GEMM (block x keys), softmaxed in
// place and multiplied by V with a second GEMM. Only the log-sum-exp of each
// row is kept; backward recomputes the block's probabilities from it (as
// FlashAttention does), so activation memory is O(B * NH * seq) and the
// scratch is kBlock * seq per thread. Key blocks entirely above the diagonal
// are never computed.
//
// Forward runs one task per (batch, head, query block). Backward runs one task
// per (batch, kv head), because dK and dV of a kv head sum over its query
// heads and query blocks; a single owner keeps that sum race-free and in a
// fixed order.
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
void attention_forward(T* out, T* lse, const T* qkv, int B, int seq, int NH, int NKV, int HD) {
  const int S = (NH + 2 * NKV) * HD;
  const int C = NH * HD;
  const int group = NH / NKV;
  const T scale = T(1) / std::sqrt(T(HD));
  const int qblocks = (seq + kBlock - 1) / kBlock;
  const int tasks = B * NH * qblocks;
#pragma omp parallel if (worth_threads(std::int64_t{B} * NH * seq * seq * HD))
  {
    // Scratch is fully written before it is read: no need to zero it.
    const auto sc = std::make_unique_for_overwrite<T[]>(static_cast<std::size_t>(kBlock) * seq);
#pragma omp for schedule(dynamic, 1)
    for (int task = 0; task < tasks; ++task) {
      // Largest (last) query blocks first, for load balance.
      const int qb = qblocks - 1 - task % qblocks;
      const int h = (task / qblocks) % NH;
      const int b = task / (qblocks * NH);
      const int t0 = qb * kBlock;
      const int nq = std::min(kBlock, seq - t0);
      const int tk = t0 + nq;
      const std::size_t row0 = static_cast<std::size_t>(b) * seq;
      const T* q = qkv + (row0 + t0) * S + static_cast<std::size_t>(h) * HD;
      const T* k = qkv + row0 * S + C + static_cast<std::size_t>(h / group) * HD;
      const T* v = k + static_cast<std::size_t>(NKV) * HD;
      gemm<T>(false, true, nq, tk, HD, scale, q, S, k, S, T(0), sc.get(), tk);
      T* lse_row = lse + (static_cast<std::size_t>(b) * NH + h) * seq + t0;
      for (int i = 0; i < nq; ++i) {
        lse_row[i] =
            causal_softmax_row(sc.get() + static_cast<std::size_t>(i) * tk, t0 + i + 1, tk);
      }
      T* o = out + (row0 + t0) * C + static_cast<std::size_t>(h) * HD;
      gemm<T>(false, false, nq, HD, tk, T(1), sc.get(), tk, v, S, T(0), o, C);
    }
  }
}

template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* out, const T* lse, int B,
                        int seq, int NH, int NKV, int HD) {
  const int S = (NH + 2 * NKV) * HD;
  const int C = NH * HD;
  const int group = NH / NKV;
  const T scale = T(1) / std::sqrt(T(HD));
  const int qblocks = (seq + kBlock - 1) / kBlock;
  const int tasks = B * NKV;
#pragma omp parallel if (worth_threads(std::int64_t{B} * NH * seq * seq * HD))
  {
    const auto p = std::make_unique_for_overwrite<T[]>(static_cast<std::size_t>(kBlock) * seq);
    const auto dp = std::make_unique_for_overwrite<T[]>(static_cast<std::size_t>(kBlock) * seq);
#pragma omp for schedule(dynamic, 1)
    for (int task = 0; task < tasks; ++task) {
      const int g = task % NKV;
      const int b = task / NKV;
      const std::size_t row0 = static_cast<std::size_t>(b) * seq;
      const std::size_t koff = C + static_cast<std::size_t>(g) * HD;
      const std::size_t voff = koff + static_cast<std::size_t>(NKV) * HD;
      const T* k = qkv + row0 * S + koff;
      const T* v = qkv + row0 * S + voff;
      T* dk = dqkv + row0 * S + koff;
      T* dv = dqkv + row0 * S + voff;
      for (int t = 0; t < seq; ++t) {
        std::fill(dk + static_cast<std::size_t>(t) * S, dk + static_cast<std::size_t>(t) * S + HD,
                  T(0));
        std::fill(dv + static_cast<std::size_t>(t) * S, dv + static_cast<std::size_t>(t) * S + HD,
                  T(0));
      }
      for (int h = g * group; h < (g + 1) * group; ++h) {
        for (int qb = 0; qb < qblocks; ++qb) {
          const int t0 = qb * kBlock;
          const int nq = std::min(kBlock, seq - t0);
          const int tk = t0 + nq;
          const std::size_t hoff = static_cast<std::size_t>(h) * HD;
          const T* q = qkv + (row0 + t0) * S + hoff;
          T* dq = dqkv + (row0 + t0) * S + hoff;
          const T* o = out + (row0 + t0) * C + hoff;
          const T* d_o = dout + (row0 + t0) * C + hoff;
          const T* lse_row = lse + (static_cast<std::size_t>(b) * NH + h) * seq + t0;
          gemm<T>(false, true, nq, tk, HD, scale, q, S, k, S, T(0), p.get(), tk);
          gemm<T>(false, true, nq, tk, HD, T(1), d_o, C, v, S, T(0), dp.get(), tk);
          for (int i = 0; i < nq; ++i) {
            T* pr = p.get() + static_cast<std::size_t>(i) * tk;
            T* dr = dp.get() + static_cast<std::size_t>(i) * tk;
            const T* oi = o + static_cast<std::size_t>(i) * C;
            const T* di = d_o + static_cast<std::size_t>(i) * C;
            T dot = 0;
#pragma omp simd reduction(+ : dot)
            for (int c = 0; c < HD; ++c) dot += oi[c] * di[c];
            const int len = t0 + i + 1;
            const T l = lse_row[i];
#pragma omp simd
            for (int j = 0; j < len; ++j) {
              const T pj = vexp<T>(pr[j] - l);
              pr[j] = pj;
              dr[j] = pj * (dr[j] - dot);
            }
            std::fill(pr + len, pr + tk, T(0));
            std::fill(dr + len, dr + tk, T(0));
          }
          gemm<T>(false, false, nq, HD, tk, scale, dp.get(), tk, k, S, T(0), dq, S);
          gemm<T>(true, false, tk, HD, nq, scale, dp.get(), tk, q, S, T(1), dk, S);
          gemm<T>(true, false, tk, HD, nq, T(1), p.get(), tk, d_o, C, T(1), dv, S);
        }
      }
    }
  }
}

#define BOREALIS_INSTANTIATE(T)                                                                  \
  template void attention_forward<T>(T*, T*, const T*, int, int, int, int, int);                 \
  template void attention_backward<T>(T*, const T*, const T*, const T*, const T*, int, int, int, \
                                      int, int);
BOREALIS_INSTANTIATE(float)
BOREALIS_INSTANTIATE(double)
#undef BOREALIS_INSTANTIATE

}  // namespace borealis::cpu
