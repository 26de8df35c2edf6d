// GEMM-backed ops (matmul, the loss head) and the embedding lookups.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/vec_math.h"

namespace borealis::cpu {

namespace {

// Rows per block of a deterministic column reduction: fixed, never derived
// from the thread count.
constexpr int kReduceRows = 64;

CBLAS_TRANSPOSE trans(bool t) {
  return t ? CblasTrans : CblasNoTrans;
}

}  // namespace

template <>
void gemm<float>(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                 int lda, const float* B, int ldb, float beta, float* C, int ldc) {
  cblas_sgemm(CblasRowMajor, trans(trans_a), trans(trans_b), M, N, K, alpha, A, lda, B, ldb, beta,
              C, ldc);
}

template <>
void gemm<double>(bool trans_a, bool trans_b, int M, int N, int K, double alpha, const double* A,
                  int lda, const double* B, int ldb, double beta, double* C, int ldc) {
  cblas_dgemm(CblasRowMajor, trans(trans_a), trans(trans_b), M, N, K, alpha, A, lda, B, ldb, beta,
              C, ldc);
}

template <>
void gemv<float>(bool trans_a, int M, int N, float alpha, const float* A, int lda, const float* x,
                 float beta, float* y) {
  cblas_sgemv(CblasRowMajor, trans(trans_a), M, N, alpha, A, lda, x, 1, beta, y, 1);
}

template <>
void gemv<double>(bool trans_a, int M, int N, double alpha, const double* A, int lda,
                  const double* x, double beta, double* y) {
  cblas_dgemv(CblasRowMajor, trans(trans_a), M, N, alpha, A, lda, x, 1, beta, y, 1);
}

template <typename T>
void column_sum_accumulate(T* out, const T* x, int N, int C) {
  const int blocks = (N + kReduceRows - 1) / kReduceRows;
  std::vector<T> partial(static_cast<std::size_t>(blocks) * C, T(0));
#pragma omp parallel for schedule(static) if (worth_threads(std::int64_t{N} * C))
  for (int blk = 0; blk < blocks; ++blk) {
    T* p = partial.data() + static_cast<std::size_t>(blk) * C;
    const int end = std::min(N, (blk + 1) * kReduceRows);
    for (int n = blk * kReduceRows; n < end; ++n) {
      const T* row = x + static_cast<std::size_t>(n) * C;
#pragma omp simd
      for (int c = 0; c < C; ++c) p[c] += row[c];
    }
  }
#pragma omp parallel for schedule(static) if (worth_threads(std::int64_t{N} * C))
  for (int c = 0; c < C; ++c) {
    T s = 0;
    for (int blk = 0; blk < blocks; ++blk) s += partial[static_cast<std::size_t>(blk) * C + c];
    out[c] += s;
  }
}

template <typename T>
void embedding_forward(T* out, const std::int32_t* tokens, const T* wte, int v0, int rows,
                       const T* wpe, int N, int seq, int C) {
#pragma omp parallel for schedule(static) if (worth_threads(std::int64_t{N} * C))
  for (int n = 0; n < N; ++n) {
    T* o = out + static_cast<std::size_t>(n) * C;
    const std::int64_t row = static_cast<std::int64_t>(tokens[n]) - v0;
    if (row < 0 || row >= rows) {
      if (wpe != nullptr) {
        const T* p = wpe + static_cast<std::size_t>(n % seq) * C;
        std::copy(p, p + C, o);
      } else {
        std::fill(o, o + C, T(0));
      }
      continue;
    }
    const T* e = wte + static_cast<std::size_t>(row) * C;
    if (wpe != nullptr) {
      const T* p = wpe + static_cast<std::size_t>(n % seq) * C;
#pragma omp simd
      for (int c = 0; c < C; ++c) o[c] = e[c] + p[c];
    } else {
      std::copy(e, e + C, o);
    }
  }
}

template <typename T>
void embedding_backward(T* dwte, T* dwpe, const T* dout, const std::int32_t* tokens, int v0,
                        int rows, int N, int seq, int C) {
  // Each thread owns a slice of channels and walks all rows in order: no
  // races on repeated tokens and a fixed summation order.
  constexpr int kSlice = 32;
  const int slices = (C + kSlice - 1) / kSlice;
#pragma omp parallel for schedule(static) if (worth_threads(std::int64_t{N} * C))
  for (int s = 0; s < slices; ++s) {
    const int c0 = s * kSlice;
    const int c1 = std::min(C, c0 + kSlice);
    for (int n = 0; n < N; ++n) {
      const std::int64_t row = static_cast<std::int64_t>(tokens[n]) - v0;
      if (row < 0 || row >= rows) continue;
      T* d = dwte + static_cast<std::size_t>(row) * C;
      const T* g = dout + static_cast<std::size_t>(n) * C;
#pragma omp simd
      for (int c = c0; c < c1; ++c) d[c] += g[c];
    }
  }
  if (dwpe == nullptr) return;
  const int batches = N / seq;
#pragma omp parallel for schedule(static) if (worth_threads(std::int64_t{N} * C))
  for (int t = 0; t < seq; ++t) {
    T* d = dwpe + static_cast<std::size_t>(t) * C;
    for (int b = 0; b < batches; ++b) {
      const T* g = dout + (static_cast<std::size_t>(b) * seq + t) * C;
#pragma omp simd
      for (int c = 0; c < C; ++c) d[c] += g[c];
    }
  }
}

template <typename T>
void matmul_forward(T* out, const T* inp, const T* w, const T* bias, int N, int C, int OC,
                    bool accumulate) {
  if (bias != nullptr) {
#pragma omp parallel for schedule(static) if (worth_threads(std::int64_t{N} * OC))
    for (int n = 0; n < N; ++n) {
      T* o = out + static_cast<std::size_t>(n) * OC;
      if (accumulate) {
#pragma omp simd
        for (int c = 0; c < OC; ++c) o[c] += bias[c];
      } else {
        std::copy(bias, bias + OC, o);
      }
    }
  }
  const T beta = (accumulate || bias != nullptr) ? T(1) : T(0);
  if (N == 1) {
    // One row (a decode step of inference): w times a vector, no packing.
    gemv<T>(false, OC, C, T(1), w, C, inp, beta, out);
    return;
  }
  gemm<T>(false, true, N, OC, C, T(1), inp, C, w, C, beta, out, OC);
}

template <typename T>
void matmul_backward(T* dinp, T* dw, T* dbias, const T* dout, const T* inp, const T* w, int N,
                     int C, int OC) {
  if (dinp != nullptr) gemm<T>(false, false, N, C, OC, T(1), dout, OC, w, C, T(0), dinp, C);
  gemm<T>(true, false, OC, C, N, T(1), dout, OC, inp, C, T(1), dw, C);
  if (dbias != nullptr) column_sum_accumulate(dbias, dout, N, OC);
}

template <typename T>
void crossentropy_forward_backward(T* logits, T* losses, const std::int32_t* targets, int N, int V,
                                   int Vp, T dloss) {
#pragma omp parallel for schedule(static) if (worth_threads(std::int64_t{N} * V))
  for (int n = 0; n < N; ++n) {
    T* x = logits + static_cast<std::size_t>(n) * Vp;
    T mx = x[0];
#pragma omp simd reduction(max : mx)
    for (int j = 0; j < V; ++j) mx = vmax(mx, x[j]);
    const T target_logit = x[targets[n]];
    T sum = 0;
    if (dloss != T(0)) {
      // Keep exp(x - max) in place so the gradient pass needs no second exp.
#pragma omp simd reduction(+ : sum)
      for (int j = 0; j < V; ++j) {
        const T e = vexp<T>(x[j] - mx);
        x[j] = e;
        sum += e;
      }
      const T scale = dloss / sum;
#pragma omp simd
      for (int j = 0; j < V; ++j) x[j] *= scale;
      x[targets[n]] -= dloss;
      std::fill(x + V, x + Vp, T(0));
    } else {
#pragma omp simd reduction(+ : sum)
      for (int j = 0; j < V; ++j) sum += vexp<T>(x[j] - mx);
    }
    losses[n] = std::log(sum) + mx - target_logit;
  }
}

template <typename T>
void crossentropy_part_max(T* row_max, const T* logits, int N, int V, int Vp) {
#pragma omp parallel for schedule(static) if (worth_threads(std::int64_t{N} * V))
  for (int n = 0; n < N; ++n) {
    const T* x = logits + static_cast<std::size_t>(n) * Vp;
    T mx = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : mx)
    for (int j = 0; j < V; ++j) mx = vmax(mx, x[j]);
    row_max[n] = mx;
  }
}

template <typename T>
void crossentropy_part_sums(T* logits, T* sums, const T* row_max, const std::int32_t* targets,
                            int v0, int N, int V, int Vp, bool keep_exp) {
#pragma omp parallel for schedule(static) if (worth_threads(std::int64_t{N} * V))
  for (int n = 0; n < N; ++n) {
    T* x = logits + static_cast<std::size_t>(n) * Vp;
    const T mx = row_max[n];
    const std::int64_t t = static_cast<std::int64_t>(targets[n]) - v0;
    sums[2 * n + 1] = (t >= 0 && t < V) ? x[t] : T(0);
    T sum = 0;
    if (keep_exp) {
#pragma omp simd reduction(+ : sum)
      for (int j = 0; j < V; ++j) {
        const T e = vexp<T>(x[j] - mx);
        x[j] = e;
        sum += e;
      }
    } else {
#pragma omp simd reduction(+ : sum)
      for (int j = 0; j < V; ++j) sum += vexp<T>(x[j] - mx);
    }
    sums[2 * n] = sum;
  }
}

template <typename T>
void crossentropy_part_finish(T* logits, T* losses, const T* row_max, const T* sums,
                              const std::int32_t* targets, int v0, int N, int V, int Vp, T dloss) {
#pragma omp parallel for schedule(static) if (worth_threads(std::int64_t{N} * V))
  for (int n = 0; n < N; ++n) {
    losses[n] = std::log(sums[2 * n]) + row_max[n] - sums[2 * n + 1];
    if (dloss == T(0)) continue;
    T* x = logits + static_cast<std::size_t>(n) * Vp;
    const T scale = dloss / sums[2 * n];
#pragma omp simd
    for (int j = 0; j < V; ++j) x[j] *= scale;
    const std::int64_t t = static_cast<std::int64_t>(targets[n]) - v0;
    if (t >= 0 && t < V) x[t] -= dloss;
    std::fill(x + V, x + Vp, T(0));
  }
}

#define BOREALIS_INSTANTIATE(T)                                                                   \
  template void column_sum_accumulate<T>(T*, const T*, int, int);                                 \
  template void embedding_forward<T>(T*, const std::int32_t*, const T*, int, int, const T*, int,  \
                                     int, int);                                                   \
  template void embedding_backward<T>(T*, T*, const T*, const std::int32_t*, int, int, int, int,  \
                                      int);                                                       \
  template void crossentropy_part_max<T>(T*, const T*, int, int, int);                            \
  template void crossentropy_part_sums<T>(T*, T*, const T*, const std::int32_t*, int, int, int,   \
                                          int, bool);                                             \
  template void crossentropy_part_finish<T>(T*, T*, const T*, const T*, const std::int32_t*, int, \
                                            int, int, int, T);                                    \
  template void matmul_forward<T>(T*, const T*, const T*, const T*, int, int, int, bool);         \
  template void matmul_backward<T>(T*, T*, T*, const T*, const T*, const T*, int, int, int);      \
  template void crossentropy_forward_backward<T>(T*, T*, const std::int32_t*, int, int, int, T);
BOREALIS_INSTANTIATE(float)
BOREALIS_INSTANTIATE(double)
#undef BOREALIS_INSTANTIATE

}  // namespace borealis::cpu
